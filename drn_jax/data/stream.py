"""Training crops from a fixed list of images, on NumPy and Python threads (no TensorFlow).

`ImageSource` is the base of every source that is a list of images: a subclass lists
``(name, handle)`` pairs and reads a handle into pixels, and gets `train_stream` and
`load_images` from here.

How it works: docs/internals.md#the-image-list-stream.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import pathlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from drn_jax import image_io
from drn_jax.data import crops
from drn_jax.data.base import (Source, SourceError, SourceInfo, StreamOptions, derive_key,
                               full_batches)

logger = logging.getLogger(__name__)

# Batches assembled ahead of the consumer, on top of the 2 per thread being made.
PREFETCH_BATCHES = 4

# A chunk: the crops made from B consecutive positions, a batch's dict with k <= B
# entries (fewer when some positions were skipped).
Chunk = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageSource(Source):
    """A source that is a fixed list of images: implement `items` and `read`.

    ``read`` raises `image_io.ImageReadError` for an image that cannot be used; such
    images are counted as unreadable and skipped.
    """

    @abc.abstractmethod
    def items(self) -> Sequence[tuple[str, Any]]:
        """(name, handle) of every image, in the source's order; names are unique."""

    @abc.abstractmethod
    def read(self, handle: Any, *, max_pixels: int, quiet: bool = False) -> np.ndarray:
        """The image as uint8 (H, W, 3).

        Args:
          handle: from `items`; ``str(handle)`` names the image in warnings.
          max_pixels: raise `image_io.ImageReadError` for larger images.
          quiet: the image was read before: do not log notes about it again.
        """

    def image_size(self, handle: Any) -> tuple[int, int]:
        """(height, width); override to read it without decoding (a file's header)."""
        return tuple(self.read(handle, max_pixels=np.iinfo(np.int64).max, quiet=True).shape[:2])

    def load_images(self, *, max_pixels: int, limit: int | None) -> list[tuple[str, np.ndarray]]:
        items = self.items() if limit is None else self.items()[:limit]
        images = []
        for name, handle in items:
            try:
                images.append((name, self.read(handle, max_pixels=max_pixels)))
            except image_io.ImageReadError as err:
                logger.warning("%s; skipped", err)
        return images

    def train_stream(self, options: StreamOptions) -> Batches:
        patch = options.patch_size
        all_items = self.items()
        items = all_items[options.process_index::options.process_count]
        if not items:
            raise SourceError(f"data source {self.spec!r}: process {options.process_index} of "
                              f"{options.process_count} gets none of its {len(all_items)} images; "
                              "use a source with at least one image per process")
        workers = options.threads or os.cpu_count() or 1
        usable, too_small, unreadable = self._scan(items, patch, options.max_pixels)
        cached = sum(height * width * 3 for _, _, (height, width) in usable) <= options.cache_bytes
        if cached:
            kept = []
            decoded = self._decode_all([handle for _, handle, _ in usable], options.max_pixels,
                                       workers)
            for (name, _, _), pixels in zip(usable, decoded):
                if pixels is None:
                    unreadable += 1
                elif min(pixels.shape[:2]) < patch:
                    too_small += 1
                else:
                    kept.append((name, pixels))
            del decoded
        else:
            kept = [(name, handle) for name, handle, _ in usable]
        info = SourceInfo(source=self.spec, patch_size=patch, num_images=len(kept),
                          num_too_small=too_small, num_unreadable=unreadable,
                          images=tuple(name for name, _ in kept), cached=cached,
                          dense_positions=cached, process_index=options.process_index,
                          process_count=options.process_count)
        if not kept:
            raise SourceError(f"data source {self.spec!r}: none of its {len(items)} images is "
                              f"usable ({too_small} smaller than the {patch}-pixel crop, "
                              f"{unreadable} unreadable); use a smaller patch_size or other images")
        order = _EpochOrder(derive_key(options.seed, options.process_index, "order"), len(kept))
        crop_key = derive_key(options.seed, options.process_index, "crop")
        values = [value for _, value in kept]
        if cached:
            produce = functools.partial(_cached_chunk, values, order, crop_key, patch,
                                        options.batch_size)
        else:
            reader = _ReadOnce(self, values, patch, options.max_pixels)
            produce = functools.partial(_decoded_chunk, reader, order, crop_key, patch,
                                        options.batch_size)
        return Batches(info, produce, start_position=options.start_position,
                       batch_size=options.batch_size, workers=workers)

    def _scan(self, items: Sequence[tuple[str, Any]], patch: int, max_pixels: int
              ) -> tuple[list[tuple[str, Any, tuple[int, int]]], int, int]:
        # Sizes decide what is skipped and whether the decoded images fit in memory,
        # before anything is decoded.
        usable, too_small, unreadable = [], 0, 0
        for name, handle in items:
            try:
                height, width = self.image_size(handle)
            except image_io.ImageReadError as err:
                logger.warning("%s; skipped", err)
                unreadable += 1
                continue
            if height * width > max_pixels:
                logger.warning("%s: header declares %dx%d pixels, over the limit of %d; skipped",
                               handle, width, height, max_pixels)
                unreadable += 1
            elif min(height, width) < patch:
                too_small += 1
            else:
                usable.append((name, handle, (height, width)))
        return usable, too_small, unreadable

    def _decode_all(self, handles: Sequence[Any], max_pixels: int,
                    workers: int) -> list[np.ndarray | None]:
        def read(handle: Any) -> np.ndarray | None:
            try:
                return _checked(self.read(handle, max_pixels=max_pixels), handle)
            except image_io.ImageReadError as err:
                logger.warning("%s; skipped", err)
                return None

        # Pillow releases the GIL while decoding, so threads help; map keeps the order.
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(read, handles))


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileSource(ImageSource):
    """Image files decoded by `image_io.read_image` (8-bit RGB: greyscale replicated,
    alpha dropped, 16-bit reduced, each conversion logged once per file).

    Attributes:
      files: (name, path) of every image file, in order.
    """
    files: tuple[tuple[str, pathlib.Path], ...] = dataclasses.field(default=(), repr=False)

    def items(self) -> Sequence[tuple[str, pathlib.Path]]:
        return self.files

    def image_size(self, handle: pathlib.Path) -> tuple[int, int]:
        return image_io.image_size(handle)

    def read(self, handle: pathlib.Path, *, max_pixels: int, quiet: bool = False) -> np.ndarray:
        return image_io.read_image(handle, max_pixels=max_pixels, quiet=quiet)


def _checked(pixels: np.ndarray, handle: Any) -> np.ndarray:
    # A plug-in's read() that returns something else would fail far away, in a crop.
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise TypeError(f"{handle}: read() returned {pixels.dtype} {pixels.shape}, "
                        "not uint8 (H, W, 3)")
    return pixels


class _EpochOrder:
    """Image index of each position: ``permutation_e(p mod n)`` with ``e = p // n``."""

    def __init__(self, key: int, count: int):
        self.count = count
        # Workers make consecutive chunks, so only the last epoch or two are in use
        # (a permutation of ImageNet's 1.3M images is 10 MB).
        self._permutation = functools.lru_cache(maxsize=4)(
            functools.partial(crops.permutation, key, n=count))

    def indices(self, positions: np.ndarray) -> np.ndarray:
        epochs, offsets = np.divmod(positions, self.count)
        indices = np.empty_like(positions)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            indices[where] = self._permutation(int(epoch))[offsets[where]]
        return indices


def _cached_chunk(images: Sequence[np.ndarray], order: _EpochOrder, crop_key: int, patch: int,
                  size: int, start: int) -> Chunk:
    positions = np.arange(start, start + size, dtype=np.int64)
    hr = np.empty((size, patch, patch, 3), np.uint8)  # the batch itself: crops go in place
    transforms = np.empty(size, np.int32)
    for i, (position, index) in enumerate(zip(positions.tolist(), order.indices(positions).tolist())):
        transforms[i] = crops.crop(images[index], crop_key, position, patch, out=hr[i])[1]
    return {"hr": hr, "transform": transforms, "position": positions}


def _decoded_chunk(reader: _ReadOnce, order: _EpochOrder, crop_key: int, patch: int,
                   size: int, start: int) -> Chunk:
    positions = np.arange(start, start + size, dtype=np.int64)
    hr = np.empty((size, patch, patch, 3), np.uint8)
    transforms = np.empty(size, np.int32)
    kept = 0
    for position, index in zip(positions.tolist(), order.indices(positions).tolist()):
        pixels = reader(index)
        if pixels is not None:
            transforms[kept] = crops.crop(pixels, crop_key, position, patch, out=hr[kept])[1]
            positions[kept] = position
            kept += 1
    return {"hr": hr[:kept], "transform": transforms[:kept], "position": positions[:kept]}


class _ReadOnce:
    """index -> decoded image, or None when it cannot be used; warns on first read only."""

    def __init__(self, source: ImageSource, handles: Sequence[Any], patch: int, max_pixels: int):
        self._source, self._handles = source, handles
        self._patch, self._max_pixels = patch, max_pixels
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, index: int) -> np.ndarray | None:
        with self._lock:
            repeat = index in self._seen
            self._seen.add(index)
        handle = self._handles[index]
        try:
            pixels = _checked(self._source.read(handle, max_pixels=self._max_pixels,
                                                quiet=repeat), handle)
        except image_io.ImageReadError as err:
            if not repeat:
                logger.warning("%s; skipped", err)
            return None
        if min(pixels.shape[:2]) < self._patch:  # its header said otherwise
            if not repeat:
                logger.warning("%s: decoded %dx%d, smaller than the %d-pixel crop; skipped",
                               handle, pixels.shape[1], pixels.shape[0], self._patch)
            return None
        return pixels


class Batches:
    """The training stream of an `ImageSource`: a `base.TrainDataset`.

    Attributes:
      source_info: what was found in the source.
    """

    def __init__(self, source_info: SourceInfo, produce: Callable[[int], Chunk], *,
                 start_position: int, batch_size: int, workers: int):
        self.source_info = source_info
        self._produce = produce
        self._start, self._batch_size, self._workers = start_position, batch_size, workers

    def as_numpy_iterator(self) -> Iterator[dict[str, np.ndarray]]:
        """A new iterator from ``start_position``: ``{'hr': uint8 (B, P, P, 3), 'transform':
        int32 (B,), 'position': int64 (B,)}`` forever. Its background threads stop when it
        is closed or dropped."""
        return _Prefetcher(functools.partial(_batches, self._produce, self._start,
                                             self._batch_size, self._workers),
                           PREFETCH_BATCHES)


def _batches(produce: Callable[[int], Chunk], start: int, batch_size: int,
             workers: int) -> Iterator[dict[str, np.ndarray]]:
    # closing: a consumer that stops early also stops the worker pool, at once.
    with contextlib.closing(_chunks(produce, itertools.count(start, batch_size), workers)) as chunks:
        yield from full_batches(chunks, batch_size)  # skipped positions: crops carry over


def _chunks(produce: Callable[[int], Chunk], starts: Iterator[int], workers: int) -> Iterator[Chunk]:
    """``produce(start)`` for each start, in order, made ``workers`` at a time."""
    if workers == 1:  # on the calling thread: one core, no hand-offs
        for start in starts:
            yield produce(start)
        return
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="drn_jax.data") as pool:
        futures = collections.deque(pool.submit(produce, next(starts)) for _ in range(2 * workers))
        try:
            while True:
                chunk = futures.popleft().result()
                futures.append(pool.submit(produce, next(starts)))
                yield chunk
        finally:
            for future in futures:
                future.cancel()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class _Prefetcher:
    """Runs a batch generator on a background thread, ``depth`` batches ahead."""

    def __init__(self, make_batches: Callable[[], Iterator[dict[str, np.ndarray]]], depth: int):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        # The thread gets the queue and the event, not self: dropping the iterator then
        # frees it, and __del__ stops the thread.
        self._thread = threading.Thread(target=_fill, args=(make_batches, self._queue, self._stop),
                                        name="drn_jax.data prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> _Prefetcher:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _Failure):
            self.close()
            if item is _END:
                raise StopIteration
            raise item.error
        return item

    def close(self) -> None:
        """Stops the background threads (they finish the batch they are making)."""
        self._done = True
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


def _fill(make_batches: Callable[[], Iterator[dict[str, np.ndarray]]], out: queue.Queue,
          stop: threading.Event) -> None:
    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)  # wakes as soon as the consumer takes one
                return True
            except queue.Full:
                pass
        return False

    try:
        batches = make_batches()
        try:
            for batch in batches:
                if not put(batch):
                    return
        finally:
            batches.close()  # stops the worker pool
        put(_END)
    except BaseException as err:  # handed to the consumer, raised by next()
        put(_Failure(err))
