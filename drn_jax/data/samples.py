"""``samples[:train|:val]``: colour photographs bundled inside scikit-image (offline).

The photos are read straight from the installed ``skimage/data/`` folder (no download,
no pooch, no import of scikit-image), so the default config trains and validates
without a network. ``:train`` (the default) is `SAMPLE_TRAIN`, six photos; ``:val`` is
`SAMPLE_VAL`, three. Names are the keys of `SAMPLE_PHOTOS`; pixels are uint8 (H, W, 3)
from `drn_jax.image_io.read_image`. Training crops come from `stream.FileSource`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from typing import Any

from drn_jax.data.base import SourceError
from drn_jax.data.stream import FileSource

# Colour photographs shipped inside the scikit-image wheel (skimage/data/).
# name -> file name.
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplesSource(FileSource):
    """The bundled photos of one split.

    Attributes:
      split: ``train`` or ``val``.
      files: (name, path) of its photos, in `SAMPLE_TRAIN` / `SAMPLE_VAL` order.
    """
    FORM = "'samples[:train|:val]' (photos bundled with scikit-image)"
    split: str = "train"

    @classmethod
    def parse(cls, spec: str, rest: str, **options: Any) -> SamplesSource:
        split = rest or "train"
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
        return cls(spec=spec, split=split, files=files)


def _sample_folder() -> pathlib.Path:
    # find_spec locates the package without importing it (skimage's import is slow and
    # its data module would go through pooch, which may try the network).
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("data source 'samples' needs scikit-image; install it "
                          "(pip install scikit-image) or use a 'folder:' source")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"
