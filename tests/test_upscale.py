"""The drn-upscale command: outputs, bad inputs as one-line messages, exit codes."""

import json
import os
import pathlib
import struct
import subprocess
import sys
import zlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from drn_jax import loading, upscale
from helpers import tiny_model

REPO = pathlib.Path(__file__).resolve().parents[1]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_inputs(folder: pathlib.Path) -> dict[str, str]:
    """Good, convertible and unusable images; returns name -> expected outcome."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "good.png")
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "random.png").write_bytes(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
    Image.fromarray(rng.integers(0, 65536, (18, 22)).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rng.integers(0, 256, (21, 17, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(pixels[..., 1]).save(folder / "grey.png")
    # A valid PNG header declaring 100000 x 100000 RGB pixels (a decompression bomb).
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunks = [png_chunk(b"IHDR", header), png_chunk(b"IDAT", zlib.compress(b"\0" * 64)),
              png_chunk(b"IEND", b"")]
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks))
    # 16-bit, alpha and grey are kept (tests/test_upscale_pictures.py checks their values).
    return {"good": "ok", "deep16": "ok", "alpha": "ok", "grey": "ok",
            "truncated": "error", "random": "error", "bomb": "error"}


OUTPUT_MODES = {"deep16": ("I;16", "I"), "alpha": ("RGBA",), "grey": ("L",)}


@pytest.fixture
def tiny_checkpoint(monkeypatch):
    """`load_model` returning a small random DRN, as a checkpoint would."""
    model, variables = tiny_model()
    config = ml_collections.ConfigDict({"scale": 4})
    monkeypatch.setattr(loading, "load_model", lambda *source, **kwargs: (config, model, variables))


def check_outcomes(stderr: str, inputs: pathlib.Path, outputs: pathlib.Path, expected: dict[str, str]):
    lines = stderr.splitlines()
    for name, outcome in expected.items():
        path = inputs / f"{name}.png"
        if outcome == "ok":
            assert not any(str(path) in line for line in lines), stderr
        else:
            mentions = [line for line in lines if line.startswith(f"{outcome}: {path}:")]
            assert len(mentions) == 1, (name, stderr)  # one line, naming the file
        written = outputs / f"{name}_x4.png"
        assert written.exists() == (outcome != "error"), name
        if written.exists():
            source = Image.open(path)
            assert Image.open(written).size == (source.width * 4, source.height * 4)
            assert Image.open(written).mode in OUTPUT_MODES.get(name, ("RGB",))
    assert "Traceback" not in stderr


def test_model_upscales_good_files_and_reports_bad_ones(tmp_path, tiny_checkpoint, capsys):
    expected = write_inputs(tmp_path / "in")
    status = upscale.main([str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
                           "--tile", "16", "--no_progress"])
    captured = capsys.readouterr()
    assert status == 1
    check_outcomes(captured.err, tmp_path / "in", tmp_path / "out", expected)
    assert "upscaled 4 of 7 images x4" in captured.err
    assert "header declares 100000x100000" in captured.err or "decompression bomb" in captured.err


def test_all_good_exits_zero_and_names_do_not_collide(tmp_path, tiny_checkpoint, capsys):
    pixels = np.random.default_rng(1).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(pixels).save(tmp_path / sub / "same.png")
    status = upscale.main([str(tmp_path / "a"), str(tmp_path / "b" / "same.png"),
                           "--output_dir", str(tmp_path / "out"), "--no_progress", "--self_ensemble"])
    assert status == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["same_x4.png", "same_x4_2.png"]


def test_timings_report_the_phases_in_one_json_line(tmp_path, tiny_checkpoint, capsys):
    import jax

    from drn_jax import inference

    pixels = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    listeners = list(jax._src.monitoring._event_duration_secs_listeners)
    status = upscale.main([str(tmp_path / "photo.png"), "--output_dir", str(tmp_path / "out"),
                           "--no_progress", "--tile=20", "--timings"])
    err = capsys.readouterr().err
    assert status == 0, err
    (line,) = [line for line in err.splitlines() if line.startswith("{")]
    report = json.loads(line)
    assert set(report["timings"]) == {"load", "compile", "read", "network", "tiles", "write"}
    assert all(value >= 0 for value in report["timings"].values()), report
    assert report["images"] == 1
    assert sum(report["timings"].values()) <= report["main_s"] + 0.01
    # The network saw the tiles planned for a 40×30 image at --tile=20, a batch over the devices.
    plan = inference.plan_tiles(40, 30, 20, inference.receptive_field_radius(tiny_model()[0]))
    assert report["network_shapes"] == [[jax.local_device_count(), *plan.shape, 3]]  # a tile per device
    # The compilation listener is gone again, and without --timings nothing is printed.
    assert jax._src.monitoring._event_duration_secs_listeners == listeners
    upscale.main([str(tmp_path / "photo.png"), "--output_dir", str(tmp_path / "out"), "--no_progress",
                  "--overwrite"])
    assert "timings" not in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_exit_codes(tmp_path):
    """The real console: bad files exit 1 without a traceback; usage errors exit 2."""
    expected = write_inputs(tmp_path / "in")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "drn_jax.upscale", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    result = run(str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"), "--method=bicubic",
                 "--scale=4", "--no_progress")
    assert result.returncode == 1, result.stderr
    check_outcomes(result.stderr, tmp_path / "in", tmp_path / "out", expected)

    no_checkpoint = run(str(tmp_path / "in" / "good.png"), "--output_dir", str(tmp_path / "o2"),
                        "--workdir", str(tmp_path / "none"))
    assert no_checkpoint.returncode == 2
    assert f"no checkpoint in {tmp_path / 'none'}" in no_checkpoint.stderr
    assert "Traceback" not in no_checkpoint.stderr
    assert run("--output_dir", str(tmp_path / "o3")).returncode == 2  # no INPUT
    assert run(str(tmp_path / "in"), "--output_dir", str(tmp_path / "o4"), "--tile=-3").returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(str(empty), "--output_dir", str(tmp_path / "o5")).returncode == 2
