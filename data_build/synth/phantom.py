"""Synthetic head-CT phantoms in Hounsfield units, with each hemorrhage type.

A phantom is an axial slice of a simplified adult head drawn analytically on a ``size x size``
grid: air, scalp, a skull with inner and outer tables and a thinner diploe, grey-matter cortex
with gyri and sulci, white matter, deep grey nuclei, the interhemispheric and Sylvian fissures,
the basal cisterns around the midbrain and the ventricles, whose shape follows the slice
position ``z`` (0 = skull base, 1 = vertex). Acute blood (+55..+80 HU) is painted where each
hemorrhage type appears clinically:

- epidural: biconvex lens against the inner table, short arc, thick;
- subdural: crescent along the inner table, long arc, thin;
- intraparenchymal: lobulated blob in the brain with a hypodense oedema rim (+15..+20 HU);
- intraventricular: blood layering in the dependent (posterior, patient supine) ventricles;
- subarachnoid: blood filling the basal cisterns and the Sylvian fissure on the bleed's side
  (on the slices that show them), and the sulci and surface CSF over a sector of the convexity.

Every array is computed in a head-local frame ``(u, v)``: ``u`` runs to the image right and ``v``
to the image bottom (posterior), both normalised by the head's semi-axes, so ``rho = 1`` is the
outer scalp surface whatever the head's size, rotation and position. Nothing here reads or
writes files; `data_build.synth.writer` turns phantoms into a drop.

All randomness comes from the `numpy.random.Generator` passed in, so a seed fixes every pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import cv2
import numpy as np

from data_build.errors import DataBuildError
from data_build.schema import TYPE_NAMES

# Tissue codes of `PhantomSlice.tissue` (uint8).
AIR, SCALP, SKULL, CSF, GREY, WHITE, VENTRICLE, OEDEMA, BLOOD = range(9)
# Drawn by the "real" difficulty only (`data_build.synth.realistic`).
CALCIFICATION, FAT = 9, 10
TISSUE_NAMES: tuple[str, ...] = (
    "air", "scalp", "skull", "csf", "grey", "white", "ventricle", "oedema", "blood",
    "calcification", "fat",
)

AIR_HU = -1000.0
#: Acute blood, HU (clotted blood is +50..+90; the brief asks +55..+80).
BLOOD_HU_RANGE = (55.0, 80.0)
#: Vasogenic oedema around an intraparenchymal haematoma, HU.
OEDEMA_HU_RANGE = (15.0, 20.0)

#: A type is kept on a slice only if its cleaned mask covers at least this fraction of the
#: slice: smaller bleeds vanish at the 1/4 resolution a segmentation head predicts at.
MIN_TYPE_FRACTION = 1e-3
#: A bleed's z profile below this scale is treated as absent on that slice.
MIN_Z_SCALE = 0.3


class PhantomError(DataBuildError, ValueError):
    """Invalid phantom arguments (unknown hemorrhage type, size too small, ...)."""


@dataclass(frozen=True)
class Anatomy:
    """One synthetic patient's head: shape, pose and tissue values (fixed across slices).

    Attributes:
      center: head centre (x, y) as a fraction of the image size.
      semi_axes: lateral and antero-posterior semi-axes at the widest slice, fraction of size.
      rotation: in-plane rotation, radians (positive turns the head clockwise on screen).
      scalp: scalp thickness in rho units (fraction of the head radius).
      skull: mean skull thickness in rho units.
      skull_harmonics: (amplitude, phase) pairs of the skull thickness over the angle.
      cortex: mean grey-matter ribbon thickness in rho units.
      gyri: (count, phase) of the cortex thickness undulation.
      csf_layer: surface subarachnoid CSF thickness in rho units (grows with atrophy).
      sulci: (angle radians, depth rho units, width rho units) per sulcus, sorted by angle.
      ventricle_scale: size factor of the ventricles (hydrocephalus > 1).
      hu: tissue name -> mean HU (scalp, csf, grey, white, ventricle).
      noise_sigma: Gaussian image noise, HU.
      inner_scale: the inner table's radius as a fraction of its usual one: 1 in the easy
        phantom; in the "real" one below 1 above the widest slice, falling to 0 near the
        vertex as slices cut the skull more obliquely (`realistic.inner_scale`).
    """

    center: tuple[float, float]
    semi_axes: tuple[float, float]
    rotation: float
    scalp: float
    skull: float
    skull_harmonics: tuple[tuple[float, float], ...]
    cortex: float
    gyri: tuple[int, float]
    csf_layer: float
    sulci: tuple[tuple[float, float, float], ...]
    ventricle_scale: float
    hu: Mapping[str, float]
    noise_sigma: float
    inner_scale: float = 1.0


@dataclass(frozen=True)
class Bleed:
    """One hemorrhage of a patient, spanning several slices.

    Attributes:
      kind: hemorrhage type, one of `schema.TYPE_NAMES`.
      angle: local-frame angle of the bleed's centre, radians (0 = image right, pi/2 = posterior).
      extent: epidural/subdural/subarachnoid: angular half-width, radians; intraparenchymal:
        radius in rho units; intraventricular: fraction of the ventricles' height filled.
      thickness: epidural/subdural: maximum thickness, rho units; intraparenchymal: oedema rim
        width as a fraction of the radius; subarachnoid: sulcal width, rho units.
      radius: intraparenchymal: distance of the centre from the head centre, rho units.
      hu: blood HU.
      z_center: slice position of the bleed's largest cross-section (0..1).
      z_half: half of the bleed's extent along z; cross-sections shrink as sqrt(1 - d^2).
      shape: lobulation phases (two angles), so the outline is irregular but seeded.
    """

    kind: str
    angle: float
    extent: float
    thickness: float
    radius: float
    hu: float
    z_center: float
    z_half: float
    shape: tuple[float, float] = (0.0, 0.0)

    def scale_at(self, z: float) -> float:
        """Cross-section scale of this bleed at slice position ``z``: 1 at the centre, 0 off it."""
        d = (z - self.z_center) / self.z_half
        if abs(d) >= 1.0:
            return 0.0
        scale = math.sqrt(1.0 - d * d)
        return scale if scale >= MIN_Z_SCALE else 0.0


@dataclass(frozen=True)
class PhantomSlice:
    """One synthetic axial slice.

    Attributes:
      hu: [size, size] float32 Hounsfield units (noise included).
      mask: [size, size] uint8 0/1, every bleed pixel (union of `type_masks`).
      types: hemorrhage types present, in `schema.TYPE_NAMES` order; () for a normal slice.
      type_masks: type -> [size, size] uint8 0/1 mask of that type's blood.
      tissue: [size, size] uint8 tissue codes (`AIR` ... `BLOOD`), for checks.
      z: slice position, 0 = skull base, 1 = vertex.
    """

    hu: np.ndarray
    mask: np.ndarray
    types: tuple[str, ...]
    type_masks: Mapping[str, np.ndarray] = field(default_factory=dict)
    tissue: np.ndarray | None = None
    z: float = 0.5

    @property
    def folder_type(self) -> str:
        """Render folder of this slice: "normal", the single type present, or "multi"."""
        if not self.types:
            return "normal"
        return self.types[0] if len(self.types) == 1 else "multi"


def _angdiff(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """Signed smallest difference a - b of two angles, radians in [-pi, pi)."""
    return (np.asarray(a) - b + np.pi) % (2.0 * np.pi) - np.pi


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's head: size, pose, skull profile, sulci and tissue HU."""
    n_sulci = int(rng.integers(26, 38))
    # Evenly spread sulci with jitter so they never merge into one CSF band.
    base = np.linspace(-np.pi, np.pi, n_sulci, endpoint=False)
    angles = np.sort(_angdiff(base + rng.uniform(-0.35, 0.35, n_sulci) * (2 * np.pi / n_sulci), 0))
    atrophy = float(rng.uniform(0.0, 1.0))
    sulci = tuple(
        (float(a), float(rng.uniform(0.05, 0.11) * (1 + 0.5 * atrophy)),
         float(rng.uniform(0.008, 0.014) * (1 + 0.5 * atrophy)))
        for a in angles
    )
    grey = float(rng.uniform(35.0, 41.0))
    return Anatomy(
        center=(0.5 + float(rng.uniform(-0.015, 0.015)), 0.5 + float(rng.uniform(-0.015, 0.015))),
        semi_axes=(float(rng.uniform(0.33, 0.37)), float(rng.uniform(0.41, 0.445))),
        rotation=float(rng.uniform(-0.14, 0.14)),
        scalp=float(rng.uniform(0.025, 0.04)),
        skull=float(rng.uniform(0.04, 0.055)),
        skull_harmonics=(
            (float(rng.uniform(0.15, 0.35)), float(rng.uniform(-0.4, 0.4))),
            (float(rng.uniform(0.05, 0.15)), float(rng.uniform(0, 2 * np.pi))),
        ),
        cortex=float(rng.uniform(0.05, 0.075)),
        gyri=(int(rng.integers(14, 22)), float(rng.uniform(0, 2 * np.pi))),
        csf_layer=float(0.006 + 0.012 * atrophy),
        sulci=sulci,
        ventricle_scale=float(rng.uniform(0.85, 1.2)),
        hu={
            "scalp": float(rng.uniform(35.0, 45.0)),
            "csf": float(rng.uniform(2.0, 8.0)),
            "grey": grey,
            "white": grey - float(rng.uniform(8.0, 11.0)),
            "ventricle": float(rng.uniform(2.0, 8.0)),
        },
        noise_sigma=float(rng.uniform(3.0, 6.0)),
    )


def head_scale(z: float) -> float:
    """Head cross-section size at slice position z relative to the widest slice (z = 0.45)."""
    d = (z - 0.45) / 0.8
    return math.sqrt(max(0.2, 1.0 - d * d))


def _bump(z: float, lo: float, peak: float, hi: float) -> float:
    """Smooth 0 -> 1 -> 0 weight of a structure visible between z = lo and z = hi."""
    if z <= lo or z >= hi:
        return 0.0
    t = (z - lo) / (peak - lo) if z < peak else (hi - z) / (hi - peak)
    return math.sin(0.5 * math.pi * t)


#: Ventricle components in the local frame: (u, v, half-axis u, half-axis v, tilt radians,
#: (z lo, z peak, z hi)). Frontal horns flare anteriorly, occipital horns posteriorly, the
#: bodies run parallel to the midline higher up, the third ventricle is a midline slit.
_VENTRICLES: tuple[tuple[float, float, float, float, float, tuple[float, float, float]], ...] = (
    (-0.1, -0.23, 0.05, 0.17, 0.45, (0.27, 0.40, 0.52)),
    (0.1, -0.23, 0.05, 0.17, -0.45, (0.27, 0.40, 0.52)),
    (-0.14, 0.33, 0.055, 0.16, -0.35, (0.28, 0.40, 0.55)),
    (0.14, 0.33, 0.055, 0.16, 0.35, (0.28, 0.40, 0.55)),
    (-0.09, 0.02, 0.055, 0.33, 0.10, (0.42, 0.55, 0.68)),
    (0.09, 0.02, 0.055, 0.33, -0.10, (0.42, 0.55, 0.68)),
    (0.0, 0.02, 0.018, 0.10, 0.0, (0.22, 0.34, 0.44)),
)
#: Deep grey nuclei (basal ganglia, thalami), same fields as `_VENTRICLES`.
_NUCLEI: tuple[tuple[float, float, float, float, float, tuple[float, float, float]], ...] = (
    (-0.24, -0.08, 0.09, 0.15, 0.25, (0.25, 0.38, 0.50)),
    (0.24, -0.08, 0.09, 0.15, -0.25, (0.25, 0.38, 0.50)),
    (-0.09, 0.14, 0.07, 0.10, 0.0, (0.28, 0.38, 0.48)),
    (0.09, 0.14, 0.07, 0.10, 0.0, (0.28, 0.38, 0.48)),
)


#: Basal cisterns, same fields as `_VENTRICLES`: the suprasellar cistern in front of the
#: midbrain and the quadrigeminal cistern behind it, seen on the low slices only.
_CISTERNS: tuple[tuple[float, float, float, float, float, tuple[float, float, float]], ...] = (
    (0.0, -0.12, 0.12, 0.08, 0.0, (0.08, 0.22, 0.36)),
    (0.0, 0.32, 0.08, 0.05, 0.0, (0.10, 0.24, 0.38)),
)
#: The ambient cistern is the ring between these two ellipses around the midbrain.
_AMBIENT_OUTER = ((0.0, 0.10, 0.20, 0.18, 0.0, (0.08, 0.22, 0.36)),)
_MIDBRAIN = ((0.0, 0.10, 0.135, 0.12, 0.0, (0.08, 0.22, 0.36)),)
#: Slice positions (lo, peak, hi) where the Sylvian fissures show.
_SYLVIAN_Z = (0.22, 0.38, 0.56)


def _ellipses(
    u: np.ndarray,
    v: np.ndarray,
    parts: Sequence[tuple[float, float, float, float, float, tuple[float, float, float]]],
    z: float,
    scale: float = 1.0,
) -> np.ndarray:
    """Union of the tilted ellipses in ``parts`` visible at z, as a bool [size, size] mask."""
    out = np.zeros(u.shape, dtype=bool)
    for cu, cv, au, av, tilt, zr in parts:
        w = _bump(z, *zr)
        if w < 0.2:
            continue
        du, dv = u - cu, v - cv
        c, s = math.cos(tilt), math.sin(tilt)
        pu, pv = c * du + s * dv, -s * du + c * dv
        out |= (pu / (au * scale * w)) ** 2 + (pv / (av * scale * (0.5 + 0.5 * w))) ** 2 <= 1.0
    return out


@dataclass(frozen=True)
class _Frame:
    """Per-slice geometry in the head-local frame; arrays are [size, size] float32."""

    u: np.ndarray
    v: np.ndarray
    rho: np.ndarray
    theta: np.ndarray
    rho_in: np.ndarray  # inner-table radius at each pixel's angle
    depth: np.ndarray  # rho_in - rho: > 0 inside the brain, distance below the inner table
    radius_px: float  # one rho unit in pixels (geometric mean of the semi-axes)


def _frame(anatomy: Anatomy, z: float, size: int) -> _Frame:
    scale = head_scale(z)
    a = anatomy.semi_axes[0] * scale * size
    b = anatomy.semi_axes[1] * scale * size
    cx, cy = anatomy.center[0] * size, anatomy.center[1] * size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(anatomy.rotation), math.sin(anatomy.rotation)
    u = (c * dx + s * dy) / a
    v = (-s * dx + c * dy) / b
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    rho_in = _inner_table(anatomy, theta)
    return _Frame(u, v, rho, theta, rho_in, rho_in - rho, math.sqrt(a * b))


def _inner_table(anatomy: Anatomy, theta: np.ndarray) -> np.ndarray:
    """Inner-table radius (rho units) along each angle: the skull is thicker at the front and
    back (cos 2theta < 0 there), plus a seeded irregularity."""
    (a1, p1), (a2, p2) = anatomy.skull_harmonics
    thickness = anatomy.skull * (1.0 - a1 * np.cos(2 * theta + p1) + a2 * np.cos(3 * theta + p2))
    inner = 1.0 - anatomy.scalp - thickness
    if anatomy.inner_scale != 1.0:
        inner = inner * anatomy.inner_scale
    return inner.astype(np.float32)


def _basal_cisterns(fr: _Frame, z: float) -> np.ndarray:
    """Bool mask of the suprasellar, ambient and quadrigeminal cisterns at z (low slices)."""
    ring = _ellipses(fr.u, fr.v, _AMBIENT_OUTER, z) & ~_ellipses(fr.u, fr.v, _MIDBRAIN, z)
    return ring | _ellipses(fr.u, fr.v, _CISTERNS, z)


def _sylvian(fr: _Frame, anatomy: Anatomy, z: float, side: float = 0.0) -> np.ndarray:
    """Bool mask of the Sylvian fissures at z: CSF clefts from the lateral surface, between the
    frontal and temporal lobes, running back and in to the insula. ``side`` -1 or +1 keeps
    the image-left or image-right one only (0: both)."""
    w = _bump(z, *_SYLVIAN_Z)
    if w < 0.2:
        return np.zeros(fr.u.shape, dtype=bool)
    au = np.abs(fr.u)
    axis = -0.14 + 0.4 * (0.85 - au)  # v of the fissure's axis: anterior at the surface
    half = (0.011 + 0.6 * anatomy.csf_layer) * (0.6 + 0.4 * w)
    out = (au > 0.5 - 0.08 * w) & (np.abs(fr.v - axis) < half)
    if side:
        out &= np.sign(fr.u) == np.sign(side)
    return out


def _anatomy_tissue(anatomy: Anatomy, fr: _Frame, z: float) -> np.ndarray:
    """Tissue codes of the normal head at z, [size, size] uint8."""
    tissue = np.full(fr.u.shape, AIR, dtype=np.uint8)
    tissue[fr.rho <= 1.0] = SCALP
    tissue[fr.rho <= 1.0 - anatomy.scalp] = SKULL
    brain = fr.depth > 0
    tissue[brain] = WHITE
    count, phase = anatomy.gyri
    cortex = anatomy.cortex * (1.0 + 0.5 * np.sin(count * fr.theta + phase))
    tissue[brain & (fr.depth < cortex)] = GREY
    tissue[_ellipses(fr.u, fr.v, _NUCLEI, z)] = GREY
    # Sulci: CSF clefts running in from the surface; deeper towards the vertex.
    angles = np.array([s[0] for s in anatomy.sulci], dtype=np.float32)
    depths = np.array([s[1] for s in anatomy.sulci], dtype=np.float32) * (0.8 + 0.6 * z)
    widths = np.array([s[2] for s in anatomy.sulci], dtype=np.float32)
    near, dist = _nearest_sulcus(_bent(fr, anatomy), fr.rho, angles)
    # Clefts taper towards their floor.
    taper = 1.0 - 0.5 * np.clip(fr.depth / depths[near], 0.0, 1.0)
    sulcal = (dist < 0.5 * widths[near] * taper) & (fr.depth < depths[near])
    surface = fr.depth < anatomy.csf_layer
    # Interhemispheric fissure: front and back at mid levels, all the way above the ventricles.
    fissure_len = 0.3 if z < 0.62 else 1.2
    fissure = (np.abs(fr.u) < 0.012) & (np.abs(fr.v) > 1.0 - fissure_len - 0.1)
    tissue[brain & (sulcal | surface | fissure | _sylvian(fr, anatomy, z) | _basal_cisterns(fr, z))] = CSF
    tissue[brain & _ellipses(fr.u, fr.v, _VENTRICLES, z, anatomy.ventricle_scale)] = VENTRICLE
    return tissue


def _bent(fr: _Frame, anatomy: Anatomy) -> np.ndarray:
    """Pixel angles warped with depth, so sulci curve instead of running straight inwards."""
    phase = anatomy.gyri[1]
    bend = 1.6 * np.sin(3.0 * fr.theta + phase) + 0.8 * np.sin(7.0 * fr.theta + 2.0 * phase)
    return (_angdiff(fr.theta + bend * np.clip(fr.depth, 0.0, None), 0.0)).astype(np.float32)


def _nearest_sulcus(
    theta: np.ndarray, rho: np.ndarray, angles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest sulcus to each pixel and the arc distance to it (rho units)."""
    n = len(angles)
    right = np.searchsorted(angles, theta) % n
    left = (right - 1) % n
    d_right = np.abs(_angdiff(theta, angles[right]))
    d_left = np.abs(_angdiff(theta, angles[left]))
    use_left = d_left < d_right
    near = np.where(use_left, left, right)
    return near, np.where(use_left, d_left, d_right) * rho


def random_bleed(
    kind: str, rng: np.random.Generator, z_center: float, z_half: float | None = None
) -> Bleed:
    """Draw one hemorrhage of type ``kind`` centred at slice position ``z_center``.

    Raises:
      PhantomError: ``kind`` is not one of `schema.TYPE_NAMES`.
    """
    if kind not in TYPE_NAMES:
        raise PhantomError(f"unknown hemorrhage type {kind!r}; expected one of {TYPE_NAMES}")
    hu = float(rng.uniform(*BLOOD_HU_RANGE))
    half = float(z_half if z_half is not None else rng.uniform(0.12, 0.22))
    side = float(rng.choice([0.0, np.pi]))  # lateral convexities, left or right
    shape = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi)))
    if kind == "epidural":
        return Bleed(kind, side + float(rng.uniform(-0.7, 0.7)), float(rng.uniform(0.3, 0.48)),
                     float(rng.uniform(0.08, 0.13)), 0.0, hu, z_center, half, shape)
    if kind == "subdural":
        return Bleed(kind, side + float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.7, 1.1)),
                     float(rng.uniform(0.035, 0.06)), 0.0, hu, z_center, half, shape)
    if kind == "intraparenchymal":
        return Bleed(kind, float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(0.08, 0.14)),
                     float(rng.uniform(0.3, 0.5)), float(rng.uniform(0.2, 0.5)), hu, z_center,
                     half, shape)
    if kind == "intraventricular":
        # Ventricular blood is diluted by CSF: the lower half of the acute range.
        return Bleed(kind, 0.0, float(rng.uniform(0.45, 0.8)), 0.0, 0.0,
                     float(rng.uniform(55.0, 68.0)), z_center, half, shape)
    return Bleed(kind, float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(0.6, 1.0)),
                 float(rng.uniform(0.02, 0.03)), 0.0, hu, z_center, half, shape)


def _bleed_mask(bleed: Bleed, s: float, fr: _Frame, tissue: np.ndarray,
                anatomy: Anatomy, z: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Blood mask (bool) of one bleed at cross-section scale s, and an oedema mask or None."""
    brain = fr.depth > 0
    if bleed.kind in ("epidural", "subdural"):
        return brain & (fr.depth < extra_axial_depth(bleed, s, fr.theta)), None
    if bleed.kind == "intraparenchymal":
        cu = bleed.radius * math.cos(bleed.angle)
        cv = bleed.radius * math.sin(bleed.angle)
        du, dv = fr.u - cu, fr.v - cv
        phi = np.arctan2(dv, du)
        dist = np.sqrt(du * du + dv * dv)
        a, b = bleed.shape
        lobes = 1.0 + 0.15 * np.sin(3 * phi + a) + 0.1 * np.sin(5 * phi + b)
        r = bleed.extent * s
        blood = brain & (dist < r * lobes)
        oedema = brain & (dist < r * (1.0 + bleed.thickness) * lobes) & ~blood
        return blood, oedema
    if bleed.kind == "intraventricular":
        ventricles = tissue == VENTRICLE
        if not ventricles.any():
            return ventricles, None
        # Supine patient: blood settles posteriorly (large v) with a level below the CSF.
        vs = fr.v[ventricles]
        level = np.quantile(vs, 1.0 - bleed.extent * s)
        return ventricles & (fr.v >= level), None
    # Subarachnoid: blood in the basal cisterns and the Sylvian fissure on the bleed's side,
    # where this slice shows them, and in widened sulci and surface CSF over a sector of the
    # convexity.
    side = 1.0 if math.cos(bleed.angle) >= 0 else -1.0
    # CSF spaces only: where a ventricle overlaps a cistern, blood there would read as
    # intraventricular.
    spaces = (_sylvian(fr, anatomy, z, side) | _basal_cisterns(fr, z)) & (tissue != VENTRICLE)
    sector = np.abs(_angdiff(fr.theta, bleed.angle)) < bleed.extent * (0.5 + 0.5 * s)
    width = max(bleed.thickness, 2.2 / fr.radius_px)
    layer = max(0.5 * bleed.thickness, 1.6 / fr.radius_px)
    angles = np.array([a for a, _, _ in anatomy.sulci], dtype=np.float32)
    depths = np.array([d for _, d, _ in anatomy.sulci], dtype=np.float32) * 1.2
    near, dist = _nearest_sulcus(_bent(fr, anatomy), fr.rho, angles)
    sulcal = (dist < 0.5 * width) & (fr.depth < depths[near])
    return brain & ((sector & (sulcal | (fr.depth < layer))) | spaces), None


def extra_axial_depth(bleed: Bleed, s: float, theta: np.ndarray) -> np.ndarray:
    """How deep below the inner table an epidural or subdural reaches along each angle (rho
    units, 0 where it is absent) at cross-section scale s: a lens for epidurals (sqrt
    profile), a flat-topped crescent for subdurals."""
    delta = _angdiff(theta, bleed.angle) / (bleed.extent * (0.6 + 0.4 * s))
    inside = np.abs(delta) < 1.0
    power = 0.5 if bleed.kind == "epidural" else 0.25
    profile = np.where(inside, np.clip(1.0 - delta * delta, 0.0, 1.0), 0.0) ** power
    wobble = 1.0 + 0.08 * np.sin(3 * theta + bleed.shape[0])
    return np.where(inside, bleed.thickness * s * profile * wobble, 0.0)


def _clean(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop connected components smaller than ``min_area`` pixels; uint8 0/1 out."""
    mask = mask.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(n, dtype=np.uint8)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]


def render_slice(
    anatomy: Anatomy,
    z: float,
    size: int,
    bleeds: Sequence[Bleed],
    rng: np.random.Generator,
) -> PhantomSlice:
    """Draw one slice of a patient at position z with the given bleeds.

    Args:
      anatomy: the patient's head (`random_anatomy`).
      z: slice position, 0 = skull base .. 1 = vertex.
      size: output height and width in pixels (>= 32).
      bleeds: the patient's hemorrhages; each appears if its z profile reaches this slice and
        its cleaned cross-section covers at least `MIN_TYPE_FRACTION` of the slice.
      rng: noise source.

    Returns:
      The slice: HU [size, size] float32, bleed mask uint8 0/1, the types present.

    Raises:
      PhantomError: size < 32.
    """
    if size < 32:
        raise PhantomError(f"phantom size must be >= 32 pixels, got {size}")
    fr = _frame(anatomy, z, size)
    tissue = _anatomy_tissue(anatomy, fr, z)
    min_area = max(4, int(round(1.5e-4 * size * size)))
    type_masks: dict[str, np.ndarray] = {}
    blood_hu = np.zeros(tissue.shape, dtype=np.float32)
    oedema_all = np.zeros(tissue.shape, dtype=bool)
    for bleed in bleeds:
        s = bleed.scale_at(z)
        if s == 0.0:
            continue
        blood, oedema = _bleed_mask(bleed, s, fr, tissue, anatomy, z)
        blood = _clean(blood, min_area)
        if blood.sum() < MIN_TYPE_FRACTION * size * size:
            continue  # too small to see or segment: this slice is bleed-free for this bleed
        prior = type_masks.get(bleed.kind)
        type_masks[bleed.kind] = blood if prior is None else (prior | blood)
        blood_hu[blood.astype(bool)] = bleed.hu
        if oedema is not None:
            oedema_all |= oedema
    mask = np.zeros(tissue.shape, dtype=np.uint8)
    for m in type_masks.values():
        mask |= m
    tissue[oedema_all & (mask == 0)] = OEDEMA
    tissue[mask.astype(bool)] = BLOOD

    hu = _tissue_hu(anatomy, fr, tissue, blood_hu, rng)
    types = tuple(t for t in TYPE_NAMES if t in type_masks)
    return PhantomSlice(hu, mask, types, {t: type_masks[t] for t in types}, tissue, float(z))


def _tissue_hu(anatomy: Anatomy, fr: _Frame, tissue: np.ndarray, blood_hu: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """HU image from tissue codes: values, skull tables, partial volume, texture, noise."""
    size = tissue.shape[0]
    lut = np.array([
        AIR_HU, anatomy.hu["scalp"], 0.0, anatomy.hu["csf"], anatomy.hu["grey"],
        anatomy.hu["white"], anatomy.hu["ventricle"], float(rng.uniform(*OEDEMA_HU_RANGE)), 0.0,
    ], dtype=np.float32)
    hu = lut[tissue]
    skull = tissue == SKULL
    # Dense inner and outer tables (~1500 HU) around a lighter diploe (~750 HU).
    t = np.clip((1.0 - anatomy.scalp - fr.rho) / np.maximum(1.0 - anatomy.scalp - fr.rho_in,
                                                                  1e-3), 0.0, 1.0)
    hu[skull] = (1500.0 - 750.0 * np.sin(np.pi * t) ** 2)[skull]
    blood = tissue == BLOOD
    hu[blood] = blood_hu[blood]
    # Slow texture inside the head (beam hardening, tissue heterogeneity), +-2 HU.
    coarse = rng.normal(0.0, 2.0, size=(8, 8)).astype(np.float32)
    texture = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    hu = hu + np.where(tissue != AIR, texture, 0.0).astype(np.float32)
    # Partial volume at edges: ~0.7 px blur at 512 px, scaled with the image size.
    sigma = max(0.5, 0.7 * size / 512.0)
    hu = cv2.GaussianBlur(hu, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
    hu = hu + rng.normal(0.0, anatomy.noise_sigma, size=hu.shape).astype(np.float32)
    return hu.astype(np.float32)


#: How likely each type (`TYPE_NAMES` order) is drawn into a "multi" patient. They follow the
#: rough order of RSNA's per-type label counts, where epidural blood is rare (a few % of type
#: labels) and the other four are common; a uniform draw made epidural the most frequent
#: companion type of the demo drop.
MULTI_TYPE_WEIGHTS: tuple[float, ...] = (0.04, 0.24, 0.20, 0.24, 0.28)


def patient_bleeds(
    folder_type: str, rng: np.random.Generator, z_lo: float, z_hi: float
) -> tuple[Bleed, ...]:
    """The bleeds of a patient whose slices span z_lo..z_hi.

    Args:
      folder_type: "normal" (none), "multi" (2-3 different types) or one hemorrhage type.
      rng: random source.
      z_lo, z_hi: slice positions of the first and last slice.

    Raises:
      PhantomError: an unknown folder type.
    """
    if folder_type == "normal":
        return ()
    mid = 0.5 * (z_lo + z_hi)
    span = z_hi - z_lo
    if folder_type == "multi":
        count = int(rng.integers(2, 4))
        kinds = sorted(rng.choice(len(TYPE_NAMES), size=count, replace=False,
                                  p=MULTI_TYPE_WEIGHTS).tolist())
        # Long z extents around the same centre: most slices show two or more types.
        return tuple(
            random_bleed(TYPE_NAMES[k], rng, mid + float(rng.uniform(-0.1, 0.1)) * span,
                         float(rng.uniform(0.6, 0.9)) * span + 0.05)
            for k in kinds
        )
    if folder_type not in TYPE_NAMES:
        raise PhantomError(
            f"unknown folder type {folder_type!r}; expected normal, multi or one of {TYPE_NAMES}"
        )
    z_center = mid + float(rng.uniform(-0.25, 0.25)) * span
    return (random_bleed(folder_type, rng, z_center, float(rng.uniform(0.45, 0.7)) * span + 0.03),)


def patient_z_range(folder_type: str, n_slices: int, rng: np.random.Generator) -> np.ndarray:
    """Slice positions of a patient's consecutive slices (ventricular bleeds need ventricles)."""
    dz = float(rng.uniform(0.04, 0.055))
    span = dz * max(n_slices - 1, 0)
    if folder_type == "intraventricular":
        lo, hi = 0.30, 0.62
    else:
        lo, hi = 0.22, 0.72
    z0 = float(rng.uniform(lo, max(lo, hi - span)))
    return z0 + dz * np.arange(n_slices, dtype=np.float64)


def make_patient(
    folder_type: str, n_slices: int, size: int, rng: np.random.Generator
) -> list[PhantomSlice]:
    """A synthetic patient: ``n_slices`` consecutive slices with the bleeds of ``folder_type``.

    Bleed size varies smoothly across slices and vanishes at the ends of its extent, so a
    bleeding patient may have bleed-free slices (their ``types`` is ()).

    Args:
      folder_type: "normal", "multi" or a hemorrhage type (`schema.TYPE_NAMES`).
      n_slices: number of slices (>= 1).
      size: image size in pixels.
      rng: the patient's random source.

    Raises:
      PhantomError: bad folder type, n_slices < 1 or size < 32.
    """
    if n_slices < 1:
        raise PhantomError(f"a patient needs at least one slice, got n_slices={n_slices}")
    anatomy = random_anatomy(rng)
    zs = patient_z_range(folder_type, n_slices, rng)
    bleeds = patient_bleeds(folder_type, rng, float(zs[0]), float(zs[-1]))
    return [render_slice(anatomy, float(z), size, bleeds, rng) for z in zs]


def make_slice(
    types: Sequence[str] = (),
    size: int = 512,
    rng: np.random.Generator | None = None,
    z: float | None = None,
    max_tries: int = 20,
) -> PhantomSlice:
    """One slice showing exactly ``types`` (a convenience for tests and demos).

    Args:
      types: hemorrhage types to show; () for a normal slice.
      size: image size in pixels.
      rng: random source (default: seed 0).
      z: slice position (default: drawn where the ventricles are visible).
      max_tries: redraws allowed when a bleed comes out too small to keep.

    Raises:
      PhantomError: an unknown type, or no draw showed every type within ``max_tries``.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    wanted = tuple(t for t in TYPE_NAMES if t in set(types))
    unknown = set(types) - set(TYPE_NAMES)
    if unknown:
        raise PhantomError(f"unknown hemorrhage types {sorted(unknown)}; expected {TYPE_NAMES}")
    for _ in range(max_tries):
        anatomy = random_anatomy(rng)
        zz = float(z if z is not None else rng.uniform(0.34, 0.5))
        bleeds = tuple(random_bleed(t, rng, zz, 0.2) for t in wanted)
        result = render_slice(anatomy, zz, size, bleeds, rng)
        if result.types == wanted:
            return result
    raise PhantomError(f"could not draw a slice showing {wanted} in {max_tries} tries at z={z}")
