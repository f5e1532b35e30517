"""The data source interface: `Source`, what a training stream returns, and shared helpers.

A source is a frozen dataclass parsed from a string such as ``folder:data/train``; the
part before the first ``:`` picks its class in `drn_jax.data.registry.SOURCES`. A source
class implements three things:

* `Source.parse` -- validate the rest of the string (folders exist, datasets are
  prepared) and return the parsed source, or raise a one-line `SourceError`;
* `Source.train_stream` -- the infinite stream of crops described by `StreamOptions`,
  as a `TrainDataset`;
* `Source.load_images` -- whole images for validation and evaluation.

Sources that are a fixed list of images (files, arrays) subclass
`drn_jax.data.stream.ImageSource` instead, which implements the last two on NumPy and
threads from a list of (name, handle) and a ``read(handle)``.

This module imports nothing heavier than NumPy. `SourceError` is `drn_jax.errors.SourceError`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import numpy as np

# One class for every package error a user can fix (drn_jax.errors.USER_ERRORS); re-exported.
from drn_jax.errors import SourceError

__all__ = ["FormError", "Source", "SourceError", "SourceInfo", "StreamOptions", "TrainDataset",
           "derive_key"]


class FormError(SourceError):
    """Raised by `Source.parse` for a string not of its form at all (``folder:`` with no
    path); `parse_source` replaces it by a message listing every form."""


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What `create_train_dataset` found in its source, for this process.

    Attributes:
      source: the source string.
      patch_size: the crop size the counts refer to.
      num_images: images (TFDS: records) the stream draws from.
      num_too_small: images skipped because a side is under ``patch_size``; None when
        only known while streaming (TFDS).
      num_unreadable: files skipped because they cannot be decoded; None for TFDS.
      images: names of the images drawn from (empty for TFDS).
      cached: decoded images are held in memory (else decoded per crop).
      dense_positions: no position is ever skipped, so batch ``k`` holds positions
        ``k*B .. k*B+B-1`` on every process.
      process_index, process_count: the split this describes.
    """
    source: str
    patch_size: int
    num_images: int
    num_too_small: int | None
    num_unreadable: int | None
    images: tuple[str, ...] = dataclasses.field(repr=False)
    cached: bool
    dense_positions: bool
    process_index: int = 0
    process_count: int = 1

    def summary(self) -> str:
        """One line for the training log."""
        where = (f" (process {self.process_index} of {self.process_count})"
                 if self.process_count > 1 else "")
        how = "decoded images cached in memory" if self.cached else "decoded per crop"
        if self.num_too_small is None or self.num_unreadable is None:  # TFDS
            return (f"{self.source}{where}: {self.num_images} records; images smaller than "
                    f"the {self.patch_size}-pixel crop are skipped as they come; {how}")
        return (f"{self.source}{where}: {self.num_images} images, {self.num_too_small} "
                f"smaller than the {self.patch_size}-pixel crop skipped, "
                f"{self.num_unreadable} unreadable skipped; {how}")


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """The arguments of `create_train_dataset`, validated, with the process split resolved.

    Attributes:
      patch_size: side of the square crops, >= 1.
      batch_size: crops per batch, for this process, >= 1.
      seed: keys the image order and every crop.
      start_position: first position to produce, >= 0.
      process_index, process_count: this process's share, ``0 <= index < count``.
      shuffle_buffer: records per shuffle block (TFDS only).
      threads: worker threads (None: the source chooses, usually one per core).
      cache_bytes: keep decoded images in memory when they fit in this many bytes.
      max_pixels: larger images are skipped as unreadable.
      crops_per_image: crops cut from each decoded record (TFDS only; other sources
        hold or read their images whole and ignore it), >= 1.
    """
    patch_size: int
    batch_size: int
    seed: int
    start_position: int
    process_index: int
    process_count: int
    shuffle_buffer: int
    threads: int | None
    cache_bytes: int
    max_pixels: int
    crops_per_image: int = 1


class TrainDataset(Protocol):
    """What `Source.train_stream` returns.

    ``as_numpy_iterator()`` starts the stream at ``start_position`` (every call starts
    afresh) and yields, forever, ``{'hr': uint8 (batch_size, patch_size, patch_size, 3),
    'transform': int32 (batch_size,), 'position': int64 (batch_size,)}``: ``hr`` holds the
    windows untransformed and ``transform`` their dihedral transforms, in [0, 8), which
    training applies on the devices (`drn_jax.ops.dihedral`). A stream without
    ``transform`` is trained on as it is.
    """
    source_info: SourceInfo

    def as_numpy_iterator(self) -> Iterator[dict[str, np.ndarray]]: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class Source(abc.ABC):
    """A parsed and validated data source.

    Subclasses are frozen dataclasses that add their own fields (folders, dataset
    names, ...), set `FORM`, and are listed in `drn_jax.data.registry.SOURCES` under
    the prefix of their strings.

    Attributes:
      spec: the source string as given (stripped).
    """
    # How to write the source, for error messages: "'folder:PATH[,PATH...]' (...)".
    FORM: ClassVar[str] = ""
    spec: str

    @property
    def kind(self) -> str:
        """The registry prefix the source was parsed from (``folder``, ``tfds``, ...)."""
        return self.spec.partition(":")[0]

    @classmethod
    @abc.abstractmethod
    def parse(cls, spec: str, rest: str, **options: Any) -> Source:
        """Validates ``rest`` (the string after the prefix and ``:``) and returns the source.

        Args:
          spec: the whole source string, for messages.
          rest: what follows the first ``:`` ('' when there is none).
          **options: the keyword arguments of `parse_source` (``tfds_data_dir``); a
            source ignores those it does not use.

        Raises:
          SourceError: with one line naming ``spec`` and the fix.
          FormError: ``rest`` is not of this source's form (e.g. empty where a path is
            needed).
        """

    @abc.abstractmethod
    def train_stream(self, options: StreamOptions) -> TrainDataset:
        """The infinite, deterministic stream of crops (see `create_train_dataset`).

        Raises:
          SourceError: this process gets no usable image.
        """

    @abc.abstractmethod
    def load_images(self, *, max_pixels: int, limit: int | None) -> list[tuple[str, np.ndarray]]:
        """Whole images as (name, uint8 (H, W, 3)), in the source's order.

        At most ``limit`` (the first ones; None: all); unreadable images, and images over
        ``max_pixels``, are skipped with a warning naming them.
        """


def derive_key(seed: int, process_index: int, purpose: str) -> int:
    """A stable, well-mixed int63 per (seed, process, purpose).

    The image order and the crops of different processes and purposes must not be
    correlated, and the key must not depend on Python's hash seed.
    """
    digest = hashlib.blake2b(f"{seed}/{process_index}/{purpose}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def full_batches(parts: Iterator[dict[str, np.ndarray]], batch_size: int
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Batches of exactly ``batch_size`` from parts of at most that many entries, in order.

    A stream whose positions were skipped makes short parts; their entries carry over into
    the next batch. A full part, the usual case, is passed on without a copy.
    """
    carried: list[dict[str, np.ndarray]] = []
    pending = 0
    for part in parts:
        size = len(part["position"])
        if not pending and size == batch_size:
            yield part
            continue
        carried.append(part)
        pending += size
        if pending >= batch_size:
            joined = {key: np.concatenate([p[key] for p in carried]) for key in part}
            yield {key: value[:batch_size] for key, value in joined.items()}
            carried = [{key: value[batch_size:] for key, value in joined.items()}]
            pending -= batch_size
