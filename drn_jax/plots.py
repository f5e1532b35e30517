"""Figures of an evaluation: comparison strips (the paper's Fig. 3) and PSNR against parameters (Figs. 6-7).

* :func:`comparison_strip` draws, for one image, the HR image reduced with the crop marked,
  then the same crop of every method's output and of the HR image, each labelled with the
  method and its whole-image PSNR. Pillow only (cheap; also used for TensorBoard during
  training).
* :func:`plot_psnr_vs_params` plots one point per ``results.json`` (x: parameters, log scale;
  y: PSNR), one panel per dataset, bicubic as a dashed line. Matplotlib with the Agg backend.
  ``python -m drn_jax.plots runs/*/eval/results.json --output fig.png`` does it from the shell.
* :func:`plot_training_curves` plots validation PSNR (or another eval metric) against training
  steps from runs' ``metrics.jsonl`` files, several runs (and seeds) on one figure, as the
  paper's Fig. 2 does for its losses. Matplotlib with the Agg backend.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFont

from drn_jax import cli

__all__ = ["best_crop", "comparison_strip", "load_eval_curve", "load_results", "plot_psnr_vs_params",
           "plot_training_curves", "main"]

PANEL = 256  # display side of each crop panel, in pixels
_LABEL_HEIGHT = 26
_GAP = 4
_BOX_COLOUR = (255, 40, 40)


def best_crop(hr: np.ndarray, reference: np.ndarray, candidate: np.ndarray, size: int
              ) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the ``size × size`` window where ``candidate`` beats ``reference`` most.

    "Beats" is the drop in summed squared error against ``hr`` (all channels), so the window
    shows where the network's gain over bicubic is largest (Fig. 3 of the paper picks such
    detailed regions by hand). Computed for all windows at once with an integral image.
    """
    hr = hr.astype(np.float64)
    gain = (np.square(reference - hr) - np.square(candidate - hr)).sum(axis=-1)
    integral = np.pad(gain.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (integral[size:, size:] - integral[:-size, size:]
            - integral[size:, :-size] + integral[:-size, :-size])
    row, col = np.unravel_index(np.argmax(sums), sums.shape)
    return int(row), int(col)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _labelled(panel: Image.Image, text: str, font: ImageFont.ImageFont) -> Image.Image:
    """The panel with ``text`` centred below it (widened if the text is wider)."""
    width = ImageDraw.Draw(panel).textlength(text, font=font)
    framed = Image.new("RGB", (max(panel.width, int(width) + 8), panel.height + _LABEL_HEIGHT), "white")
    framed.paste(panel, ((framed.width - panel.width) // 2, 0))
    draw = ImageDraw.Draw(framed)
    draw.text(((framed.width - width) / 2, panel.height + 4), text, fill="black", font=font)
    return framed


def comparison_strip(hr: np.ndarray, outputs: Sequence[tuple[str, np.ndarray, float]],
                     *, crop: tuple[int, int, int] | None = None) -> np.ndarray:
    """One image's comparison (Fig. 3): HR with the crop boxed | each output's crop | HR crop.

    Args:
      hr: uint8 ``(H, W, 3)`` (or greyscale ``(H, W, 1)``) ground truth, mod-cropped.
      outputs: ``(label, uint8 image, PSNR in dB)`` per method, e.g. bicubic then DRN.
      crop: ``(row, col, size)`` in HR pixels; by default the window where the last output
        beats the first most (:func:`best_crop`), or the centre with a single output. The size
        is a third of the shorter side, within 32 to 192 pixels.

    Returns:
      uint8 ``(h, w, 3)`` strip; crops are enlarged with nearest-neighbour so pixels stay
      visible.
    """
    if hr.shape[-1] == 1:  # a greyscale benchmark image
        hr = np.repeat(hr, 3, axis=-1)
    height, width = hr.shape[:2]
    if crop is None:
        size = int(np.clip(min(height, width) // 3, min(32, height, width), 192))
        if len(outputs) >= 2:
            row, col = best_crop(hr, outputs[0][1].astype(np.float64),
                                 outputs[-1][1].astype(np.float64), size)
        else:
            row, col = (height - size) // 2, (width - size) // 2
    else:
        row, col, size = crop
    font = _font(15)

    # The whole image at the panels' height (at most two panels wide), the crop boxed in red.
    ratio = min(PANEL / height, 2 * PANEL / width)
    overview = Image.fromarray(hr).resize(
        (max(1, round(width * ratio)), max(1, round(height * ratio))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(overview)
    draw.rectangle([col * ratio, row * ratio, (col + size) * ratio - 1, (row + size) * ratio - 1],
                   outline=_BOX_COLOUR, width=2)
    panels = [_labelled(overview, f"crop at ({row}, {col})", font)]

    def crop_panel(image: np.ndarray, text: str) -> Image.Image:
        window = Image.fromarray(np.ascontiguousarray(image[row: row + size, col: col + size]))
        return _labelled(window.resize((PANEL, PANEL), Image.Resampling.NEAREST), text, font)

    for label, image, value in outputs:
        panels.append(crop_panel(image, f"{label} {value:.2f} dB"))
    panels.append(crop_panel(hr, "HR"))

    strip = Image.new("RGB", (sum(p.width for p in panels) + _GAP * (len(panels) - 1),
                              max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        strip.paste(panel, (x, 0))
        x += panel.width + _GAP
    return np.asarray(strip)


# ---------------------------------------------------------------------------
# PSNR against parameter count
# ---------------------------------------------------------------------------

def load_results(path: str | pathlib.Path) -> dict:
    """A ``results.json`` written by :mod:`drn_jax.evaluation`, with a one-line error if unusable."""
    path = pathlib.Path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; run `python eval.py` first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(results, dict) or not any(not key.startswith("_") for key in results):
        raise ValueError(f"{path}: holds no dataset scores")
    return results


def plot_psnr_vs_params(result_files: Sequence[str | pathlib.Path], out: str | pathlib.Path,
                        *, datasets: Sequence[str] | None = None,
                        labels: Sequence[str] | None = None) -> pathlib.Path:
    """Plots PSNR (y) against parameter count (x, log) for each results file, as Figs. 6-7.

    Each file is one point per dataset panel, labelled with ``labels[i]``, else its
    ``_meta.label``, else the name of the folder above ``eval/``. Files without parameters
    (bicubic) and the bicubic scores stored with a model's results are drawn as a dashed
    horizontal line. Returns the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_results(path) for path in result_files]
    if datasets is None:
        found = list(dict.fromkeys(name for run in runs for name in run if not name.startswith("_")))
        paper = ("Set5", "Set14", "B100", "Urban100", "Manga109")  # the paper's column order
        datasets = [d for d in paper if d in found] + [d for d in found if d not in paper]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        baseline = None
        for index, (path, run) in enumerate(zip(result_files, runs)):
            meta = run.get("_meta", {})
            label = (labels[index] if labels else None) or meta.get("label") or _run_name(path)
            params = meta.get("parameters") or 0
            scores = run.get(dataset)
            if scores is None:
                continue
            if params <= 0:
                baseline = baseline or scores["psnr"]
                continue
            ax.scatter([params], [scores["psnr"]], s=40, zorder=3)
            ax.annotate(label, (params, scores["psnr"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
            baseline = baseline or meta.get("bicubic", {}).get(dataset, {}).get("psnr")
        if baseline is not None:
            ax.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="Bicubic")
            ax.legend(loc="best", fontsize=8)
        scale = next((run["_meta"].get("scale") for run in runs if "_meta" in run), None)
        ax.set_title(f"{dataset} x{scale}" if scale else dataset)
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("PSNR (dB, Y)")
        ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out)


# ---------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------

def _save(fig: Any, out: str | pathlib.Path) -> pathlib.Path:
    """Saves a matplotlib figure as a PNG at `out` (its folder made) and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def load_eval_curve(path: str | pathlib.Path, metric: str = "psnr") -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``metric`` from the ``"eval"`` events of a run's ``metrics.jsonl``.

    A step logged twice (a run resumed after its last evaluation) keeps its last value; steps
    come out sorted. Lines that are not JSON (a line cut by a crash) are skipped. Raises
    ``FileNotFoundError`` with a one-line message when the file is missing.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; is it a training workdir?") from None
    points: dict[int, float] = {}
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event") == "eval" and metric in event:
            points[int(event["step"])] = float(event[metric])
    steps = sorted(points)
    return steps, [points[step] for step in steps]


def plot_training_curves(curves: Mapping[str, Sequence[str | pathlib.Path]], out: str | pathlib.Path,
                         *, metric: str = "psnr", title: str | None = None,
                         ylabel: str | None = None, baseline: str | None = "psnr_bicubic",
                         zoom: bool = True) -> pathlib.Path:
    """Validation ``metric`` against training steps, one colour per label, on one figure.

    Args:
      curves: label -> the ``metrics.jsonl`` files of its runs (e.g. one per seed). The first
        file of a label is drawn solid, further ones (other seeds) dashed in the same colour
        and labelled "(run 2)", ...
      out: the image to write (PNG, PDF or SVG); folders are created.
      metric: the eval event's field (``psnr``, ``ssim``, ``gradient_psnr``).
      title, ylabel: figure title and y label (default: the metric's name).
      baseline: an eval field drawn as a grey horizontal line (the bicubic PSNR of the
        validation images), taken from the first file that has it; None for none.
      zoom: fit the y axis to the last three quarters of training, where runs differ by tenths
        of a dB; the first evaluations (often far lower) and the baseline may fall outside it.

    Returns the written path. Files without eval events are left out of the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    baseline_value = None
    plotted: list[tuple[list[int], list[float]]] = []
    for index, (label, paths) in enumerate(curves.items()):
        colour = colours[index % len(colours)]
        for seed_index, path in enumerate(paths):
            steps, values = load_eval_curve(path, metric)
            if not steps:
                continue
            plotted.append((steps, values))
            ax.plot(steps, values, color=colour, linestyle="-" if seed_index == 0 else "--",
                    marker="o", markersize=3, linewidth=1.5 if seed_index == 0 else 1.0,
                    label=label if seed_index == 0 else f"{label} (run {seed_index + 1})")
            if baseline and baseline_value is None:
                _, base = load_eval_curve(path, baseline)
                baseline_value = base[-1] if base else None
    if baseline_value is not None:
        ax.axhline(baseline_value, color="grey", linestyle=":", linewidth=1, label="Bicubic")
    if zoom and plotted:
        last = max(steps[-1] for steps, _ in plotted)
        late = [v for steps, values in plotted for s, v in zip(steps, values) if s >= last / 4]
        low, high = min(late), max(late)
        margin = 0.08 * (high - low) + 0.02
        ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel or {"psnr": "PSNR (dB, Y)", "gradient_psnr": "gradient PSNR (dB)"}.get(metric, metric))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out)


def _run_name(path: str | pathlib.Path) -> str:
    path = pathlib.Path(path).absolute()
    return path.parent.parent.name if path.parent.name == "eval" else path.parent.name


def _define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("output", None, "output image (PNG, PDF or SVG)", flag_values=values)
    flags.DEFINE_list("datasets", None, "dataset panels (default: all)", flag_values=values)
    flags.DEFINE_list("labels", None, "point labels, one per results file", flag_values=values)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m drn_jax.plots RESULTS.json... --output=fig.png [--datasets=..] [--labels=..]``."""
    return cli.console_command("drn_jax.plots", _define_flags, _plot, argv)


def _plot(results: Sequence[str], values: flags.FlagValues) -> int:
    if not results or not values.output:
        raise ValueError("usage: python -m drn_jax.plots RESULTS.json... --output=FILE")
    if values.labels and len(values.labels) != len(results):
        raise ValueError(f"--labels has {len(values.labels)} names for {len(results)} files")
    print(plot_psnr_vs_params(results, values.output, labels=values.labels, datasets=values.datasets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
