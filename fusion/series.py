"""DICOM series geometry: group slices into stacks, order them along the slice normal, find
duplicates, interleaved stacks and gaps.

A DICOM slice sits in the patient's LPS frame: ImagePositionPatient (IPP) is the centre of its
first pixel (mm), ImageOrientationPatient (IOP) holds the direction cosines of a row (towards
increasing column index) and of a column (towards increasing row index). The slice normal is
their cross product. As ITK, GDCM and highdicom do, slices are ordered by ``IPP . normal``, the
position along the normal, and the slice spacing comes from the differences of that projection,
so a tilted (oblique IOP) or reformatted series keeps its order and spacing where the z of IPP
alone would misorder it.

What `group_series` does with one SeriesInstanceUID, in this order:

1. a slice whose SOPInstanceUID was already seen is dropped ("duplicate-slice", counted);
2. slices that disagree in orientation, size (rows, columns) or pixel spacing are split into
   stacks ``<uid>#1``, ``<uid>#2``, ... (a warning in the series row), never merged;
3. several AcquisitionNumbers split the same way; InstanceNumbers that repeat among slices at
   different positions mean interleaved stacks that cannot be told apart: the series is refused
   ("interleaved-stacks", every slice counted);
4. a slice at the position of an earlier one (within 0.01 mm along the normal) is dropped
   ("duplicate-slice");
5. the spacing is the (lower) median of the steps along the normal; when SliceThickness is known
   and that median is more than twice it, the slices are samples, not a contiguous stack, and the
   volume integrates SliceThickness per slice; a step larger than twice the spacing is a gap,
   reported in the series row and never integrated (each slice counts its own spacing only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

#: Slices closer than this along the normal (mm) are at the same position.
SAME_POSITION_MM = 0.01
#: Direction cosines that differ by less than this belong to the same orientation.
ORIENTATION_TOLERANCE = 1e-3
#: A step larger than this many times the series spacing is a gap.
GAP_FACTOR = 2.0
#: Fallback normal when IOP is absent: the old behaviour (order by the z of IPP).
AXIAL_NORMAL = (0.0, 0.0, 1.0)


class HasMeta(Protocol):
    """A slice as `fusion.predict` discovers it: a path and its `DicomMeta`."""

    path: Path
    meta: Any


#: Called for every slice left out: (path, reason, detail).
SkipFn = Callable[[str, str, str], None]


@dataclass
class SeriesGroup:
    """One stack of slices, ready for the model.

    Attributes:
      id: SeriesInstanceUID, with ``#k`` when the UID held several stacks.
      slices: the slices in geometric order (increasing position along ``normal``).
      normal: unit slice normal (LPS), None when the slices have no positions.
      offsets: position of each slice along ``normal`` in mm, None without positions.
      spacing_mm: distance between neighbouring slices that the volume integrates, or None.
      spacing_source: "positions", "thickness" or "unknown".
      gaps_mm: the steps (mm) larger than `GAP_FACTOR` x the spacing.
      n_duplicates: slices dropped as duplicates of one in this stack.
      warnings: human-readable notes on this stack (splits, gaps, missing orientation).
    """

    id: str
    slices: list[Any]
    normal: tuple[float, float, float] | None = None
    offsets: list[float] | None = None
    spacing_mm: float | None = None
    spacing_source: str = "unknown"
    gaps_mm: list[float] = field(default_factory=list)
    n_duplicates: int = 0
    warnings: list[str] = field(default_factory=list)


def slice_normal(orientation: Sequence[float] | None) -> np.ndarray | None:
    """Unit normal (row cosine x column cosine) of an IOP, or None when it is unusable.

    Args:
      orientation: six direction cosines (row x, y, z, column x, y, z) or None.

    Returns:
      float64 [3], or None when a value is not finite, a cosine is not a unit vector, or the
      two are not orthogonal (within 1e-2).
    """
    if orientation is None or len(orientation) != 6:
        return None
    iop = np.asarray(orientation, dtype=np.float64)
    if not np.all(np.isfinite(iop)):
        return None
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2:
        return None
    if abs(float(row @ col)) > 1e-2:
        return None
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def _finite(values: Sequence[float] | None) -> bool:
    return values is not None and bool(np.all(np.isfinite(np.asarray(values, np.float64))))


def _stack_key(meta: Any) -> tuple[Any, ...]:
    """What slices of one stack share: orientation, size and pixel spacing (rounded; a NaN or
    infinite value counts as absent, so it cannot make every slice a stack of its own)."""
    iop = meta.orientation if _finite(meta.orientation) else None
    iop_key = None if iop is None else tuple(round(v / ORIENTATION_TOLERANCE) for v in iop)
    spacing = meta.pixel_spacing if _finite(meta.pixel_spacing) else None
    spacing_key = None if spacing is None else tuple(round(v, 4) for v in spacing)
    return (iop_key, meta.rows, meta.cols, spacing_key)


def _describe(key: tuple[Any, ...]) -> str:
    iop_key, rows, cols, spacing = key
    iop = "none" if iop_key is None else ",".join(f"{v * ORIENTATION_TOLERANCE:g}" for v in iop_key)
    return f"IOP [{iop}] {rows}x{cols} px spacing {spacing}"


def _split(sid: str, items: list[Any], key: Callable[[Any], Any], what: str,
           describe: Callable[[Any], str] = str) -> list[SeriesGroup]:
    """Split `items` by `key`; one group keeps the id, several get ``#k`` and a warning."""
    parts: dict[Any, list[Any]] = {}
    for s in items:
        parts.setdefault(key(s), []).append(s)
    if len(parts) == 1:
        return [SeriesGroup(sid, items)]
    groups = []
    for k, (value, part) in enumerate(parts.items(), start=1):
        note = (f"SeriesInstanceUID {sid} holds {len(parts)} stacks that differ in {what}; "
                f"this is stack {k} ({describe(value)}), {len(part)} slices")
        groups.append(SeriesGroup(f"{sid}#{k}", part, warnings=[note]))
    return groups


def _drop_same_uid(items: list[Any], skip: SkipFn) -> tuple[list[Any], int]:
    kept, seen = [], {}
    for s in items:
        first = seen.setdefault(s.meta.id, s)
        if first is s:
            kept.append(s)
        else:
            skip(str(s.path), "duplicate-slice", f"same SOPInstanceUID as {first.path}")
    return kept, len(items) - len(kept)


def _interleaved(group: SeriesGroup) -> str | None:
    """Why the stack is two interleaved acquisitions that cannot be split, or None."""
    numbers = [s.meta.instance_number for s in group.slices]
    if any(n is None for n in numbers) or len(numbers) < 2:
        return None
    distinct = len(set(numbers))
    # All equal (an anonymiser's 1, 1, 1 ...) says nothing; some repeats mean several stacks.
    if 1 < distinct < len(numbers):
        positions = {s.meta.position for s in group.slices}
        if len(positions) > distinct:
            return (f"InstanceNumbers repeat ({len(numbers)} slices, {distinct} numbers) at "
                    f"{len(positions)} positions: interleaved stacks in one series; export them "
                    f"as separate series")
    return None


def _order(group: SeriesGroup) -> None:
    """Sort the slices along the normal (else by InstanceNumber, else file name)."""
    items = group.slices
    if all(_finite(s.meta.position) for s in items):
        normal = slice_normal(items[0].meta.orientation)
        if normal is None:
            normal = np.asarray(AXIAL_NORMAL)
            group.warnings.append("no usable ImageOrientationPatient: ordered by the z of "
                                  "ImagePositionPatient")
        offsets = {id(s): float(np.asarray(s.meta.position, np.float64) @ normal) for s in items}
        items.sort(key=lambda s: (offsets[id(s)], s.path.name))
        group.normal = (float(normal[0]), float(normal[1]), float(normal[2]))
        group.offsets = [offsets[id(s)] for s in items]
    elif all(s.meta.instance_number is not None for s in items):
        items.sort(key=lambda s: (s.meta.instance_number, s.path.name))
    else:
        items.sort(key=lambda s: s.path.name)


def _drop_same_position(group: SeriesGroup, skip: SkipFn) -> None:
    if group.offsets is None:
        return
    kept, offsets = [group.slices[0]], [group.offsets[0]]
    for s, off in zip(group.slices[1:], group.offsets[1:], strict=True):
        if off - offsets[-1] < SAME_POSITION_MM:
            skip(str(s.path), "duplicate-slice", f"same position ({off:.3f} mm along the slice "
                 f"normal) as {kept[-1].path}")
            group.n_duplicates += 1
            continue
        kept.append(s)
        offsets.append(off)
    if len(kept) < len(group.slices):
        group.warnings.append(f"{len(group.slices) - len(kept)} slice(s) at an already seen "
                              f"position dropped")
    group.slices, group.offsets = kept, offsets


def _spacing(group: SeriesGroup) -> None:
    """Spacing the volume integrates, and the gaps (see the module docstring, step 5)."""
    thicknesses = [s.meta.slice_thickness for s in group.slices]
    thickness = next((t for t in thicknesses if t is not None and math.isfinite(t) and t > 0), None)
    if group.offsets is None or len(group.offsets) < 2:
        if thickness is not None:
            group.spacing_mm, group.spacing_source = float(thickness), "thickness"
        return
    steps = np.sort(np.diff(np.asarray(group.offsets)))
    spacing, source = float(steps[(steps.size - 1) // 2]), "positions"  # lower median
    if thickness is not None and spacing > GAP_FACTOR * thickness:
        group.warnings.append(
            f"slices are {spacing:.2f} mm apart but {thickness:g} mm thick: not a contiguous "
            f"stack; the volume counts {thickness:g} mm per slice")
        spacing, source = float(thickness), "thickness"
    group.spacing_mm, group.spacing_source = spacing, source
    group.gaps_mm = [float(d) for d in np.diff(np.asarray(group.offsets))
                     if d > GAP_FACTOR * spacing]
    if group.gaps_mm:
        group.warnings.append(
            f"{len(group.gaps_mm)} gap(s) larger than {GAP_FACTOR:g} x {spacing:.2f} mm "
            f"(largest {max(group.gaps_mm):.2f} mm): not integrated into the volume")


def group_series(slices: Sequence[HasMeta], skip: SkipFn | None = None) -> list[SeriesGroup]:
    """Group DICOM slices into geometrically consistent stacks, each in geometric order.

    Args:
      slices: slices with ``path`` and ``meta`` (`data_build.dicom.DicomMeta`).
      skip: called with (path, reason, detail) for each slice left out (duplicates, refused
        interleaved stacks); None ignores them.

    Returns:
      The stacks sorted by id; a slice without SeriesInstanceUID is a stack of its own named
      ``no-series:<file stem>``.
    """
    skip = skip or (lambda path, reason, detail: None)
    by_uid: dict[str, list[Any]] = {}
    for s in slices:
        by_uid.setdefault(s.meta.series_id or f"no-series:{s.path.stem}", []).append(s)
    out: list[SeriesGroup] = []
    for sid in sorted(by_uid):
        items, n_same_uid = _drop_same_uid(by_uid[sid], skip)
        for stack in _split(sid, items, lambda s: _stack_key(s.meta),
                            "orientation, size or pixel spacing", _describe):
            for group in _split(stack.id, stack.slices, lambda s: s.meta.acquisition_number,
                                "AcquisitionNumber", lambda v: f"AcquisitionNumber {v}"):
                group.warnings = stack.warnings + group.warnings
                why = _interleaved(group)
                if why is not None:
                    for s in group.slices:
                        skip(str(s.path), "interleaved-stacks", f"{group.id}: {why}")
                    continue
                _order(group)
                _drop_same_position(group, skip)
                _spacing(group)
                out.append(group)
        if n_same_uid and out and out[-1].id.split("#")[0] == sid:
            out[-1].n_duplicates += n_same_uid
            out[-1].warnings.append(f"{n_same_uid} slice(s) with a repeated SOPInstanceUID dropped")
    return sorted(out, key=lambda g: g.id)


def geometry_columns(group: SeriesGroup | None) -> dict[str, Any]:
    """Series-row columns on a stack's geometry; zeros and no warnings for non-DICOM series."""
    gaps = group.gaps_mm if group is not None else []
    return {
        "n_duplicates_dropped": group.n_duplicates if group is not None else 0,
        "n_gaps": len(gaps),
        "largest_gap_mm": round(max(gaps), 2) if gaps else None,
        "warnings": list(group.warnings) if group is not None else [],
    }
