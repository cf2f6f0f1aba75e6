"""fusion.mask_formats through fusion-predict: NIfTI and DICOM-SEG masks that land where the
source pixels are, in world coordinates, for an oblique (tilted) series given in shuffled order."""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from factories import S, write_dicom  # noqa: E402
from test_predict import make_fake_savedmodel  # noqa: E402

from fusion.inference import load_predictor  # noqa: E402
from fusion.mask_formats import MaskFormatError, parse_formats  # noqa: E402
from fusion.predict import run_predictions  # noqa: E402

nib = pytest.importorskip("nibabel")
hd = pytest.importorskip("highdicom")

TILT = math.radians(25.0)
IOP = (1.0, 0.0, 0.0, 0.0, math.cos(TILT), -math.sin(TILT))
SPACING = 0.7
MARK = (3, 20, 9)  # (slice rank, row, column) of the one marked pixel block's corner


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_savedmodel(tmp_path_factory.mktemp("m") / "export")


def _lps(position: tuple[float, ...], row: int, col: int) -> np.ndarray:
    """World LPS (mm) of pixel (row, col) of a slice: IPP + col dC X + row dR Y."""
    x, y = np.asarray(IOP[:3]), np.asarray(IOP[3:])
    return np.asarray(position) + col * SPACING * x + row * SPACING * y


def _tilted_series(folder: Path, zs: list[float], series: str = "8.1") -> list[tuple[float, ...]]:
    """A gantry-tilted stack (the table moves along z, the planes are tilted by 25 degrees), one
    2x3-pixel bleed on the slice of rank MARK[0]; files written in shuffled order."""
    folder.mkdir(parents=True)
    positions = [(-10.0, -12.0, z) for z in zs]
    order = list(range(len(zs)))
    random.Random(5).shuffle(order)
    for name, k in enumerate(order):
        hu = np.zeros((S, S))
        if k == MARK[0]:
            hu[MARK[1]:MARK[1] + 2, MARK[2]:MARK[2] + 3] = 80.0
        write_dicom(folder / f"f{name}.dcm", hu, series, position=positions[k], orientation=IOP,
                    spacing=SPACING, thickness=2.5)
    return positions


def test_parse_formats() -> None:
    assert parse_formats([]) == ("png",)
    assert parse_formats(["png,nifti", "dicom-seg", "NIFTI"]) == ("png", "nifti", "dicom-seg")
    with pytest.raises(MaskFormatError, match="unknown mask format 'nrrd'.*png, nifti, dicom-seg"):
        parse_formats(["nrrd"])


def test_nifti_voxels_land_on_the_source_pixels(model_dir: Path, tmp_path: Path) -> None:
    positions = _tilted_series(tmp_path / "in", [2.5 * k for k in range(6)])
    out = tmp_path / "out"
    summary = run_predictions(load_predictor(model_dir), [tmp_path / "in"], out,
                              mask_formats=("nifti",), save_probabilities=True)
    assert summary.predicted == 6 and not summary.warnings
    (row,) = json.loads((out / "series.json").read_text())
    assert row["mask_nifti"] == "nifti/8.1.nii.gz" and row["mask_seg"] is None
    assert not (out / "masks").exists()  # PNG not asked for
    img = nib.load(out / row["mask_nifti"])
    data = np.asarray(img.dataobj)
    assert data.shape == (S, S, 6) and data.dtype == np.uint8  # (column, row, slice)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    voxels = np.argwhere(data == 1)
    assert len(voxels) == 6
    # slices in geometric order: the marked slice is at k = its rank along the normal
    assert set(voxels[:, 2]) == {MARK[0]}
    for i, j, k in voxels:
        ras = img.affine @ np.array([i, j, k, 1.0])
        lps = _lps(positions[k], j, i)
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
    corner = img.affine @ np.array([MARK[2], MARK[1], MARK[0], 1.0])
    lps = _lps(positions[MARK[0]], MARK[1], MARK[2])
    np.testing.assert_allclose(corner[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
    prob = nib.load(out / row["probabilities_nifti"])
    assert prob.shape == data.shape and np.asarray(prob.dataobj).dtype == np.float32
    np.testing.assert_allclose(prob.affine, img.affine)
    assert (np.asarray(prob.dataobj) >= 0.5).sum() == 6


def test_dicom_seg_references_sources_and_keeps_geometry(model_dir: Path, tmp_path: Path) -> None:
    import pydicom

    positions = _tilted_series(tmp_path / "in", [2.5 * k for k in range(6)])
    out = tmp_path / "out"
    run_predictions(load_predictor(model_dir), [tmp_path / "in"], out,
                    mask_formats=("png", "dicom-seg"))
    (row,) = json.loads((out / "series.json").read_text())
    assert row["mask_seg"] == "seg/8.1.dcm" and row["mask_nifti"] is None
    assert len(list((out / "masks").glob("*.png"))) == 6  # PNG too
    seg = hd.seg.segread(out / row["mask_seg"])
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    (desc,) = seg.SegmentSequence
    assert desc.SegmentLabel == "Intracranial hemorrhage"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "50960005"
    assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    sources = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f)
               for f in (tmp_path / "in").glob("*.dcm")}
    referenced = {i.ReferencedSOPInstanceUID
                  for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(sources)
    assert seg.NumberOfFrames == 6
    frames = seg.pixel_array  # [frames, rows, columns]
    marked = [f for f in range(6) if frames[f].any()]
    assert len(marked) == 1
    group = seg.PerFrameFunctionalGroupsSequence[marked[0]]
    source_uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    source = sources[source_uid]
    ipp = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
    np.testing.assert_allclose(ipp, [float(v) for v in source.ImagePositionPatient])
    np.testing.assert_allclose(ipp, positions[MARK[0]])
    rows, cols = np.nonzero(frames[marked[0]])
    assert (rows.min(), cols.min()) == (MARK[1], MARK[2])
    assert len(rows) == 6


def test_gap_refuses_nifti_but_not_seg_and_non_dicom_is_counted(
    model_dir: Path, tmp_path: Path
) -> None:
    import cv2

    _tilted_series(tmp_path / "in", [0.0, 2.5, 5.0, 7.5, 30.0, 32.5])
    cv2.imwrite(str(tmp_path / "in" / "plain.png"), np.zeros((S, S), np.uint8))
    out = tmp_path / "out"
    summary = run_predictions(load_predictor(model_dir), [tmp_path / "in"], out,
                              mask_formats=("nifti", "dicom-seg"))
    rows = {r["source"]: r for r in json.loads((out / "series.json").read_text())}
    dicom, image = rows["dicom"], rows["image"]
    assert dicom["mask_nifti"] is None and dicom["mask_seg"] == "seg/8.1.dcm"
    assert dicom["n_gaps"] == 1 and any("not equally spaced" in w for w in dicom["warnings"])
    # a plain image has no DICOM geometry: PNG instead, a warning per run, counted
    assert image["mask_nifti"] is None and image["mask_seg"] is None
    assert any("need a DICOM series" in w for w in image["warnings"])
    assert (out / "masks" / "plain.png").is_file()
    assert [w.split(" ")[:3] for w in summary.warnings] == [
        ["1", "series", "without"],  # the plain image
        ["1", "DICOM", "series"]]  # the gapped stack's NIfTI


def test_seg_needs_a_frame_of_reference(model_dir: Path, tmp_path: Path) -> None:
    """The RSNA 2019 files carry no FrameOfReferenceUID: the SEG is refused with that reason."""
    import pydicom

    _tilted_series(tmp_path / "in", [2.5 * k for k in range(3)])
    for f in (tmp_path / "in").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    out = tmp_path / "out"
    run_predictions(load_predictor(model_dir), [tmp_path / "in"], out, mask_formats=("dicom-seg",))
    (row,) = json.loads((out / "series.json").read_text())
    assert row["mask_seg"] is None
    assert any("no FrameOfReferenceUID" in w for w in row["warnings"])


def test_real_tilted_rsna_slices_when_present(model_dir: Path, tmp_path: Path) -> None:
    """The RSNA files have gantry-tilted IOPs and no FrameOfReferenceUID: NIfTI voxel (0, 0, 0)
    is the header's IPP (in RAS), and the SEG is refused with its reason, counted once."""
    import pydicom

    real = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "rsna-dicom"
    if not real.is_dir():
        pytest.skip("../shared/data/real is not present")
    files = sorted(real.glob("*.dcm"))[:3]
    out = tmp_path / "out"
    summary = run_predictions(load_predictor(model_dir), files, out,
                              mask_formats=("nifti", "dicom-seg"))
    assert summary.predicted == 3
    assert summary.warnings == ["3 DICOM series did not get every mask file asked for; the "
                                "reason is in the warnings column of series.csv"]
    rows = json.loads((out / "series.json").read_text())
    for row in rows:
        assert row["mask_seg"] is None
        assert any("no FrameOfReferenceUID" in w for w in row["warnings"])
        img = nib.load(out / row["mask_nifti"])
        source = pydicom.dcmread(next(f for f in files if pydicom.dcmread(
            f, stop_before_pixels=True).SeriesInstanceUID == row["series_id"]))
        x, y, z = (float(v) for v in source.ImagePositionPatient)
        np.testing.assert_allclose(img.affine[:3, 3], [-x, -y, z], atol=1e-3)
        row_dir = np.asarray([float(v) for v in source.ImageOrientationPatient[:3]])
        col_mm = float(source.PixelSpacing[1])
        np.testing.assert_allclose(img.affine[:3, 0], row_dir * col_mm * [-1, -1, 1], atol=1e-6)
