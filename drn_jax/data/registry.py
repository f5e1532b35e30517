"""The source registry and the entry points: `parse_source`, `create_train_dataset`,
`load_images`.

A source string's prefix (before the first ``:``) is looked up in `SOURCES`; nothing
else in `drn_jax.data` dispatches on the kind of source. (The registry lives here, not
in `base`, because it names the source classes, which import `base`.)
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from drn_jax import image_io
from drn_jax.data.base import FormError, Source, SourceError, StreamOptions, TrainDataset
from drn_jax.data.folder import FolderSource
from drn_jax.data.samples import SamplesSource
from drn_jax.data.tfds_source import TfdsSource

logger = logging.getLogger(__name__)

# prefix -> Source class. A new source is one class and one line here.
SOURCES: dict[str, type[Source]] = {
    "samples": SamplesSource,
    "folder": FolderSource,
    "tfds": TfdsSource,
}

# A TFDS shuffle block holds encoded records: ~110 KB each for ImageNet (~110 MB for
# 1024), ~4 MB for DIV2K (whose 800 images then form one block, ~3 GB).
DEFAULT_SHUFFLE_BUFFER = 1024
# Decoded images up to this size are kept in memory (T91 + BSD200: ~110 MB); larger
# folders are decoded per crop, which is much slower.
DEFAULT_CACHE_BYTES = 2 * 1024**3


def parse_source(spec: str, *, tfds_data_dir: str | None = None) -> Source:
    """Parses and validates a data source string.

    Folders must exist and hold images; TFDS datasets must be prepared and have the
    split and image feature. Checking here, before anything is compiled, turns a typo
    into an immediate one-line error instead of a failure minutes into a run.

    Args:
      spec: ``PREFIX[:REST]`` with PREFIX a key of `SOURCES`: ``samples[:train|:val]``,
        ``folder:PATH[,PATH...]`` or ``tfds:NAME[/CONFIG]:SPLIT[:KEY]``.
      tfds_data_dir: where TFDS datasets are prepared (default: TFDS's own,
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); passed to every source's
        `Source.parse`, used by ``tfds:``.

    Raises:
      SourceError: unknown form, missing or empty folder, unknown or unprepared TFDS
        dataset, split or feature.
    """
    if not isinstance(spec, str):
        raise SourceError(f"data source {spec!r} is not a string; use {_forms()}")
    spec = spec.strip()
    prefix, _, rest = spec.partition(":")
    source_class = SOURCES.get(prefix)
    if source_class is None:
        raise _not_understood(spec)
    try:
        return source_class.parse(spec, rest, tfds_data_dir=tfds_data_dir)
    except FormError:
        raise _not_understood(spec) from None


def _not_understood(spec: str) -> SourceError:
    return SourceError(f"data source {spec!r} not understood; use {_forms()}")


def _forms() -> str:
    forms = [source_class.FORM or f"'{prefix}:...'" for prefix, source_class in SOURCES.items()]
    return ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else forms[0]


def _check_stream_sizes(patch_size: int, batch_size: int, start_position: int, threads: int | None,
                        crops_per_image: int) -> None:
    if patch_size < 1 or batch_size < 1:
        raise ValueError(f"patch_size and batch_size must be positive, got {patch_size} "
                         f"and {batch_size}")
    if start_position < 0:
        raise ValueError(f"start_position must be >= 0, got {start_position}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be positive or None, got {threads}")
    if crops_per_image < 1:
        raise ValueError(f"crops_per_image must be positive, got {crops_per_image}")


def create_train_dataset(source: str | Source,
                         *,
                         patch_size: int,
                         batch_size: int,
                         seed: int,
                         shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                         start_position: int = 0,
                         process_index: int | None = None,
                         process_count: int | None = None,
                         threads: int | None = None,
                         cache_bytes: int = DEFAULT_CACHE_BYTES,
                         max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
                         tfds_data_dir: str | None = None,
                         crops_per_image: int = 1) -> TrainDataset:
    """An infinite, deterministic, resumable stream of batches of random crops.

    Each image is converted to 8-bit RGB (greyscale replicated, alpha dropped, as
    `image_io.read_image` does), cropped at a random ``patch_size`` window and put
    through one of the 8 dihedral transforms (4 rotations x left-right flip), both drawn
    by `crops.crop_window` from (seed, process, position). Every crop has a *position*,
    its index in this process's stream before any image is skipped; the stream is a pure
    function of (source, seed, process split), so resuming at ``start_position = max
    (position of the last consumed batch) + 1`` yields exactly the batches an
    uninterrupted run would have. How each source orders its images: `stream` (samples,
    folders) and `tfds_source`. The files (samples, folders) or records (TFDS) are split
    between processes; ``dataset.source_info`` (a `SourceInfo`) says what was found and
    skipped, and is logged once.

    Args:
      source: a data source string (see `parse_source`), or its parsed `Source`.
      patch_size: side of the square high-resolution crops.
      batch_size: crops per batch, for this process; the stream is infinite, so there
        is no partial last batch.
      seed: keys the image order and every crop.
      shuffle_buffer: encoded records per TFDS shuffle block (TFDS only): records are
        shuffled within consecutive blocks of this many, held in memory at once.
      start_position: first position to produce: 0 for a new run, else one past the
        largest position already consumed.
      process_index, process_count: this process's share of the source; default
        ``jax.process_index()`` and ``jax.process_count()``.
      threads: worker threads for decoding and cropping (TFDS: tf.data threads and
        parallel calls); None: one per CPU core (TFDS: tf.data chooses). 1 measures what
        a single core supplies.
      cache_bytes: keep the decoded images in memory when they fit in this many bytes
        (3 per pixel); else decode every crop's image from its file.
      max_pixels: images whose header declares more pixels are skipped as unreadable.
      tfds_data_dir: TFDS data directory, for a source string.
      crops_per_image: TFDS: crops cut from each decoded record, at consecutive positions
        (each still keyed by its own position, so the stream equals decoding every crop's
        image anew); other sources ignore it.

    Returns:
      An object with ``source_info`` (a `SourceInfo`) and ``as_numpy_iterator()``, which
      yields ``{'hr': uint8 (batch_size, patch_size, patch_size, 3), 'transform': int32
      (batch_size,), 'position': int64 (batch_size,)}`` forever (windows untransformed,
      and their dihedral transforms: `base.TrainDataset`), starting afresh at
      ``start_position`` on every call.

    Raises:
      SourceError: the source is invalid, or none of its images is usable.
      ValueError: a non-positive size, a negative start, a process outside the count.
    """
    _check_stream_sizes(patch_size, batch_size, start_position, threads, crops_per_image)
    parsed = as_source(source, tfds_data_dir)
    process_index, process_count = _process_split(process_index, process_count)
    options = StreamOptions(patch_size=patch_size, batch_size=batch_size, seed=seed,
                            start_position=start_position, process_index=process_index,
                            process_count=process_count, shuffle_buffer=shuffle_buffer,
                            threads=threads, cache_bytes=cache_bytes, max_pixels=max_pixels,
                            crops_per_image=crops_per_image)
    dataset = parsed.train_stream(options)
    logger.info("%s", dataset.source_info.summary())
    return dataset


def load_images(source: str | Source, *, max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
                limit: int | None = None,
                tfds_data_dir: str | None = None) -> list[tuple[str, np.ndarray]]:
    """Whole images of a source, as (name, uint8 (H, W, 3)), in the source's order.

    Names are the sample names, the file stems (paths under the folder where stems
    repeat), or ``file_name`` stems (else zero-padded record indices) for TFDS. Files
    that cannot be read, and images over ``max_pixels``, are skipped with a warning
    naming them.

    Args:
      source: a data source string (see `parse_source`), or its parsed `Source`.
      max_pixels: larger images are skipped (a decompression-bomb guard).
      limit: at most this many images (the first ones).
      tfds_data_dir: TFDS data directory, for a source string.
    """
    return as_source(source, tfds_data_dir).load_images(max_pixels=max_pixels, limit=limit)


def as_source(source: str | Source, tfds_data_dir: str | None = None) -> Source:
    """``source`` parsed, unless it already is (a `Source` carries its TFDS data_dir)."""
    if isinstance(source, Source):
        return source
    return parse_source(source, tfds_data_dir=tfds_data_dir)


def _process_split(process_index: int | None,
                   process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:  # the stream itself needs no JAX
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return process_index, process_count
