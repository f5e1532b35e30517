"""Benchmark evaluation under the community protocol, and the validator used during training.

Mod-crop, MATLAB bicubic LR, the method's 8-bit output, Y-channel PSNR / SSIM / gradient PSNR
with ``scale`` pixels shaved; :func:`write_results` writes the tables. eval.py's options are
`drn_jax.eval_cli`.

How it works: docs/internals.md#evaluation.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import pathlib
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from drn_jax import data, image_io, inference, metrics, plots
from drn_jax.files import write_atomic, write_json
from drn_jax.resize import imresize_host, modcrop

__all__ = [
    "METRICS",
    "PAPER_DATASETS",
    "Dataset",
    "ImageScore",
    "Results",
    "evaluate",
    "find_datasets",
    "format_table",
    "make_lr",
    "make_validator",
    "open_dataset",
    "read_benchmark_image",
    "to_grey",
    "write_results",
]

PAPER_DATASETS = ("Set5", "Set14", "B100", "Urban100", "Manga109")
METRICS = metrics.METRICS
BICUBIC, DRN = "Bicubic", "DRN"


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Dataset:
    """A named list of HR images, read one at a time when iterated.

    Attributes:
      name: the dataset's name in tables and file names (``Set5``, ``samples:val``).
      names: image names, e.g. ``baby.png``.
      loaders: one function per image returning its uint8 ``(H, W, 3)`` pixels.
    """

    name: str
    names: list[str]
    loaders: list[Callable[[], np.ndarray]]

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, load in zip(self.names, self.loaders):
            yield name, load()


def find_datasets(data_dir: str | pathlib.Path) -> list[str]:
    """Names of the ``<Name>/HR/`` folders in ``data_dir``: the paper's five first, in its order."""
    root = pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; pass --data_dir=<folder holding Set5/HR, ...>")
    present = sorted(path.parent.name for path in root.glob("*/HR") if path.is_dir())
    return [name for name in PAPER_DATASETS if name in present] + [
        name for name in present if name not in PAPER_DATASETS]


def open_dataset(spec: str, data_dir: str | pathlib.Path | None = None) -> Dataset:
    """A dataset by name (``<data_dir>/<spec>/HR``) or by input-pipeline source (``samples:val``).

    Raises ``FileNotFoundError`` / ``ValueError`` with one-line messages for a missing or empty
    dataset; unreadable images raise :class:`~drn_jax.image_io.ImageReadError` when read.
    """
    if ":" in spec:
        images = data.load_images(spec)
        if not images:
            raise ValueError(f"{spec}: holds no images")
        return Dataset(spec, [name for name, _ in images],
                       [lambda pixels=pixels: pixels for _, pixels in images])
    if data_dir is None:
        raise ValueError(f"dataset {spec!r} needs --data_dir (the folder holding {spec}/HR/)")
    folder = pathlib.Path(data_dir).expanduser() / spec / "HR"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; datasets present: "
                                f"{', '.join(find_datasets(data_dir)) or 'none'}")
    paths = image_io.list_images(folder)
    if not paths:
        raise ValueError(f"{folder}: holds no PNG, JPEG or BMP images")
    return Dataset(spec, [str(path.relative_to(folder)) for path in paths],
                   [functools.partial(read_benchmark_image, path) for path in paths])


# Pillow modes of single-channel files (bilevel, 8/16/32-bit grey, grey + alpha).
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def read_benchmark_image(path: str | pathlib.Path) -> np.ndarray:
    """A benchmark HR image as the protocol scores it: uint8 ``(H, W, 3)``, or ``(H, W, 1)`` if grey.

    The community's MATLAB scripts score a 1-channel file (Set14's ``bridge.png``) on its grey
    values rather than on the ``rgb2ycbcr`` luma of its RGB replication, which would be
    ``16 + 219/255 · grey`` and raise its PSNR by 1.3 dB (Set14 x4 bicubic 26.08 dB instead
    of the published 26.00). Greyscale files are therefore kept as one channel here;
    :func:`make_lr` feeds the networks their RGB replication.
    """
    pixels = image_io.read_image(path)
    with Image.open(path) as image:  # the header only; read_image has validated the file
        grey = image.mode in _GREY_MODES
    return pixels[..., :1] if grey else pixels


def make_lr(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mod-cropped HR, RGB LR)``: the protocol's pair, LR = MATLAB bicubic ``1/scale`` in uint8.

    ``hr`` is ``(H, W, 3)`` or, for a greyscale image, ``(H, W, 1)``; the LR image is always
    RGB (a grey LR replicated, which is what resizing the replicated HR gives, channel by
    channel).
    """
    hr = modcrop(np.asarray(hr, dtype=np.uint8), scale)
    if hr.ndim != 3 or hr.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W, 3) or (H, W, 1) image; got shape {hr.shape}")
    if min(hr.shape[:2]) < scale:
        raise ValueError(f"image of {hr.shape[0]}x{hr.shape[1]} pixels is smaller than the scale {scale}")
    lr = imresize_host(hr, 1.0 / scale)
    return hr, np.repeat(lr, 3, axis=-1) if lr.shape[-1] == 1 else lr


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 1)`` grey of an RGB output, to score it against a greyscale HR image.

    The ``rgb2ycbcr`` luma mapped back to the 0-255 grey scale, ``(Y - 16) · 255/219``, i.e.
    ``0.299 R + 0.587 G + 0.114 B`` (MATLAB ``rgb2gray``), rounded; exact for R = G = B
    outputs such as bicubic's.
    """
    y = metrics.rgb_to_y_host(rgb, 255.0)
    return np.floor(np.clip((y - 16.0) * (255.0 / 219.0), 0.0, 255.0) + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImageScore:
    """One method's scores (``{metric name: value}``, the metrics of `METRICS`) on one image."""

    dataset: str
    image: str
    method: str
    scores: Mapping[str, float]
    seconds: float  # time to upscale (not to score)

    def __getattr__(self, name: str) -> float:  # row.psnr, row.ssim, ...
        try:
            return self.__dict__["scores"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclasses.dataclass
class Results:
    """Per-image scores of one or more methods at one scale."""

    scale: int
    methods: list[str]
    datasets: list[str]
    images: list[ImageScore] = dataclasses.field(default_factory=list)

    def summary(self, method: str) -> dict[str, dict[str, float | int]]:
        """``{dataset: {"psnr", "ssim", "gradient_psnr" (means over images), "images"}}``."""
        table = {}
        for dataset in self.datasets:
            rows = [r for r in self.images if r.method == method and r.dataset == dataset]
            if rows:
                table[dataset] = {name: float(np.mean([r.scores[name] for r in rows])) for name in METRICS}
                table[dataset]["images"] = len(rows)
        return table

    def seconds(self, method: str) -> float:
        return float(sum(r.seconds for r in self.images if r.method == method))


def _scores(sr: np.ndarray, hr: np.ndarray, scale: int) -> dict[str, float]:
    """The protocol's scores of an RGB output against an RGB or greyscale HR image."""
    if hr.shape[-1] == 1:
        sr = to_grey(sr)
    return metrics.score_y_host(sr, hr, scale)


def _file_name(name: str) -> str:
    """An image or dataset name made safe as a file name (``samples:val`` -> ``samples_val``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def evaluate(methods: Mapping[str, inference.ImageUpscaler], datasets: Sequence[Dataset], scale: int,
             *, output_dir: str | pathlib.Path | None = None, save_images: str | None = None,
             save_comparison: bool = False, progress: bool = True) -> Results:
    """Scores every method on every image of every dataset (see the module docstring).

    Args:
      methods: display name -> upscaler, in table order (e.g. ``{"Bicubic": ..., "DRN": ...}``).
      datasets: the datasets, in column order.
      scale: the SR factor (every method's).
      output_dir: where ``save_images`` and ``save_comparison`` write.
      save_images: a method name: its outputs go to ``<output_dir>/images/<dataset>/<name>.png``
        (the HR file's name, PNG).
      save_comparison: write ``<output_dir>/comparisons/<dataset>/<name>.png``, a strip of every
        method's crop and the HR crop (:func:`drn_jax.plots.comparison_strip`).
      progress: show a progress bar (images done, images/s) on stderr.
    """
    if (save_images or save_comparison) and output_dir is None:
        raise ValueError("output_dir is required to save images")
    output_dir = pathlib.Path(output_dir) if output_dir is not None else None
    results = Results(scale, list(methods), [d.name for d in datasets])
    for dataset in datasets:
        bar = _progress(len(dataset), f"{dataset.name} x{scale}", progress)
        for name, load in zip(dataset.names, dataset.loaders):
            try:
                hr, lr = make_lr(load(), scale)
            except ValueError as err:  # ImageReadError names the file; make_lr's errors do not
                # One unusable file costs its row (the table counts the images), not the run.
                where = "" if isinstance(err, image_io.ImageReadError) else f"{dataset.name}/{name}: "
                bar.write(f"warning: {where}{err}; skipped", file=sys.stderr)
                bar.update(1)
                continue
            outputs = []
            for method, upscaler in methods.items():
                start = time.perf_counter()
                sr = upscaler(lr)
                seconds = time.perf_counter() - start
                scores = _scores(sr, hr, scale)
                results.images.append(ImageScore(dataset.name, name, method, scores, seconds))
                outputs.append((method, sr, scores["psnr"]))
                if method == save_images:
                    image_io.write_png(output_dir / "images" / _file_name(dataset.name)
                                       / (pathlib.Path(name).stem + ".png"), sr)
            if save_comparison:
                image_io.write_png(output_dir / "comparisons" / _file_name(dataset.name)
                                   / (pathlib.Path(name).stem + ".png"), plots.comparison_strip(hr, outputs))
            bar.update(1)
            bar.set_postfix_str(f"{name} {outputs[-1][0]} {outputs[-1][2]:.2f} dB", refresh=False)
        bar.close()
    return results


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", disable=not enabled, leave=False,
                file=sys.stderr, mininterval=1.0, dynamic_ncols=True)


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------

def _columns() -> dict[str, list[str]]:
    """Table cells per dataset: ``{cell label: [metric names]}`` from `METRICS`' ``column``s."""
    columns: dict[str, list[str]] = {}
    for name, spec in METRICS.items():
        columns.setdefault(spec.column, []).append(name)
    return columns


def format_table(results: Results, *, markdown: bool = False) -> str:
    """The paper's layout: one row per method; per dataset, PSNR/SSIM and gradient PSNR.

    The cells come from `METRICS`: metrics that share a ``column`` share a cell, joined by ``/``.
    """
    summaries = {method: results.summary(method) for method in results.methods}
    datasets = [d for d in results.datasets if any(d in s for s in summaries.values())]
    columns = _columns()

    def cells(method: str) -> list[str]:
        out = []
        for dataset in datasets:
            entry = summaries[method].get(dataset)
            for names in columns.values():
                out.append("/".join(f"{entry[n]:.{METRICS[n].digits}f}" for n in names) if entry else "-")
        return out

    width = len(columns)
    short = {label: ("gPSNR" if label == "grad. PSNR" else label) for label in columns}
    if markdown:
        header = ["Method", "Scale"] + [f"{d} {c}" for d in datasets for c in columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([m, f"x{results.scale}"] + cells(m)) + " |" for m in results.methods]
        return "\n".join(lines) + "\n"

    counts = {d: max((s.get(d, {}).get("images", 0) for s in summaries.values()), default=0)
              for d in datasets}
    first = max(len("Method"), *(len(m) for m in results.methods))
    # Per dataset: the first cell as wide as the dataset's heading, the others as their labels.
    widths = [[max(13, len(d) + len(str(counts[d])) + 3)] + [max(6, len(short[c])) for c in list(columns)[1:]]
              for d in datasets]
    top = f"{'x' + str(results.scale):<{first}}  " + "  ".join(
        "  ".join([f"{f'{d} ({counts[d]})':<{w[0]}}"] + [f"{'':<{x}}" for x in w[1:]])
        for d, w in zip(datasets, widths))
    sub = f"{'Method':<{first}}  " + "  ".join(
        "  ".join(f"{short[c]:<{x}}" for c, x in zip(columns, w)) for w in widths)
    rows = []
    for method in results.methods:
        values = cells(method)
        rows.append(f"{method:<{first}}  " + "  ".join(
            "  ".join(f"{values[i * width + j]:<{x}}" for j, x in enumerate(w)) for i, w in enumerate(widths)))
    return "\n".join([top.rstrip(), sub.rstrip(), *(r.rstrip() for r in rows)]) + "\n"


def write_results(results: Results, output_dir: str | pathlib.Path, method: str,
                  meta: Mapping[str, Any] | None = None) -> dict[str, pathlib.Path]:
    """Writes ``results.json`` (for ``method``), ``results.md`` and ``per_image.csv``.

    ``results.json`` holds ``{"<dataset>": {"psnr", "ssim", "gradient_psnr", "images"}}`` of
    ``method`` and ``"_meta"``: ``meta`` plus the scale, method and the other methods' rows
    (e.g. ``"_meta": {"bicubic": {...}}``). Files are replaced atomically.
    """
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = dict(results.summary(method))
    others = {other.lower(): results.summary(other) for other in results.methods if other != method}
    payload["_meta"] = {"method": method, "scale": results.scale,
                        "seconds": results.seconds(method), **others, **(meta or {})}
    paths = {"json": output_dir / "results.json", "md": output_dir / "results.md",
             "csv": output_dir / "per_image.csv"}
    write_json(paths["json"], payload)

    notes = ", ".join(f"{d}: {n} images" for d, n in
                      ((d, e["images"]) for d, e in results.summary(method).items()))
    write_atomic(paths["md"], f"# Evaluation x{results.scale}\n\n" + format_table(results, markdown=True)
                + f"\nY channel, {results.scale} pixels shaved; {notes}. "
                "grad. PSNR: PSNR between the gradient magnitudes of the Y channels.\n")

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "image", "method", *METRICS, "seconds"])
    for row in results.images:
        writer.writerow([row.dataset, row.image, row.method,
                         *(f"{row.scores[n]:.{spec.digits + 2}f}" for n, spec in METRICS.items()),
                         f"{row.seconds:.4f}"])
    write_atomic(paths["csv"], buffer.getvalue())
    return paths


# ---------------------------------------------------------------------------
# Validation during training
# ---------------------------------------------------------------------------

def make_validator(config, model, val_images: Sequence[tuple[str, np.ndarray]]
                   ) -> Callable[[Any], tuple[dict[str, float], np.ndarray]]:
    """``validate(params) -> (scores, strip)`` for the training loop, compiled once per image size bucket.

    ``scores`` are the protocol's mean ``psnr``, ``ssim`` and ``gradient_psnr`` of the model
    over ``val_images`` (name, uint8 HR) at ``config.scale``, and ``psnr_bicubic``, the
    bicubic baseline's mean PSNR on the same images, for reference; ``strip`` is the
    comparison strip (bicubic | DRN | HR) of the first image, for TensorBoard. The LR inputs
    and the bicubic scores are computed once here; each call reuses one compiled network.
    """
    scale = int(config.scale)
    pairs = [make_lr(hr, scale) for _, hr in val_images]
    if not pairs:
        raise ValueError("no validation images")
    bicubic = inference.BicubicUpscaler(scale)
    first_bicubic = bicubic(pairs[0][1])
    first_bicubic_psnr = _scores(first_bicubic, pairs[0][0], scale)["psnr"]
    psnr_bicubic = float(np.mean([_scores(bicubic(lr), hr, scale)["psnr"] for hr, lr in pairs]))
    runner = inference.ModelRunner(model)

    def validate(params: Any) -> tuple[dict[str, float], np.ndarray]:
        upscaler = inference.make_upscaler(runner, variables={"params": params})
        totals = dict.fromkeys(METRICS, 0.0)
        strip = None
        for index, (hr, lr) in enumerate(pairs):
            sr = upscaler(lr)
            scores = _scores(sr, hr, scale)
            for name in METRICS:
                totals[name] += scores[name]
            if index == 0:
                strip = plots.comparison_strip(
                    hr, [(BICUBIC, first_bicubic, first_bicubic_psnr), (DRN, sr, scores["psnr"])])
        scores = {name: value / len(pairs) for name, value in totals.items()}
        return {**scores, "psnr_bicubic": psnr_bicubic}, strip

    return validate
