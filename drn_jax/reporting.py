"""What a training run tells people: console lines, metrics.jsonl, TensorBoard, summary.json.

Only process 0 writes (`enabled=False` elsewhere). Every file is appended or replaced
atomically, so a crash never leaves a half-written JSON document behind.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

logger = logging.getLogger(__name__)


def write_json(path: pathlib.Path, payload: Any) -> None:
    """Writes `payload` as indented JSON through a temporary file and a rename."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n")
    os.replace(partial, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class RunWriter:
    """Writes a run's logs into `workdir`; a no-op on processes other than 0."""

    def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict, *, enabled: bool = True):
        self.workdir = workdir
        self.enabled = enabled
        self._tensorboard = None
        if not enabled:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / "config.json", config.to_dict())
        self._metrics = open(workdir / "metrics.jsonl", "a", buffering=1)

    @property
    def tensorboard(self):
        if self._tensorboard is None:
            # Imported lazily: it pulls in TensorFlow, which the training step never needs.
            from flax.metrics import tensorboard
            self._tensorboard = tensorboard.SummaryWriter(str(self.workdir / "tensorboard"))
        return self._tensorboard

    def _record(self, event: str, step: int, values: Mapping[str, Any]) -> None:
        self._metrics.write(json.dumps({"event": event, "step": step, "time": time.time(), **values},
                                       default=_jsonable) + "\n")

    def log_text(self, message: str) -> None:
        if self.enabled:
            logger.info("%s", message)
            print(message, flush=True)

    def log_train(self, step: int, total_steps: int, values: Mapping[str, float],
                  images_per_second: float, eta: str) -> None:
        if not self.enabled:
            return
        terms = " ".join(f"{name} {values[name]:.4g}" for name in ("primal", "dual") if name in values)
        print(f"step {step}/{total_steps} | loss {values['total']:.4g} ({terms}) | "
              f"lr {values['learning_rate']:.2e} | {images_per_second:.1f} img/s | ETA {eta}", flush=True)
        self._record("train", step, {**values, "images_per_second": images_per_second})
        for name, value in values.items():
            self.tensorboard.scalar(f"train/{name}", value, step)
        self.tensorboard.scalar("train/images_per_second", images_per_second, step)

    def log_eval(self, step: int, scores: Mapping[str, float], strip: np.ndarray | None = None) -> None:
        if not self.enabled:
            return
        line = " | ".join(f"{name} {value:.4f}" for name, value in scores.items())
        print(f"eval step {step} | {line}", flush=True)
        self._record("eval", step, dict(scores))
        for name, value in scores.items():
            self.tensorboard.scalar(f"val/{name}", value, step)
        if strip is not None:
            self.tensorboard.image("val/bicubic_drn_hr", strip, step)
        self.tensorboard.flush()

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if self.enabled:
            write_json(self.workdir / "summary.json", dict(summary))
            self.log_text("summary: " + json.dumps(summary, default=_jsonable))

    def close(self) -> None:
        if not self.enabled:
            return
        self._metrics.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
