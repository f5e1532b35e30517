"""The training configuration: its fields, their defaults, and early validation.

Every config in `configs/` starts from `base_config()` and overrides what differs,
so the field names below are the whole vocabulary (`--config.loss.name=l1` etc.).
Defaults marked "guess" are where the paper is silent (docs/method.md#guesses). The loss
hyper-parameters (``loss.lam``, ...) are the ones the registered losses declare
(`drn_jax.losses.LOSSES`), so a new loss with a new hyper-parameter needs no edit here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from drn_jax import losses
from drn_jax.errors import ConfigError
from drn_jax.ops import CONV_ALGORITHMS
from drn_jax.scales import MODEL_SCALES

DTYPES = ("float32", "bfloat16")
DUAL_TARGETS = ("pyramid", "prediction")


def base_config() -> ml_collections.ConfigDict:
    """The paper's x4 setting (Section 5.1); configs override from here."""
    config = ml_collections.ConfigDict()
    config.scale = 4

    config.model = ml_collections.ConfigDict()
    config.model.features = 64  # guess (docs/method.md): gives the paper's ~1.34M parameters at x4
    config.model.modules_per_block = 7  # 14 modules at x4, 21 at x8
    config.model.dual = True
    config.model.progressive = True
    config.model.image_residual = False  # a LapSRN-style option (docs/method.md#network), off as in the paper
    config.model.dtype = "float32"  # computation dtype; "bfloat16" on accelerators
    # 3x3 convolutions: auto (Winograd on CPU, XLA's elsewhere), winograd, xla (backend-neutral;
    # what exports use) or packed (two pixels in 128 lanes, for TPUs). Not part of the
    # parameters: a run can be evaluated with another.
    config.model.conv = "auto"
    config.model.remat = False  # recompute residual modules in the backward pass: less memory

    config.loss = ml_collections.ConfigDict()
    config.loss.name = "gs"  # a name in drn_jax.losses.LOSSES: gs | l1 | mse | gradient | pixel_gradient
    # Every hyper-parameter a registered loss declares, at its declared default (lam: 2.0, Table
    # 6's best; medium confidence, docs/method.md#guesses).
    for name, value in losses.hyperparameter_defaults().items():
        config.loss[name] = value
    config.loss.dual_weight = 0.1  # the authors' later code; the paper shows no weight
    config.loss.dual_target = "pyramid"  # t_{i-1} = y_{i-1}; "prediction" uses Î_{i-1}

    config.data = ml_collections.ConfigDict()
    config.data.train = "tfds:imagenet2012:train:image"
    config.data.val = "samples:val"
    config.data.hr_patch_size = 192  # guess: 48-pixel LR patches
    config.data.shuffle_buffer = 1024
    # TFDS: crops cut from each decoded image (K > 1 decodes a JPEG once for K crops, ~K times
    # the crops per core; a batch then holds K crops of each image). Other sources ignore it.
    config.data.crops_per_image = 1
    config.data.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.val_limit = 0  # 0: every validation image

    config.batch_size = 16  # global, over all devices and processes
    config.num_train_steps = 1_000_000
    config.learning_rate = 1e-4
    config.lr_decay_every = 400_000  # guess: the interval was lost in extraction
    config.lr_decay_factor = 0.1  # step: the factor per decay; cosine: the final fraction
    config.lr_schedule = "step"  # step (the paper) | cosine
    config.warmup_steps = 0  # linear warm-up from 0 over this many steps
    config.adam_b1 = 0.9
    config.adam_b2 = 0.999
    config.adam_eps = 1e-8
    config.ema_decay = 0.0  # 0 turns the parameter EMA off
    # Warm start (drn_jax.warm_start): "" (random init), a pretrained name ("x4") or a workdir,
    # whose DRN of the same width and depth, at this scale or a lower one, gives the initial
    # parameters. Only a run's first step uses it; a resumed run restores its checkpoint.
    config.init_from = ""

    config.checkpoint_every_steps = 5000
    config.keep_checkpoints = 3
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.seed = 0
    config.distributed = False  # call jax.distributed.initialize() (multi-host)
    return config


def override(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Sets the dotted field `key` (``"model.features"``) of `config` to `value`.

    Raises `ConfigError` for a field the config does not have, or a non-bool for a bool field;
    an int for a float field becomes a float.
    """
    target = config
    *parents, leaf = key.split(".")
    try:
        for parent in parents:
            target = target[parent]
        current = target[leaf]
    except (KeyError, AttributeError, TypeError):
        raise ConfigError(f"override {key}={value!r}: the config has no field {key!r}") from None
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"override {key}={value!r}: expected True or False")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    target[leaf] = value


def from_saved(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A config saved as JSON (a workdir's ``config.json``, a model card) over today's defaults,
    so that fields added since it was saved get their default values."""

    def merge(base: dict, extra: Mapping[str, Any]) -> dict:
        merged = dict(base)
        for key, value in extra.items():
            nested = isinstance(value, Mapping) and isinstance(merged.get(key), dict)
            merged[key] = merge(merged[key], value) if nested else value
        return merged

    return ml_collections.ConfigDict(merge(base_config().to_dict(), saved))


def validate(config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1) -> None:
    """Raises `ConfigError` for settings that cannot train, before anything compiles."""
    if config.scale not in MODEL_SCALES:
        raise ConfigError(f"scale={config.scale} is not supported; use one of {', '.join(map(str, MODEL_SCALES))}")
    if config.loss.name not in losses.LOSSES:
        raise ConfigError(
            f"loss.name={config.loss.name!r} is unknown; use one of {', '.join(sorted(losses.LOSSES))}")
    if config.loss.dual_target not in DUAL_TARGETS:
        raise ConfigError(f"loss.dual_target={config.loss.dual_target!r} is unknown; use one of {DUAL_TARGETS}")
    if config.model.conv not in CONV_ALGORITHMS:
        raise ConfigError(f"model.conv={config.model.conv!r} is unknown; use one of {', '.join(CONV_ALGORITHMS)}")
    if config.model.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={config.model.dtype!r} is unknown; use one of {DTYPES}")
    patch = config.data.hr_patch_size
    if patch % config.scale:
        raise ConfigError(
            f"data.hr_patch_size={patch} is not divisible by scale={config.scale}; "
            f"use a multiple of {config.scale}, e.g. {config.scale * math.ceil(patch / config.scale)}")
    if config.batch_size % num_devices:
        raise ConfigError(
            f"batch_size={config.batch_size} is not divisible by the {num_devices} devices; "
            f"use a multiple of {num_devices}, e.g. {num_devices * max(1, round(config.batch_size / num_devices))}")
    if config.batch_size % num_processes:
        raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {num_processes} processes")
    if config.lr_schedule not in ("step", "cosine"):
        raise ConfigError(f"lr_schedule={config.lr_schedule!r} is unknown; use step or cosine")
    if not 0 <= config.warmup_steps < config.num_train_steps:
        raise ConfigError(f"warmup_steps={config.warmup_steps} must be in [0, num_train_steps)")
    for field in ("num_train_steps", "log_every_steps", "checkpoint_every_steps", "eval_every_steps",
                  "lr_decay_every", "keep_checkpoints"):
        if config[field] < 1:
            raise ConfigError(f"{field}={config[field]} must be at least 1")
    per_image = config.data.crops_per_image
    if isinstance(per_image, bool) or not isinstance(per_image, int) or per_image < 1:
        raise ConfigError(f"data.crops_per_image={per_image!r} must be an integer of at least 1")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(f"ema_decay={config.ema_decay} must be in [0, 1)")
