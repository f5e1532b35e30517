"""The upscaling factors drn-jax supports, defined once."""

from __future__ import annotations

import math

__all__ = ["BICUBIC_SCALES", "MODEL_SCALES", "check_model_scale", "num_levels"]

MODEL_SCALES = (2, 4, 8)
"""Factors a DRN can have: one primal block per factor of 2."""

BICUBIC_SCALES = (2, 3, 4, 8)
"""Factors the bicubic baseline is scored at (the paper's tables also list x3)."""


def check_model_scale(scale: int) -> int:
    """Returns `scale` if a DRN can have it; else raises ``ValueError`` naming the choices."""
    if scale not in MODEL_SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(str, MODEL_SCALES))}; got {scale!r}")
    return scale


def num_levels(scale: int) -> int:
    """Number of primal (and dual) blocks ``S = log2(scale)`` for `scale` in `MODEL_SCALES`.

    Raises:
      ValueError: `scale` is not 2, 4 or 8.
    """
    return int(round(math.log2(check_model_scale(scale))))
