"""Tests for data_build.drop.discover on tiny drops built in tmp_path."""
from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np
import pytest
from factories import write_ct

from data_build import drop as drop_module
from data_build.cases import Case, DropError
from data_build.dicom import DicomMeta
from data_build.drop import DETECTION_REQUIRED, Drop, discover, read_headers
from data_build.schema import LABEL_NAMES
from data_build.windows import WINDOW_NAMES

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
REAL_WINDOWS = ("brain_bone_window", "brain_window", "max_contrast_window", "subdural_window")
BRIEF_WINDOWS = ("brain_bone_window", "bone_window", "max_contrast_window", "subdural_window")
DETECTION_HEADER = [
    "Case ID", "Origin", "URL", "Labeling State", "All Labels", "Total Reads",
    "Total Qualified Reads", "Majority Label", "Number of ROIs", "Correct Label", "Difficulty",
    "Agreement", "Comments", "Internal Notes",
]
TRACING_HEADER = [
    "Case ID", "Origin", "URL", "Labeling State", "All Annotations", "Number of Annotations",
    "ROI", "Number of ROIs", "Difficulty",
]
_, JPEG = cv2.imencode(".jpg", np.full((8, 8, 3), 100, np.uint8))
JPEG_BYTES = JPEG.tobytes()


def square(x0: float, y0: float, size: float = 0.125) -> list[dict[str, float]]:
    return [{"x": x0, "y": y0}, {"x": x0 + size, "y": y0},
            {"x": x0 + size, "y": y0 + size}, {"x": x0, "y": y0 + size}]


def as_polygon(points: Sequence[Mapping[str, float]]) -> tuple[tuple[float, float], ...]:
    return tuple((p["x"], p["y"]) for p in points)


LABELS = {
    "epidural": (1, 1, 0, 0, 0, 0),
    "intraparenchymal": (1, 0, 1, 0, 0, 0),
    "intraventricular": (1, 0, 0, 1, 0, 0),
    "subarachnoid": (1, 0, 0, 0, 1, 0),
    "subdural": (1, 0, 0, 0, 0, 1),
    "multi": (1, 0, 1, 1, 0, 0),
    "normal": (0, 0, 0, 0, 0, 0),
}
SHORT = {"epidural": "epi", "intraparenchymal": "iph", "intraventricular": "ivh",
         "subarachnoid": "sah", "subdural": "sdh", "multi": "mul", "normal": "nor"}


def write_renders(root: Path, slices: Mapping[str, str], windows: Iterable[str] = REAL_WINDOWS,
                  missing: Mapping[str, str] | None = None) -> None:
    """slices: id -> folder type; missing: id -> window folder to leave out."""
    missing = missing or {}
    for slice_id, folder_type in slices.items():
        for window in windows:
            if missing.get(slice_id) == window:
                continue
            folder = root / "renders" / folder_type / window
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{slice_id}.jpg").write_bytes(JPEG_BYTES)


def write_labels(root: Path, rows: Mapping[str, Sequence[object]],
                 header: Sequence[str] = ("Image", *LABEL_NAMES), extra: str = "") -> None:
    lines = [",".join(header)] + [",".join([i, *map(str, v)]) for i, v in rows.items()] + [extra]
    (root / "hemorrhage-labels.csv").write_text("\n".join(line for line in lines if line) + "\n")


def detection_row(
    origin: str,
    majority: object = "",
    correct: object = "",
    agreement: object = 0.5,
    reads: object = 3,
    state: str = "Labeled",
    comments: str = "",
) -> dict[str, object]:
    """One Detection CSV row; polygons given as lists of {x, y} dicts."""
    return {
        "Case ID": "1", "Origin": f"{origin}.jpg", "URL": f"https://x/{origin}.jpg",
        "Labeling State": state, "All Labels": "[]", "Total Reads": 5,
        "Total Qualified Reads": reads,
        "Majority Label": json.dumps(majority) if majority != "" else "",
        "Number of ROIs": 1, "Correct Label": repr(correct) if correct != "" else "",
        "Difficulty": 0.1, "Agreement": agreement, "Comments": comments, "Internal Notes": "",
    }


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Mapping[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), newline="")
    return path


def basic_drop(root: Path, windows: Iterable[str] = REAL_WINDOWS) -> dict[str, str]:
    slices = {f"ID_{SHORT[t]}000001": t for t in LABELS}
    write_renders(root, slices, windows)
    write_labels(root, {i: LABELS[t] for i, t in slices.items()})
    return slices


def skips_by(drop: Drop, reason: str) -> list[str]:
    return [s.id for s in drop.skips if s.reason == reason]


def case(drop: Drop, slice_id: str) -> Case:
    matches = [c for c in drop.cases if c.id == slice_id]
    assert len(matches) == 1, f"{slice_id} not among cases"
    return matches[0]


# --- renders, labels, flagged -------------------------------------------------------------------


def test_basic_render_drop(tmp_path: Path) -> None:
    slices = basic_drop(tmp_path)
    drop = discover(tmp_path)
    assert drop.source == "render" and drop.window_set == "real"
    assert [c.id for c in drop.cases] == sorted(slices)
    epi = case(drop, "ID_epi000001")
    assert set(epi.render_paths) == set(WINDOW_NAMES)
    assert epi.render_paths["brain_window"].endswith("epidural/brain_window/ID_epi000001.jpg")
    assert epi.labels == (1, 1, 0, 0, 0, 0) and epi.folder_type == "epidural"
    assert epi.polygons is None and epi.mask_source == ""  # no CSV: mask unknown
    normal = case(drop, "ID_nor000001")
    assert normal.polygons == () and normal.mask_source == "normal"
    assert drop.stats["render_files"] == 28 and drop.stats["slices"] == 7
    assert drop.stats["with_labels"] == 7 and drop.stats["folder:multi"] == 1
    assert drop.stats["with_mask"] == 1 and drop.stats["with_polygons"] == 0
    assert drop.skips == [] and drop.warnings == []


def test_brief_window_names(tmp_path: Path) -> None:
    basic_drop(tmp_path, windows=BRIEF_WINDOWS)
    drop = discover(tmp_path)
    assert drop.window_set == "brief"
    assert len(drop.cases) == 7
    assert all(set(c.render_paths) == set(WINDOW_NAMES) for c in drop.cases)
    assert drop.cases[0].render_paths["brain_window"].endswith(
        os.path.join("bone_window", drop.cases[0].id + ".jpg"))


def test_both_name_sets_in_one_folder_real_wins(tmp_path: Path) -> None:
    basic_drop(tmp_path)
    write_renders(tmp_path, {"ID_epi000001": "epidural"}, windows=["bone_window"])
    drop = discover(tmp_path)
    assert "bone_window" not in case(drop, "ID_epi000001").render_paths["brain_window"]
    assert any("bone_window" in w for w in drop.warnings)


def test_missing_window_skipped(tmp_path: Path) -> None:
    basic_drop(tmp_path)
    write_renders(tmp_path, {"ID_sdh000002": "subdural"},
                  missing={"ID_sdh000002": "max_contrast_window"})
    drop = discover(tmp_path)
    assert skips_by(drop, "missing-window") == ["ID_sdh000002"]
    assert "max_contrast_window" in drop.skips[0].detail
    assert "ID_sdh000002" not in {c.id for c in drop.cases}
    assert drop.stats["skipped:missing-window"] == 1


def test_duplicate_id_kept_in_neither_folder(tmp_path: Path) -> None:
    basic_drop(tmp_path)
    write_renders(tmp_path, {"ID_epi000001": "subdural"})
    drop = discover(tmp_path)
    assert skips_by(drop, "duplicate-id") == ["ID_epi000001"]
    assert "epidural" in drop.skips[0].detail and "subdural" in drop.skips[0].detail
    assert "ID_epi000001" not in {c.id for c in drop.cases}


def test_unknown_folders_and_other_files(tmp_path: Path) -> None:
    basic_drop(tmp_path)
    (tmp_path / "renders" / "thumbnails").mkdir()
    (tmp_path / "renders" / "epidural" / "lung_window").mkdir()
    (tmp_path / "renders" / "epidural" / "brain_window" / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "renders" / "epidural" / "brain_window" / "notes.txt").write_text("x")
    (tmp_path / "renders" / "epidural" / "brain_window" / "ID_x.JPEG").write_bytes(JPEG_BYTES)
    drop = discover(tmp_path)
    assert drop.stats["ignored_files"] == 2
    assert any("thumbnails" in w for w in drop.warnings)
    assert any("lung_window" in w for w in drop.warnings)
    assert any("ignored 2 file" in w for w in drop.warnings)
    assert skips_by(drop, "missing-window") == ["ID_x"]  # .JPEG is an image; other windows absent


def test_flagged_crlf_with_jpg_suffix(tmp_path: Path) -> None:
    basic_drop(tmp_path)
    (tmp_path / "flagged.txt").write_bytes(b"ID_epi000001.jpg\r\nID_sdh000001.jpg\r\n\r\n")
    drop = discover(tmp_path)
    assert sorted(skips_by(drop, "flagged")) == ["ID_epi000001", "ID_sdh000001"]
    assert len(drop.cases) == 5 and drop.stats["flagged_ids"] == 2


def test_real_flagged_file(tmp_path: Path) -> None:
    real = REAL / "flagged.txt"
    if not real.is_file():
        pytest.skip("real flagged.txt not present")
    basic_drop(tmp_path)
    (tmp_path / "flagged.txt").write_bytes(real.read_bytes())
    write_renders(tmp_path, {"ID_20440abc6": "normal", "ID_4dad8b080": "normal"})
    drop = discover(tmp_path)
    assert drop.stats["flagged_ids"] == 8
    assert sorted(skips_by(drop, "flagged")) == ["ID_20440abc6", "ID_4dad8b080"]


def test_missing_root_and_labels(tmp_path: Path) -> None:
    with pytest.raises(DropError, match="does not exist"):
        discover(tmp_path / "nope")
    write_renders(tmp_path, {"ID_a": "normal"})
    with pytest.raises(DropError, match="hemorrhage-labels.csv"):
        discover(tmp_path)
    with pytest.raises(DropError, match="unknown source"):
        discover(tmp_path, source="jpeg")


def test_labels_missing_columns_named(tmp_path: Path) -> None:
    write_renders(tmp_path, {"ID_a": "normal"})
    write_labels(tmp_path, {"ID_a": (0, 0, 0, 0)},
                 header=("Image", "any", "epidural", "intraparenchymal", "subdural"))
    with pytest.raises(DropError, match="intraventricular, subarachnoid"):
        discover(tmp_path)


def test_labels_extra_column_bad_values_and_duplicates(tmp_path: Path) -> None:
    slices = {"ID_a": "epidural", "ID_b": "epidural", "ID_c": "epidural", "ID_d": "epidural"}
    write_renders(tmp_path, slices)
    header = ("Image", *LABEL_NAMES, "source")
    write_labels(tmp_path, {
        "ID_a": (1, 1, 0, 0, 0, 0, "x"),
        "ID_b": (1, 2, 0, 0, 0, 0, "x"),  # not 0/1
        "ID_c": (1, 1, 0, 0, 0, 0, "x"),
    }, header=header, extra="ID_c,1,1,0,0,0,0,y\nID_d,1,1,0,0,0,0,x\nID_d,0,0,0,0,0,0,x")
    drop = discover(tmp_path)
    assert case(drop, "ID_a").labels == (1, 1, 0, 0, 0, 0)
    assert case(drop, "ID_b").labels is None
    assert case(drop, "ID_c").labels == (1, 1, 0, 0, 0, 0)  # identical duplicate merged
    assert case(drop, "ID_d").labels is None  # conflicting duplicates
    assert drop.stats["label_rows_invalid"] == 1 and drop.stats["label_rows_duplicate"] == 1
    assert drop.stats["label_ids_conflicting"] == 1
    assert any("extra column(s) source" in w for w in drop.warnings)
    assert any("ID_d" in w for w in drop.warnings) and any("ID_b" in w for w in drop.warnings)


def test_slice_without_label_row(tmp_path: Path) -> None:
    basic_drop(tmp_path)
    write_renders(tmp_path, {"ID_zzz": "subdural"})
    drop = discover(tmp_path)
    assert case(drop, "ID_zzz").labels is None
    assert drop.stats["with_labels"] == 7


def test_folder_label_disagreement(tmp_path: Path) -> None:
    slices = {"ID_e": "epidural", "ID_m": "multi", "ID_n": "normal", "ID_ok": "subdural"}
    write_renders(tmp_path, slices)
    write_labels(tmp_path, {
        "ID_e": (1, 0, 0, 0, 0, 1),  # epidural folder, subdural label
        "ID_m": (1, 0, 1, 0, 0, 0),  # multi needs two types
        "ID_n": (1, 0, 1, 0, 0, 0),  # normal folder, bleed label
        "ID_ok": (1, 0, 0, 0, 0, 1),
    })
    drop = discover(tmp_path)
    assert drop.stats["folder_label_mismatch"] == 3
    flagged = sorted(w.split(":")[0] for w in drop.warnings if "disagrees" in w)
    assert flagged == ["ID_e", "ID_m", "ID_n"]
    assert case(drop, "ID_n").polygons is None  # labels say bleed: no known-empty mask
    assert len(drop.cases) == 4


def test_strict_raises_at_first_problem(tmp_path: Path) -> None:
    basic_drop(tmp_path)
    assert discover(tmp_path, strict=True).skips == []
    write_renders(tmp_path, {"ID_sdh000002": "subdural"},
                  missing={"ID_sdh000002": "brain_window"})
    with pytest.raises(DropError, match="missing-window"):
        discover(tmp_path, strict=True)


# --- segmentation CSVs -------------------------------------------------------------------------


def seg_drop(tmp_path: Path) -> dict[str, str]:
    slices = {
        "ID_s1": "subdural", "ID_s2": "subdural", "ID_m1": "multi", "ID_i1": "intraventricular"
    }
    write_renders(tmp_path, slices)
    write_labels(tmp_path, {"ID_s1": LABELS["subdural"], "ID_s2": LABELS["subdural"],
                            "ID_m1": (1, 0, 0, 1, 0, 1), "ID_i1": LABELS["intraventricular"]})
    return slices


def test_correct_over_majority_and_union_of_majority_rows(tmp_path: Path) -> None:
    seg_drop(tmp_path)
    a, b, c = square(0.1, 0.1), square(0.5, 0.5), square(0.3, 0.7)
    write_csv(tmp_path / "segmentation" / "Results_Subdural Hemorrhage Detection_1.csv",
              DETECTION_HEADER, [
                  detection_row("ID_s1", majority=a, correct=[c]),
                  detection_row("ID_s1", majority=b, correct=[c]),
                  detection_row("ID_s2", majority=a, correct=[[]]),  # empty Correct form
                  detection_row("ID_s2", majority=b, correct=[]),
              ])
    drop = discover(tmp_path)
    s1, s2 = case(drop, "ID_s1"), case(drop, "ID_s2")
    assert s1.polygons == (as_polygon(c),) and s1.mask_source == "correct"
    assert s2.polygons == (as_polygon(a), as_polygon(b)) and s2.mask_source == "majority"
    assert drop.stats["mask_source:correct"] == 1 and drop.stats["with_polygons"] == 2


def test_agreement_then_reads_break_ties(tmp_path: Path) -> None:
    seg_drop(tmp_path)
    low, high, more, fewer = (square(x, 0.2) for x in (0.1, 0.3, 0.5, 0.7))
    write_csv(tmp_path / "segmentation" / "Results_Subdural Hemorrhage Detection_1.csv",
              DETECTION_HEADER, [
                  detection_row("ID_s1", correct=[low], agreement=0.4, reads=9),
                  detection_row("ID_s1", correct=[high], agreement=0.8, reads=2),
                  detection_row("ID_s2", correct=[fewer], agreement=0.6, reads=2),
                  detection_row("ID_s2", correct=[more], agreement=0.6, reads=7),
              ])
    drop = discover(tmp_path)
    assert case(drop, "ID_s1").polygons == (as_polygon(high),)
    assert case(drop, "ID_s2").polygons == (as_polygon(more),)


def test_union_across_files_and_tracing(tmp_path: Path) -> None:
    seg_drop(tmp_path)
    ivh, sdh, ivh2 = square(0.2, 0.2), square(0.6, 0.6), square(0.4, 0.1)
    write_csv(tmp_path / "segmentation" / "Results_Multiple Hemorrhage Detection_1.csv",
              DETECTION_HEADER, [detection_row("ID_m1", majority=ivh)])
    write_csv(tmp_path / "segmentation" / "Results_Subdural Hemorrhage Detection_1.csv",
              DETECTION_HEADER, [detection_row("ID_m1", majority=sdh)])
    # The Tracing file sits at the root under a name that says nothing: found by its header.
    write_csv(tmp_path / "ivh traces.csv", TRACING_HEADER, [
        {"Case ID": 1, "Origin": "ID_i1.jpg", "Labeling State": "Labeled",
         "ROI": json.dumps([ivh, ivh2]), "Number of ROIs": 2},
        {"Case ID": 2, "Origin": "ID_m1.jpg", "Labeling State": "Labeled",
         "ROI": repr(ivh), "Number of ROIs": 1},  # single quotes, same region as Majority
    ])
    drop = discover(tmp_path)
    multi = case(drop, "ID_m1")
    assert set(multi.polygons) == {as_polygon(ivh), as_polygon(sdh)}  # identical region once
    assert len(multi.polygons) == 2 and multi.mask_source == "majority"
    iv = case(drop, "ID_i1")
    assert iv.polygons == (as_polygon(ivh), as_polygon(ivh2)) and iv.mask_source == "tracing"
    assert drop.stats["segmentation_files:tracing"] == 1
    assert drop.stats["segmentation_files:detection"] == 2


def test_duplicate_subdural_file_read_once(tmp_path: Path) -> None:
    seg_drop(tmp_path)
    rows = [detection_row("ID_s1", majority=square(0.1, 0.1))]
    folder = tmp_path / "Hemorrhage Segmentation Project"
    write_csv(folder / "Results_Subdural Hemorrhage Detection_2020-11-16_21.35.48.040.csv",
              DETECTION_HEADER, rows)
    write_csv(folder / "Results_Subdural Hemorrhage Detection_2020-11-16_21.37.19.745.csv",
              DETECTION_HEADER, rows)
    drop = discover(tmp_path)
    assert drop.stats["segmentation_files"] == 1
    assert drop.stats["segmentation_duplicate_files"] == 1
    assert drop.stats["segmentation_rows"] == 1
    assert case(drop, "ID_s1").polygons == (as_polygon(square(0.1, 0.1)),)


def test_multi_line_field(tmp_path: Path) -> None:
    seg_drop(tmp_path)
    path = write_csv(tmp_path / "Results_Subdural Hemorrhage Detection_1.csv", DETECTION_HEADER, [
        detection_row("ID_s1", majority=square(0.1, 0.1), comments='line one\nline "two"\n3'),
        detection_row("ID_s2", majority=square(0.2, 0.2)),
    ])
    assert path.read_text().count("\n") > 3  # a naive line reader would see more rows
    drop = discover(tmp_path)
    assert drop.stats["segmentation_rows"] == 2
    assert case(drop, "ID_s2").polygons == (as_polygon(square(0.2, 0.2)),)


def test_malformed_polygon_makes_mask_unknown(tmp_path: Path) -> None:
    seg_drop(tmp_path)
    row = detection_row("ID_s1")
    row["Majority Label"] = '[{"x": 0.1, "y": 0.1}, {"x": 0.2'
    write_csv(tmp_path / "segmentation" / "Results_Subdural Hemorrhage Detection_1.csv",
              DETECTION_HEADER, [row, detection_row("ID_s1", majority=square(0.5, 0.5))])
    drop = discover(tmp_path)
    s1 = case(drop, "ID_s1")
    assert s1.polygons is None and s1.labels == LABELS["subdural"]
    assert skips_by(drop, "malformed-polygon") == ["ID_s1"]
    with pytest.raises(DropError, match="malformed-polygon"):
        discover(tmp_path, strict=True)


def test_flagged_rows_ignored(tmp_path: Path) -> None:
    seg_drop(tmp_path)
    write_csv(tmp_path / "segmentation" / "Results_Subdural Hemorrhage Detection_1.csv",
              DETECTION_HEADER, [
                  detection_row("ID_s1", majority=square(0.1, 0.1), state="Flagged"),
                  detection_row("ID_s2", majority=square(0.1, 0.1), state="Flagged"),
                  detection_row("ID_s2", majority=square(0.5, 0.5), state="Gold Standard"),
              ])
    drop = discover(tmp_path)
    assert case(drop, "ID_s1").polygons is None
    assert case(drop, "ID_s2").polygons == (as_polygon(square(0.5, 0.5)),)
    assert drop.stats["segmentation_rows_flagged"] == 2


def test_bad_segmentation_header_skips_file(tmp_path: Path) -> None:
    seg_drop(tmp_path)
    header = [c for c in DETECTION_HEADER if c != "Agreement"]
    row = {k: v for k, v in detection_row("ID_s1", majority=square(0.1, 0.1)).items()
           if k != "Agreement"}
    write_csv(tmp_path / "Results_Subdural Hemorrhage Detection_1.csv", header, [row])
    write_csv(tmp_path / "Results_Other_1.csv", ["a", "b"], [{"a": 1, "b": 2}])
    write_csv(tmp_path / "unrelated.csv", ["a", "b"], [{"a": 1, "b": 2}])  # not ours: silent
    drop = discover(tmp_path)
    assert sorted(skips_by(drop, "bad-segmentation-csv")) == [
        "Results_Other_1.csv", "Results_Subdural Hemorrhage Detection_1.csv"]
    assert any("Agreement" in w for w in drop.warnings)
    assert case(drop, "ID_s1").polygons is None
    assert "Agreement" in DETECTION_REQUIRED


def test_normal_slice_with_traced_region_is_unknown(tmp_path: Path) -> None:
    basic_drop(tmp_path)
    write_csv(tmp_path / "Results_Subdural Hemorrhage Detection_1.csv", DETECTION_HEADER,
              [detection_row("ID_nor000001", majority=square(0.1, 0.1))])
    drop = discover(tmp_path)
    assert case(drop, "ID_nor000001").polygons is None
    assert any("ID_nor000001" in w and "traces" in w for w in drop.warnings)


# --- DICOMs -------------------------------------------------------------------------------------


def write_dicom(path: Path, patient: str = "ID_p1") -> Path:
    # RSNA-style "ID_..." UIDs are not valid UIDs; pytest restores the filters after each test.
    warnings.filterwarnings("ignore", "Invalid value for VR UI", UserWarning)
    return write_ct(path, np.zeros((4, 4), np.int16), SOPInstanceUID=path.stem, PatientID=patient,
                    StudyInstanceUID="ID_st", SeriesInstanceUID="ID_se", PixelSpacing=[0.5, 0.5],
                    ImagePositionPatient=[1.0, 2.0, 3.0])


def test_render_cases_get_dicom_metadata(tmp_path: Path) -> None:
    basic_drop(tmp_path)
    write_dicom(tmp_path / "dcms" / "ID_epi000001.dcm", patient="ID_pat")
    write_dicom(tmp_path / "dcms" / "ID_not_rendered.dcm")
    drop = discover(tmp_path, progress=True)
    epi = case(drop, "ID_epi000001")
    assert epi.patient_id == "ID_pat" and epi.series_id == "ID_se"
    assert epi.pixel_spacing == (0.5, 0.5) and epi.position == (1.0, 2.0, 3.0)
    assert epi.dicom_path and epi.dicom_path.endswith("ID_epi000001.dcm")
    assert epi.group == "patient:ID_pat"
    assert drop.stats["dicom_files"] == 2 and drop.stats["dicom_headers_read"] == 1
    without = discover(tmp_path, read_dicom_headers=False)
    assert case(without, "ID_epi000001").patient_id == ""
    assert case(without, "ID_epi000001").dicom_path == epi.dicom_path


def test_dicom_source_one_case_per_file(tmp_path: Path) -> None:
    write_labels(tmp_path, {"ID_a": LABELS["subdural"], "ID_b": LABELS["normal"]})
    write_dicom(tmp_path / "dcms" / "ID_a.dcm")
    write_dicom(tmp_path / "dcms" / "deeper" / "ID_b.dcm")
    write_dicom(tmp_path / "dcms" / "ID_c.dcm")
    (tmp_path / "dcms" / "ID_bad.dcm").write_text("not a dicom")
    write_csv(tmp_path / "Results_Subdural Hemorrhage Detection_1.csv", DETECTION_HEADER,
              [detection_row("ID_a", majority=square(0.1, 0.1))])
    drop = discover(tmp_path)
    assert drop.source == "dicom"
    assert [c.id for c in drop.cases] == ["ID_a", "ID_b", "ID_c"]
    a, b, c = drop.cases
    assert a.source == "dicom" and a.folder_type is None and a.render_paths == {}
    assert a.polygons == (as_polygon(square(0.1, 0.1)),) and a.mask_source == "majority"
    assert b.polygons == () and b.mask_source == "normal"  # labelled any = 0
    assert c.labels is None and c.polygons is None
    assert skips_by(drop, "unreadable-dicom") == ["ID_bad"]
    assert "not a DICOM" in drop.skips[0].detail
    with pytest.raises(DropError, match="no renders/"):
        discover(tmp_path, source="render")


def test_read_headers_in_worker_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [str(write_dicom(tmp_path / f"ID_{i}.dcm", patient=f"P{i}")) for i in range(5)]
    (tmp_path / "ID_bad.dcm").write_bytes(b"\0" * 10)
    paths.append(str(tmp_path / "ID_bad.dcm"))
    monkeypatch.setattr(drop_module, "HEADER_CHUNK", 2)  # three chunks over two workers
    serial = read_headers(paths, workers=1)
    parallel = read_headers(paths, workers=2)
    assert serial == parallel
    assert [m.patient_id for m in list(parallel.values())[:5]] == [f"P{i}" for i in range(5)]
    assert isinstance(parallel[paths[-1]], str)
    assert all(isinstance(parallel[p], DicomMeta) for p in paths[:5])


def test_real_dicoms_as_a_dicom_drop(tmp_path: Path) -> None:
    real = sorted((REAL / "rsna-dicom").glob("*.dcm")) if (REAL / "rsna-dicom").is_dir() else []
    if not real:
        pytest.skip("real RSNA DICOMs not present")
    for path in real:  # links, not copies
        (tmp_path / "dcms").mkdir(exist_ok=True)
        (tmp_path / "dcms" / path.name).symlink_to(path)
    write_labels(tmp_path, {"ID_0002081b6": LABELS["intraparenchymal"]})
    drop = discover(tmp_path)
    assert len(drop.cases) == len(real) and not drop.skips
    assert all(c.patient_id and c.pixel_spacing for c in drop.cases)
    assert case(drop, "ID_0002081b6").labels == LABELS["intraparenchymal"]
