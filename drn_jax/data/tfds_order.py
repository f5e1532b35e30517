"""The order in which the TFDS training stream reads a split's records (NumPy only).

A process's share of a TFDS split is a list of record files, each read from some first
record for some count (TFDS's file instructions). `chunks` cuts it into *chunks*: runs of at
most ``chunk_size`` consecutive records of one file, in stored order; the records' *stored
indices* number them 0..n-1 in that order. Epoch ``e`` then

1. reads the chunks in the order ``crops.permutation(chunk_key, e, C)`` (C chunks);
2. cuts the n records it reads into consecutive *blocks* of ``block_size`` (the last one
   shorter) and permutes block ``b`` by ``crops.permutation(block_key, e * B + b, size)``
   (B blocks per epoch);
3. numbers what comes out: *record position* ``e * n + i``.

So the files, the block order and the blocks' contents all change from epoch to epoch, with
only one block of encoded records in memory. Every record position is a pure function of
(keys, chunks): `RecordOrder.resume` says where to start reading for any position without
reading the records before its block, and `RecordOrder.stored_index` names the record at a
position (for warnings, and for tests that check the stream against this description).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from drn_jax.data import crops


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Consecutive records of one file.

    Attributes:
      file: the file's path.
      skip: records of the file before the chunk.
      count: records in the chunk, >= 1.
      first: stored index of its first record.
    """
    file: str
    skip: int
    count: int
    first: int


def chunks(files: Sequence[tuple[str, int, int]], chunk_size: int) -> list[Chunk]:
    """The chunks of ``files``, (path, first record read, records read) in stored order.

    Files that contribute no record are left out; every other file gives
    ``ceil(count / chunk_size)`` chunks, all of ``chunk_size`` records but its last.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    result, first = [], 0
    for path, skip, count in files:
        for start in range(0, count, chunk_size):
            size = min(chunk_size, count - start)
            result.append(Chunk(file=str(path), skip=skip + start, count=size, first=first + start))
        first += max(count, 0)
    return result


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where the reading of epoch ``epoch`` starts for a given record position.

    Attributes:
      epoch: the epoch of the position.
      chunks: the chunks still to read in that epoch, in its order; the first may start
        inside its chunk (a larger ``skip``, a smaller ``count``).
      first_block: the block these chunks start, whose first record is the first read.
      drop: records of that block, after its permutation, before the position.
    """
    epoch: int
    chunks: tuple[Chunk, ...]
    first_block: int
    drop: int


class RecordOrder:
    """The epoch order of a split's records, described in the module docstring.

    Attributes:
      chunks: the chunks in stored order.
      count: records per epoch (n).
      block_size: records per block, at most ``count``.
      blocks_per_epoch: B.
    """

    def __init__(self, chunk_list: Sequence[Chunk], *, chunk_key: int, block_key: int,
                 block_size: int):
        if not chunk_list:
            raise ValueError("a record order needs at least one chunk")
        self.chunks = tuple(chunk_list)
        self.count = sum(chunk.count for chunk in self.chunks)
        self.block_size = max(1, min(block_size, self.count))
        self.blocks_per_epoch = -(-self.count // self.block_size)
        self._chunk_key, self._block_key = chunk_key, block_key
        # (order, starts) of the last epochs asked for: warnings and resumes hit one or two.
        self._epoch_layout = functools.lru_cache(maxsize=4)(self._layout)

    def chunk_order(self, epoch: int) -> np.ndarray:
        """Indices into `chunks` in the order epoch ``epoch`` reads them, int64."""
        return crops.permutation(self._chunk_key, int(epoch), len(self.chunks))

    def block_permutation(self, epoch: int, block: int, size: int) -> np.ndarray:
        """The permutation of block ``block`` (``size`` records) of epoch ``epoch``, int64."""
        return crops.permutation(self._block_key, int(epoch) * self.blocks_per_epoch + int(block),
                                 int(size))

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = self.chunk_order(epoch)
        counts = np.array([self.chunks[i].count for i in order], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])  # epoch index of each slot's first record
        return order, starts

    def resume(self, record_position: int) -> Resume:
        """What to read so that the stream starts at ``record_position`` (>= 0)."""
        epoch, offset = divmod(int(record_position), self.count)
        block = offset // self.block_size
        begin = block * self.block_size  # the block's first record, in the epoch's read order
        order, starts = self._epoch_layout(epoch)
        slot = int(np.searchsorted(starts, begin, side="right")) - 1
        inside = begin - int(starts[slot])
        first = self.chunks[order[slot]]
        head = dataclasses.replace(first, skip=first.skip + inside, count=first.count - inside,
                                   first=first.first + inside)
        rest = tuple(self.chunks[i] for i in order[slot + 1:])
        return Resume(epoch=epoch, chunks=(head, *rest), first_block=block, drop=offset - begin)

    def stored_index(self, record_position: int) -> int:
        """The stored index of the record at ``record_position`` (>= 0)."""
        epoch, offset = divmod(int(record_position), self.count)
        block, inside = divmod(offset, self.block_size)
        size = min(self.block_size, self.count - block * self.block_size)
        read = block * self.block_size + int(self.block_permutation(epoch, block, size)[inside])
        order, starts = self._epoch_layout(epoch)
        slot = int(np.searchsorted(starts, read, side="right")) - 1
        return self.chunks[order[slot]].first + read - int(starts[slot])
