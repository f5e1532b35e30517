"""Running a super-resolution network on whole images: the path shared by evaluation and upscaling.

An :class:`Upscaler` maps one 8-bit RGB image ``(H, W, 3)`` to its ``(H·s, W·s, 3)``
super-resolution, whatever the size of the image, with a bounded number of XLA compilations and,
when tiled, bounded memory:

* **Size buckets** (``tile=None``). A jitted network compiles once per input shape, and
  benchmark images all differ in size. Each LR image is therefore padded (symmetric mirror at the
  bottom and right) to a square whose side is the smallest *bucket* ``2^k`` or ``3·2^(k-1)``
  (16, 24, 32, 48, 64, 96, 128, 192, ...) that holds it, and the output is cropped back. A pass
  over Set14 at x4 (LR sides 62 to 192) compiles 3 times (96, 128, 192). The price: past the
  bottom and right edges the network sees mirrored content instead of its zero padding, so
  outputs within :func:`receptive_field_radius` (24 LR pixels for the paper's x4 model) of
  those two edges differ from an unpadded run. The protocol's shave (``scale`` HR pixels) does
  not remove that band, so scores can move slightly (mirroring is usually the better guess of
  what lies past an edge); images whose sides equal a bucket are unaffected.
* **Tiles** (``tile=T``). Images larger than ``T×T`` LR pixels run as fixed ``T×T`` tiles (one
  compilation; memory set by ``T``, not by the image). Each tile keeps ``tile_overlap`` LR pixels
  of context on every side that touches another tile and only its inner part is used; with
  ``tile_overlap >= receptive_field_radius(model)`` the result equals the untiled run exactly (to
  float rounding), because every used output pixel then sees the same inputs as in the whole
  image. Tiles that reach the image border see the real border. Images that fit in one tile take
  the bucket path (bucket capped at ``T``); a side shorter than ``T`` in a larger image is
  mirror-padded to ``T``.
* **Self-ensemble** (``self_ensemble=True``): the 8 flips/rotations of the dihedral group are
  run, each output transformed back, and the 8 averaged in float before rounding (Lim et al.,
  EDSR+). It runs per bucket or per tile, and both are square, so it adds no compilation.

Float network outputs are clipped to ``[0, 1]`` and rounded to 8 bits by :func:`to_uint8` only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from drn_jax import models
from drn_jax.resize import imresize

__all__ = [
    "BicubicUpscaler",
    "ModelRunner",
    "Upscaler",
    "bucket_size",
    "dihedral_transforms",
    "make_upscaler",
    "receptive_field_radius",
    "tile_spans",
    "to_uint8",
]

PredictFn = Callable[[np.ndarray], np.ndarray]
"""Float32 ``(B, h, w, 3)`` in ``[0, 1]`` -> float ``(B, h·s, w·s, 3)``."""
ArrayMap = Callable[[np.ndarray], np.ndarray]

MIN_BUCKET = 16


class ImageUpscaler(Protocol):
    """What evaluation and the upscaler CLI need from a method (network or bicubic)."""

    scale: int

    def __call__(self, lr: np.ndarray) -> np.ndarray: ...

    @property
    def compilations(self) -> int: ...


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float ``[0, 1]`` image -> uint8: clipped, ×255, rounded half up (MATLAB's ``im2uint8``).

    The single rounding step of drn-jax's outputs (``resize.imresize`` rounds its own uint8
    passes the same way: saturate, then ``floor(x + 0.5)``).
    """
    scaled = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * np.float32(255.0)
    return np.floor(scaled + np.float32(0.5)).astype(np.uint8)


def _to_float(lr: np.ndarray) -> np.ndarray:
    lr = np.asarray(lr)
    if lr.ndim != 3 or lr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3); got shape {lr.shape}")
    if lr.dtype == np.uint8:
        return lr.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(lr.dtype, np.floating):
        raise TypeError(f"expected uint8 or float [0, 1] pixels; got {lr.dtype}")
    return lr.astype(np.float32)


# ---------------------------------------------------------------------------
# Geometry: receptive field, size buckets, tiles, dihedral transforms
# ---------------------------------------------------------------------------

def receptive_field_radius(model: models.DRN) -> int:
    """LR pixels of context the final output of ``model.upscale`` needs on each side.

    Counted from the architecture (:mod:`drn_jax.models`): every 3×3 convolution adds one pixel
    at the resolution it runs at, and a pixel-shuffle or a ×2 upsampling maps a margin of ``m``
    pixels at the finer level to ``ceil(m / 2)`` at the coarser one (the bilinear upsampling of
    ``image_residual`` adds one more coarse pixel for its second tap). Exact, not just an upper
    bound, for the default architecture (the tests check it against the gradient's support):
    the output pixels of LR pixel ``u`` depend on LR inputs within ``u ± radius`` and no
    further. Equal to 24 for the paper's x4 model (R = 7), 6 for R = 1 at x4.
    """
    levels = models.num_levels(model.scale)
    convs_per_block = 2 * model.modules_per_block + 1  # residual modules, then the F->4F conv

    def features_margin(level: int, margin: int) -> int:
        """Input margin needed for the features entering level ``level`` (after its shuffle)."""
        if level == 0:
            return margin + 1  # the head convolution
        return features_margin(level - 1, math.ceil(margin / 2) + convs_per_block)

    def image_margin(level: int, margin: int) -> int:
        """Input margin needed for the primal image at ``level`` (level 0 is the LR input)."""
        if level == 0:
            return margin
        needed = features_margin(level, margin + 1)  # the to_rgb convolution
        if model.image_residual:
            if model.progressive:  # + upsampled image of the level below
                needed = max(needed, image_margin(level - 1, math.ceil(margin / 2) + 1))
            else:  # + the LR input upsampled by the whole factor
                needed = max(needed, math.ceil(margin / model.scale) + 1)
        return needed

    return image_margin(levels, 0)


@functools.lru_cache(maxsize=None)
def _bucket_sides(limit: int) -> tuple[int, ...]:
    sides = {MIN_BUCKET}
    power = MIN_BUCKET
    while power < limit:
        sides.update((power, 3 * power // 2, 2 * power))
        power *= 2
    return tuple(sorted(sides))


def bucket_size(side: int) -> int:
    """The smallest bucket ``>= side`` among 16, 24, 32, 48, ..., ``2^k``, ``3·2^(k-1)``.

    Geometric with ratio at most 1.5, so padding wastes at most 1.5× per side while image
    sides spanning a factor ``f`` fall into about ``2·log2(f) + 1`` buckets.
    """
    if side < 1:
        raise ValueError(f"side must be positive; got {side}")
    return next(size for size in _bucket_sides(side) if size >= side)


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """Covers ``[0, length)`` with tiles of ``tile`` pixels along one axis.

    Returns ``(start, lo, hi)`` per tile: the tile reads ``[start, start + tile)`` and supplies
    the output for ``[lo, hi)``. Inner tile edges keep ``overlap`` pixels of context that are
    computed but not used; edges on the image border use everything (the border there is the
    real one). The used ranges partition ``[0, length)``. Requires ``length >= tile``.
    """
    if tile <= 2 * overlap:
        raise ValueError(
            f"tile={tile} must be larger than 2 * tile_overlap = {2 * overlap}; "
            "use a larger --tile or a smaller --tile_overlap")
    if length < tile:
        raise ValueError(f"length {length} is shorter than one tile ({tile})")
    step = tile - 2 * overlap
    count = math.ceil((length - tile) / step) + 1
    starts = [min(k * step, length - tile) for k in range(count)]
    spans, done = [], 0
    for index, start in enumerate(starts):
        usable_hi = length if index == count - 1 else start + tile - overlap
        spans.append((start, done, usable_hi))
        done = usable_hi
    return spans


def dihedral_transforms() -> list[tuple[ArrayMap, ArrayMap]]:
    """The 8 (forward, inverse) pairs of the dihedral group on the ``H, W`` axes of NHWC arrays.

    Forward: rotate by ``k·90°`` then optionally flip left-right; inverse undoes it. The first
    pair is the identity.
    """
    pairs = []
    for flip in (False, True):
        for k in range(4):
            def forward(x, k=k, flip=flip):
                y = np.rot90(x, k, axes=(1, 2))
                return y[:, :, ::-1] if flip else y

            def inverse(y, k=k, flip=flip):
                y = y[:, :, ::-1] if flip else y
                return np.rot90(y, -k, axes=(1, 2))

            pairs.append((forward, inverse))
    return pairs


# ---------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------

class ModelRunner:
    """``jax.jit(model.apply(variables, lr, method="upscale"))`` with the variables as an argument.

    Passing the variables as an argument (not a closure constant) lets one compiled function
    serve every checkpoint or training-time parameter set of the same architecture, and keeps
    the parameters out of the compiled program.
    """

    def __init__(self, model: models.DRN):
        self.model = model
        self._apply = jax.jit(functools.partial(model.apply, method="upscale"))

    def __call__(self, variables: Any, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._apply(variables, batch))

    def cache_size(self) -> int | None:
        """Compiled variants held by the jit cache (a private JAX API; ``None`` if absent)."""
        size = getattr(self._apply, "_cache_size", None)
        return size() if callable(size) else None

    def bind(self, variables: Any) -> PredictFn:
        return functools.partial(self, variables)


class Upscaler:
    """Upscales one RGB image with a float network; see the module docstring for the strategy.

    Call it with a uint8 ``(H, W, 3)`` LR image to get the uint8 ``(H·s, W·s, 3)`` output;
    :meth:`upscale_float` returns the float output before clipping and rounding.

    Attributes:
      scale: the upscaling factor.
      tile: tile side in LR pixels, or ``None`` for whole images padded to a size bucket.
      tile_overlap: LR pixels of context kept around each tile's used part.
      self_ensemble: average the 8 dihedral transforms.
      shapes: the distinct input shapes passed to the network, in first-use order.
    """

    def __init__(self, predict: PredictFn, scale: int, *, tile: int | None = None,
                 tile_overlap: int = 0, self_ensemble: bool = False):
        if tile is not None:
            if tile < 1:
                raise ValueError(f"tile must be a positive number of LR pixels; got {tile}")
            if tile_overlap < 0:
                raise ValueError(f"tile_overlap must be non-negative; got {tile_overlap}")
            if tile <= 2 * tile_overlap:
                raise ValueError(
                    f"tile={tile} must be larger than 2 * tile_overlap = {2 * tile_overlap}; "
                    "use a larger --tile or a smaller --tile_overlap")
        self._predict = predict
        self.scale = int(scale)
        self.tile = tile
        self.tile_overlap = int(tile_overlap)
        self.self_ensemble = self_ensemble
        self.shapes: list[tuple[int, ...]] = []

    @property
    def compilations(self) -> int:
        """Distinct input shapes sent to the network: its compilations, for a jitted network."""
        return len(self.shapes)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        return self._upscale(lr, to_uint8, np.uint8)

    def upscale_float(self, lr: np.ndarray) -> np.ndarray:
        """Float32 ``(H·s, W·s, 3)`` network output for a uint8 or float ``[0, 1]`` LR image."""
        return self._upscale(lr, lambda block: block, np.float32)

    def _upscale(self, lr: np.ndarray, finish: Callable[[np.ndarray], np.ndarray],
                 dtype: type) -> np.ndarray:
        # `finish` converts each block as it is placed, so a uint8 result never needs a float
        # copy of the whole (possibly huge) output.
        x = _to_float(lr)
        height, width = x.shape[:2]
        s = self.scale
        if self.tile is None or (height <= self.tile and width <= self.tile):
            side = bucket_size(max(height, width))
            if self.tile is not None:
                side = min(side, self.tile)
            return finish(self._run_block(_pad_to(x, side, side))[: height * s, : width * s])

        tile = self.tile
        padded = _pad_to(x, max(height, tile), max(width, tile))
        out = np.empty((height * s, width * s, 3), dtype)
        for top, row_lo, row_hi in tile_spans(padded.shape[0], tile, self.tile_overlap):
            row_hi = min(row_hi, height)
            for left, col_lo, col_hi in tile_spans(padded.shape[1], tile, self.tile_overlap):
                col_hi = min(col_hi, width)  # a side shorter than a tile was padded
                block = self._run_block(padded[top: top + tile, left: left + tile])
                out[row_lo * s: row_hi * s, col_lo * s: col_hi * s] = finish(block[
                    (row_lo - top) * s: (row_hi - top) * s, (col_lo - left) * s: (col_hi - left) * s])
        return out

    def _run_block(self, block: np.ndarray) -> np.ndarray:
        """Network output for one ``(h, w, 3)`` float block, self-ensembled if asked."""
        batch = block[None]
        if not self.self_ensemble:
            return self._network(batch)[0]
        total = None
        # One transform at a time: memory stays that of a single pass.
        for forward, inverse in dihedral_transforms():
            output = inverse(self._network(np.ascontiguousarray(forward(batch))))
            total = output if total is None else total + output
        return total[0] / np.float32(8.0)

    def _network(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape not in self.shapes:
            self.shapes.append(batch.shape)
        output = np.asarray(self._predict(batch), dtype=np.float32)
        expected = (batch.shape[0], batch.shape[1] * self.scale, batch.shape[2] * self.scale, 3)
        if output.shape != expected:
            raise ValueError(f"the network returned shape {output.shape} for input {batch.shape}; "
                             f"expected {expected} at scale {self.scale}")
        return output


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Symmetric (edge-repeating mirror) padding at the bottom and right up to ``height × width``."""
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h == 0 and pad_w == 0:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")


class BicubicUpscaler:
    """The bicubic baseline through the same interface: MATLAB ``imresize(lr, scale)`` on uint8.

    Rounded to uint8 inside ``imresize`` after each separable pass, as MATLAB does for 8-bit
    images, which is how the published bicubic rows were made.
    """

    def __init__(self, scale: int):
        self.scale = int(scale)

    compilations = 0  # no network

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        lr = np.asarray(lr)
        if lr.dtype != np.uint8:
            raise TypeError(f"expected uint8 pixels; got {lr.dtype}")
        return np.asarray(imresize(lr, self.scale))

    def upscale_float(self, lr: np.ndarray) -> np.ndarray:
        """Unrounded bicubic interpolation of the float ``[0, 1]`` image."""
        return np.asarray(imresize(_to_float(lr), self.scale))


def make_upscaler(predict: models.DRN | ModelRunner | PredictFn, scale: int | None = None, *,
                  variables: Any = None, tile: int | None = None, tile_overlap: int | None = None,
                  self_ensemble: bool = False) -> Upscaler:
    """An :class:`Upscaler` for a DRN (with its variables) or any float predict function.

    Args:
      predict: a :class:`~drn_jax.models.DRN`, a :class:`ModelRunner` (to share one compiled
        function between upscalers), or a function from float32 ``(B, h, w, 3)`` in ``[0, 1]``
        to ``(B, h·s, w·s, 3)`` (called as is; jit it yourself if it should be compiled).
      scale: the factor; defaults to the model's.
      variables: the model's variables (required with a model).
      tile: tile side in LR pixels, or ``None`` to run whole images padded to size buckets.
      tile_overlap: context per tile side; defaults to the model's receptive-field radius
        (exact tiling). Required for a plain function when ``tile`` is set.
      self_ensemble: average the 8 flips/rotations.
    """
    model = predict.model if isinstance(predict, ModelRunner) else predict
    if isinstance(model, models.DRN):
        if variables is None:
            raise ValueError("variables are required to run a model")
        if scale is not None and scale != model.scale:
            raise ValueError(f"the model upscales x{model.scale}, not x{scale}")
        scale = model.scale
        if tile_overlap is None:
            tile_overlap = receptive_field_radius(model)
        runner = predict if isinstance(predict, ModelRunner) else ModelRunner(model)
        predict = runner.bind(variables)
    elif scale is None:
        raise ValueError("scale is required with a predict function")
    if tile is not None and tile_overlap is None:
        raise ValueError("tile_overlap is required with a predict function and tiles")
    return Upscaler(predict, scale, tile=tile, tile_overlap=tile_overlap or 0,
                    self_ensemble=self_ensemble)

