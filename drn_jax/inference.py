"""Running a super-resolution network on whole images: the path shared by evaluation and upscaling.

An :class:`Upscaler` maps an 8-bit RGB image ``(H, W, 3)`` to ``(H·s, W·s, 3)`` with few
compilations: whole images padded to size buckets, or tiles planned by :func:`plan_tiles`
whose result equals the untiled one when the overlap covers the receptive field.

How it works: docs/internals.md#inference-buckets-tiles-and-self-ensemble.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from drn_jax import models, ops
from drn_jax.resize import imresize_host

__all__ = [
    "BicubicUpscaler",
    "ModelRunner",
    "TilePlan",
    "Upscaler",
    "bucket_size",
    "dihedral_transforms",
    "make_upscaler",
    "plan_tiles",
    "receptive_field_radius",
    "tile_spans",
    "to_bits",
    "to_uint8",
]

PredictFn = Callable[[np.ndarray], np.ndarray]
"""Float32 ``(B, h, w, 3)`` in ``[0, 1]`` -> float ``(B, h·s, w·s, 3)``."""
SizedPredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(batch, sizes)`` -> output: int32 ``(B, 2)`` ``sizes`` are the valid LR sizes of the
zero-padded entries, and each entry's output is what its unpadded image gives."""
TILE_AXIS = "tiles"  # the mesh axis a ModelRunner splits its batch over
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
    return to_bits(image, 8)


def to_bits(image: np.ndarray, bits: int) -> np.ndarray:
    """Float ``[0, 1]`` image -> ``bits``-bit integers (8: uint8, 16: uint16): clipped, scaled
    by ``2^bits - 1``, rounded half up, as :func:`to_uint8` (which is ``bits=8``)."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16; got {bits}")
    top = np.float32(2 ** bits - 1)
    scaled = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * top
    return np.floor(scaled + np.float32(0.5)).astype(np.uint8 if bits == 8 else np.uint16)


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


TILE_GRANULARITIES = (16, 8, 4, 2, 1)
"""Tile sides are multiples of the first of these whose plan is within :data:`MAX_TILE_WORK`."""
MAX_TILE_WORK = 1.3
"""Tiles (overlap and padding included) may hold this many times the image's pixels, or
(small images) a quarter of the tile budget more, before finer tile sides are tried."""


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """How :class:`Upscaler` cuts one image into tiles of one shape.

    Attributes:
      shape: ``(height, width)`` of every tile, in LR pixels; a tile that reaches past the
        image (a side shorter than a tile) is padded.
      rows: :func:`tile_spans` of the image's height for tiles of ``shape[0]`` pixels.
      cols: the same along the width.
    """

    shape: tuple[int, int]
    rows: tuple[tuple[int, int, int], ...]
    cols: tuple[tuple[int, int, int], ...]

    @property
    def count(self) -> int:
        """Number of tiles."""
        return len(self.rows) * len(self.cols)

    @property
    def work(self) -> int:
        """LR pixels the network computes: tiles × tile area (overlap and padding included)."""
        return self.count * self.shape[0] * self.shape[1]


def _tile_side(length: int, count: int, overlap: int, granularity: int) -> int:
    """The shortest multiple of `granularity` whose `count` tiles cover `length` with
    `overlap` pixels of context on each inner side: ``count·t - 2·overlap·(count - 1) >= length``."""
    needed = length if count == 1 else -(-(length + 2 * overlap * (count - 1)) // count)
    return -(-needed // granularity) * granularity


def _best_grid(height: int, width: int, area: int, overlap: int, granularity: int,
               square: bool) -> tuple[int, tuple[int, int]] | None:
    """(work, tile shape) of the least-work grid of equal tiles with sides multiples of
    `granularity` and at most `area` pixels each (ties: fewer tiles), or None if none fits."""
    best: tuple[int, int, tuple[int, int]] | None = None  # (work, tiles, shape)
    floor = 2 * overlap + 1  # the thinnest tile that still supplies a pixel between two others
    for rows in range(1, height + 1):
        if best is not None and (height + 2 * overlap * (rows - 1)) * width >= best[0]:
            break  # more rows only add overlap
        tile_h = _tile_side(height, rows, overlap, granularity)
        if rows > 1 and tile_h < floor:
            break
        widest = math.isqrt(area) if square else area // tile_h
        if tile_h > widest and square:
            continue
        # The fewest columns whose tiles are at most `widest` wide: more only add overlap.
        cols = 1
        if _tile_side(width, 1, overlap, granularity) > widest:
            if width <= 2 * overlap or _tile_side(floor, 1, overlap, granularity) > widest:
                continue  # no column count fits beside tiles this tall
            cols = max(2, -(-(width - 2 * overlap) // (widest - 2 * overlap)) - 1)
            while _tile_side(width, cols, overlap, granularity) > widest:
                cols += 1
        tile_w = _tile_side(width, cols, overlap, granularity)
        shape = (max(tile_h, tile_w),) * 2 if square else (tile_h, tile_w)
        work = rows * cols * shape[0] * shape[1]
        if best is None or (work, rows * cols) < best[:2]:
            best = (work, rows * cols, shape)
    return None if best is None else (best[0], best[2])


def plan_tiles(height: int, width: int, tile: int, overlap: int, *, square: bool = False) -> TilePlan:
    """The tiles :class:`Upscaler` cuts an ``height × width`` image into, at most ``tile²`` LR
    pixels each, with ``overlap`` pixels of context on every inner side.

    The budget is an area: tiles need not be square (``square=True`` makes them so, for the
    self-ensemble, whose rotations must keep the shape). Every tile of an image has one shape,
    and its sides are multiples of 16, so images of similar sizes share compilations. Among
    the grids whose tiles fit the budget, the one that computes the fewest pixels is taken
    (ties: fewer tiles); its tiles are spread evenly (:func:`tile_spans`). Should rounding the
    sides to 16 cost more than :data:`MAX_TILE_WORK` times the image's pixels (or, for small
    images, more than a quarter of the budget), multiples of 8, 4, 2, then 1 are tried.
    """
    if height < 1 or width < 1:
        raise ValueError(f"the image must have pixels; got {height}×{width}")
    if tile <= 2 * overlap:
        raise ValueError(
            f"tile={tile} must be larger than 2 * tile_overlap = {2 * overlap}; "
            "use a larger --tile or a smaller --tile_overlap")
    pixels, area = height * width, tile * tile
    grids = {granularity: _best_grid(height, width, area, overlap, granularity, square)
             for granularity in TILE_GRANULARITIES}
    finest = grids[1]
    assert finest is not None  # sides of any length fit: tile > 2·overlap
    # Finer sides only where they save work: not for a small image, where another compilation
    # costs more, nor for a huge one, whose overlap alone exceeds the limit (then within 5%).
    allowed = max(MAX_TILE_WORK * pixels, pixels + area // 4)
    if finest[0] > allowed:
        allowed = 1.05 * finest[0]
    _, (tile_h, tile_w) = next(grid for grid in grids.values() if grid is not None and grid[0] <= allowed)
    return TilePlan((tile_h, tile_w), tuple(tile_spans(max(height, tile_h), tile_h, overlap)),
                    tuple(tile_spans(max(width, tile_w), tile_w, overlap)))


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """Covers ``[0, length)`` with the fewest tiles of ``tile`` pixels along one axis, evenly spread.

    Returns ``(start, lo, hi)`` per tile: the tile reads ``[start, start + tile)`` and supplies
    the output for ``[lo, hi)``. Inner tile edges keep at least ``overlap`` pixels of context
    that are computed but not used (each boundary sits in the middle of two tiles' common
    part); edges on the image border use everything (the border there is the real one). The
    used ranges partition ``[0, length)``. Requires ``length >= tile``, and
    ``tile > 2·overlap`` unless one tile covers the axis.
    """
    if length < tile:
        raise ValueError(f"length {length} is shorter than one tile ({tile})")
    if length > tile and tile <= 2 * overlap:
        raise ValueError(
            f"tile={tile} must be larger than 2 * tile_overlap = {2 * overlap}; "
            "use a larger --tile or a smaller --tile_overlap")
    gaps = math.ceil((length - tile) / (tile - 2 * overlap)) if length > tile else 0
    # Consecutive starts differ by floor or ceil of (length - tile) / gaps <= tile - 2·overlap,
    # so neighbours share at least 2·overlap pixels.
    starts = [k * (length - tile) // gaps if gaps else 0 for k in range(gaps + 1)]
    ends = [(start + following + tile) // 2 for start, following in zip(starts, starts[1:])] + [length]
    return [(start, lo, hi) for start, lo, hi in zip(starts, [0, *ends[:-1]], ends)]


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
    """``jax.jit(model.apply(variables, lr, sizes, method="upscale"))``, optionally over devices.

    Passing the variables as an argument (not a closure constant) lets one compiled function
    serve every checkpoint or training-time parameter set of the same architecture, and keeps
    the parameters out of the compiled program. ``sizes`` (the valid LR size of each
    zero-padded batch entry, see :meth:`drn_jax.models.DRN.upscale`) is a traced argument, so
    one compilation serves every image that fits the batch's shape.

    With several ``devices`` the batch is split over them (``jax.shard_map`` over a 1-D mesh,
    each device running the whole network on its share, the variables replicated): the batch
    size must be a multiple of the device count.

    A model whose ``conv`` is ``"auto"`` runs with the algorithm that ``"auto"`` stands for in
    inference on the devices' platform (:func:`drn_jax.ops.resolve_conv_algorithm`); ``model``
    is then that clone.
    """

    def __init__(self, model: models.DRN, devices: Sequence[jax.Device] | None = None):
        self.devices = tuple(devices) if devices else ()
        if model.conv == "auto":
            platform = self.devices[0].platform if self.devices else jax.default_backend()
            model = model.clone(conv=ops.resolve_conv_algorithm(
                "auto", platform=platform, features=model.features, training=False))
        self.model = model
        apply = functools.partial(model.apply, method="upscale")
        self._mesh = None
        if len(self.devices) > 1:
            self._mesh = jax.sharding.Mesh(np.asarray(self.devices), (TILE_AXIS,))
            spec = jax.sharding.PartitionSpec(TILE_AXIS)
            apply = jax.shard_map(apply, mesh=self._mesh,
                                  in_specs=(jax.sharding.PartitionSpec(), spec, spec), out_specs=spec)
        self._apply = jax.jit(apply)
        self._placed: tuple[Any, Any] | None = None  # (variables, their device copy)

    @property
    def device_count(self) -> int:
        """How many devices one call runs on (a batch must be a multiple of it)."""
        return max(1, len(self.devices))

    def _place(self, variables: Any) -> Any:
        """The variables on the runner's devices, copied once per variables object."""
        if self._placed is not None and self._placed[0] is variables:
            return self._placed[1]
        if self._mesh is not None:
            placed = jax.device_put(variables, jax.sharding.NamedSharding(
                self._mesh, jax.sharding.PartitionSpec()))
        elif self.devices:
            placed = jax.device_put(variables, self.devices[0])
        else:
            placed = variables
        self._placed = (variables, placed)
        return placed

    def __call__(self, variables: Any, batch: np.ndarray, sizes: np.ndarray | None = None
                 ) -> np.ndarray:
        """Float32 ``(B, h·s, w·s, 3)`` outputs of the float ``(B, h, w, 3)`` batch.

        ``sizes``: int ``(B, 2)`` valid sizes of zero-padded entries; ``None``: all full size.
        """
        batch = np.asarray(batch, np.float32)
        sizes = np.asarray(sizes if sizes is not None else
                           np.tile(np.asarray(batch.shape[1:3], np.int32), (batch.shape[0], 1)), np.int32)
        if batch.shape[0] % self.device_count:
            raise ValueError(f"a batch of {batch.shape[0]} does not split over {self.device_count} devices")
        if self._mesh is not None:
            sharding = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec(TILE_AXIS))
            batch, sizes = jax.device_put(batch, sharding), jax.device_put(sizes, sharding)
        elif self.devices:
            batch, sizes = jax.device_put(batch, self.devices[0]), jax.device_put(sizes, self.devices[0])
        return np.asarray(self._apply(self._place(variables), batch, sizes))

    def lower(self, variables: Any, batch_shape: tuple[int, int, int, int]) -> jax.stages.Lowered:
        """The program :meth:`__call__` runs for a float32 ``batch_shape`` batch, lowered, placed
        as ``__call__`` places its arguments, for ahead-of-time compilation (``.compile()``).

        ``variables`` may be ``jax.ShapeDtypeStruct``s: nothing is computed or copied, so the
        runner's devices may be ones this process cannot run on, such as those of a TPU topology
        described on a CPU host (benchmarks/tpu_aot.py).
        """
        if self._mesh is not None:
            replicated = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())
            split = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec(TILE_AXIS))
        else:
            replicated = split = (jax.sharding.SingleDeviceSharding(self.devices[0]) if self.devices else None)

        def abstract(leaf: Any, sharding: Any) -> jax.ShapeDtypeStruct:
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

        if batch_shape[0] % self.device_count:
            raise ValueError(f"a batch of {batch_shape[0]} does not split over {self.device_count} devices")
        return self._apply.lower(
            jax.tree.map(lambda leaf: abstract(leaf, replicated), variables),
            jax.ShapeDtypeStruct(tuple(batch_shape), np.float32, sharding=split),
            jax.ShapeDtypeStruct((batch_shape[0], 2), np.int32, sharding=split))

    def cache_size(self) -> int | None:
        """Compiled variants held by the jit cache (a private JAX API; ``None`` if absent)."""
        size = getattr(self._apply, "_cache_size", None)
        return size() if callable(size) else None

    def bind(self, variables: Any) -> SizedPredictFn:
        """``predict(batch, sizes)`` with these variables."""
        return functools.partial(self, variables)


class Upscaler:
    """Upscales one RGB image with a float network; see the module docstring for the strategy.

    Call it with a uint8 ``(H, W, 3)`` LR image to get the uint8 ``(H·s, W·s, 3)`` output;
    :meth:`upscale_float` returns the float output before clipping and rounding.

    Attributes:
      scale: the upscaling factor.
      tile: the tile budget: tiles of at most ``tile²`` LR pixels (:func:`plan_tiles`), or
        ``None`` for whole images padded to a size bucket.
      tile_overlap: LR pixels of context kept around each tile's used part.
      self_ensemble: average the 8 dihedral transforms.
      batch_size: blocks (tiles, or transforms of one for the self-ensemble) per network call;
        the last call of an image is filled up with empty blocks, so every call has one shape.
      takes_sizes: whether ``predict`` is ``predict(batch, sizes)`` and computes each padded
        entry as if unpadded (a DRN through :class:`ModelRunner`): blocks are then zero-padded
        and the padding changes no output value. Otherwise ``predict(batch)`` gets blocks
        mirror-padded at the bottom and right, and outputs near those edges see the mirror.
      shapes: the distinct batch shapes passed to the network, in first-use order.
      network_seconds: wall time spent in network calls so far (compilations of new shapes
        included; the tiling and conversions around them not).
    """

    def __init__(self, predict: PredictFn | SizedPredictFn, scale: int, *, tile: int | None = None,
                 tile_overlap: int = 0, self_ensemble: bool = False, batch_size: int = 1,
                 takes_sizes: bool = False):
        if tile is not None:
            if tile < 1:
                raise ValueError(f"tile must be a positive number of LR pixels; got {tile}")
            if tile_overlap < 0:
                raise ValueError(f"tile_overlap must be non-negative; got {tile_overlap}")
            if tile <= 2 * tile_overlap:
                raise ValueError(
                    f"tile={tile} must be larger than 2 * tile_overlap = {2 * tile_overlap}; "
                    "use a larger --tile or a smaller --tile_overlap")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        self._predict = predict
        self.scale = int(scale)
        self.tile = tile
        self.tile_overlap = int(tile_overlap)
        self.self_ensemble = self_ensemble
        self.batch_size = int(batch_size)
        self.takes_sizes = takes_sizes
        self.shapes: list[tuple[int, ...]] = []
        self.network_seconds = 0.0

    @property
    def compilations(self) -> int:
        """Distinct input shapes sent to the network: its compilations, for a jitted network."""
        return len(self.shapes)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        return self._upscale(lr, to_uint8, np.uint8)

    def upscale_float(self, lr: np.ndarray) -> np.ndarray:
        """Float32 ``(H·s, W·s, 3)`` network output for a uint8 or float ``[0, 1]`` LR image."""
        return self._upscale(lr, lambda block: block, np.float32)

    def upscale_to(self, lr: np.ndarray, bits: int | None = 8, *, grey: bool = False) -> np.ndarray:
        """The output at ``bits`` bits (8: uint8, 16: uint16, ``None``: float32), and with
        ``grey`` as one channel, the mean of the three (for a grey image fed as R = G = B).

        Each tile is converted as it is placed: memory is the output at its final depth plus
        one batch of tiles, whatever the image size.
        """
        def finish(block: np.ndarray) -> np.ndarray:
            if grey:
                block = block.mean(axis=-1, keepdims=True, dtype=np.float32)
            return block if bits is None else to_bits(block, bits)

        dtype = np.float32 if bits is None else (np.uint8 if bits == 8 else np.uint16)
        return self._upscale(lr, finish, dtype, 1 if grey else 3)

    def _upscale(self, lr: np.ndarray, finish: Callable[[np.ndarray], np.ndarray],
                 dtype: type, channels: int = 3) -> np.ndarray:
        # `finish` converts each block as it is placed, so a uint8 result never needs a float
        # copy of the whole (possibly huge) output.
        x = _to_float(lr)
        height, width = x.shape[:2]
        s = self.scale
        if self.tile is None:
            side = bucket_size(max(height, width))
            (output,) = self._outputs([x], (side, side))
            return finish(output)

        plan = self.plan(height, width)
        tile_h, tile_w = plan.shape
        # Each tile reads [start, start + tile) of the image (less where a side is shorter
        # than a tile) and supplies the output for [lo, hi).
        placements = [(top, min(row_hi, height), row_lo, left, min(col_hi, width), col_lo)
                      for top, row_lo, row_hi in plan.rows for left, col_lo, col_hi in plan.cols]
        blocks = (x[top: top + tile_h, left: left + tile_w] for top, _, _, left, _, _ in placements)
        out = np.empty((height * s, width * s, channels), dtype)
        for (top, row_hi, row_lo, left, col_hi, col_lo), block in zip(
                placements, self._outputs(blocks, plan.shape)):
            out[row_lo * s: row_hi * s, col_lo * s: col_hi * s] = finish(block[
                (row_lo - top) * s: (row_hi - top) * s, (col_lo - left) * s: (col_hi - left) * s])
        return out

    def plan(self, height: int, width: int) -> TilePlan:
        """The tiles of an ``height × width`` image (:func:`plan_tiles`; square with the
        self-ensemble, whose rotations must keep a tile's shape). Requires ``tile``."""
        if self.tile is None:
            raise ValueError("an upscaler without tiles has no tile plan")
        return plan_tiles(height, width, self.tile, self.tile_overlap, square=self.self_ensemble)

    def _outputs(self, blocks: Iterable[np.ndarray], shape: tuple[int, int]) -> Iterator[np.ndarray]:
        """The float ``(h·s, w·s, 3)`` network output of each ``(h, w, 3)`` block, in order.

        Blocks (``h, w`` at most ``shape``) are padded to ``shape`` and sent ``batch_size`` at a
        time; with the self-ensemble each block is 8 entries (its dihedral transforms, each
        transformed before padding, so that the padding stays at the bottom and right) whose
        outputs are transformed back and averaged. Lazy: only one batch of blocks is held.
        """
        transforms = dihedral_transforms() if self.self_ensemble else [(_identity, _identity)]
        entries: list[tuple[np.ndarray, tuple[int, int], int, ArrayMap]] = []
        totals: dict[int, list] = {}  # block index -> [sum of outputs, entries still to run]
        order: collections.deque[int] = collections.deque()

        def run() -> None:
            outputs = self._network([entry for entry, *_ in entries], [size for _, size, *_ in entries], shape)
            for output, (_, (h, w), index, inverse) in zip(outputs, entries):
                output = inverse(output[None, : h * self.scale, : w * self.scale])[0]
                total = totals[index]
                total[0] = output if total[0] is None else total[0] + output
                total[1] -= 1
            entries.clear()

        def finished() -> Iterator[np.ndarray]:
            while order and totals[order[0]][1] == 0:
                total = totals.pop(order.popleft())[0]
                yield total if len(transforms) == 1 else total / np.float32(len(transforms))

        for index, block in enumerate(blocks):
            totals[index] = [None, len(transforms)]
            order.append(index)
            for forward, inverse in transforms:
                entry = np.ascontiguousarray(forward(block[None])[0])
                entries.append((entry, entry.shape[:2], index, inverse))
                if len(entries) == self.batch_size:
                    run()
                    yield from finished()
        if entries:
            run()
        yield from finished()

    def _network(self, blocks: list[np.ndarray], sizes: list[tuple[int, int]], shape: tuple[int, int]
                 ) -> np.ndarray:
        """Runs one batch: blocks padded to ``shape``, the batch filled up to ``batch_size``."""
        count = self.batch_size
        height, width = shape
        batch = np.zeros((count, height, width, 3), np.float32)
        valid = np.zeros((count, 2), np.int32)
        for k, (block, size) in enumerate(zip(blocks, sizes)):
            batch[k] = block if block.shape[:2] == (height, width) else (
                _pad_to(block, height, width, "constant" if self.takes_sizes else "symmetric"))
            valid[k] = size
        if batch.shape not in self.shapes:
            self.shapes.append(batch.shape)
        start = time.perf_counter()
        output = self._predict(batch, valid) if self.takes_sizes else self._predict(batch)
        output = np.asarray(output, dtype=np.float32)
        self.network_seconds += time.perf_counter() - start
        expected = (count, height * self.scale, width * self.scale, 3)
        if output.shape != expected:
            raise ValueError(f"the network returned shape {output.shape} for input {batch.shape}; "
                             f"expected {expected} at scale {self.scale}")
        return output[: len(blocks)]


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _pad_to(image: np.ndarray, height: int, width: int, mode: str = "symmetric") -> np.ndarray:
    """``image`` padded at the bottom and right up to ``height × width``: with zeros
    (``mode="constant"``) or the edge-repeating mirror (``"symmetric"``)."""
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h == 0 and pad_w == 0:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


class BicubicUpscaler:
    """The bicubic baseline through the same interface: MATLAB ``imresize(lr, scale)`` on uint8.

    Rounded to uint8 inside ``imresize`` after each separable pass, as MATLAB does for 8-bit
    images, which is how the published bicubic rows were made. Computed on the host
    (:func:`drn_jax.resize.imresize_host`): every image shape would otherwise compile.
    """

    def __init__(self, scale: int):
        self.scale = int(scale)

    compilations = 0  # no network

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        lr = np.asarray(lr)
        if lr.dtype != np.uint8:
            raise TypeError(f"expected uint8 pixels; got {lr.dtype}")
        return imresize_host(lr, self.scale)

    def upscale_float(self, lr: np.ndarray) -> np.ndarray:
        """Unrounded bicubic interpolation of the float ``[0, 1]`` image."""
        return imresize_host(_to_float(lr), self.scale)


def make_upscaler(predict: models.DRN | ModelRunner | PredictFn, scale: int | None = None, *,
                  variables: Any = None, tile: int | None = None, tile_overlap: int | None = None,
                  self_ensemble: bool = False, devices: Sequence[jax.Device] | None = None,
                  tiles_per_device: int = 1) -> Upscaler:
    """An :class:`Upscaler` for a DRN (with its variables) or any float predict function.

    Args:
      predict: a :class:`~drn_jax.models.DRN`, a :class:`ModelRunner` (to share one compiled
        function between upscalers), or a function from float32 ``(B, h, w, 3)`` in ``[0, 1]``
        to ``(B, h·s, w·s, 3)`` (called as is; jit it yourself if it should be compiled).
      scale: the factor; defaults to the model's.
      variables: the model's variables (required with a model).
      tile: the tile budget, tiles of at most ``tile²`` LR pixels (:func:`plan_tiles`), or
        ``None`` to run whole images padded to size buckets.
      tile_overlap: context per tile side; defaults to the model's receptive-field radius
        (exact tiling). Required for a plain function when ``tile`` is set.
      self_ensemble: average the 8 flips/rotations.
      devices: a model's devices (default: JAX's default device); a batch of tiles is split
        over them. Ignored for a :class:`ModelRunner`, which has its own.
      tiles_per_device: blocks each device runs per network call (``batch_size`` is this times
        the device count).
    """
    model = predict.model if isinstance(predict, ModelRunner) else predict
    batch_size, takes_sizes = tiles_per_device, False
    if isinstance(model, models.DRN):
        if variables is None:
            raise ValueError("variables are required to run a model")
        if scale is not None and scale != model.scale:
            raise ValueError(f"the model upscales x{model.scale}, not x{scale}")
        scale = model.scale
        if tile_overlap is None:
            tile_overlap = receptive_field_radius(model)
        runner = predict if isinstance(predict, ModelRunner) else ModelRunner(model, devices)
        predict = runner.bind(variables)
        batch_size, takes_sizes = tiles_per_device * runner.device_count, True
    elif scale is None:
        raise ValueError("scale is required with a predict function")
    if tile is not None and tile_overlap is None:
        raise ValueError("tile_overlap is required with a predict function and tiles")
    return Upscaler(predict, scale, tile=tile, tile_overlap=tile_overlap or 0,
                    self_ensemble=self_ensemble, batch_size=batch_size, takes_sizes=takes_sizes)

