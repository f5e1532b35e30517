"""eval.py's application: what its flags ask for (`EvalOptions`), their defaults and checks, and
`run`, which loads the method, scores it with `drn_jax.evaluation` and prints the table.

The protocol itself (datasets, `evaluation.evaluate`, `evaluation.write_results`) is the
library; the messages here speak in eval.py's flag names.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable, Sequence

from drn_jax import evaluation, inference, loading, models
from drn_jax.evaluation import BICUBIC, DRN, Results
from drn_jax.rundir import RunDir
from drn_jax.scales import BICUBIC_SCALES

__all__ = ["DEFAULT_VAL", "PRETRAINED_OUTPUT", "EvalOptions", "run"]

PRETRAINED_OUTPUT = "runs/pretrained-{name}/eval"  # eval.py --pretrained's default --output_dir
DEFAULT_VAL = "samples:val"  # the default config's held-out photos


@dataclasses.dataclass
class EvalOptions:
    """What ``eval.py``'s flags ask for; see ``python eval.py --help``.

    The model is named by at most one of `pretrained`, `checkpoint` and `workdir`
    (`loading.model_source`; none: ``runs/default``).
    """

    workdir: str | None = None
    checkpoint: str | None = None
    pretrained: str | None = None
    method: str = "model"  # model | bicubic
    data_dir: str | None = None
    datasets: Sequence[str] = ()
    scale: int | None = None
    output_dir: str | None = None
    save_images: bool = False
    self_ensemble: bool = False
    tile: int | None = None
    tile_overlap: int | None = None
    save_comparison: bool = False
    progress: bool = True

    def model_source(self) -> loading.ModelSource:
        return loading.model_source(pretrained=self.pretrained, checkpoint=self.checkpoint,
                                    workdir=self.workdir)


def _model_method(options: EvalOptions, source: loading.ModelSource
                  ) -> tuple[int, dict[str, inference.ImageUpscaler], dict, object]:
    """(scale, methods, metadata, config) for --method=model."""
    config, model, variables = loading.load_model(source)
    if options.scale is not None and options.scale != model.scale:
        raise ValueError(f"the checkpoint's model upscales x{model.scale}; "
                         f"drop --scale or pass --scale={model.scale}")
    upscaler = inference.make_upscaler(model, variables=variables, tile=options.tile,
                                       tile_overlap=options.tile_overlap,
                                       self_ensemble=options.self_ensemble)
    label = DRN + ("+" if options.self_ensemble else "")
    run_dir = source.run
    meta = {"label": label, "parameters": models.count_params(variables["params"]),
            "workdir": str(run_dir.path) if run_dir else None,
            "checkpoint": source.location if source.kind == "checkpoint" else None,
            "pretrained": source.location if source.kind == "pretrained" else None,
            "self_ensemble": options.self_ensemble, "tile": options.tile,
            "tile_overlap": upscaler.tile_overlap if options.tile else None,
            "receptive_field_radius": inference.receptive_field_radius(model)}
    return model.scale, {BICUBIC: inference.BicubicUpscaler(model.scale), label: upscaler}, meta, config


def _bicubic_method(options: EvalOptions, source: loading.ModelSource
                    ) -> tuple[int, dict[str, inference.ImageUpscaler], dict, object]:
    """(scale, methods, metadata, config) for --method=bicubic: the scale from --scale or the run."""
    if source.kind == "pretrained":
        raise ValueError(f"--pretrained scores a shipped model; drop it for --method={options.method}")
    run_dir = source.run
    config = run_dir.load_config() if run_dir is not None and run_dir.has_config() else None
    scale = options.scale or (int(config.scale) if config is not None else None)
    if scale is None:
        raise ValueError("--scale is required with --method=bicubic when there is no run in "
                         f"{run_dir.path if run_dir else '--workdir'} to take it from")
    return scale, {BICUBIC: inference.BicubicUpscaler(scale)}, {"label": BICUBIC, "parameters": 0}, config


def _datasets(options: EvalOptions, source: loading.ModelSource, config) -> list[evaluation.Dataset]:
    specs = list(options.datasets)
    if not specs:
        if options.data_dir:
            specs = evaluation.find_datasets(options.data_dir)
            if not specs:
                raise FileNotFoundError(f"{options.data_dir}: no <Name>/HR/ dataset folders "
                                        "(e.g. Set5/HR/); check --data_dir")
        elif source.kind == "pretrained":
            # The training run's validation source may not exist on this machine.
            specs = [DEFAULT_VAL]
        else:
            specs = [config.data.val if config is not None else DEFAULT_VAL]
    return [evaluation.open_dataset(spec, options.data_dir) for spec in specs]


def _output_dir(options: EvalOptions, source: loading.ModelSource) -> pathlib.Path:
    if options.output_dir:
        return pathlib.Path(options.output_dir)
    if source.kind == "pretrained":
        return pathlib.Path(PRETRAINED_OUTPUT.format(name=source.location))
    return RunDir(source.run.path).eval_dir


def run(options: EvalOptions, *, print_fn: Callable[[str], None] = print) -> Results:
    """Evaluates as ``eval.py`` does: loads the method, scores, prints the table, writes files.

    Raises ``FileNotFoundError`` (no checkpoint, missing dataset), ``ValueError`` (bad options)
    and :class:`~drn_jax.image_io.ImageReadError`, each with a one-line message.
    """
    if options.method not in ("model", "bicubic"):
        raise ValueError(f"--method={options.method!r} is unknown; use model or bicubic")
    source = options.model_source()
    method = _model_method if options.method == "model" else _bicubic_method
    scale, methods, meta, config = method(options, source)
    if scale not in BICUBIC_SCALES:
        raise ValueError(f"--scale={scale} is not supported; use {', '.join(map(str, BICUBIC_SCALES))}")
    datasets = _datasets(options, source, config)
    output_dir = _output_dir(options, source)
    label = meta["label"]

    start = time.perf_counter()
    results = evaluation.evaluate(methods, datasets, scale, output_dir=output_dir,
                                  save_images=label if options.save_images else None,
                                  save_comparison=options.save_comparison, progress=options.progress)
    seconds = time.perf_counter() - start
    network = methods[label]
    meta.update(compilations=network.compilations, wall_seconds=seconds)
    paths = evaluation.write_results(results, output_dir, label, meta)

    print_fn(evaluation.format_table(results).rstrip())
    count = sum(len(d) for d in datasets)
    line = f"{count} images in {seconds:.1f} s"
    if options.method == "model":
        line += f"; {network.compilations} network compilation{'s' * (network.compilations != 1)}"
    print_fn(f"{line}; results in {paths['json']}")
    return results
