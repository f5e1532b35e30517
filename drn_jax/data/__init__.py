"""Training crops and evaluation images for DRN, from photos, folders or TFDS.

A data source is a string (the configs' ``data.train`` / ``data.val``) whose prefix
picks a plug-in in `SOURCES`:

* ``samples[:train|:val]`` -- colour photographs bundled inside scikit-image, so the
  default config works offline (`samples`).
* ``folder:PATH[,PATH...]`` -- every PNG, JPEG and BMP file under the folders,
  recursively (`folder`).
* ``tfds:NAME[/CONFIG]:SPLIT[:KEY]`` -- a prepared TensorFlow Datasets dataset; KEY is
  the image feature (default ``image``), e.g. ``tfds:div2k/bicubic_x4:train:hr``
  (`tfds_source`, the only module that imports TensorFlow, and only when used).

Entry points:

* `parse_source` validates a string up front (one-line `SourceError`s).
* `create_train_dataset` gives an infinite, deterministic, resumable stream: its
  ``as_numpy_iterator()`` yields ``{'hr': uint8 (B, P, P, 3), 'transform': int32 (B,),
  'position': int64 (B,)}``, and its ``source_info`` (a `SourceInfo`) says what was found
  and skipped. Every crop is `crops.crop`: a window and one of 8 dihedral transforms drawn
  from (seed, process, position), for every source. The window comes untransformed, with
  its transform: training applies it on the devices (`drn_jax.ops.dihedral`), and
  `crops.dihedral` shows it on the host. Folders and samples run on NumPy and threads
  (`stream`).
* `load_images` returns whole images, (name, uint8 (H, W, 3)), for validation.

Adding a data source -- one class and one registry line. A list of images subclasses
`ImageSource` (the stream, caching and skipping come with it); any other kind of source
subclasses `Source` and implements ``train_stream`` and ``load_images`` itself::

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class NoiseSource(data.ImageSource):  # 'noise:N': N images of noise, 64x64
        FORM = "'noise:N' (N images of noise)"  # for the list in error messages
        count: int

        @classmethod
        def parse(cls, spec, rest, **options):
            if not rest.isdigit():
                raise data.SourceError(f"data source {spec!r}: write 'noise:N'")
            return cls(spec=spec, count=int(rest))

        def items(self):  # (name, handle) of every image
            return [(f"noise{i}", i) for i in range(self.count)]

        def read(self, handle, *, max_pixels, quiet=False):  # -> uint8 (H, W, 3)
            return np.random.default_rng(handle).integers(0, 256, (64, 64, 3), np.uint8)

    data.SOURCES["noise"] = NoiseSource  # in the library: a line in registry.SOURCES

after which ``create_train_dataset("noise:8", patch_size=48, ...)`` streams its crops.
"""

from drn_jax.data.base import (FormError, Source, SourceError, SourceInfo, StreamOptions,
                               TrainDataset)
from drn_jax.data.folder import FolderSource
from drn_jax.data.registry import (DEFAULT_CACHE_BYTES, DEFAULT_SHUFFLE_BUFFER, SOURCES,
                                   create_train_dataset, load_images, parse_source)
from drn_jax.data.samples import SAMPLE_PHOTOS, SAMPLE_TRAIN, SAMPLE_VAL, SamplesSource
from drn_jax.data.stream import FileSource, ImageSource
from drn_jax.data.tfds_source import TfdsSource

__all__ = [
    "DEFAULT_CACHE_BYTES", "DEFAULT_SHUFFLE_BUFFER", "SAMPLE_PHOTOS", "SAMPLE_TRAIN",
    "SAMPLE_VAL", "SOURCES", "FileSource", "FolderSource", "FormError", "ImageSource",
    "SamplesSource", "Source", "SourceError", "SourceInfo", "StreamOptions", "TfdsSource",
    "TrainDataset", "create_train_dataset", "load_images", "parse_source",
]
