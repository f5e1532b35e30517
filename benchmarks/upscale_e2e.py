#!/usr/bin/env python3
"""The upscaler end to end: whole ``drn-upscale --pretrained x4`` processes on BSD200 photos.

    python benchmarks/upscale_e2e.py                                    # JAX only
    python benchmarks/upscale_e2e.py --torch_python=.venv-torch/bin/python   # + the PyTorch peer
    python benchmarks/upscale_e2e.py --note="training paused"           # recorded in the JSON
    python benchmarks/upscale_e2e.py --output=FILE                      # the JSON elsewhere

Wall time of separate processes, each started as a user would start it, in this order:

1. ``import``: ``python -c "import drn_jax.upscale"``, the imports alone.
2. ``first``: ``drn-upscale PHOTO --pretrained x4`` with an empty compilation cache.
3. ``second``: the same command again, the cache now warm.
4. ``folder``: ``drn-upscale FOLDER --pretrained x4`` on ``--folder_size`` BSD200 photos of
   481×321 or 321×481 (the cache warm for the first orientation only if the photo had it).
   ``png``: the second run's output written again at zlib levels 1 and 6, in this process.
5. ``warm``: one process that builds drn-upscale's upscaler and times its network calls on the
   photo and on its transpose once warm (the median of ``--repeats``): the network's warm time
   per photo of each orientation, whose sum over the folder is the folder's target basis.
6. ``torch``: with ``--torch_python``, a plain PyTorch script (written by this benchmark) that
   imports ``../shared/peers/torch_drn.py``'s DRN (F 32, R 6, x4, random weights), reads the
   photo, runs one forward pass and writes the PNG, reporting its phases; then ``--pairs``
   times the second drn-upscale run and the script in turn, for a ratio under the same load.

The folder's target basis is its own network calls (``--timings``' ``network``, compilations
taken out: the sum of the warm network times of its photos, in the same process); the warm
worker's times × the photo count are reported beside it.

drn-upscale runs with ``--timings``, which reports its phases (load, compile, read, network,
tiles, write; :mod:`drn_jax.upscale`); the rest of a process's wall time is the interpreter,
the imports and the exit (``startup_and_exit_s``). The compilation cache is a fresh temporary
folder (``DRN_JAX_COMPILATION_CACHE``, and ``JAX_COMPILATION_CACHE_DIR`` for JAX itself), so
nothing from earlier runs is reused. Each drn-upscale process runs on the CPU with the
environment it gets (``JAX_PLATFORMS=cpu`` is set when not given).

One JSON object (``--output``, default ``benchmarks/results/upscale_e2e.json``) and a Markdown
table on stdout, with the load average around each run; compare only within one run. The warm
worker (5.) is this script started again with ``--warm_worker=PHOTO``, an internal flag.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drn_jax import recipes  # noqa: E402  (after the path is set; light: no JAX)

BSD200 = recipes.shared_data_dir() / "train" / "BSD200"
TORCH_PEER = REPO.parent / "shared" / "peers" / "torch_drn.py"  # never a dependency
PHOTO_SHAPES = ((481, 321), (321, 481))  # PIL sizes (width, height) of BSD200's photos
TARGETS = {"second_s": 4.5, "first_s": 7.0, "folder_over_network": 1.3}

_PHOTO = flags.DEFINE_string("photo", None, "default: the first 481×321 BSD200 photo")
_FOLDER_SIZE = flags.DEFINE_integer("folder_size", 20, "BSD200 photos in the folder run")
_REPEATS = flags.DEFINE_integer("repeats", 3, "warm network calls per orientation")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", None, "a Python with torch (e.g. .venv-torch/bin/python)")
_NOTE = flags.DEFINE_string("note", "", "recorded in the JSON (e.g. whether the machine was quiet)")
_OUTPUT = flags.DEFINE_string("output", str(REPO / "benchmarks" / "results" / "upscale_e2e.json"),
                              "the JSON file written")
_SKIP = flags.DEFINE_list("skip", [], "comma-separated cases to skip (folder, torch, ...)")
_PAIRS = flags.DEFINE_integer("pairs", 3, "with --torch_python: second drn-upscale and torch script run in turn "
                              "this often")
_WARM_WORKER = flags.DEFINE_string("warm_worker", None, "internal: run as the warm worker on this photo (the "
                                   "benchmark starts itself so)")

TORCH_SCRIPT = textwrap.dedent('''\
    import json, sys, time
    start = time.perf_counter()
    import importlib.util
    import numpy as np
    import torch
    from PIL import Image
    imported = time.perf_counter()
    peer_path, photo, output, compress_level = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    spec = importlib.util.spec_from_file_location("torch_drn", peer_path)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = peer.DRN(4, 32, 6).to(memory_format=torch.channels_last).eval()
    built = time.perf_counter()
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(255)
    x = x.contiguous(memory_format=torch.channels_last)
    read = time.perf_counter()
    with torch.inference_mode():
        y = model(x)[-1]
    forward = time.perf_counter()
    out = (y[0].clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(out).save(output, format="PNG", compress_level=compress_level)
    written = time.perf_counter()
    print(json.dumps({"timings": {"import": imported - start, "build": built - imported,
                                  "read": read - built, "forward": forward - read,
                                  "write": written - forward}, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))
    ''')


def photos(count: int) -> list[pathlib.Path]:
    """The first `count` BSD200 photos (sorted by name) of 481×321 or 321×481 pixels."""
    from PIL import Image

    chosen = []
    for path in sorted(BSD200.iterdir()):
        with Image.open(path) as image:
            if image.size in PHOTO_SHAPES:
                chosen.append(path)
        if len(chosen) == count:
            return chosen
    raise SystemExit(f"{BSD200}: fewer than {count} photos of 481×321 or 321×481")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], env: dict, label: str) -> dict:
    """Runs `command`; wall and CPU seconds, its --timings JSON (if printed), the load average."""
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_before
    if done.returncode:
        raise SystemExit(f"{label}: exit status {done.returncode}\n{done.stderr[-3000:]}")
    report = None
    for line in (done.stderr + "\n" + done.stdout).splitlines():
        if line.startswith("{") and '"timings"' in line:
            report = json.loads(line)
    result = {"wall_s": wall, "cpu_s": cpu, "load_average_before": load_before,
              "load_average_after": os.getloadavg()[0]}
    if report is not None:
        result.update(report)
        if "main_s" in report:
            result["startup_and_exit_s"] = wall - report["main_s"]
    return result


def png_levels(path: pathlib.Path, levels: tuple[int, ...] = (1, 6)) -> dict:
    """Seconds (best of 2) and bytes of writing the upscaled photo as PNG at each zlib level
    (6 is Pillow's default; drn-upscale writes ``image_io.PNG_COMPRESS_LEVEL``)."""
    import io

    from PIL import Image

    with Image.open(path) as image:
        image.load()
        result = {}
        for level in levels:
            best = float("inf")
            for _ in range(2):
                buffer = io.BytesIO()
                start = time.perf_counter()
                image.save(buffer, format="PNG", compress_level=level)
                best = min(best, time.perf_counter() - start)
            result[str(level)] = {"s": best, "bytes": len(buffer.getvalue())}
    return result


def warm_worker(photo: str, repeats: int) -> None:
    """Inside a child: drn-upscale's upscaler on the photo and its transpose, warm network seconds."""
    import jax
    import numpy as np

    from drn_jax import image_io, loading
    from drn_jax import upscale as upscale_cli

    picture = image_io.read_picture(photo)
    loaded = loading.load_model(pretrained="x4")
    from drn_jax import inference

    upscaler = inference.make_upscaler(loaded.model, variables=loaded.variables, tile=upscale_cli.DEFAULT_TILE,
                                       devices=jax.local_devices())
    result = {"conv": loaded.model.conv, "features": loaded.model.features}
    for name, image in (("landscape", picture.colour), ("portrait", np.swapaxes(picture.colour, 0, 1))):
        rgb = np.ascontiguousarray(image)
        upscaler.upscale_to(rgb, picture.bits)  # compiles this shape
        times = []
        for _ in range(repeats):
            before = upscaler.network_seconds
            upscaler.upscale_to(rgb, picture.bits)
            times.append(upscaler.network_seconds - before)
        plan = upscaler.plan(*rgb.shape[:2])
        result[name] = {"lr_shape": list(rgb.shape[:2]), "network_s": statistics.median(times),
                        "tiles": plan.count, "tile_shape": list(plan.shape),
                        "work_ratio": plan.work / (rgb.shape[0] * rgb.shape[1])}
    print(json.dumps({"warm": result}))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _WARM_WORKER.value:
        return warm_worker(_WARM_WORKER.value, _REPEATS.value)

    skip = set(filter(None, _SKIP.value))
    chosen = photos(_FOLDER_SIZE.value)
    photo = pathlib.Path(_PHOTO.value) if _PHOTO.value else next(
        p for p in chosen if _size(p) == PHOTO_SHAPES[0])
    python = sys.executable
    upscaler = str(pathlib.Path(python).with_name("drn-upscale"))
    work = pathlib.Path(tempfile.mkdtemp(prefix="drn-upscale-e2e-"))
    try:
        cache = work / "xla-cache"
        folder = work / "photos"
        folder.mkdir()
        for path in chosen:
            shutil.copy(path, folder / path.name)
        env = dict(os.environ, DRN_JAX_COMPILATION_CACHE=str(cache), JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", TF_CPP_MIN_LOG_LEVEL="2")
        env.setdefault("JAX_PLATFORMS", "cpu")
        command = [upscaler, str(photo), "--pretrained", "x4", "--output_dir", str(work / "out"),
                   "--overwrite", "--no_progress", "--timings"]
        runs: dict[str, dict] = {}
        runs["import"] = _timed([python, "-c", "import drn_jax.upscale"], env, "import")
        runs["first"] = _timed(command, env, "first")
        runs["second"] = _timed(command, env, "second")
        if "png" not in skip:
            runs["png"] = png_levels(work / "out" / f"{photo.stem}_x4.png")
        if "folder" not in skip:
            runs["folder"] = _timed([upscaler, str(folder), "--pretrained", "x4", "--output_dir",
                                     str(work / "out_folder"), "--overwrite", "--no_progress", "--timings"],
                                    env, "folder")
        if "warm" not in skip:
            done = subprocess.run([python, __file__, f"--warm_worker={photo}", f"--repeats={_REPEATS.value}"],
                                  env=env, capture_output=True, text=True, check=True)
            runs["warm"] = json.loads(done.stdout.strip().splitlines()[-1])["warm"]
        if _TORCH_PYTHON.value and "torch" not in skip:
            from drn_jax import image_io

            script = work / "torch_upscale.py"
            script.write_text(TORCH_SCRIPT)
            torch_command = [_TORCH_PYTHON.value, str(script), str(TORCH_PEER), str(photo),
                             str(work / "torch.png"), str(image_io.PNG_COMPRESS_LEVEL)]
            runs["torch"] = _timed(torch_command, env, "torch")
            # In turn, so that load from elsewhere falls on both alike.
            pairs = [(_timed(command, env, "second"), _timed(torch_command, env, "torch"))
                     for _ in range(_PAIRS.value)]
            runs["pairs"] = [{"drn_upscale_s": a["wall_s"], "torch_s": b["wall_s"],
                              "drn_upscale_cpu_s": a["cpu_s"], "torch_cpu_s": b["cpu_s"],
                              "ratio": a["wall_s"] / b["wall_s"]} for a, b in pairs]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {"photo": photo.name, "lr_size": list(_size(photo)[::-1]), "folder_size": len(chosen),
              "note": _NOTE.value, "load_average_start": runs["import"]["load_average_before"],
              "cpu_count": os.cpu_count(), "runs": runs, "targets": TARGETS}
    result["checks"] = _checks(result, chosen)
    out = pathlib.Path(_OUTPUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"\nJSON: {out}")


def _size(path: pathlib.Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _checks(result: dict, chosen: list[pathlib.Path]) -> dict:
    runs = result["runs"]
    checks = {"second_s": runs["second"]["wall_s"], "first_s": runs["first"]["wall_s"]}
    if "folder" in runs:
        # The folder's own network calls, compilations taken out: the sum of its warm network
        # times, measured in the same process under the same load as its wall time.
        network_sum = runs["folder"]["timings"]["network"]
        checks["folder_network_sum_s"] = network_sum
        checks["folder_over_network"] = runs["folder"]["wall_s"] / network_sum
    if "folder" in runs and "warm" in runs:
        warm = runs["warm"]
        separate = sum(warm["landscape" if _size(p) == PHOTO_SHAPES[0] else "portrait"]["network_s"]
                       for p in chosen)
        checks["folder_warm_worker_sum_s"] = separate
        checks["folder_over_warm_worker"] = runs["folder"]["wall_s"] / separate
    if "pairs" in runs:
        checks["second_over_torch_median"] = statistics.median(pair["ratio"] for pair in runs["pairs"])
    checks["met"] = {key: checks[key] <= limit for key, limit in TARGETS.items() if key in checks}
    return checks


def table(result: dict) -> str:
    runs, checks = result["runs"], result["checks"]
    phases = ("load", "compile", "read", "network", "tiles", "write")
    lines = ["| run | wall | CPU | start-up + imports + exit | " + " | ".join(phases) + " | target |",
             "|---|---|---|---|" + "---|" * len(phases) + "---|"]
    for name in ("first", "second", "folder"):
        if name not in runs:
            continue
        run = runs[name]
        timings = run.get("timings", {})
        target = {"first": f"≤ {TARGETS['first_s']} s", "second": f"≤ {TARGETS['second_s']} s",
                  "folder": f"≤ {TARGETS['folder_over_network']}× network sum"}[name]
        key = {"first": "first_s", "second": "second_s", "folder": "folder_over_network"}[name]
        if key in checks["met"]:
            target += " (met)" if checks["met"][key] else " (missed)"
        lines.append(f"| {name} | {run['wall_s']:.2f} s | {run['cpu_s']:.2f} s | {run.get('startup_and_exit_s', 0):.2f} s | "
                     + " | ".join(f"{timings.get(p, 0):.2f}" for p in phases) + f" | {target} |")
    lines.append(f"\nimports alone (python -c 'import drn_jax.upscale'): {runs['import']['wall_s']:.2f} s")
    if "warm" in runs:
        warm = runs["warm"]
        for name in ("landscape", "portrait"):
            entry = warm[name]
            lines.append(f"warm network, {name} {entry['lr_shape'][0]}×{entry['lr_shape'][1]}: "
                         f"{entry['network_s']:.2f} s ({entry['tiles']} tiles of {entry['tile_shape'][0]}×"
                         f"{entry['tile_shape'][1]}, {entry['work_ratio']:.2f}× the pixels; conv={warm['conv']})")
    if "folder_network_sum_s" in checks:
        lines.append(f"folder: {runs['folder']['wall_s']:.1f} s against its network calls' "
                     f"{checks['folder_network_sum_s']:.1f} s: {checks['folder_over_network']:.2f}×")
    if "folder_warm_worker_sum_s" in checks:
        lines.append(f"folder against the warm worker's times × {result['folder_size']} photos "
                     f"({checks['folder_warm_worker_sum_s']:.1f} s): {checks['folder_over_warm_worker']:.2f}×")
    if "png" in runs:
        lines.append("PNG of the output: " + ", ".join(
            f"zlib level {level} {entry['s']:.2f} s, {entry['bytes'] / 2**20:.2f} MiB"
            for level, entry in runs["png"].items()))
    if "torch" in runs:
        torch_run = runs["torch"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in torch_run["timings"].items())
        lines.append(f"torch peer script (F 32, R 6, whole image): {torch_run['wall_s']:.2f} s, CPU "
                     f"{torch_run['cpu_s']:.2f} s ({parts})")
    if "pairs" in runs:
        lines.append("in turn, second drn-upscale / torch script: " + ", ".join(
            f"{pair['drn_upscale_s']:.2f} / {pair['torch_s']:.2f} s" for pair in runs["pairs"])
            + f"; median ratio {checks['second_over_torch_median']:.2f}")
    lines.append(f"load average: {result['load_average_start']:.2f} at the start; note: {result['note'] or '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
