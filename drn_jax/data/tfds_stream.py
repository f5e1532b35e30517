"""The tf.data training stream of a TFDS split: record order, per-block plans, decoding, batches.

Only `drn_jax.data.tfds_source` uses it, and only this module and that one import TensorFlow
(inside functions). The order of records is `tfds_order`'s, the plans are `jpeg`'s; what the
stream delivers is described in docs/extending.md ("The TFDS stream").
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from drn_jax.data import jpeg, tfds_order
from drn_jax.data.base import SourceError, SourceInfo, StreamOptions, full_batches
from drn_jax.errors import one_line

__all__ = ["SkippedRecords", "TfDataset", "crop_stream", "encoded_image_spec", "tensorflow",
           "tensorflow_datasets", "stream_options"]

logger = logging.getLogger(__name__)

_GPUS_HIDDEN = False


def tensorflow(spec: str):
    """TensorFlow, imported on first use, with its GPUs hidden before any op runs."""
    global _GPUS_HIDDEN
    try:
        import tensorflow as tf  # slow import; only tfds: sources pay for it
    except ImportError as err:
        raise SourceError(f"data source {spec!r} needs TensorFlow ({one_line(err)}); install "
                          "tensorflow-cpu and tensorflow-datasets, or use a 'folder:' source") from None
    if not _GPUS_HIDDEN:
        _GPUS_HIDDEN = True
        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError) as err:  # devices were already initialised
            logger.debug("could not hide GPUs from TensorFlow: %s", err)
    return tf


def tensorflow_datasets(spec: str):
    """TFDS, imported on first use, after `tensorflow`."""
    tensorflow(spec)  # before TFDS can run a TensorFlow op
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise SourceError(f"data source {spec!r} needs TensorFlow Datasets ({one_line(err)}); "
                          "install tensorflow-datasets, or use a 'folder:' source") from None
    return tfds


def encoded_image_spec(tf: Any, spec: str, features: Any, key: str) -> dict[str, Any]:
    """The `tf.io.parse_example` spec of the encoded image feature ``key``: parsing a
    block at once, rather than TFDS's per-record deserialisation."""
    info = features[key].get_serialized_info()
    dtype = tf.as_dtype(info.np_dtype)
    if tuple(info.shape) != () or dtype != tf.string:
        raise SourceError(f"data source {spec!r}: feature {key!r} is not one encoded image per "
                          f"record (stored as {dtype.name} {tuple(info.shape)}); name an "
                          "Image feature as KEY")
    return {key: tf.io.FixedLenFeature([], tf.string)}


def crop_stream(tf: Any, parse_spec: dict[str, Any], order: tfds_order.RecordOrder, *,
                crop_key: int, options: StreamOptions, skipped: SkippedRecords) -> Any:
    """The batched tf.data pipeline of a split's records in ``order``, from
    ``options.start_position`` on: see `_blocks` and `_batches`."""
    blocks = _blocks(tf, parse_spec, order, options.start_position // options.crops_per_image,
                     crop_key, options.patch_size, options.crops_per_image, skipped)
    return _batches(tf, blocks, options)


def _blocks(tf: Any, parse_spec: dict[str, Any], order: tfds_order.RecordOrder,
             start_record: int, crop_key: int, patch: int, per_image: int,
             skipped: SkippedRecords) -> Any:
    """Blocks of records from ``start_record`` on, forever, in the order `tfds_order`
    describes, each with its decoding planned: (the block's encoded images (m,), the
    `jpeg.BlockPlan` of the n records to decode, in order); K = ``per_image``.

    Everything here is done once per block, not per record: parsing (batched), the
    permutation, the positions, the crops' random words, and, from each JPEG's frame
    header (`jpeg.jpeg_size`), its crop windows and the rectangle to decode (`jpeg.plan_block`). Images
    that the header shows too small are noted and left out here. The few records that
    the first `jpeg.HEADER_BYTES` do not size are planned one by one (`_batches`).
    """
    (key,) = parse_spec
    files = tf.constant([chunk.file for chunk in order.chunks])
    skips = tf.constant([chunk.skip for chunk in order.chunks], tf.int64)
    counts = tf.constant([chunk.count for chunk in order.chunks], tf.int64)

    def read(chunk_files, chunk_skips, chunk_counts):
        # Reading the same TFRecord files that TFDS reads, chunk by chunk, lets the chunk
        # order be ours; TFRecordDataset skips records without reading their bytes.
        return tf.data.Dataset.from_tensor_slices((chunk_files, chunk_skips, chunk_counts)).flat_map(
            lambda path, skip, take: tf.data.TFRecordDataset(path).skip(skip).take(take))

    def plan_block(epoch: np.ndarray, block_index: np.ndarray, begin: np.ndarray,
                   headers: np.ndarray) -> tuple[np.ndarray, ...]:
        """The `jpeg.BlockPlan` of a block's records from ``begin`` on (resuming drops the
        ones before the start), as a tuple for `tf.numpy_function`."""
        first = int(epoch) * order.count + int(block_index) * order.block_size + int(begin)
        permutation = order.block_permutation(epoch, block_index, len(headers))[int(begin):]
        plan = jpeg.plan_block(headers, permutation, first, per_image=per_image,
                               crop_key=crop_key, patch=patch)
        skipped.note_too_small(plan.positions[plan.kinds == jpeg.SMALL])
        return tuple(plan)

    def number(epoch, records, first_block: int, drop: int):
        def plan(block_index, serialized):
            # A stateless permutation per (seed, process, epoch, block) rather than
            # Dataset.shuffle, whose seed also depends on TensorFlow's global seed. It comes
            # with the rest of the block's plan: one Python call per block, not per record.
            encoded = tf.io.parse_example(serialized, parse_spec)[key]
            begin = tf.where(block_index == first_block, tf.constant(drop, tf.int64), 0)
            planned = tf.numpy_function(
                plan_block, [epoch, block_index, begin, tf.strings.substr(encoded, 0, jpeg.HEADER_BYTES)],
                [tf.as_dtype(dtype) for dtype in jpeg.BLOCK_PLAN_DTYPES], stateful=True)
            planned = jpeg.BlockPlan(*[tf.ensure_shape(value, shape) for value, shape
                                       in zip(planned, jpeg.block_plan_shapes(per_image))])
            keep = tf.not_equal(planned.kinds, jpeg.SMALL)
            # The block's records, and the plan of those to decode.
            return encoded, jpeg.BlockPlan(*[tf.boolean_mask(value, keep) for value in planned])

        return records.batch(order.block_size).enumerate(first_block).map(plan)

    def later_epoch(epoch):
        slots = tf.numpy_function(order.chunk_order, [epoch], tf.int64, stateful=False)
        return number(epoch, read(tf.gather(files, slots), tf.gather(skips, slots),
                                  tf.gather(counts, slots)), 0, 0)

    resume = order.resume(start_record)
    head = read(tf.constant([chunk.file for chunk in resume.chunks]),
                tf.constant([chunk.skip for chunk in resume.chunks], tf.int64),
                tf.constant([chunk.count for chunk in resume.chunks], tf.int64))
    head = number(tf.constant(resume.epoch, tf.int64), head, resume.first_block, resume.drop)
    return head.concatenate(tf.data.Dataset.counter(resume.epoch + 1).flat_map(later_epoch))


def _batches(tf: Any, blocks: Any, options: StreamOptions) -> Any:
    """Batches ``{'hr', 'transform', 'position', 'fits'}`` from blocks of planned records:
    ``crops_per_image`` crops per decoded record. Records that cannot be decoded are
    dropped; crops of images that decoding shows too small are marked (``fits`` False).
    `TfDataset` notes both, and drops the marked crops.

    Per record there is one map call: for a JPEG planned with its block, the decode and
    the cuts only. The rare records planned on their own take one `tf.numpy_function`
    each, which costs about as much CPU as decoding a crop window.
    The decoding map runs inside each block's dataset and restarts with the next block,
    which leaves about ``threads / shuffle_buffer`` of the decoding time idle.
    """
    patch, per_image = options.patch_size, options.crops_per_image
    empty = tf.zeros([per_image, patch, patch, 3], tf.uint8)

    def cut(pixels, corners):
        return tf.stack([tf.slice(pixels, [corners[k, 0], corners[k, 1], 0], [patch, patch, 3])
                         for k in range(per_image)])

    def plan_record(size: np.ndarray, words: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`jpeg.plan_crops` of one record, once its size is known: (rectangle, corners,
        transforms, fits)."""
        fits = min(size) >= patch
        plan = jpeg.plan_crops(np.maximum(size, patch), words[None], patch)
        return plan.rectangles[0], plan.corners[0], plan.transforms[0], np.bool_(fits)

    def planned(size, words):
        # Stateless, like every per-record function of the stream, so that tf.data may
        # treat the decoding map as pure; images too small are noted by the iterator.
        rectangle, corners, transforms, fits = tf.numpy_function(
            plan_record, [size, words], (tf.int32, tf.int32, tf.int32, tf.bool), stateful=False)
        return (tf.ensure_shape(rectangle, [4]), tf.ensure_shape(corners, [per_image, 2]),
                tf.ensure_shape(transforms, [per_image]), tf.ensure_shape(fits, []))

    def decode(record, plan: jpeg.BlockPlan):
        def window():  # planned with its block: only the rectangle of its crops is decoded
            pixels = tf.image.decode_and_crop_jpeg(record, plan.rectangles, channels=3)
            return cut(pixels, plan.corners), plan.transforms, True

        def header():  # a JPEG whose frame header lies beyond the block's jpeg.HEADER_BYTES
            rectangle, corners, transforms, fits = planned(
                tf.image.extract_jpeg_shape(record)[:2], plan.words)
            return tf.cond(fits, lambda: cut(tf.image.decode_and_crop_jpeg(
                record, rectangle, channels=3), corners), lambda: empty), transforms, fits

        def whole():  # PNG, BMP, GIF: decoded whole, then planned
            pixels = tf.io.decode_image(record, channels=3, dtype=tf.uint8, expand_animations=False)
            rectangle, corners, transforms, fits = planned(tf.shape(pixels)[:2], plan.words)
            return tf.cond(fits, lambda: cut(pixels, corners + rectangle[None, :2]),
                           lambda: empty), transforms, fits

        hr, transforms, fits = tf.switch_case(plan.kinds, [window, header, whole])
        return plan.positions, tf.ensure_shape(hr, [per_image, patch, patch, 3]), transforms, fits

    parallel = tf.data.AUTOTUNE if options.threads is None else options.threads

    def decoded(encoded, plan: jpeg.BlockPlan):
        # A record that cannot be decoded must not stop the run. Errors are dropped inside
        # each block's dataset, so that those of reading the files still raise. Records
        # are taken from the block by index: permuting the block first would copy them.
        return tf.data.Dataset.from_tensor_slices(plan).map(
            lambda record: decode(encoded[record.order], record),
            num_parallel_calls=parallel, deterministic=True).ignore_errors()

    # Images found too small only once decoded stay in the stream, marked by ``fits``:
    # the iterator notes and drops them (TfDataset).
    dataset = _crop_records(tf, blocks.flat_map(decoded), options)
    dataset = dataset.batch(options.batch_size, drop_remainder=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(stream_options(tf, options.threads))


def _crop_records(tf: Any, records: Any, options: StreamOptions) -> Any:
    """One element per crop, ``{'hr', 'transform', 'position', 'fits'}``, from the decoded
    records' ``(record position, K crops, K transforms, fits)``, from the start position on."""
    per_image = options.crops_per_image
    if per_image == 1:  # a record is a crop: no unbatching
        return records.map(lambda position, hr, transforms, fits: {
            "hr": hr[0], "transform": transforms[0], "position": position, "fits": fits})
    crops = records.map(lambda position, hr, transforms, fits: {
        "hr": hr, "transform": transforms, "fits": tf.fill([per_image], fits),
        "position": position * per_image + tf.range(per_image, dtype=tf.int64)}).unbatch()
    if options.start_position % per_image:  # resuming inside a record's crops
        start = options.start_position
        crops = crops.filter(lambda crop: crop["position"] >= start)
    return crops


class SkippedRecords:
    """The records a TFDS stream has skipped so far, by stored index (thread-safe).

    A record that cannot be decoded is named in one warning, the first time only.

    Attributes:
      unreadable: stored indices of records that could not be decoded.
      too_small: stored indices of images with a side under the crop.
    """

    def __init__(self, spec: str, order: tfds_order.RecordOrder):
        self._spec, self._order = spec, order
        self.unreadable: set[int] = set()
        self.too_small: set[int] = set()
        self._lock = threading.Lock()

    def note_too_small(self, record_positions: np.ndarray) -> None:
        """Called by the stream when it finds images too small, before it drops them."""
        small = [self._order.stored_index(int(p)) for p in record_positions]
        with self._lock:
            self.too_small.update(small)

    def note_gaps(self, record_positions: np.ndarray) -> None:
        """Called with the record positions that the stream did not deliver: those not
        noted too small could not be decoded."""
        stored = [self._order.stored_index(int(p)) for p in record_positions]
        with self._lock:
            dropped = [index for index in stored if index not in self.too_small]
            new = sorted(set(dropped) - self.unreadable)
            self.unreadable.update(dropped)
        for index in new:
            logger.warning("%s record %d (in stored order of this process's split): cannot be "
                           "decoded; skipped", self._spec, index)


class TfDataset:
    """A batched `tf.data.Dataset` with the `base.TrainDataset` interface.

    Attributes:
      dataset: the tf.data pipeline, for TensorFlow-side use: its batches also hold the
        crops of images found too small when decoded (``'fits'`` False), and the records
        it dropped as undecodable are noted nowhere; `as_numpy_iterator` does both.
      source_info: what was found in the source.
      skipped: the records skipped so far, by every iterator of this dataset.
      order: the record order (which stored record each record position reads).
    """

    def __init__(self, dataset: Any, source_info: SourceInfo | None,
                 skipped: SkippedRecords | None, order: tfds_order.RecordOrder | None = None,
                 *, damaged: str = "a record file is damaged ({})", start_position: int = 0,
                 crops_per_image: int = 1, batch_size: int | None = None):
        self.dataset = dataset
        self.source_info = source_info
        self.skipped = skipped
        self.order = order
        self._damaged = damaged
        self._start, self._per_image, self._batch_size = start_position, crops_per_image, batch_size

    def as_numpy_iterator(self) -> Iterator[dict[str, np.ndarray]]:
        """The batches as NumPy arrays. Images too small and records missing between the
        positions delivered are noted in `skipped`. A damaged record file (TensorFlow's
        ``DataLossError``: reading errors are not dropped like undecodable records) raises
        a one-line `SourceError`."""
        import tensorflow as tf  # imported already by whoever built the dataset

        try:
            batches = self.dataset.as_numpy_iterator()
            if self.skipped is not None:  # a stream of this module, not a bare dataset
                batches = full_batches(self._checked(batches), self._batch_size)
            yield from batches
        except tf.errors.DataLossError as err:
            # TensorFlow's message starts with the op's function name; keep what was read.
            detail = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", one_line(err)).strip()
            raise SourceError(self._damaged.format(detail or "data loss")) from None

    def _checked(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """The stream's batches without the crops of images too small (noted), and with the
        records that never came (could not be decoded) noted."""
        expected = self._start // self._per_image  # the next record position to deliver
        for batch in batches:
            fits = batch.pop("fits")
            records = batch["position"] // self._per_image
            if not fits.all():
                self.skipped.note_too_small(np.unique(records[~fits]))
                batch = {key: value[fits] for key, value in batch.items()}
            last = int(records[-1])  # positions increase along the stream
            if last >= expected:
                present = np.unique(records[records >= expected])
                if len(present) < last - expected + 1:
                    self.skipped.note_gaps(np.setdiff1d(np.arange(expected, last + 1), present))
                expected = last + 1
            yield batch


def stream_options(tf: Any, threads: int | None) -> Any:
    """The stream's `tf.data.Options`: deterministic, and ``threads`` cores at most."""
    options = tf.data.Options()
    options.deterministic = True  # order is part of the resume contract
    if threads is not None:
        options.threading.private_threadpool_size = threads
    # Parallelism comes from parallel map calls; ops inside each call stay on one
    # thread so that `threads` bounds the cores used.
    options.threading.max_intra_op_parallelism = 1
    return options
