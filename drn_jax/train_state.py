"""The training state, the optimiser and the learning-rate schedule (docs/method.md#training).

Nothing here runs a step: `drn_jax.training` does. Kept apart so that evaluating or
exporting a model never needs the training loop.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from drn_jax import models

__all__ = ["LR_SCHEDULES", "TrainState", "create_optimizer", "create_train_state", "eval_params",
           "learning_rate_schedule"]

LR_SCHEDULES = ("step", "cosine")


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a pytree that orbax saves whole."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any  # a copy of params when config.ema_decay > 0, else None


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning rate by step.

    ``lr_schedule="step"`` (the paper, Section 5.1): `learning_rate`, times `lr_decay_factor`
    every `lr_decay_every` steps. ``"cosine"``: a cosine decay from `learning_rate` to
    `learning_rate · lr_decay_factor` over `num_train_steps`. Either starts with a linear
    warm-up from 0 over `warmup_steps` (0: none).
    """
    if config.lr_schedule == "step":
        schedule = optax.exponential_decay(
            init_value=config.learning_rate, transition_steps=config.lr_decay_every,
            decay_rate=config.lr_decay_factor, staircase=True)
    elif config.lr_schedule == "cosine":
        schedule = optax.cosine_decay_schedule(
            config.learning_rate, decay_steps=max(1, config.num_train_steps - config.warmup_steps),
            alpha=config.lr_decay_factor)
    else:
        raise ValueError(f"lr_schedule={config.lr_schedule!r} is unknown; use one of {LR_SCHEDULES}")
    if config.warmup_steps:
        warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
        schedule = optax.join_schedules([warmup, schedule], [config.warmup_steps])
    return schedule


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with the config's betas, epsilon and learning-rate schedule."""
    return optax.adam(learning_rate_schedule(config), b1=config.adam_b1, b2=config.adam_b2,
                      eps=config.adam_eps)


def create_train_state(config: ml_collections.ConfigDict, model: models.DRN,
                       optimizer: optax.GradientTransformation, rng: jax.Array,
                       init_params: Any | None = None) -> TrainState:
    """The initial state; parameters depend only on `rng` and the model, not on devices.

    `init_params` (a params tree of the model's structure, e.g. from `drn_jax.warm_start`)
    replaces the random parameters; the optimiser state and the EMA start from them.
    """
    lr_size = config.data.hr_patch_size // config.scale
    params = model.init(rng, jnp.zeros((1, lr_size, lr_size, 3), jnp.float32))["params"]
    if init_params is not None:
        params = init_params
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        # A copy: the step donates the state, and one buffer cannot be donated twice.
        ema_params=jax.tree.map(jnp.copy, params) if config.ema_decay > 0 else None,
    )


def eval_params(state: TrainState) -> Any:
    """The parameters to evaluate: the EMA when the run keeps one."""
    return state.params if state.ema_params is None else state.ema_params
