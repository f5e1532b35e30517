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
block of the start position. A JPEG record's size is read from its header, its crop windows
drawn by `crops.crop_window`'s words for (crop key, position), and only the rectangle that
covers them, plus `_JPEG_MARGIN` pixels, is decoded (`tf.image.decode_and_crop_jpeg`): the
crops are bit-identical to `crops.crop` of the fully decoded image. Other formats are
decoded whole (``tf.io.decode_image``, 3 channels, uint8). Images smaller than the crop,
and records that cannot be decoded (counted and named once, in `SkippedRecords`), are
skipped after their positions were assigned, so positions have gaps (``dense_positions``
False). Batches are ``{'hr': uint8 (B, P, P, 3), 'transform': int32 (B,), 'position': int64
(B,)}``: the windows untransformed, with the transform that training applies on the device
(`drn_jax.ops.dihedral`; TensorFlow's transpose and reverse would copy every crop twice).
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
                               derive_key, first_line)

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
                          options.crops_per_image)
        dataset = _crops(tf, blocks, options, skipped)
        info = SourceInfo(source=self.spec, patch_size=options.patch_size, num_images=count,
                          num_too_small=None, num_unreadable=None, images=(), cached=False,
                          dense_positions=False, process_index=options.process_index,
                          process_count=options.process_count)
        root = builder.data_dir_root
        damaged = (f"data source {self.spec!r}: a record file in {builder.data_dir} is damaged "
                   "({}); prepare the dataset again with "
                   f"`tfds build {self.name} --data_dir={root} --overwrite`")
        return TfDataset(dataset, info, skipped, order, damaged=damaged)

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


def _records(tf: Any, parse_spec: dict[str, Any], order: tfds_order.RecordOrder,
             start_record: int, crop_key: int, per_image: int) -> Any:
    """Blocks of records from ``start_record`` on, forever, in the order `tfds_order`
    describes: (record positions int64 (n,), encoded images (n,), window words uint64
    (n, per_image, 3)); the words are `crops.window_words` of the record's crop positions
    ``record position * per_image + k``.

    Everything here is done once per block, not per record: parsing (batched), the
    permutation, the positions and the crops' random words.
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

    def permutation_and_words(epoch: np.ndarray, block_index: np.ndarray, size: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(permutation, record positions, window words) of a block."""
        first = int(epoch) * order.count + int(block_index) * order.block_size
        record_positions = first + np.arange(int(size), dtype=np.int64)
        positions = record_positions[:, None] * per_image + np.arange(per_image)
        return (order.block_permutation(epoch, block_index, size), record_positions,
                crops.window_words(crop_key, positions))

    def number(epoch, records, first_block: int, drop: int):
        def permute(block_index, serialized):
            # A stateless permutation per (seed, process, epoch, block) rather than
            # Dataset.shuffle, whose seed also depends on TensorFlow's global seed. The
            # crops' random words come with it: one Python call per block, not per record.
            encoded = tf.io.parse_example(serialized, parse_spec)[key]
            size = tf.shape(encoded, out_type=tf.int64)[0]
            permutation, positions, words = tf.numpy_function(
                permutation_and_words, [epoch, block_index, size],
                (tf.int64, tf.int64, tf.uint64), stateful=False)
            # Resuming inside the first block drops the records before the start.
            begin = tf.where(block_index == first_block, tf.constant(drop, tf.int64), 0)
            return (tf.ensure_shape(positions, [None])[begin:],
                    tf.gather(encoded, permutation)[begin:],
                    tf.ensure_shape(words, [None, per_image, 3])[begin:])

        return records.batch(order.block_size).enumerate(first_block).map(permute)

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


def _crops(tf: Any, blocks: Any, options: StreamOptions, skipped: SkippedRecords) -> Any:
    """Batches ``{'hr', 'transform', 'position'}`` from blocks of numbered records: ``crops_per_image``
    crops per decoded record, records that cannot be decoded or are too small skipped and
    noted.

    Everything per record is TensorFlow ops: a Python call per record (tf.numpy_function)
    costs about as much CPU as decoding the record's crop window. The decoding map runs
    inside each block's dataset and restarts with the next block, which leaves about
    ``threads / shuffle_buffer`` of the decoding time idle.
    """
    patch, per_image = options.patch_size, options.crops_per_image
    empty = (tf.zeros([per_image, patch, patch, 3], tf.uint8), tf.zeros([per_image], tf.int32))

    def cropped(size, words, decode):
        """((crops, transforms), fits): the crops from the pixels ``decode(window)``
        gives, where ``window`` covers every crop of the record (`_decode_window`)."""
        def make():
            # crops.crop_window, reduced in the graph: each word modulo its range.
            spans = tf.cast(size - patch + 1, tf.uint64)
            tops = tf.cast(words[:, 0] % spans[0], tf.int32)
            lefts = tf.cast(words[:, 1] % spans[1], tf.int32)
            transforms = tf.cast(words[:, 2] % crops.NUM_TRANSFORMS, tf.int32)
            window = _decode_window(tf, tops, lefts, size, patch)
            pixels, origin = decode(window)
            windows = tf.stack([tf.slice(pixels, [tops[k] - origin[0], lefts[k] - origin[1], 0],
                                         [patch, patch, 3]) for k in range(per_image)])
            return windows, transforms

        fits = tf.reduce_min(size) >= patch
        return tf.cond(fits, make, lambda: empty), fits

    def decode(record_position, record, words):
        def jpeg():
            # The header gives the size, so the windows are known before decoding, and
            # only the rows and columns they cover (plus the margin) are decoded.
            size = tf.image.extract_jpeg_shape(record)[:2]
            return cropped(size, words, lambda window: (
                tf.image.decode_and_crop_jpeg(record, window, channels=3), window[:2]))

        def other():  # PNG, BMP, GIF: decoded whole
            pixels = tf.io.decode_image(record, channels=3, dtype=tf.uint8, expand_animations=False)
            return cropped(tf.shape(pixels)[:2], words,
                           lambda window: (pixels, tf.zeros([2], tf.int32)))

        (hr, transforms), fits = tf.cond(tf.io.is_jpeg(record), jpeg, other)
        return (record_position, tf.ensure_shape(hr, [per_image, patch, patch, 3]),
                tf.ensure_shape(transforms, [per_image]), fits)

    parallel = tf.data.AUTOTUNE if options.threads is None else options.threads

    def decoded(positions, records, words):
        # A record that cannot be decoded must not stop the run. Errors are dropped inside
        # each block's dataset, so that those of reading the files still raise.
        return tf.data.Dataset.from_tensor_slices((positions, records, words)).map(
            decode, num_parallel_calls=parallel, deterministic=True).ignore_errors()

    def note(expected, element):
        # Record positions are consecutive before decoding: a gap is a dropped record.
        record_position, hr, transforms, fits = element
        noted = tf.cond(tf.logical_or(record_position > expected, tf.logical_not(fits)),
                        lambda: tf.numpy_function(skipped.note, [expected, record_position, fits],
                                                  tf.int64, stateful=True),
                        lambda: tf.constant(0, tf.int64))
        with tf.control_dependencies([noted]):
            return record_position + 1, (tf.identity(record_position), hr, transforms, fits)

    def per_crop(record_position, hr, transforms, fits):
        return record_position * per_image + tf.range(per_image, dtype=tf.int64), hr, transforms

    dataset = blocks.flat_map(decoded)
    first_record = options.start_position // per_image
    dataset = dataset.scan(tf.constant(first_record, tf.int64), note)
    dataset = dataset.filter(lambda record_position, hr, transforms, fits: fits)  # a skipped image leaves a gap
    dataset = dataset.map(per_crop).unbatch()
    if options.start_position % per_image:  # resuming inside a record's crops
        start = options.start_position
        dataset = dataset.filter(lambda position, hr, transforms: position >= start)
    dataset = dataset.batch(options.batch_size, drop_remainder=True)
    dataset = dataset.map(lambda position, hr, transforms: {"hr": hr, "transform": transforms,
                                                            "position": position})
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(_options(tf, options.threads))


def _decode_window(tf: Any, tops: Any, lefts: Any, size: Any, patch: int) -> Any:
    """[top, left, rows, columns] (int32) covering the ``patch``-pixel windows at ``tops``,
    ``lefts`` and `_JPEG_MARGIN` pixels around them, inside an image of ``size``."""
    top = tf.maximum(0, tf.reduce_min(tops) - _JPEG_MARGIN)
    left = tf.maximum(0, tf.reduce_min(lefts) - _JPEG_MARGIN)
    bottom = tf.minimum(size[0], tf.reduce_max(tops) + patch + _JPEG_MARGIN)
    right = tf.minimum(size[1], tf.reduce_max(lefts) + patch + _JPEG_MARGIN)
    return tf.stack([top, left, bottom - top, right - left])


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

    def note(self, expected: np.ndarray, record_position: np.ndarray, fits: np.ndarray) -> np.int64:
        """Called by the stream for the record at ``record_position`` when it does not fit,
        or when the records from ``expected`` up to it were dropped (not decodable)."""
        dropped = [self._order.stored_index(p) for p in range(int(expected), int(record_position))]
        small = None if bool(fits) else self._order.stored_index(int(record_position))
        with self._lock:
            new = [index for index in dropped if index not in self.unreadable]
            self.unreadable.update(dropped)
            if small is not None:
                self.too_small.add(small)
        for index in new:
            logger.warning("%s record %d (in stored order of this process's split): cannot be "
                           "decoded; skipped", self._spec, index)
        return np.int64(len(dropped))


class TfDataset:
    """A batched `tf.data.Dataset` with the `base.TrainDataset` interface.

    Attributes:
      dataset: the tf.data pipeline, for TensorFlow-side use.
      source_info: what was found in the source.
      skipped: the records skipped so far, by every iterator of this dataset.
      order: the record order (which stored record each record position reads).
    """

    def __init__(self, dataset: Any, source_info: SourceInfo | None,
                 skipped: SkippedRecords | None, order: tfds_order.RecordOrder | None = None,
                 *, damaged: str = "a record file is damaged ({})"):
        self.dataset = dataset
        self.source_info = source_info
        self.skipped = skipped
        self.order = order
        self._damaged = damaged

    def as_numpy_iterator(self) -> Iterator[dict[str, np.ndarray]]:
        """The batches as NumPy arrays. A damaged record file (TensorFlow's
        ``DataLossError``: reading errors are not dropped like undecodable records) raises
        a one-line `SourceError`."""
        import tensorflow as tf  # imported already by whoever built the dataset

        try:
            yield from self.dataset.as_numpy_iterator()
        except tf.errors.DataLossError as err:
            # TensorFlow's message starts with the op's function name; keep what was read.
            detail = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", first_line(err)).strip()
            raise SourceError(self._damaged.format(detail or "data loss")) from None


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
