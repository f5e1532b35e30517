"""``tfds:NAME[/CONFIG]:SPLIT[:KEY]``: a prepared TensorFlow Datasets dataset.

KEY is the image feature (default ``image``), e.g. ``tfds:div2k/bicubic_x4:train:hr``.
This is the only module of `drn_jax.data` that uses TensorFlow: it imports TensorFlow
and TFDS inside its methods, and hides the GPUs from TensorFlow there, the first time
(tf.data needs only the CPU, and TensorFlow would otherwise reserve most of the GPU
memory at its first op, leaving JAX without it).

The training stream, per process (`tfds.split_for_jax_process`): each epoch reads the
process's split in stored order (which TFDS shuffled when it prepared the dataset)
with the image left encoded (`tfds.decode.SkipDecoding`), cuts it into blocks of
``shuffle_buffer`` records, permutes each block by `crops.permutation` keyed by
(order key, ``epoch * blocks_per_epoch + block``), and numbers the records: position
``epoch * n + i``. Resuming replays the current epoch's encoded records up to
``start_position`` without decoding them: up to one epoch of reading (for ImageNet up
to ~140 GB, minutes on fast storage; for DIV2K, seconds). Images are decoded by
``tf.io.decode_image`` (3 channels, uint8) and cropped by `crops.crop` keyed by
(crop key, position), like every source; images smaller than the crop are skipped
after their position is assigned, so positions have gaps (``dense_positions`` False).
Batches are ``{'hr': uint8 (B, P, P, 3), 'position': int64 (B,)}``.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from drn_jax.data import crops
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
        patch = options.patch_size
        builder = tfds.builder(self.name, data_dir=self.data_dir)
        split = tfds.split_for_jax_process(self.split, process_index=options.process_index,
                                           process_count=options.process_count)
        count = builder.info.splits[split].num_examples
        if count == 0:
            raise SourceError(f"data source {self.spec!r}: process {options.process_index} of "
                              f"{options.process_count} gets no records of split {self.split!r}")
        records = builder.as_dataset(split=split, shuffle_files=False,
                                     decoders={self.key: tfds.decode.SkipDecoding()})
        key = self.key
        records = records.map(lambda example: example[key])  # encoded image bytes only
        buffer = max(1, min(options.shuffle_buffer, count))
        blocks_per_epoch = -(-count // buffer)
        order_key = derive_key(options.seed, options.process_index, "order")
        crop_key = derive_key(options.seed, options.process_index, "crop")

        def block_order(epoch: np.ndarray, block_index: np.ndarray, size: np.ndarray) -> np.ndarray:
            return crops.permutation(order_key, int(epoch) * blocks_per_epoch + int(block_index),
                                     int(size))

        def permute(epoch, block_index, block):
            # A stateless permutation per (seed, process, epoch, block) rather than
            # Dataset.shuffle, whose seed also depends on TensorFlow's global seed.
            size = tf.shape(block, out_type=tf.int64)[0]
            order = tf.numpy_function(block_order, [epoch, block_index, size], tf.int64,
                                      stateful=False)
            return tf.gather(block, order)

        def epoch_records(epoch):
            shuffled = records.batch(buffer).enumerate().map(
                lambda block_index, block: permute(epoch, block_index, block)).unbatch()
            return shuffled.enumerate().map(lambda i, record: (epoch * count + i, record))

        start_epoch, offset = divmod(options.start_position, count)
        dataset = tf.data.Dataset.counter(start_epoch, dtype=tf.int64).flat_map(epoch_records)
        dataset = dataset.skip(offset)  # encoded records only: reading, no decoding

        def decode(position, record):
            pixels = tf.io.decode_image(record, channels=3, dtype=tf.uint8, expand_animations=False)
            return position, pixels

        def crop_numpy(position: np.ndarray, pixels: np.ndarray) -> np.ndarray:
            return crops.crop(pixels, crop_key, int(position), patch)

        def crop_image(position, pixels):
            hr = tf.numpy_function(crop_numpy, [position, pixels], tf.uint8, stateful=False)
            return {"hr": tf.ensure_shape(hr, [patch, patch, 3]), "position": position}

        def fits(position, pixels):
            return tf.reduce_min(tf.shape(pixels)[:2]) >= patch

        parallel = tf.data.AUTOTUNE if options.threads is None else options.threads
        # No ignore_errors: TFDS re-encodes and checks images when it prepares a dataset, and
        # ignoring errors here would also hide a broken reader (e.g. deleted files).
        dataset = dataset.map(decode, num_parallel_calls=parallel, deterministic=True)
        dataset = dataset.filter(fits)  # after numbering: a skipped image leaves a gap
        dataset = dataset.map(crop_image, num_parallel_calls=parallel, deterministic=True)
        dataset = dataset.batch(options.batch_size, drop_remainder=True)
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
        dataset = dataset.with_options(_options(tf, options.threads))
        info = SourceInfo(source=self.spec, patch_size=patch, num_images=count,
                          num_too_small=None, num_unreadable=None, images=(), cached=False,
                          dense_positions=False, process_index=options.process_index,
                          process_count=options.process_count)
        return TfDataset(dataset, info)

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


class TfDataset:
    """A batched `tf.data.Dataset` with the `base.TrainDataset` interface.

    Attributes:
      dataset: the tf.data pipeline, for TensorFlow-side use.
      source_info: what was found in the source.
    """

    def __init__(self, dataset: Any, source_info: SourceInfo):
        self.dataset = dataset
        self.source_info = source_info

    def as_numpy_iterator(self) -> Iterator[dict[str, np.ndarray]]:
        return self.dataset.as_numpy_iterator()


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
