"""What the configs in `configs/` are made of: the paper's network, the small CPU recipe, the
291-image training set, and the one rule that turns a step count into a schedule.

Each config is `drn_jax.config.base_config()` passed through these, plus its own overrides;
its docstring says why its values are what they are.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import ml_collections

from drn_jax.errors import ConfigError

__all__ = ["DATA_DIR_ENV", "cpu_291", "later_stage", "paper_network", "shared_data_dir", "t91_bsd200",
           "with_steps"]

DATA_DIR_ENV = "DRN_DATA_DIR"
_REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path:
    """The folder of the classic data sets (``train/T91``, ``train/BSD200``,
    ``benchmark/Set5/HR``, ...): ``$DRN_DATA_DIR``, else ``shared/data`` beside the repository
    (``../shared/data`` seen from a checkout), else the same beside the working directory."""
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return pathlib.Path(env).expanduser()
    beside_checkout = _REPOSITORY.parent / "shared" / "data"
    if beside_checkout.is_dir():
        return beside_checkout
    return (pathlib.Path.cwd().parent / "shared" / "data").resolve()


def t91_bsd200(config: ml_collections.ConfigDict, data_dir: str | os.PathLike | None = None
               ) -> ml_collections.ConfigDict:
    """Trains on T91 + BSD200 (the classic "291" images) and validates on Set5, from
    `data_dir` (default `shared_data_dir`)."""
    data = pathlib.Path(data_dir) if data_dir is not None else shared_data_dir()
    config.data.train = f"folder:{data / 'train' / 'T91'},{data / 'train' / 'BSD200'}"
    config.data.val = f"folder:{data / 'benchmark' / 'Set5' / 'HR'}"
    return config


def with_steps(config: ml_collections.ConfigDict, steps: int | str, *, decay_every: float,
               per_run: Mapping[str, tuple[int, int | None]] | None = None) -> ml_collections.ConfigDict:
    """Sets ``num_train_steps`` and what follows from it.

    Args:
      config: the config to change.
      steps: the step count (a config's ``:STEPS`` argument arrives as a string).
      decay_every: the learning-rate decay interval as a fraction of the run (0.4: decays at
        40% and 80%); ``lr_decay_every`` is ``round(decay_every * steps)``, at least 1.
      per_run: interval fields set from the run's length, ``{field: (count, cap)}``: ``field``
        becomes ``steps // count``, at least 1 and at most ``cap`` (``None``: no cap). Fields
        not named keep their values.

    Raises:
      ConfigError: for a step count under 1.
    """
    steps = int(steps)
    if steps < 1:
        raise ConfigError(f"the step count must be at least 1; got {steps}")
    config.num_train_steps = steps
    config.lr_decay_every = max(1, round(decay_every * steps))
    for field, (count, cap) in (per_run or {}).items():
        every = max(1, steps // count)
        config[field] = min(every, cap) if cap is not None else every
    return config


def paper_network(config: ml_collections.ConfigDict, *, scale: int, hr_patch_size: int
                  ) -> ml_collections.ConfigDict:
    """The paper's network and optimiser (Section 5.1) at `scale`, in bfloat16 with float32
    parameters: F 64, 7 residual modules per block, Adam at 1e-4 with x0.1 decays, and a
    parameter EMA of 0.999 (configs/x4.py says why)."""
    config.scale = scale
    config.model.features = 64
    config.model.modules_per_block = 7
    config.model.dtype = "bfloat16"
    config.data.hr_patch_size = hr_patch_size
    config.learning_rate = 1e-4
    config.lr_decay_factor = 0.1
    config.ema_decay = 0.999
    return config


def cpu_291(config: ml_collections.ConfigDict, *, scale: int, hr_patch_size: int
            ) -> ml_collections.ConfigDict:
    """The recipe of the shipped models, trained on the CPU on T91 + BSD200 (configs/x4_291.py
    says why): F 32, 6 residual modules per block, dual + progressive, the Eq. 3 loss with
    lambda 2 and dual weight 0.1, batch 16, Adam at 8e-4 with x0.3 decays, EMA 0.999."""
    config.scale = scale
    config.model.features = 32
    config.model.modules_per_block = 6
    config.model.dual = True
    config.model.progressive = True
    config.loss.name = "pixel_gradient"  # Eq. 3
    config.loss.lam = 2.0
    config.loss.dual_weight = 0.1
    t91_bsd200(config)
    config.data.hr_patch_size = hr_patch_size
    config.batch_size = 16
    config.learning_rate = 8e-4
    config.lr_decay_factor = 0.3
    config.ema_decay = 0.999
    config.keep_checkpoints = 3
    config.seed = 0
    return config


def later_stage(config: ml_collections.ConfigDict, steps: int | str, *, init_from: str, seed: int,
                learning_rate: float = 2e-4) -> ml_collections.ConfigDict:
    """A later stage of a shipped model's training (configs/x4_291_more.py and the ``_patch``
    configs): a warm start from `init_from`, Adam restarted at `learning_rate` (below stage 1's
    peak, which would first undo part of what it reached) with x0.3 decays at 5/12 and 10/12 of
    `steps`, and a `seed` of its own, so that its crops differ from the earlier stages'."""
    with_steps(config, steps, decay_every=5 / 12)
    config.init_from = init_from
    config.learning_rate = learning_rate
    config.seed = seed
    return config
