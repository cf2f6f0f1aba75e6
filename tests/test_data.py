"""fusion.data: documented shapes/dtypes, values, HU windowing, spacing, errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import REAL_DATA, SQUARE, FakeDrop, write_dicom

from data_build import records, renders, windows
from data_build.cases import Case
from data_build.manifest import Manifest
from fusion import data

ALL = (1.0, 0.0, 0.0)  # every group in train: tests read one split


@pytest.fixture
def render_shards(render_drop: FakeDrop, tmp_path: Path) -> Path:
    out = tmp_path / "render-shards"
    records.write_drop(render_drop, out, workers=1, shard_size=5, fractions=ALL, progress=False)
    return out


@pytest.fixture
def dicom_shards(tmp_path: Path) -> Path:
    root = tmp_path / "dicom-drop"
    cases = []
    for i in range(3):
        hu = np.full((64, 64), -1000 + 500 * i, np.int32)
        hu[:, :32] = 40  # brain_window level: 0.5 after windowing
        path = write_dicom(root / f"ID_d{i}.dcm", hu, patient_id=f"P{i}", spacing=(0.5, 0.25))
        cases.append(Case(id=f"ID_d{i}", source="dicom", dicom_path=str(path),
                          polygons=(SQUARE,) if i else None, labels=(0,) * 6))
    out = tmp_path / "dicom-shards"
    drop = FakeDrop(root=root, source="dicom", cases=cases)
    records.write_drop(drop, out, workers=1, fractions=ALL, progress=False,
                       presets={"subdural_window": (75.0, 215.0)})
    return out


@pytest.mark.parametrize("size", [64, 32, 12])
def test_render_batches_have_documented_shapes(render_shards: Path, size: int) -> None:
    batch = next(iter(data.make_dataset(render_shards, "train", image_size=size, batch_size=4)))
    b = 4
    shapes = {
        "image": [b, size, size, 4], "is_hu": [b], "labels": [b, 6],
        "has_labels": [b], "mask": [b, size, size, 1], "has_mask": [b], "area_fraction": [b],
        "area_mm2": [b], "has_area": [b], "has_area_mm2": [b], "pixel_spacing": [b, 2],
        "has_spacing": [b], "id": [b],
    }
    assert set(batch) == set(shapes)
    for key, shape in shapes.items():
        assert batch[key].shape.as_list() == shape, key
        assert batch[key].dtype == (tf.string if key == "id" else tf.float32), key
    image = batch["image"].numpy()
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.01
    assert set(np.unique(batch["mask"].numpy())) <= {0.0, 1.0}
    assert not batch["is_hu"].numpy().any()  # render shards carry no "hu" (docs/design.md)


def reference_batches(shards: Path, size: int, batch_size: int) -> list[dict]:
    """The per-example float path (`decode` + `preprocess`), the fast path's reference."""
    files = data.shard_files(shards, "train", Manifest.load(shards))
    ds = tf.data.TFRecordDataset(files).map(lambda s: data.preprocess(data.decode(s), size))
    return list(ds.batch(batch_size))


@pytest.mark.parametrize("size,atol", [(32, 0.0), (16, 0.0), (64, 0.5 / 255 + 1e-6), (12, 0.5 / 255 + 1e-6)])
def test_fast_render_path_matches_the_per_example_reference(
    render_drop: FakeDrop, tmp_path: Path, size: int, atol: float
) -> None:
    # One window of one slice is a greyscale JPEG: taken as it is, not through the bone map.
    grey_path = render_drop.cases[3].render_paths[windows.WINDOW_NAMES[1]]
    grey = cv2.imread(grey_path, cv2.IMREAD_GRAYSCALE)
    assert cv2.imwrite(grey_path, grey, [cv2.IMWRITE_JPEG_QUALITY, 95])
    shards = tmp_path / "shards"
    records.write_drop(render_drop, shards, workers=1, shard_size=5, fractions=ALL, progress=False)
    # The 32 px renders decode straight to 32 and 16 px (DCT ratio 1 and 2): bit-identical.
    # Other sizes are resized after decoding and carried as uint8: within half a grey level.
    fast = list(data.make_dataset(shards, "train", image_size=size, batch_size=5))
    ref = reference_batches(shards, size, 5)
    assert len(fast) == len(ref)
    for got, want in zip(fast, ref):
        assert set(got) == set(want) - {"hu"}
        for key in got:
            if key == "id":
                assert got[key].numpy().tolist() == want[key].numpy().tolist()
            else:
                assert got[key].dtype == want[key].dtype, key
                np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=atol, rtol=0, err_msg=key)
    row = [i.decode() for b in fast for i in b["id"].numpy()].index(render_drop.cases[3].id)
    image = np.concatenate([b["image"].numpy() for b in fast])[row, :, :, 1]
    if size == 32:  # the greyscale window reads back as value / 255 (+-2: another IDCT than cv2's)
        stored = cv2.imread(grey_path, cv2.IMREAD_GRAYSCALE)
        assert np.abs(image - stored / 255.0).max() <= 2.5 / 255
        assert np.abs(image - renders.GREY_FROM_LUMA[stored]).mean() > 5 / 255


def test_codes_to_grey_uses_each_windows_table() -> None:
    codes = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 4)).astype(np.uint8)
    colour = np.zeros((2, 4), np.int32)
    np.testing.assert_array_equal(data._codes_to_grey(codes, colour), renders.GREY_FROM_LUMA[codes])
    mixed = np.array([[0, 1, 0, 1], [1, 1, 0, 0]], np.int32)
    got = data._codes_to_grey(codes, mixed)
    for i in range(2):
        for j in range(4):
            want = renders.GREY_FROM_LUMA[codes[i, ..., j]] if mixed[i, j] == 0 else codes[i, ..., j] / 255.0
            np.testing.assert_allclose(got[i, ..., j], want, atol=1e-7)
    assert data._codes_to_grey(codes[:0], colour[:0]).shape == (0, 3, 3, 4)


def test_render_values_match_sources(render_drop: FakeDrop, render_shards: Path) -> None:
    batches = list(data.make_dataset(render_shards, "train", image_size=32, batch_size=5))
    got = {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}
    ids = [i.decode() for i in got["id"]]
    assert ids == sorted(c.id for c in render_drop.cases)  # no shuffle: manifest order
    row = ids.index("ID_000000002")
    # Channel order WINDOW_NAMES; the image is the render's grey with the bone map inverted.
    case = render_drop.cases[2]
    for c, name in enumerate(windows.WINDOW_NAMES):
        rgb = cv2.imread(case.render_paths[name], cv2.IMREAD_COLOR)[..., ::-1]
        grey = renders.rgb_to_grey(rgb)
        luma = cv2.imread(case.render_paths[name], cv2.IMREAD_GRAYSCALE) / 255.0
        err_grey = np.abs(got["image"][row, :, :, c] - grey).mean()
        err_luma = np.abs(got["image"][row, :, :, c] - luma).mean()
        assert err_grey < 0.01 and err_grey * 3 < err_luma, name  # the inverse, not luminance
    # Square 0.25..0.5 at 32 px = rows/cols 8..16 -> 81 px of 1024.
    assert got["area_fraction"][row] == pytest.approx(81 / 1024)
    assert got["mask"][row, :, :, 0].sum() == 81
    unknown = ids.index("ID_000000001")
    assert got["has_mask"][unknown] == 0 and got["mask"][unknown].sum() == 0
    normal = ids.index("ID_000000000")
    assert got["has_mask"][normal] == 1 and got["labels"][normal].sum() == 0
    assert got["labels"][row].tolist() == [1, 0, 0, 0, 0, 1] and got["has_labels"].all()


def test_hu_records_are_windowed_with_manifest_presets(dicom_shards: Path) -> None:
    batch = next(iter(data.make_dataset(dicom_shards, "train", image_size=32, batch_size=3)))
    assert batch["is_hu"].numpy().tolist() == [1.0, 1.0, 1.0]
    hu = batch["hu"].numpy()
    assert hu[0, :, :14, 0] == pytest.approx(40.0)  # left half stays 40 HU after resize
    image = batch["image"].numpy()
    presets = list(Manifest.load(dicom_shards).presets)
    assert presets[1] == windows.Window(75.0, 215.0)
    expected = windows.apply_windows(hu[..., 0], presets)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image[0, 0, 0, 0] == pytest.approx(0.5)
    # 64 px at 0.5 x 0.25 mm read at 32 px: each pixel now covers twice the distance.
    np.testing.assert_allclose(batch["pixel_spacing"].numpy()[0], [1.0, 0.5])
    assert batch["has_area_mm2"].numpy().tolist() == [0.0, 1.0, 1.0]
    assert batch["area_mm2"].numpy()[1] == pytest.approx(17 * 17 * 0.125)  # rows/cols 16..32 at 64 px


def test_shuffle_is_seeded_and_repeat_drop_remainder(render_shards: Path) -> None:
    def ids(seed: int) -> list[bytes]:
        ds = data.make_dataset(render_shards, "train", image_size=8, batch_size=12, shuffle=True, seed=seed)
        return next(iter(ds))["id"].numpy().tolist()

    assert ids(1) == ids(1) and sorted(ids(1)) == sorted(ids(2))
    ds = data.make_dataset(render_shards, "train", image_size=8, batch_size=5, repeat=True,
                           drop_remainder=True)
    assert [b["id"].shape[0] for b in ds.take(4)] == [5, 5, 5, 5]


def test_augment_is_applied_per_example(render_shards: Path) -> None:
    def flip(example: dict) -> dict:
        return {**example, "image": 1.0 - example["image"]}

    plain = next(iter(data.make_dataset(render_shards, "train", image_size=8, batch_size=2)))
    flipped = next(iter(data.make_dataset(render_shards, "train", image_size=8, batch_size=2, augment=flip)))
    np.testing.assert_allclose(flipped["image"].numpy(), 1.0 - plain["image"].numpy(), atol=1e-6)


def test_errors(render_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(data.EmptySplitError, match=r"'val'.*train: 12, val: 0, test: 0"):
        data.make_dataset(render_shards, "val")
    with pytest.raises(data.ManifestError, match="fusion-build"):
        data.make_dataset(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="split"):
        data.make_dataset(render_shards, "training")
    with pytest.raises(ValueError, match="image_size"):
        data.make_dataset(render_shards, "train", image_size=0)


def test_decode_preprocess_are_composable(render_shards: Path) -> None:
    manifest = Manifest.load(render_shards)
    path = render_shards / manifest.shards[0].file
    serialized = next(iter(tf.data.TFRecordDataset(str(path))))
    example = data.preprocess(data.decode(serialized), 16)
    assert example["image"].shape == (16, 16, 4) and example["id"].numpy().startswith(b"ID_")


@pytest.mark.skipif(not (REAL_DATA / "rsna-dicom").is_dir(), reason="no ../shared/data/real")
def test_real_dicom_drop_reads_back_exact_hu(tmp_path: Path) -> None:
    from data_build.dicom import read_hu

    root = tmp_path / "drop"
    (root / "dcms").mkdir(parents=True)
    real = sorted((REAL_DATA / "rsna-dicom").glob("*.dcm"))[:3]
    for path in real:  # link, never copy, the real files
        (root / "dcms" / path.name).symlink_to(path)
    (root / "hemorrhage-labels.csv").write_text(
        "Image,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural\n"
        + "".join(f"{p.stem},0,0,0,0,0,0\n" for p in real)
    )
    out = tmp_path / "shards"
    report = records.build(root, out, workers=1, fractions=ALL, progress=False)
    assert report.examples == 3 and Manifest.load(out).source == "dicom"
    batch = next(iter(data.make_dataset(out, "train", image_size=512, batch_size=3)))
    for row, slice_id in enumerate(i.decode() for i in batch["id"].numpy()):
        hu, meta = read_hu(root / "dcms" / f"{slice_id}.dcm")
        np.testing.assert_array_equal(batch["hu"].numpy()[row, :, :, 0], np.rint(hu))
        np.testing.assert_allclose(batch["pixel_spacing"].numpy()[row], meta.pixel_spacing, rtol=1e-6)
    expected = windows.apply_windows(batch["hu"].numpy()[..., 0])
    np.testing.assert_allclose(batch["image"].numpy(), expected, atol=1e-6)
    assert records.verify(out).ok
