"""What the drop reader hands to the converter: one `Case` per slice, and `Skip` for bad input.

A `Case` holds paths and metadata only (no pixels), so the full drop's ~116k cases fit in memory
and can be sent to worker processes cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from data_build.errors import DataBuildError

#: One polygon: normalised (x, y) vertices, x = column / size, y = row / size, origin top-left.
Polygon = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Case:
    """One slice to convert into a record.

    Attributes:
      id: slice id, ``ID_xxxxxxxxx`` (no extension).
      source: "render" (four window JPEGs) or "dicom" (HU from `dicom_path`).
      render_paths: canonical window name -> JPEG path; windows missing on disk are absent.
      dicom_path: the slice's DICOM when the drop has it (render cases read only its header).
      folder_type: render folder type (`schema.FOLDER_TYPES`), None for DICOM-only cases.
      labels: 0/1 per `schema.LABEL_NAMES`, None when the label table has no row.
      polygons: None = mask unknown; () = known empty (normal slices); else the slice's regions.
      mask_source: "correct" | "majority" | "tracing" | "normal" | "".
      patient_id, study_id, series_id: from the DICOM header when known, else "".
      pixel_spacing: (row, col) mm, None when unknown.
      position: ImagePositionPatient (x, y, z) mm, None when unknown.
    """

    id: str
    source: str = "render"
    render_paths: Mapping[str, str] = field(default_factory=dict)
    dicom_path: str | None = None
    folder_type: str | None = None
    labels: tuple[int, ...] | None = None
    polygons: tuple[Polygon, ...] | None = None
    mask_source: str = ""
    patient_id: str = ""
    study_id: str = ""
    series_id: str = ""
    pixel_spacing: tuple[float, float] | None = None
    position: tuple[float, float, float] | None = None

    @property
    def group(self) -> str:
        """Split group: patient, else study, else the slice itself (no group in two splits)."""
        if self.patient_id:
            return f"patient:{self.patient_id}"
        if self.study_id:
            return f"study:{self.study_id}"
        return f"slice:{self.id}"


@dataclass(frozen=True)
class Skip:
    """An input left out, with the reason shown in the summary and kept in the manifest.

    Attributes:
      id: slice id or file name the skip concerns.
      reason: short machine-friendly category, e.g. "corrupt-image", "missing-window".
      detail: human-readable detail (path, exception text).
      path: the offending file, when there is one.
    """

    id: str
    reason: str
    detail: str = ""
    path: str = ""


#: Skip reasons that are intended exclusions, not problems: `--strict` does not stop at them.
INTENDED_EXCLUSIONS: frozenset[str] = frozenset({"flagged"})


class DropError(DataBuildError):
    """The drop cannot be read at all (missing root, missing labels file). Exit status 2."""
