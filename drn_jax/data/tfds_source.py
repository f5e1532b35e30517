"""``tfds:NAME[/CONFIG]:SPLIT[:KEY]``: a prepared TensorFlow Datasets dataset (the plug-in).

KEY is the image feature (default ``image``), e.g. ``tfds:div2k/bicubic_x4:train:hr``. The
plug-in checks the dataset, orders its records (`tfds_order`) and hands them to the tf.data
stream (`tfds_stream`), which plans each block's JPEG crops (`jpeg`); docs/extending.md ("The
TFDS stream") describes what it delivers. TensorFlow is imported inside the methods only.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import numpy as np

from drn_jax.data import tfds_order
from drn_jax.data.base import FormError, Source, SourceError, SourceInfo, StreamOptions, derive_key
from drn_jax.errors import one_line
from drn_jax.data.tfds_stream import (SkippedRecords, TfDataset, crop_stream, encoded_image_spec,
                                      tensorflow, tensorflow_datasets)

logger = logging.getLogger(__name__)


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
                              f"({one_line(err)}); its splits are "
                              f"{', '.join(builder.info.splits) or '(none)'}") from None
        return cls(spec=spec, name=name, split=split, key=key, data_dir=tfds_data_dir)

    def train_stream(self, options: StreamOptions) -> TfDataset:
        tf, tfds = tensorflow(self.spec), tensorflow_datasets(self.spec)
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
        dataset = crop_stream(tf, encoded_image_spec(tf, self.spec, builder.info.features, self.key),
                              order, crop_key=crop_key, options=options, skipped=skipped)
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
        tf, tfds = tensorflow(self.spec), tensorflow_datasets(self.spec)
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
                               name, one_line(err))
                continue
            if pixels.shape[0] * pixels.shape[1] > max_pixels:
                logger.warning("%s record %d (%s): %dx%d pixels, over the limit of %d; skipped",
                               self.spec, index, name, pixels.shape[1], pixels.shape[0], max_pixels)
                continue
            images.append((name, pixels))
        return images


def _builder(spec: str, name: str, data_dir: str | None) -> Any:
    tfds = tensorflow_datasets(spec)
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise SourceError(f"data source {spec!r}: TensorFlow Datasets has no dataset "
                          f"{name!r}; check the name in the TFDS catalog "
                          "(https://www.tensorflow.org/datasets/catalog)") from None
    except (ValueError, KeyError) as err:  # e.g. an unknown config
        raise SourceError(f"data source {spec!r}: cannot open TFDS dataset {name!r} "
                          f"({one_line(err)}); check NAME/CONFIG") from None


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
