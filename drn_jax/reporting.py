"""What a training run tells people: console lines, metrics.jsonl, TensorBoard, summary.json.

Only process 0 writes (`enabled=False` elsewhere). Every file is appended or replaced
atomically, so a crash never leaves a half-written JSON document behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from drn_jax import events
from drn_jax.files import to_json, write_json
from drn_jax.rundir import RunDir

logger = logging.getLogger(__name__)


def format_duration(seconds: float, *, long: bool = False) -> str:
    """``1h05m`` / ``4m07s`` (an ETA); with `long`, ``65 min (1.08 h)`` / ``12.5 s`` (a model card)."""
    if long:
        minutes = seconds / 60
        return f"{minutes:.0f} min ({seconds / 3600:.2f} h)" if minutes >= 1 else f"{seconds:.1f} s"
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _print(line: str) -> None:
    print(line, flush=True)


class RunWriter:
    """Writes a run's logs into `workdir`; a no-op on processes other than 0."""

    def __init__(self, run: RunDir, config: ml_collections.ConfigDict, *, enabled: bool = True,
                 echo: Callable[[str], None] | None = None):
        """`echo` receives each console line (default: printed to stdout, flushed)."""
        self.run = run
        self.enabled = enabled
        self._echo = echo or _print
        self._tensorboard = None
        if not enabled:
            return
        run.path.mkdir(parents=True, exist_ok=True)
        write_json(run.config_file, config.to_dict())
        self._metrics = open(run.metrics_file, "a", buffering=1)

    @property
    def tensorboard(self) -> events.SummaryWriter:
        if self._tensorboard is None:  # created at the first record: no empty event files
            self._tensorboard = events.SummaryWriter(self.run.tensorboard)
        return self._tensorboard

    def _record(self, event: str, step: int, values: Mapping[str, Any]) -> None:
        self._metrics.write(to_json({"event": event, "step": step, "time": time.time(), **values},
                                    indent=None) + "\n")

    def log_text(self, message: str) -> None:
        if self.enabled:
            logger.info("%s", message)
            self._echo(message)

    def log_train(self, step: int, total_steps: int, values: Mapping[str, float],
                  images_per_second: float, eta: str) -> None:
        if not self.enabled:
            return
        terms = " ".join(f"{name} {values[name]:.4g}" for name in ("primal", "dual") if name in values)
        self._echo(f"step {step}/{total_steps} | loss {values['total']:.4g} ({terms}) | "
                   f"lr {values['learning_rate']:.2e} | {images_per_second:.1f} img/s | ETA {eta}")
        self._record("train", step, {**values, "images_per_second": images_per_second})
        for name, value in values.items():
            self.tensorboard.scalar(f"train/{name}", value, step)
        self.tensorboard.scalar("train/images_per_second", images_per_second, step)

    def log_eval(self, step: int, scores: Mapping[str, float], strip: np.ndarray | None = None) -> None:
        if not self.enabled:
            return
        line = " | ".join(f"{name} {value:.4f}" for name, value in scores.items())
        self._echo(f"eval step {step} | {line}")
        self._record("eval", step, dict(scores))
        for name, value in scores.items():
            self.tensorboard.scalar(f"val/{name}", value, step)
        if strip is not None:
            self.tensorboard.image("val/bicubic_drn_hr", strip, step)
        self.tensorboard.flush()

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if self.enabled:
            write_json(self.run.summary_file, dict(summary))
            self.log_text("summary: " + to_json(dict(summary), indent=None))

    def close(self) -> None:
        if not self.enabled:
            return
        self._metrics.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
