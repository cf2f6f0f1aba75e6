"""The TensorFlow-free reader: framing, Example decoding and pixels against TensorFlow's own.

Shards are built by the product's builder (`records.build`) from a synthetic drop
(`write_synthetic_drop`, broken inputs included), once per source, and read back both ways.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from data_build import examples, records, schema, tfrecord, windows
from data_build.manifest import Manifest
from data_build.synth.writer import write_synthetic_drop
from fusion import data, reader

REPO = Path(__file__).resolve().parents[1]
SIDE = 64  # synthetic renders: 64 px, so sizes 32/16/8 decode at DCT scale 2/4/8


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"render": folder, "dicom": folder}: one synthetic drop built both ways, all in train."""
    work = tmp_path_factory.mktemp("reader")
    write_synthetic_drop(work / "drop", n_patients=4, slices_per_patient=3, size=SIDE, seed=0)
    out = {}
    for source in ("render", "dicom"):
        out[source] = work / source
        report = records.build(work / "drop", out[source], source=source, workers=1, shard_size=3,
                               fractions=(1.0, 0.0, 0.0), progress=False)
        assert report.examples >= 6 and report.skips_by_reason  # the planted broken inputs
    return out


def _files(folder: Path) -> list[str]:
    return data.shard_files(folder, "train", Manifest.load(folder))


# --- framing -----------------------------------------------------------------------------------


def test_writer_bytes_equal_tf_and_read_back(tmp_path: Path) -> None:
    payloads = [b"", b"x", bytes(range(256)) * 300, schema.encode_example({"id": "ID_1"})]
    ours, theirs = tmp_path / "ours.tfrecord", tmp_path / "tf.tfrecord"
    with tfrecord.TFRecordWriter(ours) as writer:
        for p in payloads:
            writer.write(p)
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for p in payloads:
            writer.write(p)
    assert ours.read_bytes() == theirs.read_bytes()
    assert list(tfrecord.read_records(ours)) == payloads
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == payloads
    index = tfrecord.index_records(ours)
    assert [length for _, length in index] == [len(p) for p in payloads]
    fd = os.open(ours, os.O_RDONLY)
    try:
        assert [tfrecord.read_record_at(fd, ours, off) for off, _ in index] == payloads
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.tfrecord", "tf.tfrecord"]  # no temp


def test_writer_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "shard.tfrecord"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with tfrecord.TFRecordWriter(path) as writer:
            writer.write(b"new")
            assert path.read_bytes() == b"old"  # nothing shows before close
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["shard.tfrecord"]


def test_corrupt_record_names_shard_offset_and_fusion_verify(shards: dict[str, Path], tmp_path: Path) -> None:
    folder = Path(shutil.copytree(shards["render"], tmp_path / "shards"))
    path = Path(_files(folder)[0])
    good = path.read_bytes()
    index = tfrecord.index_records(path)
    offset, length = index[1]
    broken = bytearray(good)
    broken[offset + tfrecord.HEADER_BYTES + length // 2] ^= 0xFF  # damage inside record 1's data
    path.write_bytes(bytes(broken))
    pattern = rf"{path}: corrupt record at byte offset {offset} \(data CRC32C.*fusion-verify {folder}"
    with pytest.raises(tfrecord.CorruptRecordError, match=pattern):
        list(tfrecord.read_records(path))
    sequence = reader.ShardSequence(folder, "train", image_size=8, batch_size=2, as_dicts=True)
    sequence.batch(1)  # records 2 and 3 are whole
    with pytest.raises(tfrecord.CorruptRecordError, match=pattern):
        sequence.batch(0)
    # Cut short inside record 2's data: found from the headers alone, before any batch is read.
    third = index[2][0]
    path.write_bytes(good[: third + 20])
    with pytest.raises(tfrecord.CorruptRecordError, match=rf"byte offset {third} \(truncated.*fusion-verify"):
        reader.ShardSequence(folder, "train")
    path.write_bytes(good[: third + 5])  # inside the header
    with pytest.raises(tfrecord.CorruptRecordError, match=rf"byte offset {third} \(truncated header"):
        list(tfrecord.read_records(path))
    header = bytearray(good)
    header[third] ^= 0x01  # the length itself: caught by the length CRC, not read as a size
    path.write_bytes(bytes(header))
    with pytest.raises(tfrecord.CorruptRecordError, match=rf"byte offset {third} \(length CRC32C"):
        list(tfrecord.read_records(path))


# --- Example decoding --------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["render", "dicom"])
def test_every_field_decodes_equal_to_tf_parse_single_example(shards: dict[str, Path], source: str) -> None:
    spec = schema.feature_spec()
    n = 0
    for path in _files(shards[source]):
        ours = list(tfrecord.read_records(path))
        assert ours == [r.numpy() for r in tf.data.TFRecordDataset(path)]
        for raw in ours:
            want = tf.io.parse_single_example(raw, spec)
            got = examples.parse_example(raw)
            assert set(got) == set(want) == {f.key for f in schema.FIELDS}
            for key, value in want.items():
                expected = value.numpy()
                assert type(got[key]) is type(expected), key  # bytes, np.int64, np.float32, arrays
                assert np.asarray(got[key]).dtype == np.asarray(expected).dtype, key
                assert np.array_equal(np.asarray(got[key]), np.asarray(expected)), key
            n += 1
    assert n == sum(s.examples for s in Manifest.load(shards[source]).shards)


def _len_field(number: int, payload: bytes) -> bytes:
    return schema._varint((number << 3) | 2) + schema._varint(len(payload)) + payload


def test_unpacked_numbers_unknown_fields_and_defaults_parse_as_tf_does() -> None:
    # Other writers may emit unpacked repeated numbers; protobuf parsers accept both forms.
    def unpacked_ints(values: list[int]) -> bytes:  # Int64List.value = 1, wire type 0 each
        return b"".join(schema._varint(1 << 3 | 0) + schema._varint(v) for v in values)

    def entry(key: str, feature: bytes) -> bytes:
        return _len_field(1, _len_field(1, key.encode()) + _len_field(2, feature))

    spacing = b"".join(schema._varint(1 << 3 | 5) + struct.pack("<f", v) for v in (0.5, 0.25))
    features = (
        entry("labels", _len_field(3, unpacked_ints([1, 0, 1, 0, 0, 1])))
        + entry("height", _len_field(3, unpacked_ints([-5])))  # negative int64: a 10-byte varint
        + entry("pixel_spacing", _len_field(2, spacing))  # FloatList.value unpacked: wire type 5
        + entry("id", _len_field(1, _len_field(1, b"old")))
        + entry("id", _len_field(1, _len_field(1, b"ID_x")))  # a repeated map key: the last wins
        + entry("not_in_schema", _len_field(1, _len_field(1, b"?")))
    )
    serialized = _len_field(1, features)
    want = tf.io.parse_single_example(serialized, schema.feature_spec())
    got = examples.parse_example(serialized)
    for key, value in want.items():
        assert np.array_equal(np.asarray(got[key]), value.numpy()), key
    assert got["labels"].tolist() == [1, 0, 1, 0, 0, 1] and got["height"] == -5
    assert got["pixel_spacing"].tolist() == [0.5, 0.25]
    assert got["id"] == b"ID_x" and got["mask"] == b"" and got["position"].tolist() == [0, 0, 0]
    # A field unknown to Features is skipped, as protobuf does (TensorFlow's fast parser refuses).
    unknown = schema._varint(9 << 3 | 0) + schema._varint(7)
    assert examples.parse_example(_len_field(1, features + unknown))["id"] == b"ID_x"
    with pytest.raises(schema.SchemaError, match="height: a float feature, the schema says int64"):
        examples.parse_example(_len_field(1, entry("height", _len_field(2, _len_field(1, b"\0" * 4)))))
    with pytest.raises(schema.SchemaError, match=r"labels: expected 6 value\(s\), got 2"):
        examples.parse_example(_len_field(1, entry("labels", _len_field(3, unpacked_ints([1, 0])))))
    with pytest.raises(schema.SchemaError, match="past the end"):
        examples.parse_example(schema.encode_example({"id": "x"})[:-1])


# --- pixels and targets against the tf.data reader ----------------------------------------------


def _ours(folder: Path, size: int, batch_size: int = 4) -> list[dict]:
    sequence = reader.ShardSequence(folder, "train", image_size=size, batch_size=batch_size, as_dicts=True)
    return [sequence[i] for i in range(len(sequence))]


def _reference(folder: Path, size: int, batch_size: int = 4) -> list[dict]:
    """The tf.data reader's per-example float path (`decode` + `preprocess`)."""
    presets = list(Manifest.load(folder).presets)
    dataset = tf.data.TFRecordDataset(_files(folder)).map(
        lambda s: data.preprocess(data.decode(s), size, presets))
    return list(dataset.batch(batch_size))


def _compare(ours: list[dict], theirs: list, atol: dict[str, float]) -> None:
    assert len(ours) == len(theirs)
    for got, want in zip(ours, theirs):
        assert set(got) == set(want)
        for key, value in got.items():
            expected = want[key].numpy()
            if key == "id":
                assert value.tolist() == expected.tolist()
                continue
            assert value.dtype == expected.dtype and value.shape == expected.shape, key
            np.testing.assert_allclose(value, expected, rtol=0, atol=atol.get(key, 0.0), err_msg=key)


@pytest.mark.parametrize("size", [32, 16, 8])
def test_render_pixels_bit_identical_to_tf_reader_at_dct_scales(shards: dict[str, Path], size: int) -> None:
    # 64 px renders read at 32/16/8 px decode at DCT scale 2/4/8 straight to S: libjpeg's scaled
    # IDCT is the same code in OpenCV and TensorFlow, so every key is bit-identical.
    ours = _ours(shards["render"], size)
    _compare(ours, list(data.make_dataset(shards["render"], "train", image_size=size, batch_size=4)), {})
    assert np.concatenate([b["image"] for b in ours]).std() > 0.05
    if size >= 16:  # the synthetic bleeds vanish at 8 px
        assert np.concatenate([b["mask"] for b in ours]).sum() > 0


@pytest.mark.parametrize("size", [24, 12])
def test_resized_render_pixels_within_half_a_grey_level(shards: dict[str, Path], size: int) -> None:
    # Not a DCT scale (64 -> 32 -> 24, 64 -> 16 -> 12): each window is resized as grey and
    # carried rounded to 1/255, as the tf.data reader does, so both are within 0.5/255 of the
    # float reference; masks (area-averaged, non-integer factor) and targets are exact.
    want = _reference(shards["render"], size)
    for batch in want:
        batch.pop("hu")
    _compare(_ours(shards["render"], size), want, {"image": 0.5 / 255 + 1e-6})


def test_full_scale_decode_equals_tf_accurate_idct(shards: dict[str, Path]) -> None:
    # At DCT scale 1 TensorFlow's reader asks libjpeg for its fast integer IDCT; OpenCV uses the
    # accurate one. Ours equals TensorFlow's own accurate decode bit for bit; the fast one is
    # off by several grey levels on these sharp-edged synthetic renders.
    fast_error = 0
    for path in _files(shards["render"]):
        for raw in tfrecord.read_records(path):
            record = examples.parse_example(raw)
            for name in windows.WINDOW_NAMES:
                jpeg = record[schema.image_key(name)]
                codes, table = reader.decode_window(jpeg, SIDE, 1)
                accurate = tf.image.decode_jpeg(jpeg, channels=1, dct_method="INTEGER_ACCURATE")
                np.testing.assert_array_equal(codes, accurate.numpy()[..., 0])
                assert table == 0  # the synthetic renders are colour (bone-mapped)
                fast = tf.image.decode_jpeg(jpeg, channels=1, dct_method="INTEGER_FAST").numpy()[..., 0]
                fast_error = max(fast_error, int(np.abs(fast.astype(int) - codes).max()))
    assert fast_error > 0  # the difference this test documents
    ours = _ours(shards["render"], SIDE)
    theirs = list(data.make_dataset(shards["render"], "train", image_size=SIDE, batch_size=4))
    _compare(ours, theirs, {"image": fast_error / 255 * 1.5})  # the LUT's slope is <= 1.5


@pytest.mark.parametrize("size", [64, 32, 24])
def test_dicom_pixels_match_tf_reader(shards: dict[str, Path], size: int) -> None:
    # HU are resized with TensorFlow's antialiased bilinear filter, re-implemented in NumPy:
    # equal up to float32 summation order (1e-3 HU), windows to 1e-5; everything else exact.
    ours = _ours(shards["dicom"], size)
    assert all(b["is_hu"].all() for b in ours)
    _compare(ours, list(data.make_dataset(shards["dicom"], "train", image_size=size, batch_size=4)),
             {"hu": 1e-3, "image": 1e-5})



@pytest.mark.parametrize("side,size", [(64, 24), (64, 32), (50, 12), (30, 45), (512, 200)])
def test_resizes_equal_tensorflows(side: int, size: int) -> None:
    rng = np.random.default_rng(side + size)
    mask = (rng.random((side, side)) < 0.5).astype(np.float32)
    want = tf.image.resize(mask[..., None], [size, size], "area").numpy()[..., 0]
    np.testing.assert_array_equal(reader.resize_area(mask, size), want)  # bit for bit: >= 0.5 ties
    grey = rng.random((side, side)).astype(np.float32)
    want = tf.image.resize(grey[..., None], [size, size], "bilinear", antialias=True).numpy()[..., 0]
    np.testing.assert_allclose(reader.resize_bilinear(grey, size), want, rtol=0, atol=2e-6)


def _png_of_rows(rows: np.ndarray, filters: list[int], depth_colour: bytes = b"\x08\x00") -> bytes:
    """A PNG whose row i is stored with filter filters[i] (0 None, 1 Sub, 2 Up) over `rows`."""
    h, w = rows.shape
    stored = []
    for i, kind in enumerate(filters):
        row = rows[i].astype(np.int16)
        left = np.concatenate([[0], row[:-1]])
        up = rows[i - 1].astype(np.int16) if i else np.zeros(w, np.int16)
        data = {0: row, 1: row - left, 2: row - up}[kind]
        stored.append(bytes([kind]) + (data % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">II", w, h) + depth_colour + b"\x00\x00\x00"
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(stored)))
            + chunk(b"IEND", b""))


def test_fast_png_decode_equals_opencv_or_declines(shards: dict[str, Path]) -> None:
    masks = [examples.parse_example(raw)["mask"] for path in _files(shards["render"])
             for raw in tfrecord.read_records(path)]
    masks = [m for m in masks if m]
    assert masks
    rng = np.random.default_rng(0)
    grey = (rng.random((37, 53)) * 255).astype(np.uint8)
    # The build's masks and what OpenCV's encoder writes with its defaults (as the build calls
    # it: all rows Sub), and rows with filters None and Sub mixed.
    fast = masks + [cv2.imencode(".png", grey)[1].tobytes(), _png_of_rows(grey, [0, 1] * 18 + [0])]
    for png in fast:
        want = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
        got = reader.png_grey8(png)
        assert got is not None and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    declined = [
        _png_of_rows(grey, [1, 2] * 18 + [1]),  # Up rows
        cv2.imencode(".png", grey.astype(np.uint16) * 257)[1].tobytes(),  # 16 bit
        cv2.imencode(".png", np.dstack([grey] * 3))[1].tobytes(),  # colour
        masks[0][:-30],  # cut short
        b"not a png",
    ]
    assert all(reader.png_grey8(png) is None for png in declined)
    square = grey[:, :37]
    record = {"has_mask": 1, "mask": _png_of_rows(square, [2] * 37), "area_pixels": 1}
    assert reader.png_grey8(record["mask"]) is None
    np.testing.assert_array_equal(reader.mask_u8(record, 37)[..., 0], square >= 128)  # OpenCV decoded it


# --- the Keras dataset -------------------------------------------------------------------------


def test_model_io_equals_the_tf_readers_to_model_io(shards: dict[str, Path]) -> None:
    from fusion.data import to_model_io

    sequence = reader.ShardSequence(shards["render"], "train", image_size=16, batch_size=5, as_dicts=True)
    batch = sequence[0]
    for heads in (("class", "area", "mask"), ("class",)):
        image, y = reader.model_io(batch, heads)
        want_image, want_y = to_model_io({k: tf.constant(v) for k, v in batch.items() if k != "id"}, heads)
        np.testing.assert_array_equal(image, want_image.numpy())
        assert set(y) == set(want_y) == set(heads)
        for key in y:
            assert y[key].dtype == np.float32
            np.testing.assert_allclose(y[key], want_y[key].numpy(), rtol=1e-6, atol=1e-6, err_msg=key)
    assert batch["area_fraction"].max() > 0  # the area target was exercised
    x, y = reader.ShardSequence(shards["render"], "train", image_size=16, batch_size=5)[0]
    np.testing.assert_array_equal(x, image)
    assert set(y) == {"class", "area", "mask"}


def test_order_is_seeded_per_epoch_and_covers_every_record(shards: dict[str, Path]) -> None:
    def ids(sequence: reader.ShardSequence) -> list[bytes]:
        return [i for k in range(len(sequence)) for i in sequence.batch(k)["id"]]

    def make(seed: int, **kwargs: object) -> reader.ShardSequence:
        return reader.ShardSequence(shards["render"], "train", image_size=8, batch_size=4, shuffle=True,
                                    seed=seed, **kwargs)  # type: ignore[arg-type]

    manifest_order = ids(reader.ShardSequence(shards["render"], "train", image_size=8, batch_size=4))
    assert manifest_order == sorted(manifest_order)  # no shuffle: the manifest's (sorted) order
    first = make(1)
    epoch0 = ids(first)
    first.on_epoch_end()
    epoch1 = ids(first)
    assert sorted(epoch0) == sorted(epoch1) == manifest_order  # every record once per epoch
    assert epoch0 != epoch1 and epoch0 != ids(make(2))
    assert ids(make(1)) == epoch0  # another instance (or worker process): the same order
    copy = pickle.loads(pickle.dumps(first))  # as a spawned worker gets it: no descriptors
    assert copy.records._fds == {} and ids(copy) == epoch1
    dropped = make(1, drop_remainder=True)
    assert len(dropped) == len(manifest_order) // 4 and ids(dropped) == epoch0[: len(dropped) * 4]
    with pytest.raises(IndexError):
        first.batch(len(first))
    with pytest.raises(ValueError, match="image_size"):
        reader.ShardSequence(shards["render"], "train", image_size=0)
    with pytest.raises(reader.EmptySplitError, match="'val'"):
        reader.ShardSequence(shards["render"], "val")


TRAIN_WITHOUT_TF = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, BlockTensorFlow())
    import keras
    from fusion.config import LossConfig, ModelConfig
    from fusion.losses import build_losses
    from fusion.model import build_model
    from fusion.reader import ShardSequence

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(image_size=32, width=4, depth=2, fusion_width=4, groups=2)
    model = build_model(cfg)
    losses, weights = build_losses(LossConfig(), cfg.heads)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=losses, loss_weights=weights)
    train = ShardSequence(sys.argv[1], "train", image_size=32, batch_size=4, heads=cfg.heads,
                          shuffle=True, seed=0, workers=2, use_multiprocessing=True)
    plain = ShardSequence(sys.argv[1], "train", image_size=32, batch_size=4, heads=cfg.heads)
    before = model.evaluate(plain, verbose=0, return_dict=True)["loss"]
    model.fit(train, epochs=4, shuffle=False, verbose=0)
    after = model.evaluate(plain, verbose=0, return_dict=True)["loss"]
    imported = any(m.split(".")[0] == "tensorflow" for m in sys.modules)
    print("RESULT " + json.dumps({"backend": keras.backend.backend(), "before": before, "after": after,
                                  "tensorflow_imported": imported}))
    """
)


def test_trains_on_jax_with_tensorflow_blocked(shards: dict[str, Path]) -> None:
    pytest.importorskip("jax", reason="jax is not installed (pip install -e .[test])")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", TRAIN_WITHOUT_TF, str(shards["render"])], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    assert result["backend"] == "jax" and not result["tensorflow_imported"]
    assert result["after"] < 0.9 * result["before"], result
