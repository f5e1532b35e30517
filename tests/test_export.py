"""drn-export: each format's artifact gives drn_jax's own output, and bad input leaves nothing behind.

The shipped ``x4`` model is exported once per format (module fixture). Its reference is drn_jax's
own inference (:class:`drn_jax.inference.ModelRunner`, the default ``conv="auto"``) on Set5 LR
images made by the evaluation protocol (:func:`drn_jax.evaluation.make_lr`), cropped to two
small LR sizes, one of them odd. Every artifact has symbolic batch, height and width, so both
sizes (and the batch of five) are ones it was not traced with.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from drn_jax import evaluation, export, files, inference, loading, metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
SCALE = 4
SIZES = ((24, 24), (17, 23))  # LR (height, width)
MAX_LEVELS = 1  # 8-bit levels, after rounding
MAX_PSNR_DB = 0.01


@pytest.fixture(scope="module")
def set5(benchmark_dir) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """``{(h, w): (LR uint8 (5, h, w, 3), HR uint8 (5, 4h, 4w, 3))}``: centre crops of Set5's pairs."""
    pairs = [evaluation.make_lr(evaluation.read_benchmark_image(path), SCALE)
             for path in sorted((benchmark_dir / "Set5" / "HR").glob("*.png"))]
    assert len(pairs) == 5
    crops = {}
    for height, width in SIZES:
        lrs, hrs = [], []
        for hr, lr in pairs:
            top, left = (lr.shape[0] - height) // 2, (lr.shape[1] - width) // 2
            lrs.append(lr[top: top + height, left: left + width])
            hrs.append(hr[SCALE * top: SCALE * (top + height), SCALE * left: SCALE * (left + width)])
        crops[height, width] = np.stack(lrs), np.stack(hrs)
    return crops


def _float(lr: np.ndarray) -> np.ndarray:
    return lr.astype(np.float32) / np.float32(255.0)  # as drn_jax.inference feeds the network


@pytest.fixture(scope="module")
def reference(set5) -> dict[tuple[int, int], np.ndarray]:
    """drn_jax's own uint8 output of each crop size (the model as eval.py and drn-upscale load it)."""
    loaded = loading.load_model(pretrained="x4")
    runner = inference.ModelRunner(loaded.model)
    return {size: inference.to_uint8(runner(loaded.variables, _float(lr))) for size, (lr, _) in set5.items()}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Each format's export folder of the shipped x4 model."""
    loaded = export.load_for_export(pretrained="x4")
    root = tmp_path_factory.mktemp("exports")
    folders = {}
    for name in export.FORMATS:
        artifact = export.export(loaded, name, root / name, pretrained_name="x4")
        assert artifact.exists() and artifact.parent == root / name
        folders[name] = root / name
    return folders


def _psnr(sr: np.ndarray, hr: np.ndarray) -> np.ndarray:
    return np.array([metrics.score_y_host(s, h, SCALE)["psnr"] for s, h in zip(sr, hr)])


def _check_parity(got: np.ndarray, want: np.ndarray, hr: np.ndarray, what: str) -> tuple[int, float]:
    assert got.shape == want.shape and got.dtype == np.uint8, (what, got.shape, got.dtype)
    levels = int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max())
    psnr = float(np.abs(_psnr(got, hr) - _psnr(want, hr)).max())
    print(f"{what}: largest difference {levels} levels, PSNR difference {psnr:.5f} dB")
    assert levels <= MAX_LEVELS, what
    assert psnr <= MAX_PSNR_DB, what
    return levels, psnr


@pytest.mark.parametrize("name", list(export.FORMATS))
def test_each_format_equals_drn_jax_on_set5(name, exports, set5, reference):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        predict = export.load(exports[name])
    for size, (lr, hr) in set5.items():
        output = predict(_float(lr))
        assert output.dtype == np.float32
        _check_parity(inference.to_uint8(output), reference[size], hr, f"{name} {size}")


def test_the_uint8_signatures_round_as_drn_jax(exports, set5, reference):
    import tensorflow as tf

    lr, hr = set5[SIZES[1]]
    serving = tf.saved_model.load(str(exports["saved_model"] / "saved_model")).signatures["serving_default"]
    got = next(iter(serving(image=tf.constant(lr)).values())).numpy()
    _check_parity(got, reference[SIZES[1]], hr, "saved_model uint8")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(exports["tflite"] / "model.tflite"))
    runner = interpreter.get_signature_runner("serving_default")
    got = next(iter(runner(image=lr).values()))
    _check_parity(got, reference[SIZES[1]], hr, "tflite uint8")


def _every_level() -> np.ndarray:
    """uint8 (1, 16, 16, 3): each of the 256 levels once per channel (in a different order in each)."""
    levels = np.arange(256, dtype=np.uint8)
    return np.stack([levels, levels[::-1], np.roll(levels, 85)], axis=-1).reshape(1, 16, 16, 3)


def test_the_uint8_signatures_are_their_float_signature_rounded_by_drn_jax(exports, set5):
    """Bit for bit: within one artifact the uint8 graph is the float graph between drn_jax's
    uint8 -> float (``x / 255`` in float32) and ``inference.to_uint8``. (MAX_LEVELS is for a
    different convolution, drn_jax's Winograd; here there is nothing to tolerate.)"""
    import tensorflow as tf

    inputs = [lr for lr, _ in set5.values()] + [_every_level()]
    model = tf.saved_model.load(str(exports["saved_model"] / "saved_model"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(exports["tflite"] / "model.tflite"))
    runners = {
        "saved_model": {key: (lambda x, s=model.signatures[key]: next(iter(s(image=tf.constant(x)).values())).numpy())
                        for key in ("serving_default", "serving_float")},
        "tflite": {key: (lambda x, r=interpreter.get_signature_runner(key): next(iter(r(image=x).values())))
                   for key in ("serving_default", "serving_float")},
    }
    for name, signatures in runners.items():
        for lr in inputs:
            got = signatures["serving_default"](lr)
            want = inference.to_uint8(signatures["serving_float"](_float(lr)))
            assert got.dtype == np.uint8 and got.shape == want.shape, (name, got.dtype, got.shape)
            differ = int(np.count_nonzero(got != want))
            assert differ == 0, f"{name} {lr.shape}: {differ} of {got.size} values differ from serving_float's"


def test_artifacts_have_symbolic_batch_height_and_width(exports):
    import jax
    import onnxruntime
    import tensorflow as tf

    exported = jax.export.deserialize(bytearray((exports["stablehlo"] / "model.jax_export").read_bytes()))
    assert [str(d) for d in exported.in_avals[0].shape] == ["b", "h", "w", "3"]
    assert [str(d) for d in exported.out_avals[0].shape] == ["b", "4*h", "4*w", "3"]
    assert set(export.PLATFORMS) == set(exported.platforms)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(exports["tflite"] / "model.tflite"))
    for key in ("serving_default", "serving_float"):
        inputs = interpreter.get_signature_runner(key).get_input_details()
        assert inputs["image"]["shape_signature"].tolist() == [-1, -1, -1, 3], key

    session = onnxruntime.InferenceSession(str(exports["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["B", "H", "W", 3]
    assert session.get_outputs()[0].shape == ["B", "4*H", "4*W", 3]


STABLEHLO_RUNNER = '''
import sys
sys.modules["drn_jax"] = None  # the artifact must need JAX alone
import jax, numpy as np
artifact, source, target = sys.argv[1:]
exported = jax.export.deserialize(bytearray(open(artifact, "rb").read()))
np.save(target, np.asarray(exported.call(np.load(source))))
try:
    import drn_jax
    raise SystemExit("drn_jax was importable")
except ImportError:
    pass
'''


@pytest.mark.slow
def test_stablehlo_runs_where_drn_jax_cannot_be_imported(exports, set5, reference, tmp_path):
    lr, hr = set5[SIZES[1]]
    np.save(tmp_path / "lr.npy", _float(lr))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", STABLEHLO_RUNNER, str(exports["stablehlo"] / "model.jax_export"),
                             str(tmp_path / "lr.npy"), str(tmp_path / "sr.npy")],
                            cwd=tmp_path, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    output = np.load(tmp_path / "sr.npy")
    _check_parity(inference.to_uint8(output), reference[SIZES[1]], hr, "stablehlo, without drn_jax")


def test_model_cards_describe_the_export(exports):
    for name, folder in exports.items():
        card = json.loads((folder / export.CARD_JSON).read_text())
        assert card["format"] == name and card["scale"] == SCALE and card["convolution"] == "xla"
        assert (folder / card["artifact"]).exists()
        assert card["input"]["dynamic"] == ["batch", "height", "width"]
        assert card["pretrained"]["name"] == "x4"
        assert card["pretrained"]["card"]["scores"]["Set5"]["psnr"] > 30  # the zoo card, copied
        text = (folder / export.CARD_MD).read_text()
        assert f"exported as `{name}`" in text and "Pretrained DRN `x4`" in text
        assert str(REPO) not in text and str(folder) not in text  # no machine paths
        assert sorted(p.name for p in folder.iterdir()) == sorted([card["artifact"], export.CARD_JSON, export.CARD_MD])


# ---------------------------------------------------------------------------
# The command line and bad input
# ---------------------------------------------------------------------------

def _no_leftovers(folder: pathlib.Path) -> list[str]:
    return [p.name for p in folder.iterdir() if files.PARTIAL_SUFFIX in p.name or p.name.startswith(".")]


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_cli_exports_and_replaces_an_earlier_export(tmp_path, capsys):
    out = tmp_path / "x4_hlo"
    for _ in range(2):  # the second run replaces the first export whole
        assert export.main(["--pretrained=x4", "--format=stablehlo", f"--output_dir={out}", "--scale=4"]) == 0
        assert "exported x4" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["model.jax_export", "model_card.json", "model_card.md"]
    assert _no_leftovers(tmp_path) == []


def test_wrong_scale_names_the_model_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert export.main(["--pretrained=x4", "--format=stablehlo", f"--output_dir={out}", "--scale=8"]) == 2
    assert "x4: the model upscales x4, not x8" in _error_line(capsys)
    assert not out.exists() and _no_leftovers(tmp_path) == []


def test_missing_workdir_names_it(tmp_path, capsys):
    missing, out = tmp_path / "no_such_run", tmp_path / "out"
    assert export.main([f"--workdir={missing}", "--format=onnx", f"--output_dir={out}"]) == 2
    assert str(missing) in _error_line(capsys)
    assert not out.exists() and _no_leftovers(tmp_path) == []


def test_unknown_format_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        export.main(["--pretrained=x4", "--format=coreml", f"--output_dir={tmp_path / 'out'}"])
    assert stop.value.code == 2
    line = _error_line(capsys)
    assert "--format" in line and all(name in line for name in export.FORMATS)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_dir_names_it(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    assert export.main(["--pretrained=x4", "--format=stablehlo", f"--output_dir={out}"]) == 2
    assert str(blocker) in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_folder_that_is_not_an_export_is_kept(tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "mine.png").write_bytes(b"keep me")
    assert export.main(["--pretrained=x4", "--format=stablehlo", f"--output_dir={out}"]) == 2
    assert str(out) in _error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["mine.png"] and _no_leftovers(tmp_path) == []


def test_a_failing_writer_leaves_no_partial_artifact(tmp_path, monkeypatch):
    def half_then_fail(loaded, folder):
        (folder / "model.bin").write_bytes(b"half")
        raise OSError(f"{folder / 'model.bin'}: No space left on device")

    monkeypatch.setitem(export.FORMATS, "stablehlo",
                        export.Format(half_then_fail, export.load_stablehlo, "test"))
    loaded = export.load_for_export(pretrained="x4")
    with pytest.raises(OSError, match="No space left"):
        export.export(loaded, "stablehlo", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_the_winograd_model(tmp_path):
    with pytest.raises(ValueError, match="conv='xla'"):
        # conv="auto" now picks XLA's convolution for this F 32 model's inference on the CPU:
        # ask for the Winograd kernels by name.
        export.export(loading.load_model(pretrained="x4", conv="winograd"), "onnx", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# Packaging
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_wheel_ships_the_pretrained_models_and_the_console_scripts(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "drn_jax", source / "drn_jax", ignore=shutil.ignore_patterns("__pycache__"))
    # No build isolation: the venv's setuptools builds it, offline, in seconds.
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(tmp_path / "dist")], cwd=source, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("drn_jax-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    for model in ("x4", "x8"):
        assert {f"drn_jax/pretrained/{model}.{ext}" for ext in ("json", "md", "msgpack")} <= names
    assert "drn_jax/export.py" in names
    assert "drn-upscale = drn_jax.upscale:run" in scripts
    assert "drn-export = drn_jax.export:run" in scripts

    # Installed (no dependencies: the venv has them) into a fresh folder, away from the sources:
    # the installed package loads its shipped models, and the console scripts are there.
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                             str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (site / "bin" / "drn-export").is_file() and (site / "bin" / "drn-upscale").is_file()
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    listed = subprocess.run([sys.executable, "-c", "import drn_jax, runpy, sys; print(drn_jax.__file__); "
                             "sys.argv = ['pretrained', 'list']; runpy.run_module('drn_jax.pretrained', run_name='__main__')"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert listed.stdout.splitlines()[0].startswith(str(site))
    assert "x4" in listed.stdout and "x8" in listed.stdout
