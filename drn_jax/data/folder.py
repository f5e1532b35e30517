"""``folder:PATH[,PATH...]``: every PNG, JPEG and BMP file under the folders, recursively.

Files are found by `drn_jax.image_io.list_images` (sorted per folder, folders in the
order given, a file under two of them counted once) and decoded by
`drn_jax.image_io.read_image` into uint8 (H, W, 3). An image is named by its file stem;
where stems repeat, by the folder name and the path under it (``T91_sub_a``). Training
crops come from `stream.FileSource`: cached in memory when the decoded images fit,
else decoded per crop.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

from drn_jax import image_io
from drn_jax.data.base import FormError, SourceError
from drn_jax.data.stream import FileSource


@dataclasses.dataclass(frozen=True, kw_only=True)
class FolderSource(FileSource):
    """Image files under folders.

    Attributes:
      folders: the folders, resolved, in the order given.
      files: (name, path) of every image file, in order.
    """
    FORM = "'folder:PATH[,PATH...]' (PNG/JPEG/BMP files, searched recursively)"
    folders: tuple[pathlib.Path, ...] = ()

    @classmethod
    def parse(cls, spec: str, rest: str, **options: Any) -> FolderSource:
        if not rest:
            raise FormError(spec)
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
        names = _unique_names(files, folders)
        return cls(spec=spec, folders=tuple(folders),
                   files=tuple(zip(names, (path for _, path in files))))


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
