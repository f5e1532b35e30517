"""The TFDS stream's JPEG path: crops decoded from the window only, K crops per image, the
epoch order, a corrupt record, and the device prefetch of the training loop."""

import io
import itertools
import logging
import time

import jax
import numpy as np
import pytest
from PIL import Image

from drn_jax import config as config_lib
from drn_jax.data import create_train_dataset, crops, parse_source, tfds_memory, tfds_order
from drn_jax.data.base import derive_key
from drn_jax.errors import ConfigError, SourceError

PATCH = 16
NAME = "drn_jpeg_records"
SOURCE = f"tfds:{NAME}:train:image"


def _jpeg(height: int, width: int, seed: int, **options) -> bytes:
    # Smooth colour with some noise: 4:2:0 chroma with real detail, like a photo.
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    base = np.stack([rows, cols, rows * cols], -1) * 200 + rng.normal(0, 25, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def _records() -> list[tuple[str, bytes]]:
    records = [(f"jpeg{i}", _jpeg(36 + 3 * i, 52 - 2 * i, i, quality=90)) for i in range(7)]
    # An application segment of 6,000 bytes before the frame header (as large EXIF or ICC
    # data puts it): the header is not in the bytes the stream plans a block from.
    plain = _jpeg(57, 38, 7, quality=90)
    records.append(("big_header", plain[:2] + b"\xff\xef" + (6002).to_bytes(2, "big") + bytes(6000)
                    + plain[2:]))
    records.append(("progressive", _jpeg(40, 44, 20, quality=80, progressive=True)))
    records.append(("small", _jpeg(10, 40, 21)))  # under the crop
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(22).integers(0, 256, (30, 34, 3), np.uint8)).save(png, "PNG")
    records.append(("png", png.getvalue()))  # not a JPEG: decoded whole
    whole = _jpeg(40, 40, 23)
    records.append(("corrupt", whole[:whole.index(b"\xff\xda") + 12]))  # header, no image data
    return records


@pytest.fixture(scope="module")
def jpeg_tfds(tmp_path_factory) -> tuple[str, dict[int, bytes], dict[str, int]]:
    """(data_dir, stored index -> record bytes, name -> stored index)."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    features = {"image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "name": tfds.features.Text()}
    records = ((name, {"image": encoded, "name": name}) for name, encoded in _records())  # bytes as they are
    data_dir = str(tmp_path_factory.mktemp("jpeg_tfds"))
    builder = tfds_memory.prepare(NAME, data_dir, features, records)
    stored = builder.as_dataset(split="train", shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
    examples = list(stored.as_numpy_iterator())
    return (data_dir, {i: e["image"] for i, e in enumerate(examples)},
            {e["name"].decode(): i for i, e in enumerate(examples)})


def _create(data_dir, **kwargs):
    kwargs = {"patch_size": PATCH, "batch_size": 6, "seed": 4, "process_index": 0,
              "process_count": 1, "threads": 1, "shuffle_buffer": 4, **kwargs}
    return create_train_dataset(parse_source(SOURCE, tfds_data_dir=data_dir), **kwargs)


def _by_position(dataset, batches: int) -> dict[int, np.ndarray]:
    """Training crops by position: each window under the transform that came with it."""
    taken = itertools.islice(dataset.as_numpy_iterator(), batches)
    return {int(p): crops.dihedral(crop, int(t))
            for b in taken for p, crop, t in zip(b["position"], b["hr"], b["transform"])}


def _full_decode(record: bytes) -> np.ndarray:
    import tensorflow as tf

    return tf.io.decode_image(record, channels=3, dtype=tf.uint8, expand_animations=False).numpy()


def test_jpeg_size_reads_the_frame_header_as_libjpeg_does(jpeg_tfds):
    import tensorflow as tf

    from drn_jax.data.jpeg import jpeg_size

    _, records, names = jpeg_tfds
    for name, index in names.items():
        record = records[index]
        if name == "png":
            assert jpeg_size(record) is None
            continue
        if name == "corrupt":  # its header is whole (libjpeg refuses it for the missing data)
            assert jpeg_size(record) == (40, 40)
            continue
        assert jpeg_size(record) == tuple(tf.image.extract_jpeg_shape(record)[:2].numpy()), name
    big = records[names["big_header"]]
    assert jpeg_size(big[:4096]) is None and jpeg_size(big) == (57, 38)
    assert jpeg_size(records[names["jpeg0"]][:4096]) == (36, 52)
    assert jpeg_size(b"\xff\xd8\xff") is None and jpeg_size(b"GIF89a") is None


@pytest.mark.parametrize("per_image", [1, 3])
def test_crops_equal_a_full_decode_then_the_window(jpeg_tfds, per_image):
    """Bit-exact: each window is `crops.crop` of the whole decoded image at its position, and
    so is its transform (same
    libjpeg settings; the decoded window has a margin for chroma upsampling), from the
    record that `tfds_order` places there."""
    data_dir, records, names = jpeg_tfds
    dataset = _create(data_dir, crops_per_image=per_image)
    crop_key = derive_key(4, 0, "crop")
    stream = _by_position(dataset, 12)
    decoded = {index: _full_decode(record) for index, record in records.items()
               if index != names["corrupt"]}
    seen = set()
    for position, crop in stream.items():
        index = dataset.order.stored_index(position // per_image)
        seen.add(index)
        np.testing.assert_array_equal(crop, crops.dihedral(*crops.crop(decoded[index], crop_key,
                                                                       position, PATCH)))
    usable = set(records) - {names["corrupt"], names["small"]}
    assert seen == usable  # every JPEG, the progressive one, the one with a big header, the PNG
    # Positions count crops: K consecutive positions per record, a record's K crops differ.
    positions = sorted(stream)
    for position in positions:
        assert (position // per_image) * per_image in stream
    if per_image > 1:
        first = positions[0]
        assert not np.array_equal(stream[first], stream[first + 1])


def test_k_crops_per_image_are_deterministic_and_resume_anywhere(jpeg_tfds):
    data_dir, _, _ = jpeg_tfds
    full = _by_position(_create(data_dir, crops_per_image=3), 14)  # 84 crops: > 3 epochs of 12 records
    again = _by_position(_create(data_dir, crops_per_image=3), 14)
    assert sorted(full) == sorted(again)
    assert all(np.array_equal(full[p], again[p]) for p in full)
    for start in (4, 31, 50):  # inside a record's crops, and past epoch boundaries (36, 72)
        tail = _by_position(_create(data_dir, crops_per_image=3, start_position=start), 5)
        assert min(tail) >= start
        assert sorted(tail) == sorted(p for p in full if p >= start)[:len(tail)]
        for position, crop in tail.items():
            np.testing.assert_array_equal(crop, full[position])


def test_epoch_order_changes_blocks_and_resumes_across_epochs(jpeg_tfds):
    data_dir, records, _ = jpeg_tfds
    dataset = _create(data_dir)
    order = dataset.order
    count = order.count
    assert count == len(records) and order.block_size == 4 and len(order.chunks) == 6
    # Chunk (hence block) order and the epoch's record order change with the epoch.
    assert len({tuple(order.chunk_order(epoch)) for epoch in range(4)}) > 1
    epochs = [[order.stored_index(epoch * count + i) for i in range(count)] for epoch in range(3)]
    assert all(sorted(e) == list(range(count)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    first_blocks = [{frozenset(e[b:b + 4]) for b in range(0, count, 4)} for e in epochs]
    assert first_blocks[0] != first_blocks[1] or first_blocks[1] != first_blocks[2]
    # Resuming across an epoch boundary equals the uninterrupted stream.
    full = _by_position(dataset, 8)  # 48 positions: 4 epochs of 12
    for start in (count - 1, count, 2 * count + 5):
        tail = _by_position(_create(data_dir, start_position=start), 4)
        assert sorted(tail) == sorted(p for p in full if p >= start)[:len(tail)]
        for position, crop in tail.items():
            np.testing.assert_array_equal(crop, full[position])


def test_a_corrupt_record_is_skipped_counted_and_named_once(jpeg_tfds, caplog):
    data_dir, _, names = jpeg_tfds
    caplog.set_level(logging.WARNING)
    dataset = _create(data_dir, threads=2)
    stream = _by_position(dataset, 10)  # 60 crops: 6 epochs, the corrupt record in each
    count = dataset.order.count
    dropped = [p for p in range(max(stream)) if dataset.order.stored_index(p) == names["corrupt"]]
    assert len(dropped) >= 5 and not set(dropped) & set(stream)  # skipped: a gap each epoch
    assert dataset.skipped.unreadable == {names["corrupt"]}
    assert dataset.skipped.too_small == {names["small"]}
    lines = [r.getMessage() for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert len(lines) == 1 and f"record {names['corrupt']} " in lines[0] and SOURCE in lines[0]
    assert len(stream) == 60 and count == 12


def test_a_damaged_record_file_stops_the_stream(jpeg_tfds, tmp_path):
    """Only decoding errors are dropped: a TFRecord file cut short is a damaged dataset,
    and reading it stops the stream with a one-line error, instead of skipping records."""
    import shutil

    data_dir, _, _ = jpeg_tfds
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    (record_file,) = sorted(copy.glob(f"{NAME}/1.0.0/*.tfrecord*"))
    record_file.write_bytes(record_file.read_bytes()[:-100])
    with pytest.raises(SourceError, match=r"^data source 'tfds:drn_jpeg_records:train:image': "
                       r"a record file in .*1\.0\.0 is damaged \(truncated record at \d+.*\); "
                       r"prepare the dataset again with `tfds build drn_jpeg_records") as caught:
        _by_position(_create(str(copy)), 10)
    assert "\n" not in str(caught.value) and "{{" not in str(caught.value)


def test_order_description_is_consistent():
    files = [("a", 0, 5), ("b", 2, 3), ("c", 0, 0)]
    chunk_list = tfds_order.chunks(files, 2)
    assert [(c.file, c.skip, c.count, c.first) for c in chunk_list] == [
        ("a", 0, 2, 0), ("a", 2, 2, 2), ("a", 4, 1, 4), ("b", 2, 2, 5), ("b", 4, 1, 7)]
    order = tfds_order.RecordOrder(chunk_list, chunk_key=1, block_key=2, block_size=3)
    for position in range(40):
        resume = order.resume(position)
        # Reading the chunks resume names, in its order, then permuting the first block:
        read = [c.first + i for c in resume.chunks for i in range(c.count)]
        block = read[:min(3, len(read))]
        permuted = [block[j] for j in order.block_permutation(resume.epoch, resume.first_block,
                                                              len(block))]
        assert permuted[resume.drop] == order.stored_index(position)


def test_prefetch_to_mesh_keeps_batches_and_order():
    from drn_jax import training

    mesh = training.make_mesh()
    devices = len(mesh.devices.flat)
    local = [{"hr": np.full((devices, 4, 4, 3), i, np.uint8), "position": np.arange(devices) + i}
             for i in range(5)]
    # Batches with transforms leave as the training crops: each window under its own.
    windows = np.random.default_rng(0).integers(0, 256, (2, devices, 4, 4, 3), dtype=np.uint8)
    local += [{"hr": w, "transform": (np.arange(devices, dtype=np.int32) + 3 * i) % 8,
               "position": np.arange(devices) + 5 + i} for i, w in enumerate(windows)]
    # The source sleeps a known time before batches 2 and 5 alone: the wait reported with
    # each is at least its own sleep (a wait given to a neighbour, or none, would be ~0).
    sleeps = {2: 0.05, 5: 0.08}

    def slow_source():
        for i, batch in enumerate(local):
            time.sleep(sleeps.get(i, 0.0))
            yield batch

    out = list(training.prefetch_to_mesh(slow_source(), mesh, depth=2))
    assert len(out) == 7
    for i, (batch, hr, waited) in enumerate(out):
        assert batch is local[i]
        if i in sleeps:
            assert waited >= sleeps[i], (i, waited)
        assert isinstance(hr, jax.Array) and len(hr.sharding.device_set) == devices
        expected = local[i]["hr"]
        if "transform" in batch:
            expected = [crops.dihedral(w, int(t)) for w, t in zip(expected, batch["transform"])]
            assert not np.array_equal(np.asarray(hr), local[i]["hr"])
        np.testing.assert_array_equal(np.asarray(hr), expected)


def test_crops_per_image_is_validated():
    config = config_lib.base_config()
    assert config.data.crops_per_image == 1
    config_lib.validate(config, num_devices=1)
    for bad in (0, -2):
        config.data.crops_per_image = bad
        with pytest.raises(ConfigError, match="data.crops_per_image"):
            config_lib.validate(config, num_devices=1)
