"""Losses of DRN (Guo et al., "Dual Reconstruction Nets for Image Super-Resolution with
Gradient Sensitive Loss", arXiv 1809.07099): pure ``jax.numpy`` functions.

Equation numbers refer to the paper; the equations themselves were lost in text extraction and
are reconstructed in ``docs/method.md#losses`` (mostly from the authors' later public code).

Conventions shared by every function here:

* Images are channels-last arrays of shape ``(..., H, W, C)`` (typically ``(B, H, W, 3)``; the
  leading axes are optional) with values in ``[0, max_value]`` (``max_value = 1.0`` by default).
* Every loss casts its inputs to ``float32`` before doing arithmetic, so ``bfloat16`` network
  outputs are accumulated in full precision, and returns a ``float32`` scalar.
* Every norm is a *mean* over all elements (batch included), never a sum, so a batch's loss is
  the mean of its images' losses when the images share a shape.
* ``pred`` and ``target`` must have the same shape; broadcasting is refused (``ValueError``)
  because a silently broadcast target is almost always a pipeline bug.

This module imports neither Flax nor TensorFlow, so that metrics and data code may use it freely.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AUTHORS_DENOMINATOR_EPS",
    "AUTHORS_SQRT_EPS",
    "LOSSES",
    "LossFn",
    "LossSpec",
    "drn_objective",
    "get_loss",
    "hyperparameter_defaults",
    "gradient_loss",
    "gradient_mask",
    "gs_loss",
    "image_gradients",
    "l1_loss",
    "mse_loss",
    "pixel_gradient_loss",
]

# The authors' code works on 0-255 values and uses these constants there (docs/method.md#eq-4-the-gradient-mask).
AUTHORS_SQRT_EPS = 1e-4  # ε inside the square root of the gradient magnitude
AUTHORS_DENOMINATOR_EPS = 1e-5  # ε' in the mask's min-max normalisation denominator
_AUTHORS_MAX_VALUE = 255.0

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
"""A per-level loss: ``loss(pred, target) -> float32 scalar``."""


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _check_image(x: jax.Array, name: str) -> None:
    if jnp.ndim(x) < 3:
        raise ValueError(f"{name} must have shape (..., H, W, C); got shape {jnp.shape(x)}")


def _check_pair(pred: jax.Array, target: jax.Array) -> None:
    _check_image(pred, "pred")
    _check_image(target, "target")
    if jnp.shape(pred) != jnp.shape(target):
        raise ValueError(
            f"pred and target must have the same shape; got {jnp.shape(pred)} and "
            f"{jnp.shape(target)}"
        )


def _float32(x: jax.Array) -> jax.Array:
    # Accumulate in fp32 whatever the network's compute dtype (bf16 sums lose ~3 digits).
    return jnp.asarray(x, dtype=jnp.float32)


def _mean_abs(x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(x))


def _scaled_eps(max_value: float) -> tuple[float, float]:
    """The authors' ε (sqrt) and ε' (denominator), moved from the 0-255 scale to ``max_value``.

    ε sits under a square root next to squared values, so it scales with the square of the
    value range; ε' is added to a difference of magnitudes, so it scales linearly. With this
    rescaling the mask of ``x * max_value / 255`` equals the authors' mask of ``x``.
    """
    ratio = max_value / _AUTHORS_MAX_VALUE
    return AUTHORS_SQRT_EPS * ratio**2, AUTHORS_DENOMINATOR_EPS * ratio


# ----------------------------------------------------------------------------------------------
# Image gradients and the gradient mask (Eqs. 2 and 4)
# ----------------------------------------------------------------------------------------------


def image_gradients(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Horizontal and vertical image gradients of Eq. 2 (central differences, no ½).

    ``grad_h[..., r, c, k] = x[..., r, c - 1, k] - x[..., r, c + 1, k]`` — a depthwise
    cross-correlation with the kernel ``[1, 0, -1]`` along the width axis, computed for the
    valid positions only and zero-padded by one column on each side, so the first and last
    columns of ``grad_h`` are 0. ``grad_v`` is the same along the height axis (first and last
    rows 0). This is the authors' operator (docs/method.md#eq-2-image-gradients-and-the-gradient-loss): not Sobel, not forward differences.

    Args:
      x: image(s) of shape ``(..., H, W, C)``, any real dtype and value range. Images narrower
        (shorter) than 3 pixels have no valid position and get an all-zero gradient. A NumPy
        array is differenced in NumPy (and NumPy arrays come back).

    Returns:
      ``(grad_h, grad_v)``, each with the shape and dtype of ``x``; values lie in
      ``[-max_value, max_value]`` for inputs in ``[0, max_value]``.
    """
    _check_image(x, "x")
    if isinstance(x, np.ndarray):
        # Host evaluation (drn_jax.metrics.score_y_host): the same differences in NumPy, so
        # scoring an image of a new shape compiles nothing.
        grad_h, grad_v = np.zeros_like(x), np.zeros_like(x)
        grad_h[..., 1:-1, :] = x[..., :-2, :] - x[..., 2:, :]
        grad_v[..., 1:-1, :, :] = x[..., :-2, :, :] - x[..., 2:, :, :]
        return grad_h, grad_v
    x = jnp.asarray(x)
    # Writing the valid differences into a zero array (rather than padding) keeps the shape
    # right even for H or W < 3, where the valid region is empty.
    grad_h = jnp.zeros_like(x).at[..., 1:-1, :].set(x[..., :-2, :] - x[..., 2:, :])
    grad_v = jnp.zeros_like(x).at[..., 1:-1, :, :].set(x[..., :-2, :, :] - x[..., 2:, :, :])
    return grad_h, grad_v


def gradient_mask(target: jax.Array, max_value: float = 1.0) -> jax.Array:
    """The gradient mask ``M`` of Eq. 4, computed from the ground truth only.

    ``G = sqrt(grad_h(I)**2 + grad_v(I)**2 + ε)`` per colour channel, then
    ``M = (G - min G) / (max G - min G + ε')`` with the min and max taken per image over all
    ``H × W × C`` entries. ``ε = 1e-4`` and ``ε' = 1e-5`` are the authors' values on the 0-255
    scale, rescaled to ``max_value`` (``ε · (max_value/255)²`` and ``ε' · max_value/255``).

    ``M`` is a constant for the optimiser: the result is wrapped in ``jax.lax.stop_gradient``
    (docs/method.md#eq-4-the-gradient-mask, high confidence). ``ε`` keeps the square root away from 0 and ``ε'`` keeps a flat
    image's mask at ``0 / ε' = 0`` instead of ``0 / 0``.

    Args:
      target: ground-truth image(s) of shape ``(..., H, W, C)``, values in ``[0, max_value]``.
      max_value: the white level of ``target`` (1.0 for [0, 1] images, 255.0 for 0-255).

    Returns:
      ``float32`` array shaped like ``target`` with values in ``[0, 1)``: exactly 0 at each
      image's smallest gradient magnitude and ``1 - ε'/(max G - min G + ε')`` at its largest
      (all 0 for a flat image).
    """
    _check_image(target, "target")
    sqrt_eps, denominator_eps = _scaled_eps(max_value)
    # Stop the gradient on the input as well, so no backward pass ever touches the sqrt.
    target = jax.lax.stop_gradient(_float32(target))
    grad_h, grad_v = image_gradients(target)
    magnitude = jnp.sqrt(grad_h**2 + grad_v**2 + sqrt_eps)
    image_axes = (-3, -2, -1)  # per image: over H, W and C together
    low = jnp.min(magnitude, axis=image_axes, keepdims=True)
    high = jnp.max(magnitude, axis=image_axes, keepdims=True)
    mask = (magnitude - low) / (high - low + denominator_eps)
    return jax.lax.stop_gradient(mask)


# ----------------------------------------------------------------------------------------------
# Per-level losses (Eqs. 1, 2, 3, 5)
# ----------------------------------------------------------------------------------------------


def l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute error, Eq. 1 with p = 1: ``mean(|pred - target|)``.

    Args:
      pred: predicted image(s), shape ``(..., H, W, C)``.
      target: ground truth, same shape.

    Returns:
      ``float32`` scalar, in ``[0, max_value]`` for inputs in ``[0, max_value]``.
    """
    _check_pair(pred, target)
    return _mean_abs(_float32(pred) - _float32(target))


def mse_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error, Eq. 1 with p = 2: ``mean((pred - target)**2)``.

    Args:
      pred: predicted image(s), shape ``(..., H, W, C)``.
      target: ground truth, same shape.

    Returns:
      ``float32`` scalar, in ``[0, max_value**2]`` for inputs in ``[0, max_value]``.
    """
    _check_pair(pred, target)
    return jnp.mean(jnp.square(_float32(pred) - _float32(target)))


def gradient_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Gradient loss of Eq. 2: ``mean|∇h pred - ∇h target| + mean|∇v pred - ∇v target|``.

    The gradients are those of :func:`image_gradients`; each mean runs over all elements, the
    zero borders included.

    Args:
      pred: predicted image(s), shape ``(..., H, W, C)``.
      target: ground truth, same shape.

    Returns:
      ``float32`` scalar, in ``[0, 4 · max_value]`` for inputs in ``[0, max_value]``.
    """
    _check_pair(pred, target)
    # The gradient operator is linear, so ∇p - ∇t = ∇(p - t): one pass instead of two.
    grad_h, grad_v = image_gradients(_float32(pred) - _float32(target))
    return _mean_abs(grad_h) + _mean_abs(grad_v)


def pixel_gradient_loss(
    pred: jax.Array, target: jax.Array, lam: float = 2.0, pixel: str = "l1"
) -> jax.Array:
    """Joint pixel + gradient loss of Eq. 3: ``L_p(pred, target) + lam · L_g(pred, target)``.

    A baseline the paper compares against, not the method's loss. The paper does not give this
    λ; the default 2.0 reuses Eq. 5's (a guess, chosen so ``get_loss`` and direct calls agree).

    Args:
      pred: predicted image(s), shape ``(..., H, W, C)``.
      target: ground truth, same shape.
      lam: weight of the gradient term :func:`gradient_loss`.
      pixel: ``"l1"`` (:func:`l1_loss`) or ``"l2"`` (:func:`mse_loss`) for ``L_p``.

    Returns:
      ``float32`` scalar.
    """
    pixel_losses = {"l1": l1_loss, "l2": mse_loss}
    if pixel not in pixel_losses:
        raise ValueError(f"pixel must be one of {sorted(pixel_losses)}; got {pixel!r}")
    return pixel_losses[pixel](pred, target) + lam * gradient_loss(pred, target)


def gs_loss(
    pred: jax.Array, target: jax.Array, lam: float = 2.0, max_value: float = 1.0
) -> jax.Array:
    """Gradient-sensitive loss of Eq. 5.

    With ``M = gradient_mask(target)`` (Eq. 4, a constant for the optimiser)::

        L_GS = mean|∇h(M⊙pred) - ∇h(M⊙target)| + mean|∇v(M⊙pred) - ∇v(M⊙target)|
               + lam · mean|(1-M)⊙pred - (1-M)⊙target|

    The gradient term works on the high-frequency part ``M⊙I``, the pixel term on the
    low-frequency part ``(1-M)⊙I``. Every mean runs over all ``B × H × W × C`` elements, zero
    gradient borders included. λ = 2.0 is the paper's best value in its Table 6 (docs/method.md#guesses,
    medium confidence).

    Args:
      pred: predicted image(s), shape ``(..., H, W, C)``, values in ``[0, max_value]``.
      target: ground truth, same shape and range; it alone defines the mask.
      lam: weight of the low-frequency pixel term.
      max_value: the white level, used to rescale the mask's epsilons.

    Returns:
      ``float32`` scalar, 0 when ``pred == target``.
    """
    _check_pair(pred, target)
    mask = gradient_mask(target, max_value=max_value)
    error = _float32(pred) - _float32(target)
    # M⊙p - M⊙t = M⊙(p - t) and ∇ is linear, so the two gradient terms are ∇(M⊙(p - t)).
    grad_h, grad_v = image_gradients(mask * error)
    return _mean_abs(grad_h) + _mean_abs(grad_v) + lam * _mean_abs((1.0 - mask) * error)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered per-level loss.

    Attributes:
      fn: ``fn(pred, target, **hyperparameters[, max_value=...]) -> float32 scalar``.
      hyperparameters: the keyword arguments the loss takes from ``config.loss``, with their
        defaults; `drn_jax.config.base_config` creates a ``config.loss.<name>`` field for each.
      takes_max_value: whether `fn` takes the images' white level ``max_value``.
    """

    fn: Callable[..., jax.Array]
    hyperparameters: Mapping[str, float] = dataclasses.field(default_factory=dict)
    takes_max_value: bool = False


LOSSES: dict[str, LossSpec] = {
    "gs": LossSpec(gs_loss, {"lam": 2.0}, takes_max_value=True),
    "l1": LossSpec(l1_loss),
    "mse": LossSpec(mse_loss),
    "gradient": LossSpec(gradient_loss),
    "pixel_gradient": LossSpec(pixel_gradient_loss, {"lam": 2.0}),
}
"""Per-level losses by config name. A new loss is a function and one line here."""


def hyperparameter_defaults() -> dict[str, float]:
    """Every hyper-parameter a registered loss declares, with its default (first declaration wins)."""
    defaults: dict[str, float] = {}
    for spec in LOSSES.values():
        for name, value in spec.hyperparameters.items():
            defaults.setdefault(name, value)
    return defaults


def get_loss(name: str, max_value: float = 1.0, **hyperparameters: float) -> LossFn:
    """The per-level loss called ``name``, as ``loss(pred, target) -> float32 scalar``.

    Args:
      name: a key of `LOSSES` (``"gs"``, ``"l1"``, ``"mse"``, ``"gradient"``, ``"pixel_gradient"``).
      max_value: the white level, for losses that take it (``gs``, for its epsilons).
      **hyperparameters: values for the hyper-parameters the loss declares (e.g. ``lam``, λ of
        ``gs``, Eq. 5, and of ``pixel_gradient``, Eq. 3); missing ones take their declared
        defaults, and those the loss does not declare are ignored, so one config's
        ``loss.*`` fields serve every loss.

    Raises:
      ValueError: ``name`` is not a registered loss.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    spec = LOSSES[name]
    kwargs = {key: hyperparameters.get(key, default) for key, default in spec.hyperparameters.items()}
    if spec.takes_max_value:
        kwargs["max_value"] = max_value
    return functools.partial(spec.fn, **kwargs) if kwargs else spec.fn


# ----------------------------------------------------------------------------------------------
# The full DRN objective (Eqs. 6, 7)
# ----------------------------------------------------------------------------------------------


def _check_levels(
    outputs: Sequence[jax.Array], targets: Sequence[jax.Array], kind: str
) -> None:
    if len(outputs) != len(targets):
        raise ValueError(
            f"{kind}: got {len(outputs)} outputs but {len(targets)} targets; "
            "there must be one target per level"
        )
    for level, (output, target) in enumerate(zip(outputs, targets)):
        if jnp.shape(output) != jnp.shape(target):
            raise ValueError(
                f"{kind} level {level}: output shape {jnp.shape(output)} does not match "
                f"target shape {jnp.shape(target)}"
            )


def drn_objective(
    primal_outputs: Sequence[jax.Array],
    primal_targets: Sequence[jax.Array],
    dual_outputs: Sequence[jax.Array] | None = None,
    dual_targets: Sequence[jax.Array] | None = None,
    *,
    loss: str = "gs",
    dual_weight: float = 0.1,
    max_value: float = 1.0,
    **hyperparameters: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The DRN training objective of Eqs. 6/7.

    ``L = Σ_i [ L_P(Î_i, y_i) + dual_weight · L_D(D_i(Î_i), t_{i-1}) ]``, with ``L_P`` and
    ``L_D`` both the per-level loss ``loss`` (``L_GS`` in the paper). ``dual_weight = 0.1`` is
    the authors' later code; the paper shows no weight (docs/method.md#objective: a config value).

    Choosing the targets is the caller's job: ``y_i`` is the HR image bicubic-downsampled to
    level ``i`` (the HR itself at the last level); ``t_0`` is the LR input and ``t_{i-1}`` for
    ``i > 1`` is ``y_{i-1}`` (or, under the paper's other reading,
    ``stop_gradient(Î_{i-1})``).

    Args:
      primal_outputs: the primal images ``Î_i``, coarse to fine, each ``(B, H_i, W_i, C)``.
      primal_targets: the ``y_i``, same length and shapes.
      dual_outputs: the dual reconstructions ``D_i(Î_i)``, coarse to fine, or ``None`` to train
        without the dual term. Must have as many levels as ``primal_outputs``.
      dual_targets: the ``t_{i-1}``, same length and shapes as ``dual_outputs``; ``None`` iff
        ``dual_outputs`` is ``None``.
      loss: per-level loss name, see :func:`get_loss`.
      dual_weight: ``w_D``, the weight of the dual terms.
      max_value: the white level of the images.
      **hyperparameters: the per-level loss's hyper-parameters, e.g. ``lam`` (λ, Eq. 5).

    Returns:
      ``(total, terms)``: ``total`` a ``float32`` scalar; ``terms`` maps ``"primal"`` (sum of the
      primal terms), ``"dual"`` (sum of the *unweighted* dual terms; 0 without a dual path),
      ``"primal_0"``, ``"primal_1"``, ... and ``"dual_0"``, ... (per level, unweighted, coarse to
      fine) to ``float32`` scalars, so that ``total = primal + dual_weight · dual``.

    Raises:
      ValueError: no primal level, mismatched level counts, mismatched shapes, only one of
        ``dual_outputs``/``dual_targets`` given, or an unknown loss name.
    """
    level_loss = get_loss(loss, max_value=max_value, **hyperparameters)
    if len(primal_outputs) == 0:
        raise ValueError("primal_outputs must hold at least one level")
    _check_levels(primal_outputs, primal_targets, "primal")
    if (dual_outputs is None) != (dual_targets is None):
        raise ValueError("dual_outputs and dual_targets must both be given or both be None")

    terms: dict[str, jax.Array] = {}
    for level, (output, target) in enumerate(zip(primal_outputs, primal_targets)):
        terms[f"primal_{level}"] = level_loss(output, target)
    primal = sum(terms[f"primal_{i}"] for i in range(len(primal_outputs)))

    dual = jnp.zeros((), jnp.float32)
    if dual_outputs is not None:
        if len(dual_outputs) != len(primal_outputs):
            raise ValueError(
                f"got {len(primal_outputs)} primal levels but {len(dual_outputs)} dual levels; "
                "Eq. 6 pairs one dual term with each primal level"
            )
        _check_levels(dual_outputs, dual_targets, "dual")
        for level, (output, target) in enumerate(zip(dual_outputs, dual_targets)):
            terms[f"dual_{level}"] = level_loss(output, target)
        dual = sum(terms[f"dual_{i}"] for i in range(len(dual_outputs)))

    terms["primal"] = primal
    terms["dual"] = dual
    total = primal + dual_weight * dual
    return total, terms
