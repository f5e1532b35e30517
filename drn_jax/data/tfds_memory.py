"""A TFDS dataset written from examples in memory, for the tests and benchmarks of ``tfds:``.

`prepare` writes real TFRecord files of one split, ``train`` (version 1.0.0), into a data
directory; ``tfds:NAME:train:KEY`` with ``tfds_data_dir`` set to it then reads them like any
prepared dataset. TFDS knows a dataset by its registered builder class and refuses a second
class of the same name in a process, so `builder_class` makes each name's class once and later
calls reuse it. TFDS is imported inside the functions; no other module of drn_jax imports this
one. It changes no process-wide setting (callers that want TFDS quiet call
``tfds.disable_progress_bar()`` themselves).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SPLIT", "builder_class", "prepare"]

SPLIT = "train"

_CLASSES: dict[str, type] = {}


def builder_class(name: str, features: Mapping[str, Any]) -> type:
    """The registered TFDS builder class of the in-memory dataset `name` (lower snake case).

    `features` maps feature names to TFDS features (``tfds.features.Image(...)``, ...); the
    class describes the dataset with the ones of the last call for `name`. Registering is
    what lets ``tfds:NAME`` tell a known but unprepared dataset from an unknown one.
    """
    import tensorflow_datasets as tfds

    if name not in _CLASSES:
        dataset_name = name

        class InMemoryDataset(tfds.core.GeneratorBasedBuilder):
            name = dataset_name  # TFDS would take the class's name otherwise
            # No files beside it to find checksums in. (TFDS's search for a class defined inside a
            # package needs importlib_resources, which no dependency of drn_jax brings.)
            code_path = None
            VERSION = tfds.core.Version("1.0.0")
            FEATURES: Mapping[str, Any] = {}
            EXAMPLES: Iterable[tuple[Any, dict[str, Any]]] = ()

            def _info(self):
                features = tfds.features.FeaturesDict(dict(self.FEATURES))
                return tfds.core.DatasetInfo(builder=self, features=features)

            def _split_generators(self, dl_manager):
                return {SPLIT: self._generate_examples()}

            def _generate_examples(self):
                yield from self.EXAMPLES

        _CLASSES[name] = InMemoryDataset
    _CLASSES[name].FEATURES = features
    return _CLASSES[name]


def prepare(name: str, data_dir: str | os.PathLike, features: Mapping[str, Any],
            examples: Iterable[tuple[Any, dict[str, Any]]]) -> Any:
    """Writes the dataset `name` into `data_dir`; returns its TFDS builder (prepared).

    `examples` yields ``(key, {feature name: value})`` pairs, consumed once: a value is what
    the feature encodes (a uint8 array for an image, or its encoded bytes, which an Image
    feature stores as they are), and TFDS orders the records by a hash of their keys, which
    must be unique. `features` as for `builder_class`.
    """
    cls = builder_class(name, features)
    cls.EXAMPLES = examples
    builder = cls(data_dir=os.fspath(data_dir))
    builder.download_and_prepare()
    return builder
