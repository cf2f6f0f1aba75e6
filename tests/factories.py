"""Shared test writers for fusion-predict inputs (tests/ is on sys.path under pytest)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: Image size of the prediction tests' slices.
S = 32
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom(
    path: Path,
    hu: np.ndarray,
    series_uid: str,
    sop_uid: str | None = None,
    z: float | None = 0.0,
    instance: int | None = None,
    spacing: float = 0.5,
    position: tuple[float, float, float] | None = None,
    orientation: tuple[float, ...] | None = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    acquisition: int | None = None,
    thickness: float = 1.0,
) -> Path:
    """A minimal CT slice (int16 stored = HU + 1024, intercept -1024).

    ``position`` (IPP) overrides ``(-8, -8, z)``; every slice shares one FrameOfReferenceUID
    (a DICOM-SEG needs it) and patient/study ids."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [spacing, spacing]
    ds.FrameOfReferenceUID = "1.2.3.9"
    if position is not None:
        ds.ImagePositionPatient = list(position)
    elif z is not None:
        ds.ImagePositionPatient = [-8.0, -8.0, z]
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
    if instance is not None:
        ds.InstanceNumber = instance
    if acquisition is not None:
        ds.AcquisitionNumber = acquisition
    ds.SliceThickness = thickness
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
