"""The tests' one DICOM writer (`factories.write_ct`) keeps the contract its callers rely on."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from factories import write_ct
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian

from data_build.dicom import read_hu


def test_standard_slice_reads_back_as_hu(tmp_path: Path) -> None:
    stored = np.array([[0, 1024], [1064, 3000]], np.int16)
    path = write_ct(tmp_path / "deep" / "er" / "a.dcm", stored)  # parents are created
    hu, meta = read_hu(path)
    np.testing.assert_array_equal(hu, stored - 1024.0)  # intercept -1024, slope 1
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.pixel_spacing == (0.5, 0.25) and (meta.rows, meta.cols) == (2, 2)


def test_tags_override_and_none_removes(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "b.dcm", np.zeros((3, 4)), syntax=ImplicitVRLittleEndian,
                    PatientID="PX", RescaleIntercept=-1000, PixelSpacing=None, InstanceNumber=5)
    ds = pydicom.dcmread(path)
    assert ds.PatientID == "PX" and ds.RescaleIntercept == -1000 and ds.InstanceNumber == 5
    assert "PixelSpacing" not in ds and (ds.Rows, ds.Columns) == (3, 4)
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # RSNA's "ID_..." is on purpose
def test_non_uid_sop_instance_keeps_a_valid_file_meta_uid(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_ct(tmp_path / "c.dcm", np.zeros((2, 2)), SOPInstanceUID="ID_c"))
    assert ds.SOPInstanceUID == "ID_c"
    assert ds.file_meta.MediaStorageSOPInstanceUID.is_valid


def test_unsigned_and_header_only(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_ct(tmp_path / "u.dcm", np.full((2, 2), 40000), signed=False))
    assert ds.PixelRepresentation == 0 and int(ds.pixel_array.max()) == 40000
    header_only = write_ct(tmp_path / "h.dcm", np.zeros((2, 2)), with_pixels=False)
    assert "PixelData" not in pydicom.dcmread(header_only)


@pytest.mark.parametrize(("stored", "tags", "match"), [
    (np.full((2, 2), 40000), {}, "outside int16"),
    (np.zeros(4), {}, "2-D"),
    (np.zeros((2, 2)), {"NotAKeyword": 1}, "NotAKeyword"),
])
def test_refuses_what_it_would_write_wrongly(
    tmp_path: Path, stored: np.ndarray, tags: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        write_ct(tmp_path / "x.dcm", stored, **tags)
    assert not (tmp_path / "x.dcm").exists()
