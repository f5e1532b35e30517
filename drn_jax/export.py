"""Deploying a trained DRN: StableHLO (``jax.export``), TF SavedModel, TFLite and ONNX artifacts.

    drn-export --pretrained=x4 --format=stablehlo --output_dir=exported/x4_stablehlo

Every artifact computes :meth:`drn_jax.models.DRN.upscale` (XLA's convolution, parameters baked
in) on NHWC float32 RGB in ``[0, 1]`` of any size; the SavedModel and TFLite models also take
uint8, rounded bit for bit as drn_jax rounds. :data:`FORMATS` holds one writer and one loader
per format and a registry line. docs/export.md describes the formats, the input convention,
the model cards and the atomic output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

import drn_jax
from drn_jax import cli, loading, models, pretrained, zoo
from drn_jax.errors import MissingDependencyError, one_line
from drn_jax.files import atomic_directory, to_json, write_atomic

__all__ = ["CARD_JSON", "CARD_MD", "FORMATS", "Format", "PLATFORMS", "Predict", "artifact_bytes", "card",
           "card_markdown", "export", "load", "load_for_export", "main", "predict_float", "predict_uint8", "run"]

Predict = Callable[[np.ndarray], np.ndarray]
"""Float32 ``(B, H, W, 3)`` in ``[0, 1]`` -> float32 ``(B, H·s, W·s, 3)``."""

PLATFORMS = ("cpu", "cuda", "tpu")
"""What the StableHLO inside the stablehlo and saved_model artifacts is lowered for."""
ONNX_OPSET = 17
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
FLOAT_SIGNATURE = "serving_float"
UINT8_SIGNATURE = "serving_default"
INPUT_NAME = "image"
EXTRA_HINT = 'pip install "drn-jax[export]"'


# ---------------------------------------------------------------------------
# The functions that are exported
# ---------------------------------------------------------------------------

def load_for_export(source: loading.ModelSource | None = None, **source_kwargs: Any) -> loading.LoadedModel:
    """The model of `source` (or of ``workdir=``/``checkpoint=``/``pretrained=``; see
    :func:`drn_jax.loading.load_model`) with XLA's convolution."""
    return loading.load_model(source, conv="xla", **source_kwargs)


def predict_float(loaded: loading.LoadedModel) -> Callable[[jax.Array], jax.Array]:
    """``x -> model.upscale(x)`` with the parameters closed over (so exported as constants)."""
    model, variables = loaded.model, loaded.variables

    def upscale(x: jax.Array) -> jax.Array:
        return model.apply(variables, x, method=models.DRN.upscale)

    return upscale


# uint8 -> float32 as drn_jax converts on the host (``x / 255`` in float32, correctly rounded),
# as a 256-entry table the graph looks up: compilers rewrite a division by a constant into a
# multiplication by its reciprocal (XLA:CPU does), 6e-8 off for 126 of the 256 levels, which moves
# an output that lands next to a rounding boundary to the other side.
_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def predict_uint8(loaded: loading.LoadedModel) -> Callable[[jax.Array], jax.Array]:
    """uint8 ``(B, H, W, 3)`` -> uint8 ``(B, H·s, W·s, 3)``: :func:`predict_float` between
    drn_jax's uint8 -> float and :func:`drn_jax.inference.to_uint8`'s rounding, as drn-upscale
    does in NumPy, bit for bit.

    The input is looked up in the host's ``x / 255`` values (a division in the graph would be
    compiled to a multiplication by 1/255, not bit-equal). The rounding is ``to_uint8``'s float32
    operations in its order (clip, ×255, ``+ 0.5``, floor), exact in any IEEE runtime (``floor``
    of a fused multiply-add gives the same integers). tests/test_export.py checks each uint8
    signature equals its float signature rounded by ``to_uint8``.
    """
    upscale = predict_float(loaded)
    table = jnp.asarray(_UINT8_TO_FLOAT)

    def upscale_uint8(x: jax.Array) -> jax.Array:
        y = upscale(table.at[x].get(mode="promise_in_bounds"))  # a uint8 index is always in bounds
        scaled = jnp.clip(y, 0.0, 1.0) * jnp.float32(255.0)
        return jnp.floor(scaled + jnp.float32(0.5)).astype(jnp.uint8)

    return upscale_uint8


def _symbolic_input(dtype: Any = jnp.float32) -> jax.ShapeDtypeStruct:
    batch, height, width = jax.export.symbolic_shape("b, h, w")
    return jax.ShapeDtypeStruct((batch, height, width, models.IMAGE_CHANNELS), dtype)


# ---------------------------------------------------------------------------
# One writer and one loader per format
# ---------------------------------------------------------------------------

def _tensorflow():
    try:
        import tensorflow as tf  # slow; only the TF formats pay for it
    except ImportError as err:
        raise MissingDependencyError(f"the saved_model and tflite formats need TensorFlow "
                                     f"({one_line(err)}); {EXTRA_HINT}") from None
    return tf


def write_stablehlo(loaded: loading.LoadedModel, folder: pathlib.Path) -> str:
    """``model.jax_export``: the serialized ``jax.export`` of the float model, symbolic B, H, W."""
    exported = jax.export.export(jax.jit(predict_float(loaded)), platforms=PLATFORMS)(_symbolic_input())
    write_atomic(folder / "model.jax_export", bytes(exported.serialize()))
    return "model.jax_export"


def load_stablehlo(path: pathlib.Path) -> Predict:
    exported = jax.export.deserialize(bytearray((path / "model.jax_export").read_bytes()))
    return lambda x: np.asarray(exported.call(np.asarray(x, np.float32)))


def _save_tf(loaded: loading.LoadedModel, target: pathlib.Path) -> None:
    tf = _tensorflow()
    from jax.experimental import jax2tf  # imports TensorFlow

    module = tf.Module()
    for name, function, dtype in (("float", predict_float(loaded), tf.float32),
                                  ("uint8", predict_uint8(loaded), tf.uint8)):
        converted = jax2tf.convert(function, polymorphic_shapes=["(b, h, w, 3)"], with_gradient=False,
                                   native_serialization_platforms=PLATFORMS)
        spec = tf.TensorSpec([None, None, None, models.IMAGE_CHANNELS], dtype, name=INPUT_NAME)
        setattr(module, name, tf.function(converted, autograph=False, input_signature=[spec]))
    tf.saved_model.save(module, str(target),
                        signatures={UINT8_SIGNATURE: module.uint8, FLOAT_SIGNATURE: module.float})


def write_saved_model(loaded: loading.LoadedModel, folder: pathlib.Path) -> str:
    """``saved_model/`` with the ``serving_default`` (uint8) and ``serving_float`` signatures."""
    _save_tf(loaded, folder / "saved_model")
    return "saved_model"


def load_saved_model(path: pathlib.Path) -> Predict:
    tf = _tensorflow()
    signature = tf.saved_model.load(str(path / "saved_model")).signatures[FLOAT_SIGNATURE]
    return lambda x: next(iter(signature(**{INPUT_NAME: tf.constant(x, tf.float32)}).values())).numpy()


def write_tflite(loaded: loading.LoadedModel, folder: pathlib.Path) -> str:
    """``model.tflite``, converted from a SavedModel (built in a scratch folder, then dropped)."""
    tf = _tensorflow()
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        _save_tf(loaded, pathlib.Path(scratch) / "saved_model")
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(pathlib.Path(scratch) / "saved_model"), signature_keys=[UINT8_SIGNATURE, FLOAT_SIGNATURE])
        data = converter.convert()
    write_atomic(folder / "model.tflite", data)
    return "model.tflite"


def load_tflite(path: pathlib.Path) -> Predict:
    tf = _tensorflow()
    interpreter = tf.lite.Interpreter(model_path=str(path / "model.tflite"), num_threads=os.cpu_count())
    # The signature runner resizes the input tensor to each image's shape (its dims are -1).
    runner = interpreter.get_signature_runner(FLOAT_SIGNATURE)
    return lambda x: next(iter(runner(**{INPUT_NAME: np.asarray(x, np.float32)}).values()))


def _jax2onnx():
    try:
        import jax2onnx
        from jax2onnx.plugins import plugin_system
    except ImportError as err:
        raise MissingDependencyError(f"the onnx format needs jax2onnx ({one_line(err)}); {EXTRA_HINT}") from None
    # jax2onnx's first conversion imports every plugin it has, examples included, which build
    # and compile dozens of demo models: a minute on a 2-core CPU. The DRN is lax primitives
    # only, so import that tree alone and mark the registry populated (a private flag of the
    # pinned jax2onnx; where it is missing the full import runs instead, slower but the same).
    if not getattr(plugin_system, "_already_imported_plugins", True) and hasattr(plugin_system, "_import_tree"):
        plugins = pathlib.Path(plugin_system.__file__).parent
        plugin_system._import_tree(plugins / "jax", "jax2onnx.plugins.jax")
        plugin_system._already_imported_plugins = True
    return jax2onnx


@contextlib.contextmanager
def _quiet_jax2onnx() -> Iterator[None]:
    """jax2onnx prints debug lines and logs warnings about plugins the DRN does not use."""
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_onnx(loaded: loading.LoadedModel, folder: pathlib.Path) -> str:
    """``model.onnx``: input ``image`` ``(B, H, W, 3)``, output ``upscaled`` ``(B, s·H, s·W, 3)``."""
    jax2onnx = _jax2onnx()
    with _quiet_jax2onnx():
        model = jax2onnx.to_onnx(predict_float(loaded), [("B", "H", "W", models.IMAGE_CHANNELS)],
                                 model_name=f"drn_x{loaded.model.scale}", opset=ONNX_OPSET,
                                 input_names=[INPUT_NAME], output_names=["upscaled"])
    write_atomic(folder / "model.onnx", model.SerializeToString())
    return "model.onnx"


def load_onnx(path: pathlib.Path) -> Predict:
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(f"running ONNX needs onnxruntime ({one_line(err)}); {EXTRA_HINT}") from None
    session = onnxruntime.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: np.asarray(x, np.float32)})[0]


@dataclasses.dataclass(frozen=True)
class Format:
    """One export format: what it writes and how to run what it wrote.

    Attributes:
      write: ``write(loaded, folder) -> name``: writes the artifact into ``folder`` (an empty
        staging folder) and returns its file or folder name there.
      load: ``load(folder) -> predict``: the float predict function of an export folder.
      runtime: what runs it, for the model card.
    """

    write: Callable[[loading.LoadedModel, pathlib.Path], str]
    load: Callable[[pathlib.Path], Predict]
    runtime: str


FORMATS: dict[str, Format] = {
    "stablehlo": Format(write_stablehlo, load_stablehlo, "jax.export.deserialize(...).call(x)"),
    "saved_model": Format(write_saved_model, load_saved_model, "tf.saved_model.load(...).signatures[...]"),
    "tflite": Format(write_tflite, load_tflite, "tf.lite.Interpreter(...).get_signature_runner(...)"),
    "onnx": Format(write_onnx, load_onnx, "onnxruntime.InferenceSession(...).run(...)"),
}


# ---------------------------------------------------------------------------
# Export folders and their model cards
# ---------------------------------------------------------------------------

def _portable(source: str, loaded: loading.LoadedModel) -> str:
    """The source without this machine's paths: a pretrained name, or the run folder's name."""
    if loaded.run is None:
        return source
    name = loaded.run.path.resolve().name
    return name if loaded.step is None or source == str(loaded.run.path) else f"{name}/checkpoints/{loaded.step}"


def card(loaded: loading.LoadedModel, format_name: str, artifact: str, *, pretrained_name: str | None = None
         ) -> dict[str, Any]:
    """The model card's data for an export (``model_card.json``)."""
    config = loaded.config
    scale = int(loaded.model.scale)
    data: dict[str, Any] = {
        "format": format_name,
        "artifact": artifact,
        "runtime": FORMATS[format_name].runtime,
        "scale": scale,
        "input": {"layout": "NHWC", "channels": "RGB", "dtype": "float32", "range": [0.0, 1.0],
                  "shape": ["batch", "height", "width", models.IMAGE_CHANNELS],
                  "dynamic": ["batch", "height", "width"]},
        "output": {"dtype": "float32", "shape": ["batch", f"{scale}*height", f"{scale}*width", 3],
                   "clipped": False,
                   "to_uint8": "floor(clip(y, 0, 1) * 255 + 0.5)"},
        "convolution": "xla",
        "parameters": models.count_params(loaded.variables["params"]),
        "model": dict(config.model.to_dict()) if "model" in config else {},
        "source": _portable(loaded.source, loaded),
        "step": loaded.step,
        "exported": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "versions": {"drn_jax": drn_jax.__version__, "jax": jax.__version__},
    }
    if format_name in ("stablehlo", "saved_model"):
        data["platforms"] = list(PLATFORMS)
    if format_name in ("saved_model", "tflite"):
        data["signatures"] = {UINT8_SIGNATURE: "uint8 -> uint8 (rounded as to_uint8)",
                              FLOAT_SIGNATURE: "float32 [0, 1] -> float32"}
    if format_name == "onnx":
        data["onnx"] = {"opset": ONNX_OPSET, "input": INPUT_NAME, "output": "upscaled"}
    if pretrained_name:
        meta = zoo.load_metadata(pretrained_name)
        data["pretrained"] = {"name": pretrained_name, "card": meta.get("card", {}),
                              "params_sha256": meta.get("params_sha256")}
        data["model_card_md"] = pretrained.model_card(meta)
    return data


def card_markdown(data: dict[str, Any]) -> str:
    """The short Markdown model card of an export (``model_card.md``) from :func:`card`'s data."""
    scale, fmt = data["scale"], data["format"]
    lines = [
        f"# DRN x{scale}, exported as `{fmt}`", "",
        f"`{data['artifact']}`: {data['parameters']:,} parameters, from `{data['source']}`"
        + (f" (step {data['step']})" if data.get("step") is not None else "") + f"; run it with `{data['runtime']}`.",
        "",
        f"- **Input**: NHWC RGB float32 in [0, 1], any batch, height and width.",
        f"- **Output**: float32 (batch, {scale}·height, {scale}·width, 3), not clipped; 8-bit: "
        f"`{data['output']['to_uint8']}`.",
        "- **Convolution**: XLA's (`conv=\"xla\"`), the backend-neutral one.",
    ]
    if data.get("platforms"):
        lines.append(f"- **Lowered for**: {', '.join(data['platforms'])}.")
    if data.get("signatures"):
        lines.append("- **Signatures**: " + "; ".join(f"`{k}` {v}" for k, v in data["signatures"].items()) + ".")
    lines.append(f"- **Exported**: {data['exported']} with drn_jax {data['versions']['drn_jax']}, "
                 f"jax {data['versions']['jax']}.")
    lines.append("")
    if data.get("model_card_md"):
        body = data["model_card_md"].splitlines()
        # The pretrained card, its headings two levels down (under this card's section).
        lines += ["## The model's card", ""] + [f"##{line}" if line.startswith("#") else line for line in body]
    return "\n".join(lines).rstrip() + "\n"


def _is_export(path: pathlib.Path) -> bool:
    """Whether `path` holds an earlier drn-export (which an export may replace)."""
    try:
        return "format" in json.loads((path / CARD_JSON).read_text())
    except (OSError, ValueError):
        return False


def export(loaded: loading.LoadedModel, format_name: str, output_dir: str | os.PathLike, *,
           pretrained_name: str | None = None) -> pathlib.Path:
    """Writes the `format_name` artifact of `loaded` and its model card into `output_dir`.

    Args:
      loaded: from :func:`load_for_export` (XLA's convolution).
      format_name: a key of :data:`FORMATS`.
      output_dir: the folder to create; it may exist if empty or holding an earlier export.
      pretrained_name: the zoo name, to copy that model's card into the export's.

    Returns:
      The path of the artifact inside `output_dir`.

    Raises:
      ValueError: an unknown format or a model exported with the Winograd convolution.
      OSError: `output_dir` cannot be written, or holds something else (nothing is left behind).
      MissingDependencyError: the format's packages are not installed.
    """
    if format_name not in FORMATS:
        raise ValueError(f"unknown format {format_name!r}; choose one of {', '.join(FORMATS)}")
    if loaded.model.conv != "xla":
        raise ValueError(f"export needs the model with conv='xla' (got {loaded.model.conv!r}); "
                         "load it with load_for_export")
    output_dir = pathlib.Path(output_dir).expanduser()
    with atomic_directory(output_dir, replace_if=_is_export) as staging:
        artifact = FORMATS[format_name].write(loaded, staging)
        data = card(loaded, format_name, artifact, pretrained_name=pretrained_name)
        write_atomic(staging / CARD_JSON, to_json(data))
        write_atomic(staging / CARD_MD, card_markdown(data))
    return output_dir / artifact


def load(path: str | os.PathLike) -> Predict:
    """The float predict function of an export folder, with the runtime its format names."""
    path = pathlib.Path(path)
    try:
        format_name = json.loads((path / CARD_JSON).read_text())["format"]
    except (OSError, ValueError, KeyError) as err:
        raise FileNotFoundError(f"{path}: not a drn-export folder ({one_line(err)})") from None
    return FORMATS[format_name].load(path)


def artifact_bytes(path: str | os.PathLike) -> int:
    """Bytes of an artifact: a file, or all files under a folder (a SavedModel)."""
    path = pathlib.Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------
# Command line: drn-export / python -m drn_jax.export
# ---------------------------------------------------------------------------

USAGE = ("drn-export --format={" + "|".join(FORMATS) + "} --output_dir=DIR "
         "(--pretrained=NAME | --workdir=RUN | --checkpoint=STEP_DIR)")


def define_flags(values: flags.FlagValues) -> None:
    """drn-export's flags, in `values` (a private `flags.FlagValues`: no global flags)."""
    flags.DEFINE_enum("format", None, list(FORMATS), "what to export to", flag_values=values)
    flags.DEFINE_string("output_dir", None, "the folder to create for the artifact and its model card",
                        flag_values=values)
    cli.define_model_flags(values, what="exported")
    flags.DEFINE_integer("scale", None, "check that the model upscales by this factor", flag_values=values)
    cli.define_compilation_cache_flag(values)  # used by run(), the console script


def main(argv: Sequence[str] | None = None, *, entry_point: bool = False) -> int:
    """Runs the command line; returns the exit status (0, or 2 for what the user can fix).

    `entry_point`: True from :func:`run`, the console script, which sets up the process
    (:func:`drn_jax.cli.console_command`); in-process callers leave it.
    """
    return cli.console_command("drn-export", define_flags, _export, argv, entry_point=entry_point)


def _export(rest: Sequence[str], values: flags.FlagValues) -> int:
    if rest:
        raise ValueError(f"unexpected argument {rest[0]!r}; usage: {USAGE}")
    if not values.format or not values.output_dir:
        raise ValueError(f"--format and --output_dir are required; usage: {USAGE}")
    source = cli.chosen_model(values)
    loaded = load_for_export(source)
    if values.scale is not None and values.scale != loaded.model.scale:
        raise ValueError(f"{loaded.source}: the model upscales x{loaded.model.scale}, not x{values.scale}")
    artifact = export(loaded, values.format, values.output_dir,
                      pretrained_name=source.location if source.kind == "pretrained" else None)
    print(f"exported {loaded.source} as {values.format}: {artifact} "
          f"({artifact_bytes(artifact) / 1e6:.2f} MB), {artifact.parent / CARD_JSON}, {artifact.parent / CARD_MD}")
    return 0


def run() -> None:
    """Console-script entry point (``drn-export``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(entry_point=True))


if __name__ == "__main__":
    run()
