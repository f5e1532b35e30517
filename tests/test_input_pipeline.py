"""Tests for drn_jax.input_pipeline: sources, crops, determinism and resuming."""

import itertools
import logging
import pathlib
import socket

import numpy as np
import pytest
from PIL import Image

from drn_jax import input_pipeline
from drn_jax.input_pipeline import SourceError, create_train_dataset, load_images, parse_source

PATCH = 16


def _coordinate_image(height: int, width: int, ident: int) -> np.ndarray:
    """R = row, G = column, B = image id: any window tells where it came from."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, ident)], axis=-1).astype(np.uint8)


def _transforms(crop: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral transforms of an (H, W, C) array."""
    rotations = [np.rot90(crop, k) for k in range(4)]
    return rotations + [r[:, ::-1] for r in rotations]


def _take(dataset, count: int) -> list[dict]:
    return list(itertools.islice(dataset.as_numpy_iterator(), count))


def _create(source: str, **kwargs):
    kwargs = {"patch_size": PATCH, "batch_size": 4, "seed": 0, "process_index": 0,
              "process_count": 1, "threads": 1, **kwargs}
    return create_train_dataset(source, **kwargs)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> tuple[pathlib.Path, dict[int, np.ndarray]]:
    """Usable coordinate images (one RGBA) plus a too-small, a corrupt and a truncated file."""
    folder = tmp_path_factory.mktemp("images")
    sources = {10: _coordinate_image(40, 56, 10), 20: _coordinate_image(33, 30, 20),
               30: _coordinate_image(64, 24, 30), 40: _coordinate_image(24, 40, 40)}
    Image.fromarray(sources[10]).save(folder / "a.png")
    Image.fromarray(sources[20]).save(folder / "b.bmp")
    (folder / "sub").mkdir()
    Image.fromarray(sources[30]).save(folder / "sub" / "c.png")
    alpha = np.random.default_rng(0).integers(0, 256, (24, 40, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([sources[40], alpha], -1), "RGBA").save(folder / "d.png")
    Image.fromarray(_coordinate_image(10, 50, 50)).save(folder / "small.png")
    (folder / "corrupt.png").write_bytes(b"this is not an image" * 10)
    good = folder / "e.png"
    noise = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(good)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image file")
    return folder, sources


def _assert_windows(batches: list[dict], sources: dict[int, np.ndarray]) -> set[int]:
    """Every crop is a window of a source image up to one dihedral transform; returns those."""
    seen = set()
    for crop in (c for b in batches for c in b["hr"]):
        matches = []
        for t, candidate in enumerate(_transforms(crop)):
            top, left, ident = (int(v) for v in candidate[0, 0])
            source = sources.get(ident)
            if source is not None and np.array_equal(
                    source[top:top + PATCH, left:left + PATCH], candidate):
                matches.append(t)
        assert len(matches) == 1, "crop is not a window of a source image"
        seen.add(matches[0])
    return seen


# ---------------------------------------------------------------------------- parsing


def test_parse_forms(image_folder, tmp_path):
    folder, _ = image_folder
    assert parse_source("samples").split == "train"
    assert parse_source("samples:val").split == "val"
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(_coordinate_image(20, 20, 1)).save(other / "a.png")  # same stem as folder's
    parsed = parse_source(f"folder:{folder},{other}")
    assert parsed.kind == "folder" and parsed.folders == (folder.resolve(), other.resolve())
    names = [name for name, _ in parsed.files]
    assert len(names) == len(set(names)) == 8  # 7 from folder (not notes.txt), 1 from other
    assert "c" in names and "a" not in names  # repeated stems get their folder path


@pytest.mark.parametrize("spec, words", [
    ("imagenet", ["'imagenet'", "samples", "folder:", "tfds:"]),
    ("samples:test", ["'samples:test'", "samples:val"]),
    ("folder:", ["'folder:'", "tfds:"]),
    ("tfds:div2k", ["'tfds:div2k'", "tfds:NAME[/CONFIG]:SPLIT[:KEY]"]),
])
def test_parse_errors(spec, words):
    with pytest.raises(SourceError) as err:
        parse_source(spec)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(SourceError, match="does not exist; check the path") as err:
        parse_source(f"folder:{tmp_path / 'nowhere'}")
    assert str(tmp_path / "nowhere") in str(err.value)
    (tmp_path / "empty" / "deep").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match="no PNG, JPEG or BMP images under") as err:
        parse_source(f"folder:{tmp_path / 'empty'}")
    assert str(tmp_path / "empty") in str(err.value) and "\n" not in str(err.value)


def test_no_usable_image(tmp_path):
    Image.fromarray(_coordinate_image(8, 8, 1)).save(tmp_path / "tiny.png")
    with pytest.raises(SourceError, match="1 smaller than the 16-pixel crop"):
        _create(f"folder:{tmp_path}")


# ---------------------------------------------------------------------------- samples


def test_samples_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    train = dict(load_images("samples"))
    val = dict(load_images("samples:val"))
    assert set(train) == set(input_pipeline.SAMPLE_TRAIN) and len(train) >= 5
    assert list(val) == list(input_pipeline.SAMPLE_VAL) and len(val) >= 2
    assert not set(train) & set(val)
    for pixels in [*train.values(), *val.values()]:
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert min(pixels.shape[:2]) >= 256
        assert np.ptp(pixels[..., 0].astype(int) - pixels[..., 1]) > 0  # colour, not grey
    batch = _take(_create("samples", patch_size=96, batch_size=2), 1)[0]
    assert batch["hr"].shape == (2, 96, 96, 3)


# ---------------------------------------------------------------------------- folders


def test_batches_are_windows(image_folder):
    folder, sources = image_folder
    dataset = _create(f"folder:{folder}", batch_size=8)
    info = dataset.source_info
    assert (info.num_images, info.num_too_small, info.num_unreadable) == (4, 1, 2)
    assert info.cached and info.dense_positions
    batches = _take(dataset, 8)
    for k, batch in enumerate(batches):
        assert batch["hr"].shape == (8, PATCH, PATCH, 3) and batch["hr"].dtype == np.uint8
        assert batch["position"].dtype == np.int64
        np.testing.assert_array_equal(batch["position"], np.arange(8 * k, 8 * k + 8))
    assert _assert_windows(batches, sources) == set(range(8))  # all 8 transforms occur
    # Every image is drawn once per epoch of 4 positions.
    idents = [int(np.median(c[..., 2])) for b in batches for c in b["hr"]]
    for epoch in range(len(idents) // 4):
        assert sorted(idents[4 * epoch:4 * epoch + 4]) == [10, 20, 30, 40]


def test_unreadable_files_are_named(image_folder, caplog):
    folder, _ = image_folder
    caplog.set_level(logging.INFO)
    _create(f"folder:{folder}")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(folder / "corrupt.png") in w for w in warnings)
    assert any(str(folder / "truncated.png") in w for w in warnings)
    assert any(str(folder / "d.png") in w and "alpha" in w for w in warnings)
    summary = "4 images, 1 smaller than the 16-pixel crop skipped, 2 unreadable skipped"
    assert any(summary in r.getMessage() for r in caplog.records)


def test_greyscale_and_rgba_become_rgb(tmp_path):
    grey = np.random.default_rng(2).integers(0, 256, (30, 20), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    rgba = np.random.default_rng(3).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    images = dict(load_images(f"folder:{tmp_path}"))
    np.testing.assert_array_equal(images["grey"], np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(images["rgba"], rgba[..., :3])
    for batch in _take(_create(f"folder:{tmp_path}"), 2):
        assert batch["hr"].shape[-1] == 3


@pytest.mark.parametrize("cache_bytes", [input_pipeline.DEFAULT_CACHE_BYTES, 0],
                         ids=["cached", "streamed"])
def test_deterministic_and_resumable(image_folder, cache_bytes):
    folder, sources = image_folder
    source = f"folder:{folder}"
    full = _take(_create(source, seed=5, cache_bytes=cache_bytes), 10)
    again = _take(_create(source, seed=5, cache_bytes=cache_bytes), 10)
    for a, b in zip(full, again):
        np.testing.assert_array_equal(a["hr"], b["hr"])
        np.testing.assert_array_equal(a["position"], b["position"])
    other = _take(_create(source, seed=6, cache_bytes=cache_bytes), 10)
    assert not all(np.array_equal(a["hr"], b["hr"]) for a, b in zip(full, other))
    _assert_windows(full, sources)
    positions = np.concatenate([b["position"] for b in full])
    if cache_bytes == 0:  # the truncated file is found while streaming: gaps in positions
        assert positions[-1] > len(positions) - 1
    for k in (0, 3, 6):
        start = int(full[k]["position"].max()) + 1
        resumed = _take(_create(source, seed=5, cache_bytes=cache_bytes, start_position=start),
                        10 - k - 1)
        for a, b in zip(full[k + 1:], resumed, strict=True):
            np.testing.assert_array_equal(a["position"], b["position"])
            np.testing.assert_array_equal(a["hr"], b["hr"])


def test_streaming_warns_once(image_folder, caplog):
    folder, _ = image_folder
    caplog.set_level(logging.WARNING)
    _take(_create(f"folder:{folder}", cache_bytes=0), 12)  # 48 crops: ~10 epochs of 5 files
    truncated = [r for r in caplog.records if str(folder / "truncated.png") in r.getMessage()]
    alpha = [r for r in caplog.records if str(folder / "d.png") in r.getMessage()]
    assert len(truncated) == 1 and len(alpha) == 1


def test_process_split(image_folder):
    folder, _ = image_folder
    source = f"folder:{folder}"
    infos = [_create(source, process_index=i, process_count=2).source_info for i in range(2)]
    shards = [set(info.images) for info in infos]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == {"a", "b", "c", "d"}
    # Together the shards account for every file, skipped ones included.
    assert sum(i.num_images + i.num_too_small + i.num_unreadable for i in infos) == 7
    with pytest.raises(ValueError, match="process_index 2"):
        _create(source, process_index=2, process_count=2)
    default = _create(source, process_index=None, process_count=None).source_info
    assert (default.process_index, default.process_count) == (0, 1)  # from jax


def test_real_training_folder(train_dir):
    dataset = _create(f"folder:{train_dir}", patch_size=96, batch_size=2)
    info = dataset.source_info
    assert info.num_images + info.num_too_small + info.num_unreadable == 291
    assert info.num_images >= 280 and info.num_unreadable == 0
    batch = _take(dataset, 1)[0]
    assert batch["hr"].shape == (2, 96, 96, 3) and batch["hr"].dtype == np.uint8
    assert batch["hr"].std() > 0


def test_measure_throughput(image_folder):
    folder, _ = image_folder
    rate = input_pipeline.measure_throughput(f"folder:{folder}", PATCH, 4, seconds=0.3, threads=1)
    assert rate > 100


# ---------------------------------------------------------------------------- TFDS

_TFDS_IMAGES = 10
_builder_class = None


def _tfds_builder_class():
    """A tiny TFDS dataset built from arrays, registered once per test session."""
    global _builder_class
    if _builder_class is None:
        import tensorflow_datasets as tfds

        class DrnTinyImages(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "picture": tfds.features.Image(shape=(None, None, 3)),
                    "file_name": tfds.features.Text(),
                }))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples()}

            def _generate_examples(self):
                for i in range(_TFDS_IMAGES):
                    # Image 3 is too small for the crop.
                    size = (8, 8) if i == 3 else (20 + i, 30 - i)
                    pixels = _coordinate_image(*size, 100 + i)
                    yield i, {"picture": pixels, "file_name": f"dir/img{i}.png"}

        _builder_class = DrnTinyImages
    return _builder_class


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    _tfds_builder_class()(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_unprepared(tmp_path):
    _tfds_builder_class()
    with pytest.raises(SourceError) as err:
        parse_source("tfds:drn_tiny_images:train:picture", tfds_data_dir=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "not prepared" in message
    assert f"tfds build drn_tiny_images --data_dir={tmp_path}" in message
    with pytest.raises(SourceError) as err:
        parse_source("tfds:imagenet2012:train", tfds_data_dir=str(tmp_path))
    assert str(tmp_path / "downloads" / "manual") in str(err.value)
    with pytest.raises(SourceError, match="no dataset 'no_such_dataset'"):
        parse_source("tfds:no_such_dataset:train", tfds_data_dir=str(tmp_path))


def test_tfds_source(tfds_dir):
    source = "tfds:drn_tiny_images:train:picture"
    assert parse_source(source, tfds_data_dir=tfds_dir).key == "picture"
    with pytest.raises(SourceError, match="no feature 'image'; its image features are picture"):
        parse_source("tfds:drn_tiny_images:train", tfds_data_dir=tfds_dir)
    with pytest.raises(SourceError, match="no split 'test'"):
        parse_source("tfds:drn_tiny_images:test:picture", tfds_data_dir=tfds_dir)

    images = load_images(source, tfds_data_dir=tfds_dir, limit=4)
    assert len(images) == 4  # in stored order, which TFDS shuffled when preparing
    for name, pixels in images:
        i = int(name.removeprefix("img"))
        size = (8, 8) if i == 3 else (20 + i, 30 - i)
        np.testing.assert_array_equal(pixels, _coordinate_image(*size, 100 + i))



@pytest.mark.parametrize("shuffle_buffer", [1024, 4])
def test_tfds_stream(tfds_dir, shuffle_buffer):
    parsed = parse_source("tfds:drn_tiny_images:train:picture", tfds_data_dir=tfds_dir)

    def create(**kwargs):
        return _create(parsed, seed=3, shuffle_buffer=shuffle_buffer, **kwargs)

    sources = {100 + i: _coordinate_image(20 + i, 30 - i, 100 + i) for i in range(_TFDS_IMAGES)}
    full = _take(create(), 8)
    assert full[0]["hr"].shape == (4, PATCH, PATCH, 3)
    _assert_windows(full, sources)
    positions = np.concatenate([b["position"] for b in full])
    assert len(positions) == 32 and positions[-1] > 31  # image 3 skipped once per epoch
    idents = [int(c[0, 0, 2]) for b in full for c in b["hr"]]
    for epoch in range(3):  # each epoch of 10 records holds every usable image once
        in_epoch = [i for i, p in zip(idents, positions) if p // _TFDS_IMAGES == epoch]
        assert sorted(in_epoch) == [100 + i for i in range(_TFDS_IMAGES) if i != 3]
    assert idents[:9] != idents[9:18]  # epochs are permuted differently
    again = _take(create(), 8)
    assert all(np.array_equal(a["hr"], b["hr"]) for a, b in zip(full, again))
    for k in (1, 4):
        start = int(full[k]["position"].max()) + 1
        resumed = _take(create(start_position=start), 7 - k)
        for a, b in zip(full[k + 1:], resumed, strict=True):
            np.testing.assert_array_equal(a["position"], b["position"])
            np.testing.assert_array_equal(a["hr"], b["hr"])
