"""Training crops and evaluation images for DRN, from photos, folders or TFDS.

A data source is a string (the configs' ``data.train`` / ``data.val``), one of:

* ``samples[:train|:val]`` -- colour photographs bundled inside scikit-image, so the
  default config works offline. ``:train`` (the default) holds six photos, ``:val`` the
  three in `SAMPLE_VAL`.
* ``folder:PATH[,PATH...]`` -- every PNG, JPEG and BMP file under the folders,
  recursively (`image_io.list_images`), decoded by `image_io.read_image`.
* ``tfds:NAME[/CONFIG]:SPLIT[:KEY]`` -- a prepared TensorFlow Datasets dataset; KEY is
  the image feature (default ``image``), e.g. ``tfds:div2k/bicubic_x4:train:hr``.

`create_train_dataset` turns a source into an infinite, deterministic and resumable
stream of random ``patch_size`` crops. Every element has a *position*: its index in
the per-process stream before any image is skipped. The stream is a pure function of
(source, seed, process split), so resuming at ``start_position = max(position of the
last consumed batch) + 1`` yields exactly the batches an uninterrupted run would have.

* Folders and samples: position ``p`` selects image ``permutation_e(p mod n)`` of epoch
  ``e = p // n``, where ``permutation_e`` is a stateless pseudo-random permutation keyed by
  (seed, process, epoch) (`tf.random.experimental.index_shuffle`), and the crop offset
  and dihedral transform come from a stateless RNG keyed by (seed, process, p). Nothing
  depends on what came before, so resuming costs nothing. Images that are too small or
  unreadable are found when the source is opened (headers are scanned, and cached
  images decoded, up front) and left out of ``n``, so positions are dense: batch ``k``
  holds positions ``k*B .. k*B+B-1``. When the decoded images do not fit in
  ``cache_bytes`` they are decoded on the fly instead; a file that then fails to decode
  is skipped *after* its position was assigned, which keeps resuming exact.
* TFDS: each epoch is the process's split, read in stored order (which TFDS shuffled
  when it prepared the dataset) with the image left encoded (`tfds.decode.SkipDecoding`),
  cut into blocks of ``shuffle_buffer`` records, each block permuted by a stateless
  permutation keyed by (seed, process, epoch, block), and numbered. Resuming replays the
  current epoch's encoded records up to ``start_position`` without decoding them: up to
  one epoch of reading (for ImageNet up to ~140 GB, minutes on fast storage; for DIV2K,
  seconds). Crop and transform are keyed by position as above; images smaller than the
  crop are skipped after their position is assigned.

`load_images` returns whole images for validation and evaluation.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import tensorflow as tf

from drn_jax import image_io

logger = logging.getLogger(__name__)


def _hide_accelerators_from_tf() -> None:
    # tf.data only needs the CPU. Without this TensorFlow would reserve most of the GPU
    # memory at its first op and JAX would run out of it.
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError) as err:  # devices were already initialised
        logger.debug("could not hide GPUs from TensorFlow: %s", err)


_hide_accelerators_from_tf()

# Colour photographs shipped inside the scikit-image wheel (skimage/data/), read from
# there directly: no download, no pooch. name -> file name.
SAMPLE_PHOTOS: dict[str, str] = {
    "astronaut": "astronaut.png",  # portrait of Eileen Collins, 512x512
    "chelsea": "chelsea.png",  # a cat, fur and whiskers, 451x300
    "coffee": "coffee.png",  # a cup of coffee on a table, 600x400
    "hubble_deep_field": "hubble_deep_field.jpg",  # galaxies, 1000x872
    "immunohistochemistry": "ihc.png",  # stained tissue micrograph, 512x512
    "motorcycle_left": "motorcycle_left.png",  # stereo pair: both stay in :train
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",  # fundus photograph, 1411x1411
    "rocket": "rocket.jpg",  # launch pad, trees and sky, 640x427
}
# Held out for validation: three everyday scenes of different kinds (animal fur,
# indoor still life, outdoor structure against sky), none related to a training photo.
SAMPLE_VAL: tuple[str, ...] = ("chelsea", "coffee", "rocket")
SAMPLE_TRAIN: tuple[str, ...] = tuple(n for n in SAMPLE_PHOTOS if n not in SAMPLE_VAL)

# A TFDS shuffle block holds encoded records: ~110 KB each for ImageNet (~110 MB for
# 1024), ~4 MB for DIV2K (whose 800 images then form one block, ~3 GB).
DEFAULT_SHUFFLE_BUFFER = 1024
# Decoded images up to this size are kept in memory (T91 + BSD200: ~110 MB); larger
# folders are decoded per crop, which is much slower.
DEFAULT_CACHE_BYTES = 2 * 1024**3

_FORMS = ("'samples[:train|:val]' (photos bundled with scikit-image), "
          "'folder:PATH[,PATH...]' (PNG/JPEG/BMP files, searched recursively) or "
          "'tfds:NAME[/CONFIG]:SPLIT[:KEY]' (a prepared TensorFlow Datasets dataset)")


class SourceError(ValueError):
    """A data source that cannot be used; `str(err)` is one line naming it and the fix."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed and validated data source string.

    Attributes:
      spec: the string as given.
      kind: ``samples``, ``folder`` or ``tfds``.
      split: ``train``/``val`` for samples, the TFDS split for tfds, else empty.
      folders: the folders of a ``folder:`` source, resolved.
      files: (name, path) of every image file of a samples or folder source, in order.
      name: the TFDS dataset name, with its config (``div2k/bicubic_x4``).
      key: the TFDS image feature.
      data_dir: the TFDS data directory (None: TFDS's default).
    """
    spec: str
    kind: Literal["samples", "folder", "tfds"]
    split: str = ""
    folders: tuple[pathlib.Path, ...] = ()
    files: tuple[tuple[str, pathlib.Path], ...] = dataclasses.field(default=(), repr=False)
    name: str = ""
    key: str = "image"
    data_dir: str | None = None


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


# ----------------------------------------------------------------------------------
# Parsing


def parse_source(spec: str, *, tfds_data_dir: str | None = None) -> Source:
    """Parses and validates a data source string.

    Folders must exist and hold images; TFDS datasets must be prepared and have the
    split and image feature. Checking here, before anything is compiled, turns a typo
    into an immediate one-line error instead of a failure minutes into a run.

    Args:
      spec: ``samples[:train|:val]``, ``folder:PATH[,PATH...]`` or
        ``tfds:NAME[/CONFIG]:SPLIT[:KEY]``.
      tfds_data_dir: where TFDS datasets are prepared (default: TFDS's own,
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Raises:
      SourceError: unknown form, missing or empty folder, unknown or unprepared TFDS
        dataset, split or feature.
    """
    if not isinstance(spec, str):
        raise SourceError(f"data source {spec!r} is not a string; use {_FORMS}")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if kind == "samples":
        return _parse_samples(spec, rest)
    if kind == "folder" and rest:
        return _parse_folder(spec, rest)
    if kind == "tfds" and rest:
        return _parse_tfds(spec, rest, tfds_data_dir)
    raise SourceError(f"data source {spec!r} not understood; use {_FORMS}")


def _parse_samples(spec: str, split: str) -> Source:
    split = split or "train"
    if split not in ("train", "val"):
        raise SourceError(f"data source {spec!r}: unknown samples split {split!r}; use "
                          "'samples:train' or 'samples:val'")
    folder = _sample_folder()
    names = SAMPLE_TRAIN if split == "train" else SAMPLE_VAL
    files = tuple((name, folder / SAMPLE_PHOTOS[name]) for name in names)
    missing = [str(path) for _, path in files if not path.is_file()]
    if missing:
        raise SourceError(f"data source {spec!r}: scikit-image's bundled photo {missing[0]} "
                          "is missing; reinstall scikit-image (pip install --force-reinstall "
                          "scikit-image)")
    return Source(spec=spec, kind="samples", split=split, files=files)


def _sample_folder() -> pathlib.Path:
    # find_spec locates the package without importing it (skimage's import is slow and
    # its data module would go through pooch, which may try the network).
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("data source 'samples' needs scikit-image; install it "
                          "(pip install scikit-image) or use a 'folder:' source")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"


def _parse_folder(spec: str, rest: str) -> Source:
    folders = []
    for item in rest.split(","):
        if not item.strip():
            raise SourceError(f"data source {spec!r}: empty folder name; write "
                              "'folder:PATH[,PATH...]' without stray commas")
        folder = pathlib.Path(item.strip()).expanduser().resolve()
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise SourceError(f"data source {spec!r}: {folder} {what}; check the path "
                              f"(relative paths start from {pathlib.Path.cwd()})")
        folders.append(folder)
    files: list[tuple[str, pathlib.Path]] = []
    seen: set[pathlib.Path] = set()
    for folder in folders:
        found = image_io.list_images(folder)
        if not found:
            raise SourceError(f"data source {spec!r}: no PNG, JPEG or BMP images under "
                              f"{folder}; point it at a folder of training images")
        for path in found:
            if path not in seen:  # overlapping folders must not weight files twice
                seen.add(path)
                files.append((path.stem, path))
    return Source(spec=spec, kind="folder", folders=tuple(folders),
                  files=tuple(zip(_unique_names(files, folders), (p for _, p in files))))


def _unique_names(files: Sequence[tuple[str, pathlib.Path]],
                  folders: Sequence[pathlib.Path]) -> list[str]:
    # File stems name the images (output files, logs); where stems repeat, the folder
    # name and the path under it (without suffix, "/" -> "_") keep them apart.
    counts = collections.Counter(stem for stem, _ in files)
    names = []
    for stem, path in files:
        if counts[stem] > 1:
            root = next(f for f in folders if path.is_relative_to(f))
            stem = f"{root.name}/{path.relative_to(root).with_suffix('').as_posix()}"
            stem = stem.replace("/", "_")
        names.append(stem)
    return names


def _parse_tfds(spec: str, rest: str, data_dir: str | None) -> Source:
    parts = rest.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise SourceError(f"data source {spec!r} not understood; write "
                          "'tfds:NAME[/CONFIG]:SPLIT[:KEY]', e.g. 'tfds:imagenet2012:train:image'")
    name, split = parts[0], parts[1]
    key = parts[2] if len(parts) == 3 else "image"
    builder = _tfds_builder(spec, name, data_dir)
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
                          f"({_first_line(err)}); its splits are "
                          f"{', '.join(builder.info.splits) or '(none)'}") from None
    return Source(spec=spec, kind="tfds", split=split, name=name, key=key,
                  data_dir=data_dir)


def _tfds_builder(spec: str, name: str, data_dir: str | None):
    import tensorflow_datasets as tfds  # slow import; only tfds: sources pay for it
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise SourceError(f"data source {spec!r}: TensorFlow Datasets has no dataset "
                          f"{name!r}; check the name in the TFDS catalog "
                          "(https://www.tensorflow.org/datasets/catalog)") from None
    except (ValueError, KeyError) as err:  # e.g. an unknown config
        raise SourceError(f"data source {spec!r}: cannot open TFDS dataset {name!r} "
                          f"({_first_line(err)}); check NAME/CONFIG") from None


def _how_to_prepare(builder, name: str) -> str:
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else type(err).__name__


# ----------------------------------------------------------------------------------
# Training stream


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
                         tfds_data_dir: str | None = None) -> tf.data.Dataset:
    """An infinite, deterministic stream of batches of random crops.

    Each image is converted to 8-bit RGB (greyscale replicated, alpha dropped, as
    `image_io.read_image` does), cropped at a random ``patch_size`` window and put
    through one of the 8 dihedral transforms (4 rotations x horizontal flip) at random.
    See the module docstring for how the order and randomness are keyed, and how to
    resume. The files (samples, folders) or records (TFDS) are split between processes,
    and each process numbers its own stream; ``dataset.source_info`` (a `SourceInfo`)
    says what was found and skipped, and is logged once.

    Args:
      source: a data source string (see `parse_source`), or its parsed `Source`.
      patch_size: side of the square high-resolution crops.
      batch_size: crops per batch, for this process; the last partial batch never
        exists since the stream is infinite.
      seed: keys the image order and every crop.
      shuffle_buffer: encoded records per TFDS shuffle block (TFDS only): records are
        shuffled within consecutive blocks of this many, held in memory at once.
      start_position: first position to produce: 0 for a new run, else one past the
        largest position already consumed.
      process_index, process_count: this process's share of the source; default
        ``jax.process_index()`` and ``jax.process_count()``.
      threads: tf.data threads (decoding, cropping) and parallel calls; None lets
        tf.data choose. 1 measures what a single core supplies.
      cache_bytes: keep the decoded images in memory when they fit in this many bytes.
      max_pixels: images whose header declares more pixels are skipped as unreadable.
      tfds_data_dir: TFDS data directory, for a source string.

    Returns:
      A `tf.data.Dataset` of ``{'hr': uint8 (batch_size, patch_size, patch_size, 3),
      'position': int64 (batch_size,)}``, with a ``source_info`` attribute.

    Raises:
      SourceError: the source is invalid, or none of its images is usable.
    """
    if patch_size < 1 or batch_size < 1:
        raise ValueError(f"patch_size and batch_size must be positive, got {patch_size} "
                         f"and {batch_size}")
    if start_position < 0:
        raise ValueError(f"start_position must be >= 0, got {start_position}")
    parsed = _as_source(source, tfds_data_dir)
    process_index, process_count = _process_split(process_index, process_count)
    if parsed.kind == "tfds":
        dataset, info = _tfds_crops(parsed, patch_size=patch_size, seed=seed,
                                    shuffle_buffer=shuffle_buffer,
                                    start_position=start_position,
                                    process_index=process_index,
                                    process_count=process_count, threads=threads)
    else:
        dataset, info = _file_crops(parsed, patch_size=patch_size, seed=seed,
                                    start_position=start_position,
                                    process_index=process_index,
                                    process_count=process_count, threads=threads,
                                    cache_bytes=cache_bytes, max_pixels=max_pixels)
    logger.info("%s", info.summary())
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    dataset = dataset.with_options(_options(threads))
    dataset.source_info = info
    return dataset


def _as_source(source: str | Source, tfds_data_dir: str | None) -> Source:
    # A Source was validated when it was parsed (and carries its TFDS data_dir).
    if isinstance(source, Source):
        return source
    return parse_source(source, tfds_data_dir=tfds_data_dir)


def _process_split(process_index: int | None,
                   process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only for the process topology; the pipeline itself is TensorFlow
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return process_index, process_count


def _options(threads: int | None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # order is part of the resume contract
    if threads is not None:
        options.threading.private_threadpool_size = threads
    # Parallelism comes from parallel map calls; ops inside each call stay on one
    # thread so that `threads` bounds the cores used.
    options.threading.max_intra_op_parallelism = 1
    return options


def _parallel(threads: int | None) -> int:
    return tf.data.AUTOTUNE if threads is None else threads


def _derive_key(seed: int, process_index: int, purpose: str) -> int:
    # A stable, well-mixed int63 per (seed, process, purpose): the image order and the
    # crops of different processes and purposes must not be correlated.
    digest = hashlib.blake2b(f"{seed}/{process_index}/{purpose}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _random_window(position: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                   patch: int, key: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(top, left, transform in [0, 8)) of the crop at `position`, from (key, position)."""
    bits = tf.random.stateless_uniform([3], seed=tf.stack([tf.constant(key, tf.int64), position]),
                                       minval=None, maxval=None, dtype=tf.int64)
    # Reducing 64 random bits modulo a side of at most millions: the bias is ~1e-13.
    top = tf.math.floormod(bits[0], height - patch + 1)
    left = tf.math.floormod(bits[1], width - patch + 1)
    return top, left, tf.math.floormod(bits[2], 8)


def _dihedral(crop: tf.Tensor, transform: tf.Tensor, patch: int) -> tf.Tensor:
    crop = tf.image.rot90(crop, k=tf.cast(transform % 4, tf.int32))
    crop = tf.cond(transform >= 4, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
    return tf.ensure_shape(crop, [patch, patch, 3])


def _fits(pixels: tf.Tensor, patch: int) -> tf.Tensor:
    """Whether a decoded image (empty when unreadable) has room for the crop."""
    return tf.reduce_min(tf.shape(pixels)[:2]) >= patch


def _epoch_index(position: tf.Tensor, count: int, key: int) -> tf.Tensor:
    """Image index for `position`: a fresh stateless permutation of `count` per epoch."""
    epoch, offset = position // count, position % count
    return tf.random.experimental.index_shuffle(
        offset, seed=tf.stack([tf.constant(key, tf.int64), epoch]),
        max_index=tf.constant(count - 1, tf.int64))


@dataclasses.dataclass
class _Scan:
    usable: list[tuple[str, pathlib.Path, tuple[int, int]]]
    too_small: int
    unreadable: int


def _scan_headers(files: Sequence[tuple[str, pathlib.Path]], patch: int,
                  max_pixels: int) -> _Scan:
    # Headers only (~0.1 ms a file): sizes decide what is skipped and whether the
    # decoded images fit in memory, before anything is decoded.
    scan = _Scan([], 0, 0)
    for name, path in files:
        try:
            height, width = image_io.image_size(path)
        except image_io.ImageReadError as err:
            logger.warning("%s; skipped", err)
            scan.unreadable += 1
            continue
        if height * width > max_pixels:
            logger.warning("%s: header declares %dx%d pixels, over the limit of %d; skipped",
                           path, width, height, max_pixels)
            scan.unreadable += 1
        elif min(height, width) < patch:
            scan.too_small += 1
        else:
            scan.usable.append((name, path, (height, width)))
    return scan


def _file_crops(source: Source, *, patch_size: int, seed: int, start_position: int,
                process_index: int, process_count: int, threads: int | None,
                cache_bytes: int, max_pixels: int) -> tuple[tf.data.Dataset, SourceInfo]:
    """Crops from a samples or folder source, cached in memory when small enough."""
    files = source.files[process_index::process_count]
    if not files:
        raise SourceError(f"data source {source.spec!r}: process {process_index} of "
                          f"{process_count} gets none of its {len(source.files)} images; "
                          "use a source with at least one image per process")
    scan = _scan_headers(files, patch_size, max_pixels)
    decoded_bytes = sum(h * w * 3 for _, _, (h, w) in scan.usable)
    cached = decoded_bytes <= cache_bytes
    too_small, unreadable = scan.too_small, scan.unreadable
    if cached:
        images = _decode_all([path for _, path, _ in scan.usable], max_pixels, threads)
        kept = []
        for (name, _, _), pixels in zip(scan.usable, images):
            if pixels is None:
                unreadable += 1
            elif min(pixels.shape[:2]) < patch_size:
                too_small += 1
            else:
                kept.append((name, pixels))
        names = tuple(name for name, _ in kept)
    else:
        names = tuple(name for name, _, _ in scan.usable)
    info = SourceInfo(source=source.spec, patch_size=patch_size, num_images=len(names),
                      num_too_small=too_small, num_unreadable=unreadable, images=names,
                      cached=cached, dense_positions=cached, process_index=process_index,
                      process_count=process_count)
    if not names:
        raise SourceError(f"data source {source.spec!r}: none of its {len(files)} images is "
                          f"usable ({too_small} smaller than the {patch_size}-pixel crop, "
                          f"{unreadable} unreadable); use a smaller patch_size or other images")
    order_key = _derive_key(seed, process_index, "order")
    crop_key = _derive_key(seed, process_index, "crop")
    positions = tf.data.Dataset.counter(start_position, dtype=tf.int64)
    if cached:
        pixels_list = [pixels for _, pixels in kept]
        del kept, images  # _pool_cropper packs and frees them one by one
        crop = _pool_cropper(pixels_list, patch_size, order_key, crop_key)
        dataset = positions.map(crop, num_parallel_calls=_parallel(threads), deterministic=True)
    else:
        paths = [path for _, path, _ in scan.usable]
        read = _streaming_reader(paths, max_pixels)
        count = len(paths)

        def load(position):
            index = _epoch_index(position, count, order_key)
            pixels = tf.numpy_function(read, [index], tf.uint8, stateful=False)
            return position, tf.ensure_shape(pixels, [None, None, 3])

        def crop_image(position, pixels):
            shape = tf.shape(pixels, out_type=tf.int64)
            top, left, transform = _random_window(position, shape[0], shape[1], patch_size,
                                                  crop_key)
            window = pixels[top:top + patch_size, left:left + patch_size]
            return {"hr": _dihedral(window, transform, patch_size), "position": position}

        dataset = positions.map(load, num_parallel_calls=_parallel(threads), deterministic=True)
        # Positions are assigned before this filter, so a file that fails to decode only
        # leaves a gap in the numbering: resuming after it still lines up.
        dataset = dataset.filter(lambda _, pixels: _fits(pixels, patch_size))
        dataset = dataset.map(crop_image, num_parallel_calls=_parallel(threads), deterministic=True)
    return dataset, info


def _decode_all(paths: Sequence[pathlib.Path], max_pixels: int,
                threads: int | None) -> list[np.ndarray | None]:
    def read(path):
        try:
            return image_io.read_image(path, max_pixels=max_pixels)
        except image_io.ImageReadError as err:
            logger.warning("%s; skipped", err)
            return None

    # Pillow releases the GIL while decoding, so threads help; order is kept by map.
    workers = threads or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read, paths))


def _pool_cropper(images: list[np.ndarray | None], patch: int, order_key: int,
                  crop_key: int) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """A map function position -> crop, reading from all images packed in one buffer.

    The images are stored back to back, flattened, in one uint8 tf.Variable. A crop
    then slices only its ``patch`` rows out of the buffer: no per-crop decode, no copy
    of the whole image. A Variable rather than a constant because tf.data serialises
    constants captured by its functions into its graph (slow, and impossible over 2 GB).
    `images` is cleared as it is packed, so memory peaks at twice the decoded size.
    """
    sizes = [image.size for image in images]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    heights = tf.constant([image.shape[0] for image in images], tf.int64)
    widths = tf.constant([image.shape[1] for image in images], tf.int64)
    count = len(images)
    flat = np.empty(sum(sizes), np.uint8)
    for i, offset in enumerate(offsets):
        flat[offset:offset + sizes[i]] = images[i].reshape(-1)
        images[i] = None  # free each decoded image once packed
    with tf.device("/CPU:0"):
        pool = tf.Variable(flat, trainable=False, name="decoded_images")
    del flat
    offsets_t = tf.constant(offsets)

    def crop(position: tf.Tensor) -> dict[str, tf.Tensor]:
        index = _epoch_index(position, count, order_key)
        height, width = heights[index], widths[index]
        top, left, transform = _random_window(position, height, width, patch, crop_key)
        start = offsets_t[index] + top * width * 3
        rows = tf.reshape(pool[start:start + patch * width * 3], tf.stack([patch, width, 3]))
        window = rows[:, left:left + patch]
        return {"hr": _dihedral(window, transform, patch), "position": position}

    crop.pool = pool  # keeps the buffer alive as long as the function
    return crop


class _QuietOnRepeat(logging.Filter):
    """Silences image_io's conversion notes on the current thread while set."""
    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "quiet", False)


_QUIET = _QuietOnRepeat()


def _streaming_reader(paths: Sequence[pathlib.Path],
                      max_pixels: int) -> Callable[[np.ndarray], np.ndarray]:
    """index -> decoded image, or an empty (0, 0, 3) array when it cannot be read.

    Files are read every time they are drawn; each file's warnings (unreadable,
    alpha dropped, ...) are logged on its first read only.
    """
    image_io.logger.addFilter(_QUIET)  # a no-op when already added
    seen: set[int] = set()
    lock = threading.Lock()

    def read(index: np.ndarray) -> np.ndarray:
        index = int(index)
        with lock:
            repeat = index in seen
            seen.add(index)
        _QUIET.local.quiet = repeat
        try:
            return image_io.read_image(paths[index], max_pixels=max_pixels)
        except image_io.ImageReadError as err:
            if not repeat:
                logger.warning("%s; skipped", err)
            return np.zeros((0, 0, 3), np.uint8)
        finally:
            _QUIET.local.quiet = False

    return read


def _tfds_crops(source: Source, *, patch_size: int, seed: int, shuffle_buffer: int,
                start_position: int, process_index: int, process_count: int,
                threads: int | None) -> tuple[tf.data.Dataset, SourceInfo]:
    """Crops from a TFDS split: encoded records shuffled in blocks, decoded after."""
    import tensorflow_datasets as tfds
    builder = tfds.builder(source.name, data_dir=source.data_dir)
    split = tfds.split_for_jax_process(source.split, process_index=process_index,
                                       process_count=process_count)
    count = builder.info.splits[split].num_examples
    if count == 0:
        raise SourceError(f"data source {source.spec!r}: process {process_index} of "
                          f"{process_count} gets no records of split {source.split!r}")
    records = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={source.key: tfds.decode.SkipDecoding()})
    key = source.key
    records = records.map(lambda example: example[key])  # encoded image bytes only
    buffer = max(1, min(shuffle_buffer, count))
    blocks_per_epoch = -(-count // buffer)
    order_key = _derive_key(seed, process_index, "order")
    crop_key = _derive_key(seed, process_index, "crop")

    def permute(epoch, block_index, block):
        # A stateless permutation per (seed, process, epoch, block) rather than
        # Dataset.shuffle, whose seed also depends on TensorFlow's global seed.
        size = tf.shape(block, out_type=tf.int64)[0]
        order = tf.random.experimental.index_shuffle(
            tf.range(size), seed=tf.stack([order_key, epoch * blocks_per_epoch + block_index]),
            max_index=size - 1)
        return tf.gather(block, order)

    def epoch_records(epoch):
        shuffled = records.batch(buffer).enumerate().map(
            lambda block_index, block: permute(epoch, block_index, block)).unbatch()
        return shuffled.enumerate().map(lambda i, record: (epoch * count + i, record))

    start_epoch, offset = divmod(start_position, count)
    dataset = tf.data.Dataset.counter(start_epoch, dtype=tf.int64).flat_map(epoch_records)
    dataset = dataset.skip(offset)  # encoded records only: reading, no decoding

    def decode(position, record):
        pixels = tf.io.decode_image(record, channels=3, dtype=tf.uint8, expand_animations=False)
        return position, pixels

    def crop_image(position, pixels):
        shape = tf.shape(pixels, out_type=tf.int64)
        top, left, transform = _random_window(position, shape[0], shape[1], patch_size, crop_key)
        window = pixels[top:top + patch_size, left:left + patch_size]
        return {"hr": _dihedral(window, transform, patch_size), "position": position}

    # No ignore_errors: TFDS re-encodes and checks images when it prepares a dataset, and
    # ignoring errors here would also hide a broken reader (e.g. deleted files).
    dataset = dataset.map(decode, num_parallel_calls=_parallel(threads), deterministic=True)
    dataset = dataset.filter(lambda _, pixels: _fits(pixels, patch_size))
    dataset = dataset.map(crop_image, num_parallel_calls=_parallel(threads), deterministic=True)
    info = SourceInfo(source=source.spec, patch_size=patch_size, num_images=count,
                      num_too_small=None, num_unreadable=None, images=(), cached=False,
                      dense_positions=False, process_index=process_index,
                      process_count=process_count)
    return dataset, info


def measure_throughput(source: str | Source, patch_size: int, batch_size: int, seconds: float,
                       threads: int | None, *, seed: int = 0,
                       cache_bytes: int = DEFAULT_CACHE_BYTES,
                       tfds_data_dir: str | None = None) -> float:
    """Crops per second the training stream delivers as numpy, once it is running.

    Opening the source (header scan, decoding into the cache) and the first batches
    are excluded: this is the steady rate the trainer sees. ``threads`` is passed to
    `create_train_dataset` (1: what one core supplies); ``cache_bytes=0`` measures
    decoding every crop's image from its file.
    """
    dataset = create_train_dataset(source, patch_size=patch_size, batch_size=batch_size,
                                   seed=seed, process_index=0, process_count=1,
                                   threads=threads, cache_bytes=cache_bytes,
                                   tfds_data_dir=tfds_data_dir)
    batches = dataset.as_numpy_iterator()
    for _ in range(3):  # warm-up: thread start, function tracing, prefetch fill
        next(batches)
    crops, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        crops += len(next(batches)["position"])
    return crops / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------
# Whole images for evaluation


def load_images(source: str | Source, *, max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
                limit: int | None = None,
                tfds_data_dir: str | None = None) -> list[tuple[str, np.ndarray]]:
    """Whole images of a source, as (name, uint8 (H, W, 3)), in the source's order.

    Names are the sample names, the file stems (paths under the folder where stems
    repeat), or ``file_name`` stems (else zero-padded record indices) for TFDS. Files
    that cannot be read, and TFDS images over ``max_pixels``, are skipped with a
    warning naming them.

    Args:
      source: a data source string (see `parse_source`), or its parsed `Source`.
      max_pixels: larger images are skipped (a decompression-bomb guard).
      limit: at most this many images (the first ones).
      tfds_data_dir: TFDS data directory, for a source string.
    """
    parsed = _as_source(source, tfds_data_dir)
    if parsed.kind == "tfds":
        return _load_tfds(parsed, max_pixels=max_pixels, limit=limit)
    files = parsed.files[:limit] if limit is not None else parsed.files
    images = []
    for name, path in files:
        try:
            images.append((name, image_io.read_image(path, max_pixels=max_pixels)))
        except image_io.ImageReadError as err:
            logger.warning("%s; skipped", err)
    return images


def _load_tfds(source: Source, *, max_pixels: int,
               limit: int | None) -> list[tuple[str, np.ndarray]]:
    import tensorflow_datasets as tfds
    builder = tfds.builder(source.name, data_dir=source.data_dir)
    has_file_name = "file_name" in builder.info.features
    records = builder.as_dataset(split=source.split, shuffle_files=False,
                                 decoders={source.key: tfds.decode.SkipDecoding()})
    if limit is not None:
        records = records.take(limit)
    images = []
    for index, example in enumerate(records.as_numpy_iterator()):
        if has_file_name:
            name = pathlib.PurePosixPath(example["file_name"].decode()).stem
        else:
            name = f"{index:06d}"
        try:
            pixels = tf.io.decode_image(example[source.key], channels=3, dtype=tf.uint8,
                                        expand_animations=False).numpy()
        except tf.errors.InvalidArgumentError as err:
            logger.warning("%s record %d (%s): cannot decode (%s); skipped", source.spec, index,
                           name, _first_line(err))
            continue
        if pixels.shape[0] * pixels.shape[1] > max_pixels:
            logger.warning("%s record %d (%s): %dx%d pixels, over the limit of %d; skipped",
                           source.spec, index, name, pixels.shape[1], pixels.shape[0], max_pixels)
            continue
        images.append((name, pixels))
    return images
