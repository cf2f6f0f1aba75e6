"""make_example on render and DICOM cases: bytes kept, HU lossless, masks, areas, skips."""
from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REAL_DATA, SQUARE, render_case, write_dicom

from data_build import convert, schema
from data_build.cases import Case, Skip
from data_build.windows import WINDOW_NAMES

DICOM = convert.ConvertOptions(source="dicom")


def _record(result: convert.Converted | Skip) -> dict:
    assert isinstance(result, convert.Converted), result
    return schema.decode_example(result.serialized)


def test_render_keeps_original_jpeg_bytes_and_mask(tmp_path: Path) -> None:
    case = render_case(tmp_path, "ID_000000001", size=64, spacing=(0.5, 0.25))
    result = convert.make_example(case)
    record = _record(result)
    for name in WINDOW_NAMES:
        assert record[schema.image_key(name)] == Path(case.render_paths[name]).read_bytes()
    assert record["image/hu"] == b""
    assert (record["height"], record["width"], record["source"]) == (64, 64, b"render")
    mask = cv2.imdecode(np.frombuffer(record["mask"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
    # Square 0.25..0.5 at 64 px: rows/cols 16..32 inclusive (edges included) = 17 x 17.
    assert record["area_pixels"] == 17 * 17 == result.area_pixels == (mask > 0).sum()
    assert record["area_mm2"] == pytest.approx(17 * 17 * 0.5 * 0.25)
    assert (record["has_mask"], record["has_area"], record["has_area_mm2"]) == (1, 1, 1)
    assert record["labels"] == [1, 0, 0, 0, 0, 1] and record["has_labels"] == 1
    assert record["mask_source"] == b"correct" and record["folder_type"] == b"subdural"


def test_normal_slice_has_known_empty_mask(tmp_path: Path) -> None:
    case = render_case(tmp_path, "ID_0000000aa", folder_type="normal", polygons=(), labels=(0,) * 6)
    record = _record(convert.make_example(case))
    assert record["has_mask"] == 1 and record["area_pixels"] == 0.0
    mask = cv2.imdecode(np.frombuffer(record["mask"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 64) and mask.max() == 0
    assert record["has_area_mm2"] == 0  # no spacing known


def test_unknown_mask_and_labels(tmp_path: Path) -> None:
    case = render_case(tmp_path, "ID_0000000bb", polygons=None, labels=None)
    record = _record(convert.make_example(case))
    assert record["mask"] == b"" and record["has_mask"] == 0 and record["has_area"] == 0
    assert record["has_labels"] == 0


def test_bad_polygon_keeps_record_with_unknown_mask(tmp_path: Path) -> None:
    case = render_case(tmp_path, "ID_0000000cc", polygons=((("x", 0.1), (0.2, 0.2), (0.3, 0.1)),))
    result = convert.make_example(case)
    record = _record(result)
    assert record["has_mask"] == 0
    assert [s.reason for s in result.skips] == ["bad-polygon"]


def test_bad_inputs_are_skips(tmp_path: Path) -> None:
    missing = render_case(tmp_path, "ID_000000011", windows=WINDOW_NAMES[:3])
    assert convert.make_example(missing).reason == "missing-window"

    corrupt = render_case(tmp_path, "ID_000000012")
    Path(corrupt.render_paths[WINDOW_NAMES[1]]).write_bytes(b"\xff\xd8 this is not a jpeg")
    skip = convert.make_example(corrupt)
    assert isinstance(skip, Skip) and skip.reason == "corrupt-image"
    assert skip.path == corrupt.render_paths[WINDOW_NAMES[1]]

    truncated = render_case(tmp_path, "ID_000000013")
    path = Path(truncated.render_paths[WINDOW_NAMES[2]])
    path.write_bytes(path.read_bytes()[:-200])
    assert convert.make_example(truncated).reason == "corrupt-image"

    mixed = render_case(tmp_path, "ID_000000014")
    render_case(tmp_path / "big", "ID_000000014", size=48)
    paths = dict(mixed.render_paths)
    paths[WINDOW_NAMES[0]] = str(tmp_path / "big/renders/subdural" / WINDOW_NAMES[0] / "ID_000000014.jpg")
    assert convert.make_example(replace(mixed, render_paths=paths)).reason == "size-mismatch"

    gone = render_case(tmp_path, "ID_000000015")
    Path(gone.render_paths[WINDOW_NAMES[3]]).unlink()
    assert convert.make_example(gone).reason == "missing-image"

    assert convert.make_example(Case(id="ID_x", source="dicom"), DICOM).reason == "missing-dicom"
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"nope" * 100)
    result = convert.make_example(Case(id="ID_y", source="dicom", dicom_path=str(bad)), DICOM)
    assert result.reason == "corrupt-dicom"


def test_hu_png_is_lossless() -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-32768, 32768, (37, 53)).astype(np.float32)
    hu[0, :4] = [-32768, 32767, 0, -1024]
    assert np.array_equal(convert.decode_hu_png(convert.encode_hu_png(hu)), hu.astype(np.int32))
    # Fractional HU round to the nearest integer; values beyond int16 clip.
    got = convert.decode_hu_png(convert.encode_hu_png(np.array([[0.4, -0.6, 1e6]])))
    assert got.tolist() == [[0, -1, 32767]]


def test_dicom_case_stores_hu_and_header_metadata(tmp_path: Path) -> None:
    hu = np.arange(-1024, -1024 + 48 * 40).reshape(48, 40)
    path = write_dicom(tmp_path / "ID_d1.dcm", hu, patient_id="PAT7")
    case = Case(id="ID_d1", source="dicom", dicom_path=str(path), polygons=(SQUARE,), labels=(0,) * 6)
    result = convert.make_example(case, DICOM)
    record = _record(result)
    assert record["source"] == b"dicom" and record[schema.image_key(WINDOW_NAMES[0])] == b""
    assert np.array_equal(convert.decode_hu_png(record["image/hu"]), hu)
    assert (record["height"], record["width"]) == (48, 40)
    assert record["patient_id"] == b"PAT7" and record["study_id"] == b"1.2.3"
    assert record["pixel_spacing"] == [0.5, 0.25] and record["has_spacing"] == 1
    assert record["position"] == [-125.0, -120.5, 62.75] and record["has_position"] == 1
    assert record["area_mm2"] == pytest.approx(record["area_pixels"] * 0.125)
    assert record["area_pixels"] > 0 and record["has_area_mm2"] == 1


def test_options_validate_and_pickle() -> None:
    with pytest.raises(ValueError, match="source"):
        convert.ConvertOptions(source="png")
    options = convert.ConvertOptions(source="dicom", presets={"brain_window": (40.0, 80.0)})
    assert pickle.loads(pickle.dumps(options)) == options


def test_convert_does_not_import_tensorflow() -> None:
    code = "import sys, data_build.convert; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not (REAL_DATA / "rsna-dicom").is_dir(), reason="no ../shared/data/real")
def test_real_dicom_converts_losslessly() -> None:
    from data_build.dicom import read_hu

    path = sorted((REAL_DATA / "rsna-dicom").glob("*.dcm"))[0]
    record = _record(convert.make_example(Case(id=path.stem, source="dicom", dicom_path=str(path)), DICOM))
    hu, _ = read_hu(path)
    assert np.array_equal(convert.decode_hu_png(record["image/hu"]), np.rint(hu).astype(np.int32))
    assert record["has_spacing"] == 1 and record["height"] == 512


def test_jpeg_size_reads_the_frame_header_of_baseline_and_progressive_files() -> None:
    from data_build.convert import jpeg_size

    image = np.random.default_rng(0).integers(0, 255, (37, 53), dtype=np.uint8)
    for params in ([cv2.IMWRITE_JPEG_QUALITY, 90], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        ok, data = cv2.imencode(".jpg", image, params)
        assert ok and jpeg_size(data.tobytes()) == (37, 53)
    assert jpeg_size(b"\xff\xd8\xff\xd9") is None
    assert jpeg_size(b"not a jpeg at all") is None


def test_known_empty_masks_keep_their_bytes_across_sizes(tmp_path: Path) -> None:
    # The empty mask PNG is encoded once per size (issue 14): every normal slice must still
    # store exactly the PNG of its own all-zero mask, whatever sizes came before it.
    for size in (32, 48, 32):
        case = render_case(tmp_path / str(size), f"ID_{size:09d}", size=size, folder_type="normal",
                           labels=(0,) * 6, polygons=())
        result = convert.make_example(case)
        assert isinstance(result, convert.Converted) and result.has_mask
        expected = cv2.imencode(".png", np.zeros((size, size), np.uint8))[1].tobytes()
        assert schema.decode_example(result.serialized)["mask"] == expected
