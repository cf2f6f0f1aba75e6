"""fusion.series: stacks of one SeriesInstanceUID, order along the slice normal, duplicates,
interleaved stacks and gaps (issue 13 item 2, issue 12 D8)."""
from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from factories import write_dicom

from data_build.dicom import read_meta
from fusion.series import group_series, slice_normal
from fusion.volumes import series_volume

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class _Slice:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta = read_meta(path)


def _load(files: list[Path]) -> list[_Slice]:
    shuffled = list(files)
    random.Random(3).shuffle(shuffled)  # neither file order nor names give the order away
    return [_Slice(f) for f in shuffled]


def _group(files: list[Path]) -> tuple[list, list[tuple[str, str, str]]]:
    skipped: list[tuple[str, str, str]] = []
    groups = group_series(_load(files), lambda p, r, d: skipped.append((p, r, d)))
    return groups, skipped


def _tilted_iop(degrees: float) -> tuple[float, ...]:
    t = math.radians(degrees)
    return (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))


def test_slice_normal_and_bad_orientations() -> None:
    np.testing.assert_allclose(slice_normal(AXIAL), [0, 0, 1])
    np.testing.assert_allclose(slice_normal((0, 1, 0, 0, 0, -1)), [-1, 0, 0])  # sagittal
    for bad in (None, (1, 0, 0, 1, 0, 0), (0, 0, 0, 0, 1, 0), (float("nan"),) * 6, (1, 0, 0)):
        assert slice_normal(bad) is None


def test_sagittal_series_is_ordered_along_its_normal(tmp_path: Path) -> None:
    """Every slice has the same z: ordering by z (the old rule) would follow the file names."""
    xs = [12.0, -4.0, 8.0, 0.0, 4.0, -8.0]
    files = [write_dicom(tmp_path / f"{k}.dcm", np.zeros((8, 8)), "1.5",
                         position=(x, -10.0, 30.0), orientation=(0, 1, 0, 0, 0, -1),
                         thickness=4.0)
             for k, x in enumerate(xs)]
    (group,), skipped = _group(files)
    assert not skipped
    # normal = row x col = (0,1,0) x (0,0,-1) = (-1, 0, 0): increasing offset = decreasing x
    assert [s.meta.position[0] for s in group.slices] == sorted(xs, reverse=True)
    assert group.spacing_mm == pytest.approx(4.0) and group.spacing_source == "positions"


def test_gantry_tilt_spacing_is_measured_along_the_normal(tmp_path: Path) -> None:
    """A tilted gantry moves the table along z by 5 mm; the planes are 5 cos(20 deg) apart."""
    iop = _tilted_iop(20.0)
    files = [write_dicom(tmp_path / f"{k}.dcm", np.zeros((8, 8)), "1.6",
                         position=(-8.0, -8.0, 5.0 * k), orientation=iop, thickness=4.7)
             for k in range(6)]
    (group,), _ = _group(files)
    assert [s.meta.position[2] for s in group.slices] == [5.0 * k for k in range(6)]
    assert group.spacing_mm == pytest.approx(5.0 * math.cos(math.radians(20.0)))
    assert not group.gaps_mm and not group.warnings


def test_duplicates_are_dropped_and_counted_not_integrated(tmp_path: Path) -> None:
    """D8: copies of slices (same SOPInstanceUID, or a new UID at the same position) inflated the
    volume (105 -> 159 mL); now they are dropped, counted, and the volume is unchanged."""
    files = [write_dicom(tmp_path / f"s{k}.dcm", np.zeros((8, 8)), "2.1", z=float(k))
             for k in range(5)]
    clean, _ = _group(files)
    shutil.copy(files[1], tmp_path / "copy-of-s1.dcm")  # same SOPInstanceUID
    shutil.copy(files[3], tmp_path / "copy-of-s3.dcm")
    write_dicom(tmp_path / "again-z2.dcm", np.zeros((8, 8)), "2.1", z=2.0)  # new UID, same place
    all_files = sorted(tmp_path.glob("*.dcm"))
    (group,), skipped = _group(all_files)
    assert len(group.slices) == 5 and group.n_duplicates == 3
    assert sorted(r for _, r, _ in skipped) == ["duplicate-slice"] * 3
    assert any("same SOPInstanceUID" in d for _, _, d in skipped)
    assert any("same position" in d for _, _, d in skipped)
    assert group.spacing_mm == clean[0].spacing_mm == pytest.approx(1.0)
    masks = np.ones((5, 8, 8), bool)
    before = series_volume(masks, (0.5, 0.5), known_spacing=(clean[0].spacing_mm, "positions"))
    after = series_volume(masks, (0.5, 0.5), known_spacing=(group.spacing_mm, "positions"))
    assert after.volume_ml == before.volume_ml


def test_stacks_of_other_orientation_or_size_are_split_never_merged(tmp_path: Path) -> None:
    files = [write_dicom(tmp_path / f"ax{k}.dcm", np.zeros((8, 8)), "3.1", z=float(k))
             for k in range(3)]
    files += [write_dicom(tmp_path / f"tilt{k}.dcm", np.zeros((8, 8)), "3.1", z=float(k) + 0.5,
                          orientation=_tilted_iop(15.0)) for k in range(3)]
    files += [write_dicom(tmp_path / f"big{k}.dcm", np.zeros((16, 16)), "3.1", z=float(k))
              for k in range(2)]
    groups, skipped = _group(files)
    assert not skipped
    assert [g.id for g in groups] == ["3.1#1", "3.1#2", "3.1#3"]
    assert sorted(len(g.slices) for g in groups) == [2, 3, 3]
    for g in groups:
        assert len({(s.meta.orientation, s.meta.rows) for s in g.slices}) == 1
        assert "stacks that differ in orientation, size or pixel spacing" in g.warnings[0]


def test_acquisition_numbers_split_interleaved_stacks(tmp_path: Path) -> None:
    files = [write_dicom(tmp_path / f"a{k}.dcm", np.zeros((8, 8)), "4.1", z=2.0 * k,
                         acquisition=1) for k in range(4)]
    files += [write_dicom(tmp_path / f"b{k}.dcm", np.zeros((8, 8)), "4.1", z=2.0 * k + 1.0,
                          acquisition=2) for k in range(4)]
    groups, _ = _group(files)
    assert [g.id for g in groups] == ["4.1#1", "4.1#2"]
    assert all(g.spacing_mm == pytest.approx(2.0) for g in groups)  # not the merged 1.0
    assert "AcquisitionNumber" in groups[0].warnings[0]


def test_interleaved_stacks_without_acquisition_numbers_are_refused(tmp_path: Path) -> None:
    """Two passes over the head share one UID and restart InstanceNumber: no way to tell the
    stacks apart, so every slice is a counted skip rather than a merged (140 mL) volume."""
    files = [write_dicom(tmp_path / f"a{k}.dcm", np.zeros((8, 8)), "5.1", z=2.0 * k,
                         instance=k + 1) for k in range(4)]
    files += [write_dicom(tmp_path / f"b{k}.dcm", np.zeros((8, 8)), "5.1", z=2.0 * k + 0.7,
                          instance=k + 1) for k in range(4)]
    groups, skipped = _group(files)
    assert groups == []
    assert [r for _, r, _ in skipped] == ["interleaved-stacks"] * 8
    assert "separate series" in skipped[0][2]


def test_equal_instance_numbers_alone_are_not_interleaving(tmp_path: Path) -> None:
    files = [write_dicom(tmp_path / f"{k}.dcm", np.zeros((8, 8)), "5.2", z=float(k), instance=1)
             for k in range(4)]
    (group,), skipped = _group(files)
    assert not skipped and len(group.slices) == 4


def test_gaps_are_reported_and_not_integrated(tmp_path: Path) -> None:
    zs = [0.0, 1.0, 2.0, 3.0, 20.0, 21.0, 22.0]
    files = [write_dicom(tmp_path / f"{k}.dcm", np.zeros((8, 8)), "6.1", z=z)
             for k, z in enumerate(zs)]
    (group,), _ = _group(files)
    assert group.spacing_mm == pytest.approx(1.0)
    assert group.gaps_mm == [pytest.approx(17.0)]
    assert "gap" in group.warnings[0] and "not integrated" in group.warnings[0]
    vol = series_volume(np.ones((7, 8, 8), bool), (0.5, 0.5),
                        known_spacing=(group.spacing_mm, group.spacing_source))
    assert vol.volume_ml == pytest.approx(7 * 64 * 0.25 * 1.0 / 1000)


def test_two_far_apart_slices_integrate_their_thickness_not_the_distance(tmp_path: Path) -> None:
    """D8: two real slices 37.6 mm apart gave 473 mL; they are samples, 5 mm thick each."""
    files = [write_dicom(tmp_path / f"{k}.dcm", np.zeros((8, 8)), "6.2", z=z, thickness=5.0)
             for k, z in enumerate([10.0, 47.6])]
    (group,), _ = _group(files)
    assert group.spacing_mm == pytest.approx(5.0) and group.spacing_source == "thickness"
    assert group.gaps_mm == [pytest.approx(37.6)]
    assert any("not a contiguous stack" in w for w in group.warnings)


def test_without_positions_instance_numbers_order(tmp_path: Path) -> None:
    files = [write_dicom(tmp_path / f"{k}.dcm", np.zeros((8, 8)), "7.1", z=None, instance=i)
             for k, i in enumerate([3, 1, 2])]
    (group,), _ = _group(files)
    assert [s.meta.instance_number for s in group.slices] == [1, 2, 3]
    assert group.offsets is None and group.spacing_source == "thickness"


def test_non_finite_header_values_neither_crash_nor_split(tmp_path: Path) -> None:
    """NaN in IOP, PixelSpacing or IPP (issue 12 D9 inputs) must not raise here, nor make each
    slice a stack of its own; NaN positions fall back to InstanceNumber order."""
    import pydicom

    files = [write_dicom(tmp_path / f"{k}.dcm", np.zeros((8, 8)), "9.1", z=float(k),
                         instance=3 - k) for k in range(3)]
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = ["nan"] * 6
        ds.PixelSpacing = ["nan", "nan"]
        ds.ImagePositionPatient = [0, 0, "nan"]
        ds.save_as(f)
    (group,), skipped = _group(files)
    assert not skipped and len(group.slices) == 3
    assert [s.meta.instance_number for s in group.slices] == [1, 2, 3]
    assert group.offsets is None
