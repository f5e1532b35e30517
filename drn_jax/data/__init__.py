"""Training crops and evaluation images for DRN, from photos, folders or TFDS.

A data source is a string (the configs' ``data.train`` / ``data.val``) whose prefix picks a
plug-in in `SOURCES`: ``samples[:train|:val]`` (photographs bundled with scikit-image),
``folder:PATH[,PATH...]`` and ``tfds:NAME[/CONFIG]:SPLIT[:KEY]``. `parse_source` checks a
string up front, `create_train_dataset` gives the deterministic, resumable crop stream and
`load_images` whole images for validation. A new source is one class and one registry line
(docs/extending.md, "A data source").
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
