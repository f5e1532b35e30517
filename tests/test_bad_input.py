"""Bad input everywhere: train.py, eval.py and drn-upscale on one battery of broken files.

Every case gets a one-line message naming what and where, and the right outcome: the
file is skipped with a warning where the work can go on; the run stops before compiling
where it cannot. Never a traceback, never a lost or overwritten checkpoint.

The battery (`write_battery`): good PNG/JPEG photos; corrupt and truncated PNG and JPEG, an
empty file and a PNG header declaring 10^10 pixels (unusable); 16-bit, RGBA, greyscale and
CMYK files (converted); a 1x1 image and one smaller than the crop; a non-image file.
Subprocess runs are grouped (one training run over all of it, one eval.py run, one
drn-upscale run); the error cases that stop at once run in this process through the same
`cli.user_errors` boundary the scripts use.
"""

import json
import pathlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from drn_jax import cli, eval_cli, export, pretrained, upscale
from helpers import (TINY, Run, config_flags, error_lines, photo, run_eval, run_python, run_train,
                     subprocess_env)

pytestmark = pytest.mark.slow  # every test starts train.py, eval.py or drn-upscale, or uses the trained run

UNUSABLE = {  # file -> what its message says
    "corrupt.png": "cannot identify image file", "corrupt.jpg": "Truncated File Read",
    "truncated.png": "truncated", "truncated.jpg": "truncated", "empty.png": "cannot identify image file",
    "bomb.png": "header declares 100000x100000 pixels",
}
CONVERTED = {"deep16.png": "16-bit greyscale image reduced to 8 bits", "rgba.png": "alpha channel dropped",
             "cmyk.jpg": "CMYK image converted to RGB"}
USABLE = ["good0.png", "good1.png", "good2.png", "good3.jpg", "grey.png", *CONVERTED]
SMALL = ["tiny1x1.png", "small.png"]  # under the 32-pixel crop; small.png is still >= the scale


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_battery(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(photo(rng, 40, 48, index)).save(folder / f"good{index}.png")
    Image.fromarray(photo(rng, 40, 48, 5)).save(folder / "good3.jpg", quality=95)
    png, jpg = (folder / "good0.png").read_bytes(), (folder / "good3.jpg").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "corrupt.png").write_bytes(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(photo(rng, 40, 48, 6)[..., 0].astype(np.uint16) * 257).save(folder / "deep16.png")
    Image.fromarray(np.dstack([photo(rng, 40, 48, 7), np.full((40, 48), 200, np.uint8)]), "RGBA").save(
        folder / "rgba.png")
    Image.fromarray(photo(rng, 40, 48, 8)[..., 1]).save(folder / "grey.png")
    Image.fromarray(photo(rng, 40, 48, 9)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(photo(rng, 1, 1, 1)).save(folder / "tiny1x1.png")
    Image.fromarray(photo(rng, 20, 20, 2)).save(folder / "small.png")
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 10^10 RGB pixels
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(
        b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
    (folder / "notes.txt").write_text("a non-image file: ignored")
    assert mode_of(folder / "cmyk.jpg") == "CMYK" and mode_of(folder / "deep16.png").startswith("I;16")
    return folder


def mode_of(path):
    with Image.open(path) as image:
        return image.mode


def lines_naming(text: str, path: pathlib.Path) -> list[str]:
    return [line for line in text.splitlines() if str(path) in line]


@pytest.fixture(scope="module")
def battery(tmp_path_factory) -> pathlib.Path:
    return write_battery(tmp_path_factory.mktemp("data") / "Bad" / "HR")


@pytest.fixture(scope="module")
def trained(battery, tmp_path_factory):
    """train.py over the battery: every bad file is reported, the run trains on the rest."""
    root = tmp_path_factory.mktemp("trained")
    val = root / "val"
    val.mkdir()
    Image.fromarray(photo(np.random.default_rng(1), 40, 48, 3)).save(val / "val.png")
    workdir = root / "run"
    overrides = {**TINY, "data.train": f"folder:{battery}", "data.val": f"folder:{val}",
                 "num_train_steps": 2, "checkpoint_every_steps": 2}
    run = Run([f"--workdir={workdir}", *config_flags(overrides)], subprocess_env())
    run.finish()
    return workdir, run


def test_training_skips_each_bad_file_with_one_line(battery, trained):
    workdir, run = trained
    assert run.process.returncode == 0, run.err[-3000:]
    assert "Traceback" not in run.err and not error_lines(run.err)
    for name, reason in UNUSABLE.items():
        lines = lines_naming(run.err, battery / name)
        assert len(lines) == 1 and reason in lines[0] and lines[0].endswith("skipped"), (name, lines)
    for name, what in CONVERTED.items():
        lines = lines_naming(run.err, battery / name)
        assert len(lines) == 1 and what in lines[0], (name, lines)
    for name in ["grey.png", *SMALL, *[n for n in USABLE if n.startswith("good")]]:
        assert not lines_naming(run.err + run.out, battery / name), name
    # Non-image files: one line for the folder, naming an example.
    ignored = [line for line in run.err.splitlines() if "non-image file" in line]
    assert len(ignored) == 1 and str(battery) in ignored[0] and "notes.txt" in ignored[0], ignored
    # Too-small images are counted on the source's summary line (one line for any number).
    assert (f"folder:{battery}: {len(USABLE)} images, {len(SMALL)} smaller than the 32-pixel crop skipped, "
            f"{len(UNUSABLE)} unreadable skipped") in run.out
    assert json.loads((workdir / "summary.json").read_text())["step"] == 2


def test_training_refuses_a_checkpoint_of_another_model(trained):
    workdir, _ = trained
    before = {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*")
              if p.is_file() and "tensorboard" not in p.parts and p.name != "metrics.jsonl"}
    run = Run([f"--workdir={workdir}", "--config.scale=8", "--config.model.features=4",
               *config_flags({"data.hr_patch_size": 32, "data.train": "samples:train", "batch_size": 8})],
              subprocess_env())
    assert run.finish() == 2, run.err[-3000:]
    lines = error_lines(run.err)
    assert lines == [f"error: {workdir} holds checkpoints of another model (scale 4 saved, 8 requested; "
                     "model.features 8 saved, 4 requested; model.modules_per_block 1 saved, 3 requested); "
                     "use a new --workdir or the same config"], run.err
    assert "Traceback" not in run.err and "step " not in run.out
    after = {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*")
             if p.is_file() and "tensorboard" not in p.parts and p.name != "metrics.jsonl"}
    assert after == before  # nothing overwritten: checkpoints and config.json as they were


@pytest.mark.parametrize("flag,message", [
    ("--config.model.featurez=8", "error: --config.model.featurez: the config has no field 'featurez' "
                                  "(did you mean 'features'?); see --helpfull"),
    ("--config.scale=four", "error: flag --config.scale=four: invalid literal for int() with base 10: 'four'; "
                            "see --helpfull"),
])
def test_bad_flags_are_one_line(flag, message, tmp_path):
    result = run_train(f"--workdir={tmp_path}", flag, timeout=120)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [message] and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_wrong_scale_and_missing_folder_stop_before_training(tmp_path):
    env = subprocess_env()
    for flags, message in [
        (["--config.scale=3"], "error: scale=3 is not supported; use one of 2, 4, 8"),
        ([f"--config.data.train=folder:{tmp_path / 'missing'}"], f"{tmp_path / 'missing'} does not exist"),
    ]:
        run = Run([f"--workdir={tmp_path / 'run'}", *flags], env)
        assert run.finish() == 2, run.err[-2000:]
        lines = error_lines(run.err)
        assert len(lines) == 1 and message in lines[0], run.err[-2000:]
        assert "Traceback" not in run.err and not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------------
# eval.py
# ---------------------------------------------------------------------------

def test_eval_skips_each_bad_file_with_one_line(battery, trained, tmp_path):
    workdir, _ = trained
    result = run_eval(f"--workdir={workdir}", f"--data_dir={battery.parent.parent}",
                      f"--output_dir={tmp_path}", env=subprocess_env(devices=1), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not error_lines(result.stderr)
    stderr = result.stderr.replace("\r", "\n")  # the progress bar redraws with carriage returns
    for name, reason in UNUSABLE.items():
        lines = lines_naming(stderr, battery / name)
        assert len(lines) == 1 and reason in lines[0] and lines[0].rstrip().endswith("skipped"), (name, lines)
    tiny = [line for line in stderr.splitlines() if "Bad/tiny1x1.png" in line]
    assert len(tiny) == 1 and "smaller than the scale 4; skipped" in tiny[0], tiny
    # Converted files are scored (greyscale ones on their grey values), with one note each.
    for name, what in CONVERTED.items():
        assert len(lines_naming(stderr, battery / name)) == 1, name
    scored = [row.split(",")[1] for row in (tmp_path / "per_image.csv").read_text().splitlines()[1:]
              if row.split(",")[2] == "DRN"]
    assert sorted(scored) == sorted([*USABLE, "small.png"])
    assert f"Bad ({len(USABLE) + 1})" in result.stdout


def eval_in_process(capsys, **options) -> tuple[int, list[str], str]:
    with pytest.raises(SystemExit) as exit_info, cli.user_errors():
        eval_cli.run(eval_cli.EvalOptions(progress=False, **options))
    err = capsys.readouterr().err
    return exit_info.value.code, error_lines(err), err


def test_eval_errors_that_stop_are_one_line(trained, tmp_path, capsys):
    workdir, _ = trained
    (tmp_path / "Empty" / "HR").mkdir(parents=True)
    (tmp_path / "Empty" / "HR" / "notes.txt").write_text("no images here")
    cases = [
        (dict(workdir=str(workdir), data_dir=str(tmp_path / "missing")), f"{tmp_path / 'missing'}: no such folder"),
        (dict(workdir=str(workdir), data_dir=str(tmp_path / "Empty")), "no <Name>/HR/ dataset folders"),
        (dict(workdir=str(workdir), data_dir=str(tmp_path), datasets=["Empty"]),
         f"{tmp_path / 'Empty' / 'HR'}: holds no PNG, JPEG or BMP images"),
        (dict(workdir=str(workdir), data_dir=str(tmp_path), scale=3),
         "the checkpoint's model upscales x4; drop --scale or pass --scale=4"),
        (dict(method="bicubic", scale=5, workdir=None, data_dir=str(tmp_path)), "--scale=5 is not supported"),
        (dict(workdir=str(tmp_path / "no_run"), data_dir=str(tmp_path)), "no checkpoint in"),
    ]
    for options, message in cases:
        code, lines, err = eval_in_process(capsys, **options)
        assert code == 2 and len(lines) == 1 and message in lines[0], (options, err)


# ---------------------------------------------------------------------------
# drn-upscale
# ---------------------------------------------------------------------------

def test_upscaler_skips_each_bad_file_with_one_line(battery, trained, tmp_path):
    workdir, _ = trained
    result = run_python("-m", "drn_jax.upscale", battery, f"--workdir={workdir}", f"--output_dir={tmp_path}",
                        "--no_progress", env=subprocess_env(devices=1), timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]  # some files failed
    assert "Traceback" not in result.stderr
    for name in UNUSABLE:
        lines = [line for line in result.stderr.splitlines() if line.startswith(f"error: {battery / name}:")]
        assert len(lines) == 1 and lines[0].endswith("skipped"), (name, result.stderr)
    # drn-upscale keeps 16 bits and alpha (no message); CMYK is converted with a note.
    for name in CONVERTED:
        lines = lines_naming(result.stderr, battery / name)
        assert lines == ([f"note: {battery / name}: CMYK image converted to RGB"] if name == "cmyk.jpg" else []), (
            name, lines)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"{pathlib.Path(n).stem}_x4.png" for n in [*USABLE, *SMALL])
    assert Image.open(tmp_path / "tiny1x1_x4.png").size == (4, 4)
    assert f"upscaled {len(USABLE) + len(SMALL)} of {len(USABLE) + len(SMALL) + len(UNUSABLE)} images" in (
        result.stderr)


def test_upscaler_errors_that_stop_are_one_line(trained, battery, tmp_path, capsys):
    workdir, _ = trained
    no_images = tmp_path / "no_images"
    no_images.mkdir()
    (no_images / "notes.txt").write_text("no images here")
    cases = [
        ([str(no_images)], f"no images in {no_images}", 2),
        ([str(battery / "good0.png"), "--scale=2"], "the checkpoint's model upscales x4; drop --scale", 2),
        ([str(battery / "good0.png"), f"--workdir={tmp_path / 'no_run'}"], "no checkpoint in", 2),
        ([str(tmp_path / "missing.png")], f"{tmp_path / 'missing.png'}: no such file; skipped", 1),
    ]
    for args, message, expected in cases:
        argv = [*args, f"--output_dir={tmp_path / 'out'}", "--no_progress"]
        if not any(a.startswith("--workdir") for a in args):
            argv.append(f"--workdir={workdir}")
        try:
            code = upscale.main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert code == expected and len(lines) == 1 and message in lines[0], (args, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("main, name, flag", [(upscale.main, "Upscales image files", "--tile"),
                                              (export.main, "Deploying a trained DRN", "--format"),
                                              (pretrained.main, "", "--name")])
@pytest.mark.parametrize("arg", ["--help", "-h", "--helpfull"])
def test_console_scripts_answer_help(main, name, flag, arg, capsys):
    """A console script's private flags lack absl.app's --help: cli.parse_flags answers it."""
    with pytest.raises(SystemExit) as stop:
        main([arg])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(name) and "usage: " in out and f"  {flag}:" in out
