"""Tests for drn_jax.data: sources, the one crop, determinism, resuming, plug-ins, no TensorFlow."""

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import pathlib
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from drn_jax import data, errors, image_io
from drn_jax.data import SourceError, create_train_dataset, crops, load_images, parse_source, tfds_memory
from drn_jax.data.base import derive_key
from helpers import REPO, run_python

PATCH = 16


def _coordinate_image(height: int, width: int, ident: int) -> np.ndarray:
    """R = row, G = column, B = image id: any window tells where it came from."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, ident)], axis=-1).astype(np.uint8)


def _transforms(crop: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral transforms of an (H, W, C) array, by number, each written out as flips and
    a transpose (``crops.dihedral``'s t: t % 4 quarter turns counter-clockwise, then a left-right
    flip when t >= 4; `test_dihedral_by_hand` has the values on a 2×3 image)."""
    transpose = np.swapaxes(crop, 0, 1)
    return [
        crop,                    # 0: identity
        transpose[::-1],         # 1: a quarter turn counter-clockwise
        crop[::-1, ::-1],        # 2: a half turn
        transpose[:, ::-1],      # 3: a quarter turn clockwise
        crop[:, ::-1],           # 4: mirrored left-right
        transpose[::-1, ::-1],   # 5: the transverse (anti-diagonal mirror)
        crop[::-1],              # 6: mirrored top-bottom
        transpose,               # 7: the transpose (main-diagonal mirror)
    ]


def test_dihedral_by_hand():
    image = np.array([[1, 2, 3], [4, 5, 6]])
    expected = [
        [[1, 2, 3], [4, 5, 6]],
        [[3, 6], [2, 5], [1, 4]],
        [[6, 5, 4], [3, 2, 1]],
        [[4, 1], [5, 2], [6, 3]],
        [[3, 2, 1], [6, 5, 4]],
        [[6, 3], [5, 2], [4, 1]],
        [[4, 5, 6], [1, 2, 3]],
        [[1, 4], [2, 5], [3, 6]],
    ]
    for transform, want in enumerate(expected):
        np.testing.assert_array_equal(crops.dihedral(image, transform), want, err_msg=str(transform))
        np.testing.assert_array_equal(_transforms(image)[transform], want, err_msg=str(transform))


def _take(dataset, count: int) -> list[dict]:
    return list(itertools.islice(dataset.as_numpy_iterator(), count))


def _create(source, **kwargs):
    kwargs = {"patch_size": PATCH, "batch_size": 4, "seed": 0, "process_index": 0,
              "process_count": 1, "threads": 1, **kwargs}
    return create_train_dataset(source, **kwargs)


def _by_position(batches: list[dict]) -> dict[int, np.ndarray]:
    """Training crops by position: each window under its transform."""
    return {int(p): crops.dihedral(crop, int(t))
            for b in batches for p, crop, t in zip(b["position"], b["hr"], b["transform"])}


def _assert_same(a: dict, b: dict) -> None:
    """Two batches hold the same windows, transforms and positions."""
    assert a.keys() == b.keys() == {"hr", "transform", "position"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, random_images) -> tuple[pathlib.Path, dict[int, np.ndarray]]:
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
    random_images(folder, [(48, 48, 3)], seed=1, names=["e"])
    payload = good.read_bytes()
    good.unlink()
    (folder / "truncated.png").write_bytes(payload[: len(payload) // 2])
    (folder / "notes.txt").write_text("not an image file")
    return folder, sources


def _assert_windows(batches: list[dict], sources: dict[int, np.ndarray]) -> set[int]:
    """Every crop is a window of a source image, untransformed, and its training crop
    (under the batch's transform) is that window under exactly that one of the 8
    transforms; returns the transforms seen."""
    seen = set()
    for b in batches:
        assert b["transform"].dtype == np.int32 and b["transform"].shape == b["position"].shape
        for crop, transform in zip(b["hr"], b["transform"].tolist()):
            top, left, ident = (int(v) for v in crop[0, 0])
            np.testing.assert_array_equal(crop, sources[ident][top:top + PATCH, left:left + PATCH])
            matches = [t for t, candidate in enumerate(_transforms(crop))
                       if np.array_equal(candidate, crops.dihedral(crop, transform))]
            assert matches == [transform]
            seen.add(transform)
    return seen


# ---------------------------------------------------------------------------- the one crop


def test_crop_window_is_a_hash_of_key_and_position():
    key, position, height, width = 0x1234_5678_9ABC_DEF, 987_654_321, 40, 56
    # By hand: the BLAKE2b-192 digest of (key, position) as two little-endian 64-bit
    # integers, read as three little-endian 64-bit words, each modulo its range.
    message = key.to_bytes(8, "little") + position.to_bytes(8, "little")
    digest = hashlib.blake2b(message, digest_size=24).digest()
    words = [int.from_bytes(digest[i:i + 8], "little") for i in (0, 8, 16)]
    expected = (words[0] % (height - PATCH + 1), words[1] % (width - PATCH + 1), words[2] % 8)
    assert crops.crop_window(key, position, height, width, PATCH) == expected
    top, left, transform = expected
    image = _coordinate_image(height, width, 7)
    window, drawn = crops.crop(image, key, position, PATCH)
    assert drawn == transform
    np.testing.assert_array_equal(window, image[top:top + PATCH, left:left + PATCH])
    np.testing.assert_array_equal(crops.dihedral(window, drawn),
                                  _transforms(image[top:top + PATCH, left:left + PATCH])[transform])
    # A whole-image window leaves only the transform to chance.
    assert crops.crop_window(key, position, PATCH, PATCH, PATCH)[:2] == (0, 0)


def test_crop_into_a_batch_for_every_transform():
    image = _coordinate_image(33, 47, 3)
    found = set()
    for position in range(64):
        top, left, transform = crops.crop_window(5, position, 33, 47, PATCH)
        found.add(transform)
        out = np.zeros((2, PATCH, PATCH, 3), np.uint8)
        target = out[1]
        window, drawn = crops.crop(image, 5, position, PATCH, out=target)
        assert window is target and drawn == transform
        np.testing.assert_array_equal(out[1], image[top:top + PATCH, left:left + PATCH])
        np.testing.assert_array_equal(
            crops.dihedral(out[1], drawn), _transforms(image[top:top + PATCH, left:left + PATCH])[transform])
        assert not out[0].any()
    assert found == set(range(8))


def test_windows_from_words_is_crop_window_in_bulk():
    key, rng = 0xFEED, np.random.default_rng(4)
    positions = rng.integers(0, 10**9, (50, 3))
    sizes = rng.integers(PATCH, 700, (50, 1, 2))
    tops, lefts, transforms = crops.windows_from_words(crops.window_words(key, positions), sizes, PATCH)
    assert tops.shape == (50, 3) and tops.dtype == np.int64
    for index in np.ndindex(positions.shape):
        height, width = sizes[index[0], 0]
        assert (tops[index], lefts[index], transforms[index]) == crops.crop_window(
            key, int(positions[index]), int(height), int(width), PATCH)


def test_device_dihedral_is_the_host_transform():
    """`ops.dihedral` (what training applies) against np.rot90 written here, per image."""
    import jax
    import jax.numpy as jnp

    from drn_jax.ops.dihedral import dihedral

    images = np.random.default_rng(3).integers(0, 256, (16, 5, 5, 3), dtype=np.uint8)
    transforms = np.array([7, 0, 3, 5, 1, 6, 2, 4] * 2, np.int32)
    out = np.asarray(jax.jit(dihedral)(jnp.asarray(images), jnp.asarray(transforms)))
    assert out.dtype == np.uint8
    for image, t, got in zip(images, transforms, out):
        np.testing.assert_array_equal(got, _transforms(image)[t])
        np.testing.assert_array_equal(got, crops.dihedral(image, int(t)))
    with pytest.raises(ValueError, match="square"):
        dihedral(jnp.zeros((2, 4, 5, 3)), jnp.zeros(2, jnp.int32))


def test_permutation_is_keyed():
    order = crops.permutation(11, 3, 50)
    assert order.dtype == np.int64 and sorted(order) == list(range(50))
    np.testing.assert_array_equal(order, crops.permutation(11, 3, 50))
    # By hand: the indices of 50 raw Philox words keyed by (11, 3), in increasing order.
    words = [int(w) for w in np.random.Philox(key=[11, 3]).random_raw(50)]
    assert order.tolist() == sorted(range(50), key=words.__getitem__)
    assert not np.array_equal(order, crops.permutation(11, 4, 50))
    assert not np.array_equal(order, crops.permutation(12, 3, 50))


def test_the_stream_is_pinned():
    """Checkpoints store positions, so a run resumed by a later version must draw the same
    crops: these values may only change with a note that resuming older runs is inexact."""
    assert derive_key(0, 0, "crop") == 1893552019752581627
    assert derive_key(0, 0, "order") == 6966386321333152537
    assert [crops.crop_window(0, p, 1000, 700, 96) for p in range(3)] == [
        (419, 582, 1), (434, 441, 7), (312, 140, 7)]
    assert crops.permutation(0, 0, 10).tolist() == [0, 2, 9, 1, 8, 5, 4, 3, 6, 7]
    assert crops.permutation(1, 2, 10).tolist() == [4, 2, 0, 6, 1, 5, 9, 8, 7, 3]


def test_stream_uses_the_crop_and_the_epoch_order(image_folder):
    folder, _ = image_folder
    seed = 9
    dataset = _create(f"folder:{folder}", seed=seed, batch_size=5)
    info = dataset.source_info
    images = dict(load_images(f"folder:{folder}"))
    order_key, crop_key = derive_key(seed, 0, "order"), derive_key(seed, 0, "crop")
    assert derive_key(seed, 0, "crop") != derive_key(seed, 1, "crop")
    count = info.num_images
    for batch in _take(dataset, 4):
        for position, crop, t in zip(batch["position"].tolist(), batch["hr"], batch["transform"]):
            epoch, offset = divmod(position, count)
            name = info.images[crops.permutation(order_key, epoch, count)[offset]]
            window, transform = crops.crop(images[name], crop_key, position, PATCH)
            np.testing.assert_array_equal(crop, window)
            assert t == transform


# ---------------------------------------------------------------------------- parsing


def test_parse_forms(image_folder, tmp_path):
    folder, _ = image_folder
    assert parse_source("samples").split == "train"
    assert parse_source("samples:val").split == "val"
    assert parse_source(" samples ").kind == "samples"
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(_coordinate_image(20, 20, 1)).save(other / "a.png")  # same stem as folder's
    parsed = parse_source(f"folder:{folder},{other}")
    assert isinstance(parsed, data.FolderSource)
    assert parsed.kind == "folder" and parsed.folders == (folder.resolve(), other.resolve())
    names = [name for name, _ in parsed.files]
    assert len(names) == len(set(names)) == 8  # 7 from folder (not notes.txt), 1 from other
    assert "c" in names and "a" not in names  # repeated stems get their folder path
    assert len(parse_source(f"folder:{folder},{folder}").files) == 7  # overlapping: once


@pytest.mark.parametrize("spec, words", [
    ("imagenet", ["'imagenet'", "samples", "folder:", "tfds:"]),
    ("samples:test", ["'samples:test'", "samples:val"]),
    ("folder:", ["'folder:'", "tfds:"]),
    ("tfds:", ["'tfds:'", "samples", "folder:"]),
    ("tfds:div2k", ["'tfds:div2k'", "tfds:NAME[/CONFIG]:SPLIT[:KEY]"]),
    (42, ["42", "not a string"]),
])
def test_parse_errors(spec, words):
    with pytest.raises(SourceError) as err:
        parse_source(spec)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_source_errors_are_user_errors():
    assert data.SourceError is errors.SourceError and issubclass(data.FormError, errors.SourceError)
    assert issubclass(SourceError, errors.USER_ERRORS)  # the command-line tools print them


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(SourceError, match="does not exist; check the path") as err:
        parse_source(f"folder:{tmp_path / 'nowhere'}")
    assert str(tmp_path / "nowhere") in str(err.value)
    (tmp_path / "empty" / "deep").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match="no PNG, JPEG or BMP images under") as err:
        parse_source(f"folder:{tmp_path / 'empty'}")
    assert str(tmp_path / "empty") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SourceError, match="empty folder name"):
        parse_source(f"folder:{tmp_path},")


def test_no_usable_image(tmp_path):
    Image.fromarray(_coordinate_image(8, 8, 1)).save(tmp_path / "tiny.png")
    with pytest.raises(SourceError, match="1 smaller than the 16-pixel crop"):
        _create(f"folder:{tmp_path}")


def test_bad_arguments(image_folder):
    folder, _ = image_folder
    for kwargs, match in [({"patch_size": 0}, "must be positive"), ({"batch_size": 0}, "must be positive"),
                          ({"start_position": -1}, "start_position"), ({"threads": 0}, "threads")]:
        with pytest.raises(ValueError, match=match):
            _create(f"folder:{folder}", **kwargs)


# ---------------------------------------------------------------------------- samples


def test_samples_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    train = dict(load_images("samples"))
    val = dict(load_images("samples:val"))
    assert set(train) == set(data.SAMPLE_TRAIN) and len(train) >= 5
    assert list(val) == list(data.SAMPLE_VAL) and len(val) >= 2
    assert not set(train) & set(val)
    assert set(data.SAMPLE_PHOTOS) == set(train) | set(val)
    for pixels in [*train.values(), *val.values()]:
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert min(pixels.shape[:2]) >= 256
        assert np.ptp(pixels[..., 0].astype(int) - pixels[..., 1]) > 0  # colour, not grey
    assert [name for name, _ in load_images("samples:val", limit=2)] == list(data.SAMPLE_VAL[:2])
    batch = _take(_create("samples", patch_size=96, batch_size=2), 1)[0]
    assert batch["hr"].shape == (2, 96, 96, 3)


# ---------------------------------------------------------------------------- folders


def test_batches_are_windows(image_folder):
    folder, sources = image_folder
    dataset = _create(f"folder:{folder}", batch_size=8)
    info = dataset.source_info
    assert (info.num_images, info.num_too_small, info.num_unreadable) == (4, 1, 2)
    assert info.cached and info.dense_positions
    assert set(info.images) == {"a", "b", "c", "d"}
    batches = _take(dataset, 8)
    for k, batch in enumerate(batches):
        assert batch["hr"].shape == (8, PATCH, PATCH, 3) and batch["hr"].dtype == np.uint8
        assert batch["position"].dtype == np.int64 and batch["position"].shape == (8,)
        np.testing.assert_array_equal(batch["position"], np.arange(8 * k, 8 * k + 8))
    assert _assert_windows(batches, sources) == set(range(8))  # all 8 transforms occur
    # Every image is drawn once per epoch of 4 positions.
    idents = [int(np.median(c[..., 2])) for b in batches for c in b["hr"]]
    for epoch in range(len(idents) // 4):
        assert sorted(idents[4 * epoch:4 * epoch + 4]) == [10, 20, 30, 40]
    assert idents[:4] != idents[4:8] or idents[4:8] != idents[8:12]  # epochs permuted anew


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


def test_max_pixels_guard(image_folder, caplog):
    folder, _ = image_folder
    caplog.set_level(logging.WARNING)
    info = _create(f"folder:{folder}", max_pixels=1500).source_info
    # a (40x56) and c (64x24) declare more than 1500 pixels: unreadable, named.
    assert (info.num_images, info.num_too_small, info.num_unreadable) == (2, 1, 4)
    assert set(info.images) == {"b", "d"}
    assert any(str(folder / "a.png") in r.getMessage() and "over the limit of 1500" in r.getMessage()
               for r in caplog.records)
    assert [name for name, _ in load_images(f"folder:{folder}", max_pixels=1500)] == ["b", "d", "small"]


def test_greyscale_and_rgba_become_rgb(random_images, tmp_path):
    written = random_images(tmp_path, [(30, 20, 1), (20, 30, 4)], seed=2, names=["grey", "rgba"])
    images = dict(load_images(f"folder:{tmp_path}"))
    np.testing.assert_array_equal(images["grey"], np.repeat(written["grey"], 3, -1))
    np.testing.assert_array_equal(images["rgba"], written["rgba"][..., :3])
    for batch in _take(_create(f"folder:{tmp_path}"), 2):
        assert batch["hr"].shape[-1] == 3


@pytest.mark.parametrize("cache_bytes", [data.DEFAULT_CACHE_BYTES, 0], ids=["cached", "streamed"])
def test_deterministic_and_resumable(image_folder, cache_bytes):
    folder, sources = image_folder
    source = f"folder:{folder}"
    full = _take(_create(source, seed=5, cache_bytes=cache_bytes), 10)
    again = _take(_create(source, seed=5, cache_bytes=cache_bytes), 10)
    for a, b in zip(full, again):
        _assert_same(a, b)
        np.testing.assert_array_equal(a["position"], b["position"])
    other = _take(_create(source, seed=6, cache_bytes=cache_bytes), 10)
    assert not all(np.array_equal(a["hr"], b["hr"]) for a, b in zip(full, other))
    _assert_windows(full, sources)
    positions = np.concatenate([b["position"] for b in full])
    assert np.all(np.diff(positions) > 0)
    if cache_bytes == 0:  # the truncated file is found while streaming: gaps in positions
        assert positions[-1] > len(positions) - 1
    for k in (0, 3, 6):
        start = int(full[k]["position"].max()) + 1
        resumed = _take(_create(source, seed=5, cache_bytes=cache_bytes, start_position=start),
                        10 - k - 1)
        for a, b in zip(full[k + 1:], resumed, strict=True):
            np.testing.assert_array_equal(a["position"], b["position"])
            _assert_same(a, b)


@pytest.mark.parametrize("cache_bytes", [data.DEFAULT_CACHE_BYTES, 0], ids=["cached", "streamed"])
@pytest.mark.parametrize("start", [1, 5, 13])
def test_resume_anywhere_is_the_tail(image_folder, cache_bytes, start):
    """From any start_position, not only a batch boundary: the crops of positions >= start."""
    folder, _ = image_folder
    source = parse_source(f"folder:{folder}")
    full = _by_position(_take(_create(source, seed=2, cache_bytes=cache_bytes), 12))
    tail = _by_position(_take(_create(source, seed=2, cache_bytes=cache_bytes,
                                      start_position=start), 6))
    assert min(tail) >= start
    expected = sorted(p for p in full if p >= start)[:len(tail)]
    assert sorted(tail) == expected
    for position, crop in tail.items():
        np.testing.assert_array_equal(crop, full[position])


@pytest.mark.parametrize("cache_bytes", [data.DEFAULT_CACHE_BYTES, 0], ids=["cached", "streamed"])
def test_threads_do_not_change_the_stream(image_folder, cache_bytes):
    folder, _ = image_folder
    one = _take(_create(f"folder:{folder}", cache_bytes=cache_bytes, threads=1), 9)
    for threads in (2, 3):
        many = _take(_create(f"folder:{folder}", cache_bytes=cache_bytes, threads=threads), 9)
        for a, b in zip(one, many, strict=True):
            np.testing.assert_array_equal(a["position"], b["position"])
            _assert_same(a, b)


def test_streaming_warns_once(image_folder, caplog):
    folder, _ = image_folder
    caplog.set_level(logging.WARNING)
    dataset = _create(f"folder:{folder}", cache_bytes=0, threads=2)
    assert not dataset.source_info.cached and not dataset.source_info.dense_positions
    _take(dataset, 12)  # 48 crops: ~10 epochs of 5 files
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
    files = [name for name, _ in parse_source(source).files]
    assert set(files[0::2]) >= shards[0] and set(files[1::2]) >= shards[1]  # files[i::2]
    # Together the shards account for every file, skipped ones included.
    assert sum(i.num_images + i.num_too_small + i.num_unreadable for i in infos) == 7
    assert "(process 1 of 2)" in infos[1].summary()
    streams = [_take(_create(source, process_index=i, process_count=2), 2) for i in range(2)]
    assert not np.array_equal(streams[0][0]["hr"], streams[1][0]["hr"])
    with pytest.raises(ValueError, match="process_index 2"):
        _create(source, process_index=2, process_count=2)
    with pytest.raises(SourceError, match="process 7 of 8 gets none of its 7 images"):
        _create(source, process_index=7, process_count=8)
    default = _create(source, process_index=None, process_count=None).source_info
    assert (default.process_index, default.process_count) == (0, 1)  # from jax


def test_iterator_threads_stop(image_folder):
    folder, _ = image_folder

    def data_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("drn_jax.data")}

    before = data_threads()
    batches = _create(f"folder:{folder}", cache_bytes=0, threads=3).as_numpy_iterator()
    next(batches)
    started = data_threads() - before
    assert len(started) == 4  # the prefetcher and 3 workers
    del batches  # dropping the iterator stops them
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.is_alive() for t in started)


def test_real_training_folder(train_dir):
    dataset = _create(f"folder:{train_dir}", patch_size=96, batch_size=2)
    info = dataset.source_info
    assert info.num_images + info.num_too_small + info.num_unreadable == 291
    assert info.num_images >= 280 and info.num_unreadable == 0
    batch = _take(dataset, 1)[0]
    assert batch["hr"].shape == (2, 96, 96, 3) and batch["hr"].dtype == np.uint8
    assert batch["hr"].std() > 0


def test_pipeline_benchmark(image_folder):
    spec = importlib.util.spec_from_file_location("pipeline_benchmark", REPO / "benchmarks" / "pipeline.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    folder, _ = image_folder
    rate = benchmark.measure_throughput(f"folder:{folder}", PATCH, 4, seconds=0.3, threads=1)
    assert rate > 100


# ---------------------------------------------------------------------------- plug-ins


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConstantSource(data.ImageSource):
    """``constant:HxW,N``: N coordinate images of H x W (ids 1..N); id 0 unreadable."""
    FORM = "'constant:HxW,N' (coordinate images)"
    height: int
    width: int
    count: int

    @classmethod
    def parse(cls, spec, rest, **options):
        try:
            size, count = rest.split(",")
            height, width = (int(v) for v in size.split("x"))
            return cls(spec=spec, height=height, width=width, count=int(count))
        except ValueError:
            raise SourceError(f"data source {spec!r}: write 'constant:HxW,N'") from None

    def items(self):
        return [(f"c{i}", i) for i in range(self.count + 1)]

    def read(self, handle, *, max_pixels, quiet=False):
        if handle == 0:
            raise image_io.ImageReadError(f"constant image {handle}", "unreadable on purpose")
        return _coordinate_image(self.height, self.width, handle)


def test_a_registered_source_needs_no_library_change(monkeypatch):
    with pytest.raises(SourceError, match="not understood"):
        parse_source("constant:20x30,3")
    monkeypatch.setitem(data.SOURCES, "constant", ConstantSource)
    parsed = parse_source("constant:20x30,3")
    assert isinstance(parsed, ConstantSource) and parsed.kind == "constant"
    with pytest.raises(SourceError, match="write 'constant:HxW,N'"):
        parse_source("constant:oops")
    with pytest.raises(SourceError) as err:
        parse_source("nothing:here")
    assert "'constant:HxW,N'" in str(err.value) and "folder:" in str(err.value)  # listed

    dataset = create_train_dataset("constant:20x30,3", patch_size=PATCH, batch_size=6, seed=1,
                                   process_index=0, process_count=1, threads=2)
    info = dataset.source_info
    assert (info.num_images, info.num_unreadable, info.images) == (3, 1, ("c1", "c2", "c3"))
    batches = _take(dataset, 4)
    sources = {i: _coordinate_image(20, 30, i) for i in (1, 2, 3)}
    _assert_windows(batches, sources)
    np.testing.assert_array_equal(np.concatenate([b["position"] for b in batches]), np.arange(24))
    streamed = _take(create_train_dataset(parsed, patch_size=PATCH, batch_size=6, seed=1,
                                          process_index=0, process_count=1, cache_bytes=0), 4)
    for a, b in zip(batches, streamed, strict=True):  # same crops, decoded per crop
        _assert_same(a, b)
    assert [name for name, _ in load_images("constant:20x30,2")] == ["c1", "c2"]


def test_the_documented_example_works(monkeypatch):
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "extending.md").read_text()
    section = doc[doc.index("## A data source"):]
    code = section[section.index("```python\n") + 10:section.index("```\n", section.index("```python"))]
    monkeypatch.setitem(data.SOURCES, "noise", None)  # removed again after the test
    exec(code, {"dataclasses": dataclasses, "np": np, "data": data})
    dataset = create_train_dataset("noise:8", patch_size=48, batch_size=2, seed=0,
                                   process_index=0, process_count=1)
    assert dataset.source_info.num_images == 8
    batch = next(dataset.as_numpy_iterator())
    assert batch["hr"].shape == (2, 48, 48, 3) and batch["hr"].std() > 0


def test_a_source_whose_read_breaks_raises_on_next(monkeypatch):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Grey(ConstantSource):
        def read(self, handle, *, max_pixels, quiet=False):
            return np.zeros((self.height, self.width), np.uint8)  # not (H, W, 3)

    monkeypatch.setitem(data.SOURCES, "grey", Grey)
    with pytest.raises(TypeError, match=r"not uint8 \(H, W, 3\)"):
        _create("grey:20x20,2")
    batches = _create("grey:20x20,2", cache_bytes=0).as_numpy_iterator()
    with pytest.raises(TypeError, match=r"not uint8 \(H, W, 3\)"):
        next(batches)


# ---------------------------------------------------------------------------- no TensorFlow

_WITHOUT_TENSORFLOW = r"""
import sys
assert "tensorflow" not in sys.modules
# As if not installed: `import tensorflow` raises ImportError and
# importlib.util.find_spec("tensorflow") returns None.
sys.modules["tensorflow"] = sys.modules["tensorflow_datasets"] = None
import itertools, json
from drn_jax import data

source = data.parse_source("folder:" + sys.argv[1])
result = {"images": [name for name, _ in data.load_images(source)]}
for cache_bytes in (data.DEFAULT_CACHE_BYTES, 0):
    dataset = data.create_train_dataset(source, patch_size=16, batch_size=4, seed=0,
                                        process_index=0, process_count=1, threads=2,
                                        cache_bytes=cache_bytes)
    batches = list(itertools.islice(dataset.as_numpy_iterator(), 3))
    result[f"shapes_{cache_bytes}"] = [list(b["hr"].shape) for b in batches]
    result[f"dtypes_{cache_bytes}"] = sorted({str(b[k].dtype) for b in batches for k in b})
result["samples"] = len(data.load_images("samples:val"))
try:
    data.parse_source("tfds:div2k:train")
except data.SourceError as err:
    result["tfds_error"] = str(err)
try:
    import tensorflow
except ImportError:
    result["tensorflow_blocked"] = True
result["tensorflow_imported"] = any(m.partition(".")[0] in ("tensorflow", "tensorflow_datasets")
                                    for m, module in sys.modules.items() if module is not None)
print(json.dumps(result))
"""


@pytest.mark.slow
def test_folders_and_samples_work_without_tensorflow(image_folder):
    folder, _ = image_folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = run_python("-c", _WITHOUT_TENSORFLOW, str(folder), env=env, cwd=None, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["images"] == ["a", "b", "d", "small", "c"]  # sorted paths: sub/c.png last
    for cache_bytes in (data.DEFAULT_CACHE_BYTES, 0):
        assert result[f"shapes_{cache_bytes}"] == [[4, PATCH, PATCH, 3]] * 3
        assert result[f"dtypes_{cache_bytes}"] == ["int32", "int64", "uint8"]
    assert result["samples"] == len(data.SAMPLE_VAL)
    assert "needs TensorFlow" in result["tfds_error"] and "\n" not in result["tfds_error"]
    assert result["tensorflow_blocked"] and not result["tensorflow_imported"]


# ---------------------------------------------------------------------------- TFDS

_TFDS_IMAGES = 10
_TFDS_NAME = "drn_tiny_images"


def _tfds_features() -> dict:
    import tensorflow_datasets as tfds

    return {"picture": tfds.features.Image(shape=(None, None, 3)), "file_name": tfds.features.Text()}


def _tfds_examples():
    """drn_tiny_images's records, from arrays: coordinate images of ten sizes."""
    for i in range(_TFDS_IMAGES):
        # Image 3 is too small for the crop.
        size = (8, 8) if i == 3 else (20 + i, 30 - i)
        pixels = _coordinate_image(*size, 100 + i)
        yield i, {"picture": pixels, "file_name": f"dir/img{i}.png"}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds_memory.prepare(_TFDS_NAME, data_dir, _tfds_features(), _tfds_examples())
    return data_dir


def test_tfds_unprepared(tmp_path):
    tfds_memory.builder_class(_TFDS_NAME, _tfds_features())  # known, not prepared
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
    parsed = parse_source(source, tfds_data_dir=tfds_dir)
    assert isinstance(parsed, data.TfdsSource) and parsed.key == "picture"
    assert (parsed.kind, parsed.name, parsed.split, parsed.data_dir) == (
        "tfds", "drn_tiny_images", "train", tfds_dir)
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
    assert len(load_images(parsed, max_pixels=600)) == 2  # 8x8 and 20x30 only


@pytest.mark.parametrize("shuffle_buffer", [1024, 4])
def test_tfds_stream(tfds_dir, shuffle_buffer):
    parsed = parse_source("tfds:drn_tiny_images:train:picture", tfds_data_dir=tfds_dir)

    def create(**kwargs):
        return _create(parsed, seed=3, shuffle_buffer=shuffle_buffer, **kwargs)

    sources = {100 + i: _coordinate_image(20 + i, 30 - i, 100 + i) for i in range(_TFDS_IMAGES)}
    dataset = create()
    assert not dataset.source_info.dense_positions and dataset.source_info.num_images == 10
    full = _take(dataset, 8)
    assert full[0]["hr"].shape == (4, PATCH, PATCH, 3) and full[0]["hr"].dtype == np.uint8
    assert full[0]["position"].dtype == np.int64
    _assert_windows(full, sources)
    positions = np.concatenate([b["position"] for b in full])
    assert len(positions) == 32 and positions[-1] > 31  # image 3 skipped once per epoch
    # Too small, as its decoding shows (a PNG has no header the stream plans from), not unreadable.
    assert len(dataset.skipped.too_small) == 1 and not dataset.skipped.unreadable
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
            _assert_same(a, b)
    # The same crop function as every source: the window and transform of each position.
    crop_key = derive_key(3, 0, "crop")
    transforms = np.concatenate([b["transform"] for b in full])
    for crop, t, position, ident in zip((c for b in full for c in b["hr"]), transforms, positions, idents):
        window, transform = crops.crop(sources[ident], crop_key, int(position), PATCH)
        np.testing.assert_array_equal(crop, window)
        assert t == transform
