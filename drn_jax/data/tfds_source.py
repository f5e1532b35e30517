"""``tfds:NAME[/CONFIG]:SPLIT[:KEY]``: a prepared TensorFlow Datasets dataset.

KEY is the image feature (default ``image``), e.g. ``tfds:div2k/bicubic_x4:train:hr``.
This is the only module of `drn_jax.data` that uses TensorFlow: it imports TensorFlow
and TFDS inside its methods, and hides the GPUs from TensorFlow there, the first time
(tf.data needs only the CPU, and TensorFlow would otherwise reserve most of the GPU
memory at its first op, leaving JAX without it).

The training stream, per process (`tfds.split_for_jax_process`): the split's TFRecord
files are read in seeded chunks and shuffled in blocks of ``shuffle_buffer`` records, both
anew every epoch (`tfds_order`); record position ``epoch * n + i`` holds the crops at
positions ``(epoch * n + i) * K + k``, ``K = crops_per_image``. Resuming starts reading at the
block of the start position. A JPEG record's size is read from its frame header
(`jpeg_size`), its crop windows drawn by `crops.crop_window`'s words for (crop key,
position), and only the rectangle that covers them, plus `_JPEG_MARGIN` pixels, is decoded
(`tf.image.decode_and_crop_jpeg`): the crops are bit-identical to `crops.crop` of the fully
decoded image. All of that is planned once per block, in one Python call; per record only
the decode and the cuts run. Other formats are decoded whole (``tf.io.decode_image``, 3
channels, uint8). Images smaller than the crop, and records that cannot be decoded
(counted and named once, in `SkippedRecords`; the iterator finds them as gaps in the
positions it delivers), are skipped after their positions were assigned, so positions have
gaps (``dense_positions`` False). Batches are ``{'hr': uint8 (B, P, P, 3), 'transform':
int32 (B,), 'position': int64 (B,)}``: the windows untransformed, with the transform that
training applies on the device (`drn_jax.ops.dihedral`; TensorFlow's transpose and reverse
would copy every crop twice).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from drn_jax.data import crops, tfds_order
from drn_jax.data.base import (FormError, Source, SourceError, SourceInfo, StreamOptions,
                               derive_key, first_line, full_batches)

logger = logging.getLogger(__name__)

_GPUS_HIDDEN = False


def _tensorflow(spec: str):
    """TensorFlow, imported on first use, with its GPUs hidden before any op runs."""
    global _GPUS_HIDDEN
    try:
        import tensorflow as tf  # slow import; only tfds: sources pay for it
    except ImportError as err:
        raise SourceError(f"data source {spec!r} needs TensorFlow ({first_line(err)}); install "
                          "tensorflow-cpu and tensorflow-datasets, or use a 'folder:' source") from None
    if not _GPUS_HIDDEN:
        _GPUS_HIDDEN = True
        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError) as err:  # devices were already initialised
            logger.debug("could not hide GPUs from TensorFlow: %s", err)
    return tf


def _tfds(spec: str):
    _tensorflow(spec)  # before TFDS can run a TensorFlow op
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise SourceError(f"data source {spec!r} needs TensorFlow Datasets ({first_line(err)}); "
                          "install tensorflow-datasets, or use a 'folder:' source") from None
    return tfds


@dataclasses.dataclass(frozen=True, kw_only=True)
class TfdsSource(Source):
    """A split of a prepared TFDS dataset.

    Attributes:
      name: the dataset name, with its config (``div2k/bicubic_x4``).
      split: the TFDS split (``train``, ``validation[:10%]``, ...).
      key: the image feature.
      data_dir: the TFDS data directory (None: TFDS's default).
    """
    FORM = "'tfds:NAME[/CONFIG]:SPLIT[:KEY]' (a prepared TensorFlow Datasets dataset)"
    name: str
    split: str
    key: str = "image"
    data_dir: str | None = None

    @classmethod
    def parse(cls, spec: str, rest: str, *, tfds_data_dir: str | None = None,
              **options: Any) -> TfdsSource:
        """Checks that the dataset is prepared and has the split and the feature.

        Args:
          tfds_data_dir: where TFDS datasets are prepared (default: TFDS's own,
            ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        """
        if not rest:
            raise FormError(spec)
        parts = rest.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise SourceError(f"data source {spec!r} not understood; write "
                              "'tfds:NAME[/CONFIG]:SPLIT[:KEY]', e.g. 'tfds:imagenet2012:train:image'")
        name, split = parts[0], parts[1]
        key = parts[2] if len(parts) == 3 else "image"
        builder = _builder(spec, name, tfds_data_dir)
        if not builder.is_prepared():
            raise SourceError(f"data source {spec!r}: {_how_to_prepare(builder, name)}")
        features = builder.info.features
        if key not in features:
            images = [k for k, v in features.items() if type(v).__name__ == "Image"]
            raise SourceError(f"data source {spec!r}: {name} has no feature {key!r}; its image "
                              f"features are {', '.join(images) or '(none)'}: write "
                              f"'tfds:{name}:{split}:KEY'")
        try:
            builder.info.splits[split]
        except (KeyError, ValueError, AssertionError) as err:
            raise SourceError(f"data source {spec!r}: {name} has no split {split!r} "
                              f"({first_line(err)}); its splits are "
                              f"{', '.join(builder.info.splits) or '(none)'}") from None
        return cls(spec=spec, name=name, split=split, key=key, data_dir=tfds_data_dir)

    def train_stream(self, options: StreamOptions) -> TfDataset:
        tf, tfds = _tensorflow(self.spec), _tfds(self.spec)
        builder = tfds.builder(self.name, data_dir=self.data_dir)
        split = tfds.split_for_jax_process(self.split, process_index=options.process_index,
                                           process_count=options.process_count)
        split_info = builder.info.splits[split]
        count = split_info.num_examples
        if count == 0:
            raise SourceError(f"data source {self.spec!r}: process {options.process_index} of "
                              f"{options.process_count} gets no records of split {self.split!r}")
        file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
        if file_format != "tfrecord":
            raise SourceError(f"data source {self.spec!r}: {self.name} is stored as {file_format}; "
                              "the training stream reads TFRecord files: prepare it with "
                              f"`tfds build {self.name} --file_format=tfrecord`")
        buffer = max(1, min(options.shuffle_buffer, count))
        files = [(str(f.filename), f.skip, f.take) for f in split_info.file_instructions]
        # Half-block chunks: every shuffle block mixes records from at least two places
        # of the split, and the chunk order, hence the blocks, change with every epoch.
        chunk_list = tfds_order.chunks(files, max(1, buffer // 2))
        order = tfds_order.RecordOrder(
            chunk_list, chunk_key=derive_key(options.seed, options.process_index, "chunk order"),
            block_key=derive_key(options.seed, options.process_index, "order"), block_size=buffer)
        crop_key = derive_key(options.seed, options.process_index, "crop")
        skipped = SkippedRecords(self.spec, order)
        blocks = _records(tf, _parse_spec(tf, self.spec, builder.info.features, self.key), order,
                          options.start_position // options.crops_per_image, crop_key,
                          options.patch_size, options.crops_per_image, skipped)
        dataset = _crops(tf, blocks, options)
        info = SourceInfo(source=self.spec, patch_size=options.patch_size, num_images=count,
                          num_too_small=None, num_unreadable=None, images=(), cached=False,
                          dense_positions=False, process_index=options.process_index,
                          process_count=options.process_count)
        root = builder.data_dir_root
        damaged = (f"data source {self.spec!r}: a record file in {builder.data_dir} is damaged "
                   "({}); prepare the dataset again with "
                   f"`tfds build {self.name} --data_dir={root} --overwrite`")
        return TfDataset(dataset, info, skipped, order, damaged=damaged,
                         start_position=options.start_position,
                         crops_per_image=options.crops_per_image, batch_size=options.batch_size)

    def load_images(self, *, max_pixels: int, limit: int | None) -> list[tuple[str, np.ndarray]]:
        """Names are the ``file_name`` feature's stems when there is one, else zero-padded
        record indices; records are in stored order."""
        tf, tfds = _tensorflow(self.spec), _tfds(self.spec)
        builder = tfds.builder(self.name, data_dir=self.data_dir)
        has_file_name = "file_name" in builder.info.features
        records = builder.as_dataset(split=self.split, shuffle_files=False,
                                     decoders={self.key: tfds.decode.SkipDecoding()})
        if limit is not None:
            records = records.take(limit)
        images = []
        for index, example in enumerate(records.as_numpy_iterator()):
            if has_file_name:
                name = pathlib.PurePosixPath(example["file_name"].decode()).stem
            else:
                name = f"{index:06d}"
            try:
                pixels = tf.io.decode_image(example[self.key], channels=3, dtype=tf.uint8,
                                            expand_animations=False).numpy()
            except tf.errors.InvalidArgumentError as err:
                logger.warning("%s record %d (%s): cannot decode (%s); skipped", self.spec, index,
                               name, first_line(err))
                continue
            if pixels.shape[0] * pixels.shape[1] > max_pixels:
                logger.warning("%s record %d (%s): %dx%d pixels, over the limit of %d; skipped",
                               self.spec, index, name, pixels.shape[1], pixels.shape[0], max_pixels)
                continue
            images.append((name, pixels))
        return images


# Decoded pixels around the crop windows: JPEG's fancy upsampling blends each pixel's
# chroma with the neighbouring chroma sample, which for 2x subsampled chroma lies up to 2
# pixels away; decoded without it, a window's edge pixels would differ from a full decode.
_JPEG_MARGIN = 2
# Bytes of each record that the block's planning reads for a JPEG's frame header: enough
# for JFIF headers and most EXIF and ICC segments, and cheap to copy (a JPEG whose header
# lies further in is planned on its own, `_HEADER`, with the same crops).
_HEADER_BYTES = 4096
# How a record is decoded: its windows planned with its block (_WINDOW); a JPEG planned
# from its own header (_HEADER); decoded whole, then planned (_WHOLE: PNG, BMP, GIF); or
# left out, too small by its header (_SMALL).
_WINDOW, _HEADER, _WHOLE, _SMALL = 0, 1, 2, 3
# The first bytes of every JPEG file (start of image, then a marker), as libjpeg and
# tf.io.is_jpeg recognise one.
_JPEG_START = b"\xff\xd8\xff"
# Frame-header (SOFn) markers: C0-CF but DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the frame header of JPEG bytes (the first ``n`` bytes of a
    file are enough when they hold it), as libjpeg reads it; None when ``data`` is not a
    JPEG or its frame header is not in ``data``."""
    if not data.startswith(_JPEG_START):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker in (0xD9, 0xDA):  # end of image, or scan data, before any frame header
            return None
        elif marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height, width = (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
            return (height, width) if height and width else None
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _plan(sizes: np.ndarray, words: np.ndarray, patch: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crops of records whose images have ``sizes`` (n, 2), each >= ``patch``, from
    their `crops.window_words` (n, K, 3): (rectangles int32 (n, 4), corners int32 (n, K, 2),
    transforms int32 (n, K)).

    A rectangle [top, left, rows, columns] covers the record's K windows
    (`crops.windows_from_words`) and `_JPEG_MARGIN` pixels around them; corners are the
    windows' top-left pixels inside it.
    """
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    tops, lefts, transforms = crops.windows_from_words(words, sizes[:, None, :], patch)
    top = np.maximum(0, tops.min(1) - _JPEG_MARGIN)
    left = np.maximum(0, lefts.min(1) - _JPEG_MARGIN)
    bottom = np.minimum(sizes[:, 0], tops.max(1) + patch + _JPEG_MARGIN)
    right = np.minimum(sizes[:, 1], lefts.max(1) + patch + _JPEG_MARGIN)
    rectangles = np.stack([top, left, bottom - top, right - left], 1).astype(np.int32)
    corners = np.stack([tops - top[:, None], lefts - left[:, None]], -1).astype(np.int32)
    return rectangles, corners, transforms.astype(np.int32)


def _records(tf: Any, parse_spec: dict[str, Any], order: tfds_order.RecordOrder,
             start_record: int, crop_key: int, patch: int, per_image: int,
             skipped: SkippedRecords) -> Any:
    """Blocks of records from ``start_record`` on, forever, in the order `tfds_order`
    describes, each with its decoding planned: (the block's encoded images (m,), then for
    the n records to decode, in order: their index in the block int64 (n,), record
    positions int64 (n,), kinds int32 (n,), decode rectangles int32 (n, 4), the crops'
    corners in the rectangle int32 (n, K, 2), their transforms int32 (n, K), window words
    uint64 (n, K, 3)); K = ``per_image``, the words are `crops.window_words` of the
    record's crop positions ``record position * K + k``.

    Everything here is done once per block, not per record: parsing (batched), the
    permutation, the positions, the crops' random words, and, from each JPEG's frame
    header (`jpeg_size`), its crop windows and the rectangle to decode (`_plan`). Images
    that the header shows too small are noted and left out here. The few records that
    the first `_HEADER_BYTES` do not size are planned one by one (`_crops`).
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
        """(record order, positions, kinds, rectangles, corners, transforms, words) of a
        block's records from ``begin`` on (resuming drops the ones before the start)."""
        first = int(epoch) * order.count + int(block_index) * order.block_size
        permutation = order.block_permutation(epoch, block_index, len(headers))[int(begin):]
        record_positions = first + int(begin) + np.arange(len(permutation), dtype=np.int64)
        positions = record_positions[:, None] * per_image + np.arange(per_image)
        words = crops.window_words(crop_key, positions)
        sizes = np.full((len(permutation), 2), patch, np.int64)
        kinds = np.empty(len(permutation), np.int32)
        for i, stored in enumerate(permutation):
            header = headers[stored]
            size = jpeg_size(header)
            if size is not None:
                sizes[i] = size
                kinds[i] = _WINDOW if min(size) >= patch else _SMALL
            else:
                kinds[i] = _HEADER if header.startswith(_JPEG_START) else _WHOLE
        # Records not planned here get some plan of a patch-sized image: it is not used.
        rectangles, corners, transforms = _plan(sizes.clip(patch), words, patch)
        skipped.note_too_small(record_positions[kinds == _SMALL])
        return permutation, record_positions, kinds, rectangles, corners, transforms, words

    def number(epoch, records, first_block: int, drop: int):
        def plan(block_index, serialized):
            # A stateless permutation per (seed, process, epoch, block) rather than
            # Dataset.shuffle, whose seed also depends on TensorFlow's global seed. It comes
            # with the rest of the block's plan: one Python call per block, not per record.
            encoded = tf.io.parse_example(serialized, parse_spec)[key]
            begin = tf.where(block_index == first_block, tf.constant(drop, tf.int64), 0)
            planned = tf.numpy_function(
                plan_block, [epoch, block_index, begin, tf.strings.substr(encoded, 0, _HEADER_BYTES)],
                (tf.int64, tf.int64, tf.int32, tf.int32, tf.int32, tf.int32, tf.uint64), stateful=True)
            shapes = ([None], [None], [None], [None, 4], [None, per_image, 2], [None, per_image],
                      [None, per_image, 3])
            planned = [tf.ensure_shape(value, shape) for value, shape in zip(planned, shapes)]
            keep = tf.not_equal(planned[2], _SMALL)
            # The block's records, and (order in the block, record position, kind, rectangle,
            # corners, transforms, words) of those to decode.
            return (encoded, *[tf.boolean_mask(value, keep) for value in planned])

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


def _parse_spec(tf: Any, spec: str, features: Any, key: str) -> dict[str, Any]:
    """The `tf.io.parse_example` spec of the encoded image feature ``key``: parsing a
    block at once, rather than TFDS's per-record deserialisation."""
    info = features[key].get_serialized_info()
    dtype = tf.as_dtype(info.np_dtype)
    if tuple(info.shape) != () or dtype != tf.string:
        raise SourceError(f"data source {spec!r}: feature {key!r} is not one encoded image per "
                          f"record (stored as {dtype.name} {tuple(info.shape)}); name an "
                          "Image feature as KEY")
    return {key: tf.io.FixedLenFeature([], tf.string)}


def _crops(tf: Any, blocks: Any, options: StreamOptions) -> Any:
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
        """`_plan` of one record, once its size is known: (rectangle, corners, transforms,
        fits)."""
        fits = min(size) >= patch
        rectangles, corners, transforms = _plan(np.maximum(size, patch), words[None], patch)
        return rectangles[0], corners[0], transforms[0], np.bool_(fits)

    def planned(size, words):
        # Stateless, like every per-record function of the stream, so that tf.data may
        # treat the decoding map as pure; images too small are noted by the iterator.
        rectangle, corners, transforms, fits = tf.numpy_function(
            plan_record, [size, words], (tf.int32, tf.int32, tf.int32, tf.bool), stateful=False)
        return (tf.ensure_shape(rectangle, [4]), tf.ensure_shape(corners, [per_image, 2]),
                tf.ensure_shape(transforms, [per_image]), tf.ensure_shape(fits, []))

    def decode(position, record, kind, rectangle, corners, transforms, words):
        def window():  # planned with its block: only the rectangle of its crops is decoded
            pixels = tf.image.decode_and_crop_jpeg(record, rectangle, channels=3)
            return cut(pixels, corners), transforms, True

        def header():  # a JPEG whose frame header lies beyond the block's _HEADER_BYTES
            rectangle, corners, transforms, fits = planned(
                tf.image.extract_jpeg_shape(record)[:2], words)
            return tf.cond(fits, lambda: cut(tf.image.decode_and_crop_jpeg(
                record, rectangle, channels=3), corners), lambda: empty), transforms, fits

        def whole():  # PNG, BMP, GIF: decoded whole, then planned
            pixels = tf.io.decode_image(record, channels=3, dtype=tf.uint8, expand_animations=False)
            rectangle, corners, transforms, fits = planned(tf.shape(pixels)[:2], words)
            return tf.cond(fits, lambda: cut(pixels, corners + rectangle[None, :2]),
                           lambda: empty), transforms, fits

        hr, transforms, fits = tf.switch_case(kind, [window, header, whole])
        return position, tf.ensure_shape(hr, [per_image, patch, patch, 3]), transforms, fits

    parallel = tf.data.AUTOTUNE if options.threads is None else options.threads

    def decoded(encoded, order, *plan):
        # A record that cannot be decoded must not stop the run. Errors are dropped inside
        # each block's dataset, so that those of reading the files still raise. Records
        # are taken from the block by index: permuting the block first would copy them.
        return tf.data.Dataset.from_tensor_slices((order, *plan)).map(
            lambda index, position, *rest: decode(position, encoded[index], *rest),
            num_parallel_calls=parallel, deterministic=True).ignore_errors()

    # Images found too small only once decoded stay in the stream, marked by ``fits``:
    # the iterator notes and drops them (TfDataset).
    dataset = blocks.flat_map(decoded)
    if per_image == 1:  # a record is a crop: no unbatching
        dataset = dataset.map(lambda position, hr, transforms, fits: {
            "hr": hr[0], "transform": transforms[0], "position": position, "fits": fits})
    else:
        dataset = dataset.map(lambda position, hr, transforms, fits: {
            "hr": hr, "transform": transforms, "fits": tf.fill([per_image], fits),
            "position": position * per_image + tf.range(per_image, dtype=tf.int64)}).unbatch()
        if options.start_position % per_image:  # resuming inside a record's crops
            start = options.start_position
            dataset = dataset.filter(lambda crop: crop["position"] >= start)
    dataset = dataset.batch(options.batch_size, drop_remainder=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(_options(tf, options.threads))


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
            detail = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", first_line(err)).strip()
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


def _options(tf: Any, threads: int | None) -> Any:
    options = tf.data.Options()
    options.deterministic = True  # order is part of the resume contract
    if threads is not None:
        options.threading.private_threadpool_size = threads
    # Parallelism comes from parallel map calls; ops inside each call stay on one
    # thread so that `threads` bounds the cores used.
    options.threading.max_intra_op_parallelism = 1
    return options


def _builder(spec: str, name: str, data_dir: str | None) -> Any:
    tfds = _tfds(spec)
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise SourceError(f"data source {spec!r}: TensorFlow Datasets has no dataset "
                          f"{name!r}; check the name in the TFDS catalog "
                          "(https://www.tensorflow.org/datasets/catalog)") from None
    except (ValueError, KeyError) as err:  # e.g. an unknown config
        raise SourceError(f"data source {spec!r}: cannot open TFDS dataset {name!r} "
                          f"({first_line(err)}); check NAME/CONFIG") from None


def _how_to_prepare(builder: Any, name: str) -> str:
    root = builder.data_dir_root
    base = name.split("/")[0]
    build = f"`tfds build {name} --data_dir={root}`"
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        manual = pathlib.Path(root) / "downloads" / "manual"
        # The instructions' first sentence names the files (imagenet2012: the two tars).
        instructions = " ".join(str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())
        first = instructions.split(". ")[0].rstrip(".")
        return (f"{name} is not prepared in {root} and cannot be downloaded automatically: "
                f"download its files into {manual} ({first}; see "
                f"https://www.tensorflow.org/datasets/catalog/{base}), then run {build} "
                "(or set tfds_data_dir to where it is prepared)")
    return (f"{name} is not prepared in {root}; prepare it with {build} "
            "(or set tfds_data_dir to where it is prepared)")
