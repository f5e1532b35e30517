"""A training run's folder: where each of its files lives, named in one place.

    <workdir>/config.json         the run's whole config (rebuilds the model)
    <workdir>/metrics.jsonl       one JSON record per log line (train and eval events)
    <workdir>/summary.json        written when the run finishes
    <workdir>/checkpoints/<step>/ orbax checkpoints (state and data positions)
    <workdir>/tensorboard/        TensorBoard events
    <workdir>/eval/               eval.py's default output folder
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import ml_collections

from drn_jax import config as config_lib
from drn_jax.errors import one_line

__all__ = ["DEFAULT_WORKDIR", "RunDir"]

DEFAULT_WORKDIR = "runs/default"
"""Where ``python train.py`` trains the embedded default, and eval.py and drn-upscale look first."""


def _inside(name: str) -> property:
    """A `RunDir` attribute: the path ``<workdir>/<name>``."""
    return property(lambda self: self.path / name, doc=f"``<workdir>/{name}``")


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The files of the training run in `path` (which need not exist yet)."""

    path: pathlib.Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", pathlib.Path(path))

    @classmethod
    def of_checkpoint(cls, step_dir: str | os.PathLike) -> tuple[RunDir, int]:
        """The run and step of a checkpoint step folder ``<workdir>/checkpoints/<step>``."""
        step_dir = pathlib.Path(step_dir).absolute()
        if not step_dir.is_dir() or not step_dir.name.isdigit() or step_dir.parent.name != "checkpoints":
            raise FileNotFoundError(f"{step_dir}: not a checkpoint step folder (<workdir>/checkpoints/<step>)")
        return cls(step_dir.parent.parent), int(step_dir.name)

    config_file = _inside("config.json")
    metrics_file = _inside("metrics.jsonl")
    summary_file = _inside("summary.json")
    checkpoints = _inside("checkpoints")
    tensorboard = _inside("tensorboard")
    eval_dir = _inside("eval")

    def has_config(self) -> bool:
        return self.config_file.is_file()

    def load_config(self) -> ml_collections.ConfigDict:
        """The config the run saved, over today's defaults (fields added since get defaults)."""
        return config_lib.from_saved(self.saved_config())

    def saved_config(self) -> dict[str, Any]:
        """``config.json`` as saved."""
        if not self.config_file.is_file():
            raise FileNotFoundError(f"{self.config_file}: no such file; is {self.path} a training workdir?")
        try:
            return json.loads(self.config_file.read_text())
        except (OSError, ValueError) as err:
            raise config_lib.ConfigError(f"{self.config_file}: cannot read the saved config ({one_line(err, 300)}); "
                                         "use a new --workdir") from None

    def summary(self) -> dict[str, Any]:
        """``summary.json``, or ``{}`` before the run has finished."""
        return json.loads(self.summary_file.read_text()) if self.summary_file.is_file() else {}

    def saved_steps(self) -> list[int]:
        """Steps of the complete checkpoint folders, ascending."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(p.name) for p in self.checkpoints.iterdir() if p.name.isdigit() and p.is_dir())
