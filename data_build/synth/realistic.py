"""Head-CT phantoms as hard as real scans: the "real" difficulty of `fusion-synth`.

The "easy" phantom (`phantom.py`) draws bright, mid-sized bleeds on a clean, centred head; a
model tuned on it fails on real CT (issue 10). This module reuses its anatomy and bleed shapes
and changes what makes real scans hard, each calibrated to a measured figure (docs/data.md,
docs/benchmarks.md "Phantom realism"):

- contrast: brain and blood HU as measured on real CT-ICH slices (bleed median 56 HU against a
  brain ring of 36 HU), diluted intraventricular blood, and a share of subacute subdurals that
  are nearly iso-dense with brain;
- size: a third of the bleeds small (a hundred pixels or so at 512) or thin, the rest up to
  large haematomas; small bleeds span one or two slices; slivers that partial volume with bone
  would outshine are not drawn;
- partial volume: the bleed boundary is blurred in HU (the mask is the region before the blur)
  and a bleed fades towards the ends of its z extent;
- mass effect: epidurals, subdurals and haematomas push the brain aside (cortex off the skull,
  sulci effaced, the midline shifted), the cues by which readers find iso-dense subdurals;
- false-positive bait: calcified choroid plexus, pineal, falx and basal ganglia; orbits,
  sinuses, clivus and petrous bone at the skull base; beam-hardening streaks there;
- acquisition: head size, position and rotation, field of view, reconstruction kernel (smooth
  or sharp, with correlated noise), scanner calibration offset, the head holder under the
  occiput, and normal slices from the skull base to above the vertex;
- the skull cut obliquely: towards the vertex the inner table's top lies below the outer
  table's, so the bone band widens in-plane until a slice holds only a disc of bone, and a 5 mm
  slice averages bone and brain across it (through-plane partial volume of the tables).

All randomness comes from the generator passed in, so a seed fixes every pixel.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from data_build.schema import TYPE_NAMES
from data_build.synth import phantom
from data_build.synth.phantom import (
    AIR,
    BLOOD,
    CALCIFICATION,
    CSF,
    FAT,
    GREY,
    OEDEMA,
    SKULL,
    VENTRICLE,
    WHITE,
    Anatomy,
    Bleed,
    PhantomError,
    PhantomSlice,
)

#: Outer head semi-axes (lateral, antero-posterior), mm: adult heads are ~140-160 mm wide and
#: ~175-200 mm long.
HEAD_MM = ((68.0, 80.0), (86.0, 100.0))
#: Field of view as a multiple of the head length: the 59 RSNA slices in ../shared/data/real
#: have pixel spacings of 0.39-0.57 mm (median 0.49) at 512 px, fields of 201-293 mm.
FOV_OVER_HEAD = (1.08, 1.5)
#: A bleed is kept on a slice from this many pixels at 512 x 512 (real masks start at ~160 px,
#: issue 10; the easy phantom drops everything under 262 px).
MIN_BLEED_PX_AT_512 = 60
#: A bleed's cross-section below this fraction of its largest is treated as absent (easy: 0.3).
MIN_Z_SCALE = 0.15
#: Share of subdurals drawn subacute, close to brain density (HU in `ISODENSE_SUBDURAL_HU`).
ISODENSE_SUBDURAL_SHARE = 0.12
ISODENSE_SUBDURAL_HU = (40.0, 52.0)
#: Acute blood HU per type, before partial volume (real medians: 56 HU, p90 66 HU).
BLOOD_HU: dict[str, tuple[float, float]] = {
    "epidural": (56.0, 72.0),
    "subdural": (52.0, 70.0),
    "intraparenchymal": (50.0, 68.0),
    "intraventricular": (48.0, 66.0),  # diluted by CSF
    "subarachnoid": (54.0, 72.0),  # thin: partial volume with CSF lowers what is seen
}
#: Perihaematomal oedema, HU: a few HU under white matter (the easy phantom: 15-20 HU).
OEDEMA_HU = (18.0, 26.0)
#: Reconstruction kernels: name -> (blur sigma px at 512, unsharp amount, noise HU range,
#: noise correlation sigma px at 512). Smooth kernels trade noise for blur; bone-ish sharp
#: kernels the reverse.
KERNELS: dict[str, tuple[float, float, tuple[float, float], float]] = {
    "smooth": (1.1, 0.0, (1.7, 2.7), 1.0),
    "standard": (0.7, 0.0, (2.2, 3.3), 0.8),
    "sharp": (0.5, 0.35, (2.9, 4.4), 0.5),
}
#: How often each kernel of `KERNELS` is drawn per series.
KERNEL_WEIGHTS = (0.3, 0.5, 0.2)
#: Mass effect: the midline shifts away from a bleed by this many rho units (1 rho, the head's
#: mean semi-axis at its widest slice, ~75-90 mm) per rho² of epidural, subdural and
#: intraparenchymal blood on the slice, up to `MAX_MIDLINE_SHIFT` (8-10 mm). A large subdural
#: (~0.15 rho²) shifts it ~6 mm, a 3 cm haematoma (~0.1 rho²) ~4 mm.
MIDLINE_SHIFT_PER_AREA = 0.5
MAX_MIDLINE_SHIFT = 0.11
#: How far from the head centre the midline shift reaches (rho units): the falx and the
#: ventricles move, the far cortex under the skull barely does.
MIDLINE_SHIFT_REACH = 0.55
MASS_KINDS = ("epidural", "subdural", "intraparenchymal")
#: Under an epidural or subdural deeper than this (rho units, ~2 mm) the surface CSF and the
#: sulci down to `EFFACED_SULCI` below the displaced surface are compressed shut.
EFFACING_DEPTH = 0.02
EFFACED_SULCI = 0.12
#: The outer head surface ends at z = 1.05 (`head_scale`); the inner table's top lies this much
#: lower (z units: 0.05 is one 5 mm slice, so ~6 mm of skull at the vertex).
INNER_TOP_GAP = 0.06
#: Slice thickness in z units (0.05 ~ 5 mm, RSNA's usual): a slice averages the bone across
#: it, so where the skull runs oblique to the slice the tables smear in-plane (`_bone_fraction`).
SLICE_THICKNESS = 0.05
#: Bone HU: the vault's tables (its diploe half of it) and the skull base's bone.
TABLE_HU = 1500.0
BASE_BONE_HU = 1100.0
#: Head holder under the occiput, drawn in most series (`ScanStyle.holder`): its gap to the
#: head and shell thickness (fractions of the image: 1.5-3.5 mm at a 250 mm field) and HU
#: (carbon fibre and plastic read ~100-500 HU: a white arc in a brain window, as under most
#: of the 59 RSNA slices in ../shared/data/real).
HOLDER_SHARE = 0.85
HOLDER_GAP = (0.005, 0.05)
HOLDER_THICKNESS = (0.006, 0.014)
HOLDER_HU = (150.0, 450.0)
_HOLDER_SALT = 0x686F6C64


@dataclass(frozen=True)
class RealBleed(Bleed):
    """A `phantom.Bleed` with what the real phantom adds.

    Attributes:
      cisterns: subarachnoid: blood also fills the basal cisterns and Sylvian fissure (False:
        a few convexity sulci only, the small traumatic form).
    """

    cisterns: bool = True


class Holder(NamedTuple):
    """The head holder (`_holder`): a U fixed to the scanner under the occiput.

    Attributes:
      dx: its centre's offset from the head centre, fraction of the image.
      gap: from the head's largest semi-axis to the shell, fraction of the image.
      thickness: of the shell, fraction of the image.
      hu: of the shell.
      wall: height of its straight sides above the head centre, fraction of the image.
    """

    dx: float
    gap: float
    thickness: float
    hu: float
    wall: float


@dataclass(frozen=True)
class ScanStyle:
    """One series' acquisition and the patient's incidental findings (fixed across slices).

    Attributes:
      kernel: reconstruction kernel name (`KERNELS`).
      noise_sigma: image noise standard deviation, HU.
      pv_sigma: partial-volume blur of bleed boundaries, pixels at 512.
      calcifications: (u, v, radius rho units, HU, (z lo, z hi)) of each calcified structure.
      falx: (v lo, v hi, HU) of a calcified falx segment, or None.
      streaks: beam-hardening strength (0..1) at the skull base.
      hu_offset: the scanner's calibration offset, HU, added to the whole image.
      holder: the head holder, or None: no holder in the field.
    """

    kernel: str
    noise_sigma: float
    pv_sigma: float
    calcifications: tuple[tuple[float, float, float, float, tuple[float, float]], ...]
    falx: tuple[float, float, float] | None
    streaks: float
    hu_offset: float = 0.0
    holder: Holder | None = None


def random_anatomy(rng: np.random.Generator) -> tuple[Anatomy, float]:
    """A patient's head and the field of view (mm) that frames it."""
    base = phantom.random_anatomy(rng)
    a_mm, b_mm = (float(rng.uniform(*r)) for r in HEAD_MM)
    fov = float(rng.uniform(*FOV_OVER_HEAD)) * 2.0 * b_mm
    a, b = a_mm / fov, b_mm / fov
    room_x, room_y = max(0.0, 0.49 - a), max(0.0, 0.49 - b)
    grey = float(rng.uniform(37.0, 45.0))
    hu = dict(base.hu, grey=grey, white=grey - float(rng.uniform(5.0, 8.0)))
    anatomy = replace(
        base,
        center=(0.5 + float(rng.uniform(-1, 1)) * min(room_x, 0.06),
                0.5 + float(rng.uniform(-1, 1)) * min(room_y, 0.06)),
        semi_axes=(a, b),
        rotation=float(rng.uniform(-0.3, 0.3)),
        hu=hu,
    )
    return anatomy, fov


def random_style(rng: np.random.Generator) -> ScanStyle:
    """A series' kernel and noise, and the patient's calcifications (prevalences: docs/data.md)."""
    kernel = str(rng.choice(list(KERNELS), p=KERNEL_WEIGHTS))
    noise = float(rng.uniform(*KERNELS[kernel][2]))
    calcs: list[tuple[float, float, float, float, tuple[float, float]]] = []
    if rng.random() < 0.7:  # choroid plexus glomus in both atria
        r, h = float(rng.uniform(0.018, 0.035)), float(rng.uniform(90.0, 300.0))
        for side in (-1.0, 1.0):
            calcs.append((side * 0.14 + float(rng.normal(0, 0.01)), 0.29, r, h, (0.30, 0.50)))
    if rng.random() < 0.6:  # pineal, behind the third ventricle
        calcs.append((0.0, 0.22, float(rng.uniform(0.012, 0.025)),
                      float(rng.uniform(100.0, 400.0)), (0.28, 0.42)))
    if rng.random() < 0.12:  # globus pallidus
        r, h = float(rng.uniform(0.01, 0.02)), float(rng.uniform(70.0, 160.0))
        for side in (-1.0, 1.0):
            calcs.append((side * 0.2, -0.06, r, h, (0.28, 0.44)))
    falx = None
    if rng.random() < 0.3:
        lo = float(rng.uniform(-0.8, 0.2))
        falx = (lo, lo + float(rng.uniform(0.1, 0.4)), float(rng.uniform(120.0, 500.0)))
    # Water reads 0 +- a few HU on a calibrated scanner (the ACR phantom allows +-7 HU).
    offset = float(rng.uniform(-5.0, 3.0))
    style = ScanStyle(kernel, noise, float(rng.uniform(0.6, 1.2)), tuple(calcs), falx,
                      float(rng.uniform(0.3, 1.0)), offset)
    # The holder has its own generator, seeded from this series' draws, so that adding it left
    # every other draw of a seeded drop (patients, bleeds, noise) as it was.
    own = np.random.default_rng([int(noise * 1e9), int((offset + 10.0) * 1e9), _HOLDER_SALT])
    if own.random() < HOLDER_SHARE:
        holder = Holder(float(own.normal(0.0, 0.01)), float(own.uniform(*HOLDER_GAP)),
                        float(own.uniform(*HOLDER_THICKNESS)), float(own.uniform(*HOLDER_HU)),
                        float(own.uniform(0.0, 0.3)))
        style = replace(style, holder=holder)
    return style


def head_scale(z: float) -> float:
    """Head cross-section size at z relative to the widest slice: 0 above the vertex (1.05)."""
    d = (z - 0.45) / (0.6 if z > 0.45 else 1.1)
    return math.sqrt(max(0.0, 1.0 - d * d))


def inner_scale(z: float) -> float:
    """The inner table's radius at z as a fraction of its usual one (`Anatomy.inner_scale`):
    1 up to the widest slice, then falling to 0 at `INNER_TOP_GAP` below the vertex, so the
    skull widens in-plane as a slice cuts it more obliquely (0: a disc of bone, no brain)."""
    if z <= 0.45:
        return 1.0
    outer = head_scale(z)
    d = (z - 0.45) / (0.6 - INNER_TOP_GAP)
    inner = math.sqrt(max(0.0, 1.0 - d * d))
    return inner / outer if outer > 0.0 else 0.0


def random_bleed(kind: str, rng: np.random.Generator, z_center: float,
                 z_half: float | None = None) -> Bleed:
    """One hemorrhage with real-CT density and a wide, log-uniform size distribution.

    Raises:
      PhantomError: ``kind`` is not one of `schema.TYPE_NAMES`.
    """
    if kind not in TYPE_NAMES:
        raise PhantomError(f"unknown hemorrhage type {kind!r}; expected one of {TYPE_NAMES}")
    hu = float(rng.uniform(*BLOOD_HU[kind]))
    if kind == "subdural" and rng.random() < ISODENSE_SUBDURAL_SHARE:
        hu = float(rng.uniform(*ISODENSE_SUBDURAL_HU))
    side = float(rng.choice([0.0, np.pi]))
    shape = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi)))
    # 0 small .. 1 large: a third small (real p10 ~160-265 px at 512), the rest spread up to
    # large haematomas (real p90 4,300-8,800 px). Small bleeds also get short z extents.
    size = float(rng.uniform(0.0, 0.2) if rng.random() < 0.35 else rng.uniform(0.1, 1.0) ** 0.7)
    half = z_half if z_half is not None else 0.04 + 0.16 * size
    if kind == "epidural":
        return Bleed(kind, side + float(rng.uniform(-0.9, 0.9)), 0.1 + 0.45 * size,
                     0.04 + 0.12 * size ** 1.5, 0.0, hu, z_center, half, shape)
    if kind == "subdural":
        thickness = 0.022 * 6.0 ** (0.7 * size + 0.3 * float(rng.random()))  # 0.022 .. 0.13
        return Bleed(kind, side + float(rng.uniform(-0.6, 0.6)), 0.12 + 1.15 * size,
                     thickness, 0.0, hu, z_center, half, shape)
    if kind == "intraparenchymal":
        extent = 0.015 * (22.0 ** size)  # 0.015 .. 0.33 rho: ~30 .. 13,000 px at 512
        # Little oedema: acute haematomas are scanned before it grows.
        return Bleed(kind, float(rng.uniform(-np.pi, np.pi)), extent,
                     float(rng.uniform(0.0, 0.2)),
                     float(rng.uniform(0.15, max(0.2, 0.75 - 1.3 * extent))), hu, z_center,
                     half, shape)
    if kind == "intraventricular":
        return Bleed(kind, 0.0, 0.01 + 0.7 * size, 0.0, 0.0, hu, z_center,
                     half, shape)
    return RealBleed(kind, float(rng.uniform(-np.pi, np.pi)), 0.06 + 0.84 * size,
                     float(rng.uniform(0.015, 0.035)), 0.0, hu, z_center, half, shape,
                     cisterns=bool(rng.random() < 0.5))


def patient_bleeds(folder_type: str, rng: np.random.Generator, z_lo: float,
                   z_hi: float) -> tuple[Bleed, ...]:
    """The bleeds of a patient whose slices span z_lo..z_hi (see `phantom.patient_bleeds`).

    Raises:
      PhantomError: an unknown folder type.
    """
    if folder_type == "normal":
        return ()
    mid, span = 0.5 * (z_lo + z_hi), z_hi - z_lo
    if folder_type == "multi":
        count = int(rng.integers(2, 4))
        kinds = sorted(rng.choice(len(TYPE_NAMES), size=count, replace=False,
                                  p=phantom.MULTI_TYPE_WEIGHTS).tolist())
        return tuple(
            random_bleed(TYPE_NAMES[k], rng, mid + float(rng.uniform(-0.2, 0.2)) * span,
                         float(rng.uniform(0.3, 0.8)) * span + 0.04)
            for k in kinds
        )
    if folder_type not in TYPE_NAMES:
        raise PhantomError(
            f"unknown folder type {folder_type!r}; expected normal, multi or one of {TYPE_NAMES}"
        )
    z_center = mid + float(rng.uniform(-0.3, 0.3)) * span
    return (random_bleed(folder_type, rng, z_center),)


def patient_z_range(folder_type: str, n_slices: int, rng: np.random.Generator) -> np.ndarray:
    """Consecutive slice positions: normal series reach from the skull base to above the
    vertex (bone caps, then the holder alone in air, as real series end)."""
    dz = float(rng.uniform(0.04, 0.06))
    span = dz * max(n_slices - 1, 0)
    lo, hi = {"normal": (0.0, 1.08), "intraventricular": (0.28, 0.64)}.get(
        folder_type, (0.12, 0.86))
    z0 = float(rng.uniform(lo, max(lo, hi - span)))
    return z0 + dz * np.arange(n_slices, dtype=np.float64)


def make_patient(folder_type: str, n_slices: int, size: int,
                 rng: np.random.Generator) -> tuple[list[PhantomSlice], float]:
    """A realistic synthetic patient: ``n_slices`` consecutive slices and the field of view.

    Args:
      folder_type: "normal", "multi" or a hemorrhage type (`schema.TYPE_NAMES`).
      n_slices: number of slices (>= 1).
      size: image size in pixels (>= 32).
      rng: the patient's random source.

    Returns:
      The slices (HU float32 [size, size], masks uint8) and the field of view in mm (the
      pixel spacing is ``fov / size``).

    Raises:
      PhantomError: bad folder type, n_slices < 1 or size < 32.
    """
    if n_slices < 1:
        raise PhantomError(f"a patient needs at least one slice, got n_slices={n_slices}")
    anatomy, fov = random_anatomy(rng)
    style = random_style(rng)
    zs = patient_z_range(folder_type, n_slices, rng)
    bleeds = patient_bleeds(folder_type, rng, float(zs[0]), float(zs[-1]))
    return [render_slice(anatomy, style, float(z), size, bleeds, rng) for z in zs], fov


# --- one slice --------------------------------------------------------------------------------


def _frame(anatomy: Anatomy, z: float, size: int) -> phantom._Frame:
    """`phantom._frame` with this module's head profile along z (small at the vertex; above
    it no head: every pixel far outside)."""
    scale = head_scale(z)
    ratio = max(scale, 1e-3) / phantom.head_scale(z)
    scaled = replace(anatomy, semi_axes=(anatomy.semi_axes[0] * ratio,
                                         anatomy.semi_axes[1] * ratio))
    fr = phantom._frame(scaled, z, size)
    if scale > 0.0:
        return fr
    far = np.full(fr.rho.shape, 1e6, dtype=np.float32)
    return replace(fr, u=far, v=far, rho=far, depth=fr.rho_in - far)


def _in_ellipse(fr: phantom._Frame, cu: float, cv: float, au: float, av: float,
                tilt: float = 0.0) -> np.ndarray:
    du, dv = fr.u - cu, fr.v - cv
    c, s = math.cos(tilt), math.sin(tilt)
    return ((c * du + s * dv) / au) ** 2 + ((-s * du + c * dv) / av) ** 2 <= 1.0


def _skull_base(tissue: np.ndarray, fr: phantom._Frame, z: float) -> np.ndarray:
    """Paint orbits, sinuses, clivus and petrous bone into ``tissue`` (low slices only).

    Returns the bool mask of the skull-base bone drawn (its HU is set separately).
    """
    bone = np.zeros(tissue.shape, dtype=bool)
    inside = fr.rho < 1.0
    w_orbit = phantom._bump(z, -0.05, 0.08, 0.24)
    if w_orbit > 0.15:
        for side in (-1.0, 1.0):
            cu, cv = side * 0.38, -0.80
            outer = _in_ellipse(fr, cu, cv, 0.24 * w_orbit, 0.24 * w_orbit, side * 0.3)
            fat = _in_ellipse(fr, cu, cv, 0.2 * w_orbit, 0.2 * w_orbit, side * 0.3)
            globe = _in_ellipse(fr, cu, cv - 0.06, 0.12 * w_orbit, 0.1 * w_orbit)
            bone |= outer & ~fat & inside
            tissue[fat & inside] = FAT
            tissue[globe & inside] = CSF  # vitreous, ~5-15 HU
    w_sinus = phantom._bump(z, -0.05, 0.1, 0.3)
    if w_sinus > 0.15:
        walls = _in_ellipse(fr, 0.0, -0.58, 0.15 * w_sinus, 0.26 * w_sinus)
        air = _in_ellipse(fr, 0.0, -0.58, 0.12 * w_sinus, 0.23 * w_sinus)
        # Ethmoid cells: thin bony septa across the air.
        septa = np.abs(np.sin(fr.v * 60.0)) < 0.25
        bone |= walls & (~air | septa)
        tissue[air & ~septa] = AIR
    w_base = phantom._bump(z, -0.05, 0.12, 0.32)
    if w_base > 0.15:
        bone |= _in_ellipse(fr, 0.0, -0.22, 0.07 * w_base, 0.14 * w_base)  # clivus, sella
        for side in (-1.0, 1.0):
            petrous = _in_ellipse(fr, side * 0.42, 0.1, 0.34 * w_base, 0.075 * w_base,
                                  side * 0.6)
            mastoid = _in_ellipse(fr, side * 0.62, 0.3, 0.09 * w_base, 0.07 * w_base)
            bone |= petrous & inside
            tissue[mastoid & inside] = AIR
    tissue[bone] = SKULL
    return bone


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _sliver(blood: np.ndarray) -> bool:
    """True for a bleed at most ~2 px thick at 512 x 512 (0.8-1.2 mm) everywhere: no reader
    traces it, and what it shows is partial volume with bone or CSF, not blood."""
    factor = max(1, int(round(512 / blood.shape[0])))
    up = blood if factor == 1 else cv2.resize(blood, None, fx=factor, fy=factor,
                                               interpolation=cv2.INTER_NEAREST)
    return int(cv2.erode(up, _CROSS).sum()) < 0.2 * int(up.sum())


def _far_from_bone(tissue: np.ndarray) -> np.ndarray:
    """Bool [size, size]: pixels at least 2.5 px (at 512) from bone. Closer, a reconstruction
    kernel's bloom of the ~1,500 HU inner table adds tens to hundreds of HU."""
    not_bone = (tissue != SKULL).astype(np.uint8)
    distance = cv2.distanceTransform(not_bone, cv2.DIST_L2, 3)
    return distance >= 2.5 * tissue.shape[0] / 512.0


def _scale_at(bleed: Bleed, z: float) -> float:
    """`Bleed.scale_at` down to `MIN_Z_SCALE`: real series show a bleed's thin ends too."""
    d = (z - bleed.z_center) / bleed.z_half
    scale = math.sqrt(max(0.0, 1.0 - d * d))
    return scale if scale >= MIN_Z_SCALE else 0.0


def _paint_bleeds(tissue: np.ndarray, fr: phantom._Frame, anatomy: Anatomy, z: float,
                  bleeds: Sequence[Bleed]) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                    np.ndarray, phantom._Frame]:
    """Masks per type, blood HU [size, size] (0 off blood), the oedema mask and the frame the
    brain is drawn in.

    Space-occupying bleeds (`MASS_KINDS`) come first; the brain is then redrawn displaced by
    them (`_displace_brain`), in place in ``tissue``, and the bleeds that fill CSF spaces
    (intraventricular, subarachnoid) follow the displaced ventricles and sulci.
    """
    drawn = _drawn_bleeds([b for b in bleeds if b.kind in MASS_KINDS], fr, tissue, anatomy, z)
    brain_fr = _displace_brain(tissue, fr, anatomy, z, drawn) if drawn else fr
    drawn += _drawn_bleeds([b for b in bleeds if b.kind not in MASS_KINDS], brain_fr, tissue,
                           anatomy, z)
    type_masks: dict[str, np.ndarray] = {}
    blood_hu = np.zeros(tissue.shape, dtype=np.float32)
    oedema_all = np.zeros(tissue.shape, dtype=bool)
    for bleed, s, blood, oedema in drawn:
        prior = type_masks.get(bleed.kind)
        type_masks[bleed.kind] = blood if prior is None else (prior | blood)
        # Partial volume along z: a bleed fades towards the ends of its extent.
        blood_hu[blood.astype(bool)] = bleed.hu * (0.75 + 0.25 * s)
        if oedema is not None:
            oedema_all |= oedema
    return type_masks, blood_hu, oedema_all, brain_fr


_Drawn = tuple[Bleed, float, np.ndarray, "np.ndarray | None"]


def _drawn_bleeds(bleeds: Sequence[Bleed], fr: phantom._Frame, tissue: np.ndarray,
                  anatomy: Anatomy, z: float) -> list[_Drawn]:
    """(bleed, z scale, blood uint8, oedema or None) of each bleed this slice shows."""
    size = tissue.shape[0]
    soft = np.isin(tissue, (CSF, GREY, WHITE, VENTRICLE))
    min_area = max(4, int(round(1.5e-4 * size * size)))
    min_px = MIN_BLEED_PX_AT_512 * (size / 512.0) ** 2
    out: list[_Drawn] = []
    bone_far: np.ndarray | None = None  # a distance transform: only for extra-axial blood
    for bleed in bleeds:
        s = _scale_at(bleed, z)
        if s == 0.0:
            continue
        blood, oedema = phantom._bleed_mask(bleed, s, fr, tissue, anatomy, z)
        if not getattr(bleed, "cisterns", True):
            blood &= ~(phantom._sylvian(fr, anatomy, z) | phantom._basal_cisterns(fr, z))
        blood = phantom._clean(blood & soft, min_area)
        if blood.sum() < max(min_px, min_area) or _sliver(blood):
            continue  # this slice is bleed-free for this bleed
        if bleed.kind in ("epidural", "subdural"):
            if bone_far is None:
                bone_far = _far_from_bone(tissue)
            if bone_far[blood.astype(bool)].mean() < 0.4:
                continue  # a rim that the bone's bloom outshines: no reader traces it
        out.append((bleed, s, blood, None if oedema is None else oedema & soft))
    return out


def _displace_brain(tissue: np.ndarray, fr: phantom._Frame, anatomy: Anatomy, z: float,
                    kept: Sequence[_Drawn]) -> phantom._Frame:
    """Redraw the brain inside the inner table as the kept bleeds displace it; in place.

    The skull and the skull base stay; what lies under an extra-axial bleed is blood over
    compressed cortex (grey matter, no CSF: the blood's partial-volume edge mixes with it).
    Returns the displaced frame, in which the calcifications and the CSF-filling bleeds are
    drawn.
    """
    shift = _midline_shift(fr, kept)
    depth = [(b, s) for b, s, _, _ in kept if b.kind in ("epidural", "subdural")]
    moved, t = _displaced_frame(anatomy, fr, depth, shift)
    redrawn = phantom._anatomy_tissue(anatomy, moved, z)
    brain = fr.depth > 0
    # Sulci and the surface CSF under a compressing collection are effaced.
    effaced = (t > EFFACING_DEPTH) & (moved.depth > 0) & (moved.depth < EFFACED_SULCI)
    redrawn[effaced & (redrawn == CSF)] = GREY
    redrawn[brain & (moved.depth <= 0)] = GREY  # the compressed cortex under the blood
    tissue[brain] = redrawn[brain]
    _skull_base(tissue, fr, z)
    return moved


def _midline_shift(fr: phantom._Frame, kept: Sequence[_Drawn]) -> float:
    """Signed lateral midline shift (rho units, towards -u for a bleed on the +u side)."""
    area = sum(float(blood.sum()) for _, _, blood, _ in kept) / fr.radius_px ** 2
    side = sum(float(fr.u[blood.astype(bool)].sum()) for _, _, blood, _ in kept)
    return -math.copysign(min(MAX_MIDLINE_SHIFT, MIDLINE_SHIFT_PER_AREA * area), side)


def _displaced_frame(anatomy: Anatomy, fr: phantom._Frame,
                     extra_axial: Sequence[tuple[Bleed, float]],
                     shift: float) -> tuple[phantom._Frame, np.ndarray]:
    """The frame in which each pixel reads the normal brain at its source position.

    Two displacements, composed: the midline (falx, ventricles, deep nuclei) moves laterally
    by ``shift``, fading with the distance from the head centre (`MIDLINE_SHIFT_REACH`); and
    under an epidural or subdural of depth t the brain is compressed along each ray, its
    surface moved from the inner table to depth t, the compression strongest near the surface
    and none at the centre (source radius rho + t (rho / (rho_in - t))²).

    Returns the frame and t at each pixel (rho units, 0 away from extra-axial bleeds).
    """
    u = fr.u - shift * np.exp(-(fr.rho / MIDLINE_SHIFT_REACH) ** 2)
    v = fr.v
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    rho_in = phantom._inner_table(anatomy, theta)
    t = np.zeros_like(rho)
    for bleed, s in extra_axial:
        t = np.maximum(t, phantom.extra_axial_depth(bleed, s, theta))
    surface = np.maximum(rho_in - t, 1e-3)
    src = np.where(rho <= surface, rho + t * np.clip(rho / surface, 0.0, 1.0) ** 2, rho + t)
    ratio = src / np.maximum(rho, 1e-6)
    moved = phantom._Frame((u * ratio).astype(np.float32), (v * ratio).astype(np.float32),
                           src.astype(np.float32), theta.astype(np.float32), rho_in,
                           (rho_in - src).astype(np.float32), fr.radius_px)
    return moved, t


def render_slice(anatomy: Anatomy, style: ScanStyle, z: float, size: int,
                 bleeds: Sequence[Bleed], rng: np.random.Generator) -> PhantomSlice:
    """One realistic slice of a patient at position z (see `phantom.render_slice`).

    The mask is the blood region before the partial-volume blur, so it stays exactly the
    pixels drawn as blood (`tissue == BLOOD`); calcifications are never inside it.

    Raises:
      PhantomError: size < 32.
    """
    if size < 32:
        raise PhantomError(f"phantom size must be >= 32 pixels, got {size}")
    anatomy = replace(anatomy, inner_scale=inner_scale(z))
    fr = _frame(anatomy, z, size)
    bone = _bone_fraction(anatomy, fr, z)
    tissue = phantom._anatomy_tissue(anatomy, fr, z)
    base_bone = _skull_base(tissue, fr, z)
    type_masks, blood_hu, oedema, brain_fr = _paint_bleeds(tissue, fr, anatomy, z, bleeds)
    mask = np.zeros(tissue.shape, dtype=np.uint8)
    for m in type_masks.values():
        mask |= m
    tissue[oedema & (mask == 0)] = OEDEMA
    under = tissue.copy()  # what the blood displaced: the partner of its partial volume
    tissue[mask.astype(bool)] = BLOOD
    calc_hu = _calcifications(tissue, brain_fr, style, z)
    hu = _hu_image(anatomy, style, fr, under, (base_bone, bone), mask, blood_hu, calc_hu, z, rng)
    types = tuple(t for t in TYPE_NAMES if t in type_masks)
    return PhantomSlice(hu, mask, types, {t: type_masks[t] for t in types}, tissue, float(z))


def _calcifications(tissue: np.ndarray, fr: phantom._Frame, style: ScanStyle,
                    z: float) -> np.ndarray:
    """Paint calcifications (never over blood) into ``tissue``; their HU, 0 elsewhere."""
    hu = np.zeros(tissue.shape, dtype=np.float32)
    free = np.isin(tissue, (CSF, GREY, WHITE, VENTRICLE, OEDEMA))
    for cu, cv, r, value, (lo, hi) in style.calcifications:
        if lo <= z <= hi:
            spot = _in_ellipse(fr, cu, cv, r, r * 0.8) & free
            hu[spot] = value
    if style.falx is not None and z > 0.5:
        v_lo, v_hi, value = style.falx
        line = (np.abs(fr.u) < max(0.006, 1.0 / fr.radius_px)) & (fr.v > v_lo) & (fr.v < v_hi)
        hu[line & free] = value
    tissue[hu > 0] = CALCIFICATION
    return hu


def _bone_fraction(anatomy: Anatomy, fr: phantom._Frame, z: float) -> np.ndarray:
    """Share of the slice's thickness (`SLICE_THICKNESS`, a box profile) that is skull at each
    pixel, [size, size] float32. Above the widest slice the head's outer surface and the inner
    table narrow with z (`head_scale`, `inner_scale`), so a pixel at radius a (units of the
    widest head) lies in bone from where the inner table has shrunk inside it up to where the
    outer table has: the overlap of that z interval with the slice, solved in closed form. At
    and below the widest slice the skull runs nearly parallel to z: the slice's own skull."""
    outer = 1.0 - anatomy.scalp
    here = ((fr.rho >= fr.rho_in) & (fr.rho <= outer)).astype(np.float32)
    half = 0.5 * SLICE_THICKNESS
    if z - half <= 0.45 or head_scale(z) <= 0.0:
        return here
    a = fr.rho * np.float32(head_scale(z))
    inner0 = phantom._inner_table(replace(anatomy, inner_scale=1.0), fr.theta)

    def crossing(ratio: np.ndarray, span: float) -> np.ndarray:  # z where a surface meets radius a
        return 0.45 + span * np.sqrt(np.clip(1.0 - ratio * ratio, 0.0, 1.0))

    z_in = crossing(a / inner0, 0.6 - INNER_TOP_GAP)  # bone from here up
    z_out = np.where(a < outer, crossing(a / outer, 0.6), 0.0)  # ... up to here
    overlap = np.minimum(z + half, z_out) - np.maximum(z - half, z_in)
    return np.clip(overlap / SLICE_THICKNESS, 0.0, 1.0).astype(np.float32)


def _through_plane_bone(hu: np.ndarray, anatomy: Anatomy, fr: phantom._Frame, skull: np.ndarray,
                        share: np.ndarray) -> np.ndarray:
    """HU with the skull's through-plane partial volume: each pixel mixes bone (its own value
    on the skull, the tables' `TABLE_HU` off it) with soft tissue (its own value off the skull,
    CSF inside the skull's middle and scalp outside on it) by `_bone_fraction`'s share."""
    mixed = (share > 0.0) & ((share < 1.0) | ~skull)
    if not mixed.any():
        return hu
    middle = 0.5 * (fr.rho_in + 1.0 - anatomy.scalp)
    soft = np.where(fr.rho < middle, anatomy.hu["csf"], anatomy.hu["scalp"]).astype(np.float32)
    bone = np.where(skull, hu, np.float32(TABLE_HU))
    base = np.where(skull, soft, hu)
    return np.where(mixed, share * bone + (1.0 - share) * base, hu).astype(np.float32)


def _holder(anatomy: Anatomy, style: ScanStyle, size: int) -> np.ndarray:
    """Bool [size, size]: the head holder's shell, a U under the occiput fixed to the scanner
    (not turned with the head), its arc a half circle round the head centre and its sides
    straight up; clipped to the reconstruction circle. All zero without a holder."""
    if style.holder is None:
        return np.zeros((size, size), dtype=bool)
    dx, gap, thickness, _, wall = style.holder
    return _holder_shell(anatomy.center[0] + dx, anatomy.center[1], max(anatomy.semi_axes) + gap,
                         max(0.5 / size, 0.5 * thickness), wall, size)


@functools.lru_cache(maxsize=4)  # one series' slices share it (~8 ms a slice at 512 px)
def _holder_shell(cx: float, cy: float, radius: float, half: float, wall: float,
                  size: int) -> np.ndarray:
    """`_holder`'s shell in image fractions: centre, arc radius, half thickness, wall height."""
    ys, xs = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    r = np.hypot(xs - cx, ys - cy)
    out = (np.abs(r - radius) <= half) & (ys >= cy)
    out |= (np.abs(np.abs(xs - cx) - radius) <= half) & (ys < cy) & (ys >= cy - wall)
    out &= (xs - 0.5) ** 2 + (ys - 0.5) ** 2 <= 0.25
    out.flags.writeable = False
    return out


def _hu_image(anatomy: Anatomy, style: ScanStyle, fr: phantom._Frame, under: np.ndarray,
              bones: tuple[np.ndarray, np.ndarray], mask: np.ndarray, blood_hu: np.ndarray,
              calc_hu: np.ndarray, z: float, rng: np.random.Generator) -> np.ndarray:
    """HU from tissue: values, bone (skull base; the skull's through-plane partial volume,
    ``bones``), the head holder, partial-volume blood, calcifications, streaks, kernel."""
    base_bone, bone_share = bones
    size = under.shape[0]
    px = size / 512.0
    lut = np.array([
        phantom.AIR_HU, anatomy.hu["scalp"], 0.0, anatomy.hu["csf"], anatomy.hu["grey"],
        anatomy.hu["white"], anatomy.hu["ventricle"], float(rng.uniform(*OEDEMA_HU)),
        0.0, 0.0, float(rng.uniform(-110.0, -80.0)),
    ], dtype=np.float32)
    hu = lut[under]
    skull = under == SKULL
    t = np.clip((1.0 - anatomy.scalp - fr.rho) / np.maximum(
        1.0 - anatomy.scalp - fr.rho_in, 1e-3), 0.0, 1.0)
    hu[skull] = (TABLE_HU - 0.5 * TABLE_HU * np.sin(np.pi * t) ** 2)[skull]
    # Before the blood: blood by an oblique table keeps its own HU (the tables' share mixed
    # into blood too made the demo's masks collapse on validation, docs/benchmarks.md).
    hu = _through_plane_bone(hu, anatomy, fr, skull, bone_share)
    hu[base_bone] = BASE_BONE_HU
    if style.holder is not None:
        hu[_holder(anatomy, style, size) & (under == AIR)] = style.holder.hu
    if mask.any():
        # Partial volume in-plane: blood mixes with what it displaced across a blurred edge.
        sigma = style.pv_sigma * px
        frac = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
        level = cv2.GaussianBlur(blood_hu, (0, 0), sigma) / np.maximum(frac, 1e-6)
        near = frac > 1e-3
        hu[near] = (hu * (1.0 - frac) + level * frac)[near]
    calc = calc_hu > 0
    hu[calc] = calc_hu[calc]
    head = fr.rho <= 1.0
    coarse = rng.normal(0.0, 2.0, size=(8, 8)).astype(np.float32)
    hu += np.where(head, cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0.0)
    hu += _streaks(fr, style, z, rng) * head
    blur, sharpen, _, corr = KERNELS[style.kernel]
    hu = cv2.GaussianBlur(hu, (0, 0), max(0.5, blur * px), borderType=cv2.BORDER_REPLICATE)
    if sharpen:
        hu = hu + sharpen * (hu - cv2.GaussianBlur(hu, (0, 0), 1.2 * px))
    white = rng.normal(0.0, 1.0, size=hu.shape).astype(np.float32)
    noise = cv2.GaussianBlur(white, (0, 0), max(0.3, corr * px))
    noise *= style.noise_sigma / max(float(noise.std()), 1e-6)
    return (hu + noise + style.hu_offset).astype(np.float32)


def _streaks(fr: phantom._Frame, style: ScanStyle, z: float,
             rng: np.random.Generator) -> np.ndarray:
    """Beam-hardening streaks, HU [size, size]: a dark band between the petrous bones and
    thin dark/bright lines through the posterior fossa (strongest at the skull base)."""
    out = np.zeros(fr.u.shape, dtype=np.float32)
    w = style.streaks * float(np.clip((0.34 - z) / 0.2, 0.0, 1.0))
    if w <= 0.0:
        return out
    # Hounsfield bar between the petrous ridges: a dark band across the posterior fossa.
    dv = fr.v - 0.12
    out -= (w * float(rng.uniform(12.0, 30.0)) * np.exp(-(dv / 0.05) ** 2)
            * (np.abs(fr.u) < 0.45)).astype(np.float32)
    width = 1.2 / fr.radius_px
    for _ in range(int(rng.integers(4, 10))):
        angle = float(rng.uniform(0, np.pi))
        u0, v0 = float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.3, 0.4))
        dist = np.abs((fr.u - u0) * math.sin(angle) - (fr.v - v0) * math.cos(angle))
        amp = w * float(rng.uniform(-25.0, 12.0))
        out += (amp * np.exp(-(dist / width) ** 2)).astype(np.float32)
    return out
