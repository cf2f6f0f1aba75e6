"""Tests for data_build.dicom: HU conversion, the RSNA 12-bit quirk, metadata, read errors."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from factories import write_ct
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1

from data_build.dicom import (
    DicomMeta,
    DicomReadError,
    needs_rsna_fix,
    read_hu,
    read_meta,
)
from data_build.windows import apply_windows

REAL_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "rsna-dicom"


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    bits_stored: int = 16,
    signed: bool = True,
    intercept: float = -1024.0,
    slope: float = 1.0,
    syntax: str = ExplicitVRLittleEndian,
    window_center: object = 40,
    window_width: object = 80,
    with_pixels: bool = True,
) -> Path:
    """Write a tiny single-frame CT slice with pydicom."""
    return write_ct(path, stored, bits_stored=bits_stored, signed=signed, syntax=syntax,
                    with_pixels=with_pixels, RescaleIntercept=intercept, RescaleSlope=slope,
                    SliceThickness=5.0, InstanceNumber=7, WindowCenter=window_center,
                    WindowWidth=window_width)


@pytest.fixture
def ramp() -> np.ndarray:
    return (np.arange(16 * 16).reshape(16, 16) * 10).astype(np.int16)


def test_hu_is_stored_times_slope_plus_intercept(tmp_path: Path, ramp: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", ramp, intercept=-1024, slope=1.0)
    hu, meta = read_hu(path)
    assert hu.dtype == np.float32 and hu.shape == (16, 16)
    np.testing.assert_array_equal(hu, ramp.astype(np.float32) - 1024)
    assert meta.rescale_intercept == -1024 and meta.bits_stored == 16


def test_unsigned_12_bit_does_not_wrap_in_uint16(tmp_path: Path) -> None:
    # HU = stored - 1024 for stored 0 must give -1024, not 64512 (uint16 arithmetic).
    stored = np.array([[0, 24, 1024, 4095]] * 4, dtype=np.uint16)
    path = write_dicom(tmp_path / "u.dcm", stored, bits_stored=12, signed=False)
    hu, _ = read_hu(path)
    np.testing.assert_array_equal(hu[0], [-1024, -1000, 0, 3071])


def test_slope_applied_in_float(tmp_path: Path, ramp: np.ndarray) -> None:
    path = write_dicom(tmp_path / "s.dcm", ramp, slope=0.5, intercept=-1000)
    hu, _ = read_hu(path)
    np.testing.assert_allclose(hu, ramp * 0.5 - 1000)


def test_rsna_12_bit_quirk_restores_hu(tmp_path: Path) -> None:
    # Wrapped slice: HU h was stored as (h + 1000 - 1000) mod 4096 with intercept 0.
    true_hu = np.array([[-1000, -3, 0, 40], [80, 1000, 2000, 3095]], dtype=np.int32)
    stored = np.mod(true_hu, 4096).astype(np.uint16)
    path = write_dicom(tmp_path / "q.dcm", stored, bits_stored=12, signed=False, intercept=0)
    hu, meta = read_hu(path)
    np.testing.assert_array_equal(hu, true_hu.astype(np.float32))
    assert meta.rescale_intercept == 0.0  # meta keeps the header's value


def test_quirk_condition() -> None:
    assert needs_rsna_fix(12, 0, 0.0)
    assert needs_rsna_fix(12, 0, -99.0)
    assert not needs_rsna_fix(12, 0, -1000.0)
    assert not needs_rsna_fix(12, 0, -100.0)
    assert not needs_rsna_fix(16, 1, 0.0)
    assert not needs_rsna_fix(12, 1, 0.0)


def test_quirk_not_applied_to_normal_12_bit(tmp_path: Path) -> None:
    stored = np.array([[0, 1000, 2000, 4000]] * 2, dtype=np.uint16)
    path = write_dicom(tmp_path / "n.dcm", stored, bits_stored=12, signed=False, intercept=-1000)
    hu, _ = read_hu(path)
    np.testing.assert_array_equal(hu[0], [-1000, 0, 1000, 3000])


def test_meta_fields_and_multivalued_window(tmp_path: Path, ramp: np.ndarray) -> None:
    path = write_dicom(
        tmp_path / "ID_abc.dcm", ramp, window_center=[47, 50], window_width=[80, 90]
    )
    meta = read_meta(path)
    assert isinstance(meta, DicomMeta)
    assert meta.window_center == 47.0 and meta.window_width == 80.0
    assert meta.pixel_spacing == (0.5, 0.25)
    assert meta.position == (-125.0, -120.5, 62.75)
    assert meta.slice_thickness == 5.0 and meta.instance_number == 7
    assert meta.patient_id == "ID_patient1" and meta.series_id == "1.2.3.4"
    assert (meta.rows, meta.cols) == (16, 16)
    assert read_hu(path)[1] == meta


def test_implicit_vr_and_missing_optional_tags(tmp_path: Path, ramp: np.ndarray) -> None:
    path = write_dicom(tmp_path / "i.dcm", ramp, syntax=ImplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    del ds.PixelSpacing, ds.ImagePositionPatient, ds.WindowCenter, ds.SOPInstanceUID
    ds.save_as(path)
    hu, meta = read_hu(path)
    assert meta.pixel_spacing is None and meta.position is None and meta.window_center is None
    assert meta.id == "i"  # file stem when SOPInstanceUID is absent
    np.testing.assert_array_equal(hu, ramp - 1024.0)


def test_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_text("hello, this is not a DICOM file\n" * 10)
    with pytest.raises(DicomReadError, match="not a DICOM"):
        read_meta(path)
    with pytest.raises(DicomReadError):
        read_hu(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DicomReadError, match="no such file"):
        read_meta(tmp_path / "nope.dcm")


def test_truncated_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "t.dcm", np.zeros((64, 64), np.int16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    with pytest.raises(DicomReadError) as info:
        read_hu(path)
    assert info.value.path == str(path)


def test_no_pixel_data(tmp_path: Path, ramp: np.ndarray) -> None:
    path = write_dicom(tmp_path / "np.dcm", ramp, with_pixels=False)
    assert read_meta(path).rows == 16  # the header alone is fine
    with pytest.raises(DicomReadError, match="no pixel data"):
        read_hu(path)


def test_compressed_without_decoder_names_plugin(tmp_path: Path, ramp: np.ndarray) -> None:
    try:  # with a JPEG-lossless decoder installed there is nothing to report
        import pylibjpeg  # noqa: F401

        pytest.skip("a JPEG decoder is installed")
    except ImportError:
        pass
    path = write_dicom(tmp_path / "c.dcm", ramp, syntax=ExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    # Encapsulated (fragmented) pixel data with one bogus frame: the decoder is never reached.
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 32])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(DicomReadError, match="pip install pylibjpeg"):
        read_hu(path)


def test_error_pickles_with_path_and_reason() -> None:
    err = pickle.loads(pickle.dumps(DicomReadError("/a/b.dcm", "truncated")))
    assert (err.path, err.reason) == ("/a/b.dcm", "truncated")
    assert "truncated" in str(err)


# --- real RSNA files (skipped when ../shared is absent) ---------------------------------------


def real_files() -> list[Path]:
    if not REAL_DICOM.is_dir():
        pytest.skip("real RSNA DICOMs not present (../shared/data/real/rsna-dicom)")
    files = sorted(REAL_DICOM.glob("*.dcm"))
    if not files:
        pytest.skip("no real DICOMs")
    return files


def test_real_files_read_sane_hu_and_window() -> None:
    files = real_files()
    with_bone = 0
    for path in files:
        hu, meta = read_hu(path)
        assert hu.shape == (meta.rows, meta.cols) == (512, 512), path
        assert hu.dtype == np.float32
        # RSNA pads outside the field of view down to -3024; dense bone stays under ~+3100.
        assert hu.min() >= -3100 and hu.max() <= 3100, (path, hu.min(), hu.max())
        with_bone += bool(hu.max() > 300)
        # Every slice holds air (~ -1000 HU) inside the scan field.
        assert hu.min() <= -900, path
        assert -1100 < np.median(hu) < 100, path
        windows = apply_windows(hu)
        assert windows.shape == (512, 512, 4)
        assert np.isfinite(windows).all() and windows.min() >= 0 and windows.max() <= 1
        assert meta.id == path.stem
        assert meta.patient_id and meta.study_id and meta.series_id
        assert meta.pixel_spacing is not None and meta.position is not None
    # Most slices cut through the skull (the odd one lies above or below it).
    assert with_bone >= 0.8 * len(files)


def test_real_files_cover_every_kind() -> None:
    files = real_files()
    metas = [read_meta(p) for p in files]
    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for p in files}
    assert {ExplicitVRLittleEndian, ImplicitVRLittleEndian} <= syntaxes
    assert {m.bits_stored for m in metas} == {12, 16}
    assert any(m.rescale_intercept == -1000 for m in metas)
    assert all(m.window_center is not None and m.window_width is not None for m in metas)


def test_real_intercept_minus_1000_file() -> None:
    files = real_files()
    odd = [p for p in files if read_meta(p).rescale_intercept == -1000]
    assert odd, "expected one real file with intercept -1000"
    for path in odd:
        hu, meta = read_hu(path)
        raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
        # Not the quirk (intercept <= -100): plain stored - 1000.
        np.testing.assert_array_equal(hu, raw - 1000)
        assert -1100 < np.median(hu) < 100
