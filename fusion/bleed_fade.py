"""Bleed fading: a training augmentation that lowers a traced bleed's density towards the brain
around it, so the mask head sees faint and iso-dense bleeds it would otherwise meet rarely.

Why: a hematoma's density falls with its age; a subacute subdural passes through an iso-dense
phase (days to ~3 weeks) where a reader finds it by its shape and the mass effect, not its
brightness. On real slices the bleed-to-brain contrast is 12 / 20 / 28 HU (p10 / p50 / p90,
issue 10), and a small training set holds few faint bleeds: the proxy's fold 0 missed its
iso-dense subdurals on every seed because its training folds held one (docs/benchmarks.md,
"An empty-mask rescue gated on the class head"). The mask says where the blood is, so a faded
copy of a traced bleed is a labelled faint bleed with the anatomy, texture and mass effect of a
real one.

The shift, per chosen slice (`AugmentConfig.bleed_fade_prob` of the slices with a traced mask):
with ``contrast`` the median HU inside the mask minus the median HU of a ring of brain around it
(both from the narrowest window that shows 10-70 HU unclipped: the brain window of the default
presets), every pixel moves by ``-(1 - alpha) x contrast x w``, alpha uniform in
[`bleed_fade_min`, 1] and w the mask blurred over ~1 mm, so the edge fades as smoothly as partial
volume does and no rim of the old density is left. A shift, not a scaling towards the brain:
the bleed keeps its noise and texture, so a faded bleed is not told by being smoother. The ring
is issue 10's (`data_build.synth.stats.brain_ring`). On render records only pixels the
estimating window shows unclipped move (bone, air and fat keep their values, and so do blood
pixels over its ceiling, ~79 HU in the brain window); in each channel a pixel that channel
clipped takes its HU from the estimating window where that HU is clipped there too, and keeps
its grey where not (skull that JPEG ringing left just under the brain window's ceiling). HU
records (``is_hu``) are shifted in HU from 0 to 100 HU (blood included, bone not) and windowed
again. Labels, masks and areas do not change: a faded bleed is the same bleed.

Off in every preset: on the low-data proxy it found none of the iso-dense subdurals it was
meant for and put masks on 2.3-4.2x as many unseen normal slices (docs/benchmarks.md, "Bleed
fading").
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import cv2
import numpy as np

from data_build import windows
from data_build.synth import stats

log = logging.getLogger(__name__)

#: The HU range the estimating window must show unclipped: brain (~30-40) to acute blood (~75).
_SHOWN_HU = (10.0, 70.0)
#: On HU records the fade moves pixels up to this HU: clotted blood reaches ~90 HU, bone and
#: calcification lie above.
_BLOOD_MAX_HU = 100.0
#: The edge's blur at 512 px (~2 pixels of ~0.45 mm), scaled with the slice's size. The ring of
#: brain is issue 10's measurement (`data_build.synth.stats.brain_ring`, 7 pixels at 512).
_EDGE_SIGMA_PX_512 = 2.0


def estimating_channel(presets: Sequence[windows.Window]) -> int | None:
    """Index of the narrowest window showing `_SHOWN_HU` unclipped, or None if none does."""
    lo, hi = _SHOWN_HU
    shown = [(p.width, k) for k, p in enumerate(presets)
             if p.level - p.width / 2.0 <= lo and p.level + p.width / 2.0 >= hi]
    return min(shown)[1] if shown else None


def _edge_sigma(side: int) -> float:
    """The edge blur's sigma in pixels on a slice `side` pixels high."""
    return max(0.5, _EDGE_SIGMA_PX_512 * side / 512.0)


def _edge_weight(mask: np.ndarray, side: int) -> np.ndarray:
    """[H, W] float32 in [0, 1]: 1 inside the mask, falling off smoothly over ~1 mm outside."""
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), _edge_sigma(side))
    return np.maximum(blurred * 2.0, mask).clip(0.0, 1.0)


def contrast_shift(hu: np.ndarray, shown: np.ndarray, mask: np.ndarray, alpha: float,
                   side: int | None = None) -> np.ndarray | None:
    """[H, W] float32 HU to subtract so the bleed keeps `alpha` of its contrast, or None when
    the contrast cannot be measured (no shown pixel in the mask or its ring) or is not positive.

    Args:
      hu: [H, W] HU as the estimating window shows it.
      shown: [H, W] bool, the pixels that window did not clip.
      mask: [H, W] bool, the traced bleed.
      alpha: the share of the contrast to keep, in [0, 1].
      side: the whole slice's height in pixels when these are a crop of it (default: theirs).
    """
    side = side or mask.shape[0]
    inside, ring = mask & shown, stats.brain_ring(hu, mask, side) & shown
    if not inside.any() or not ring.any():
        return None
    contrast = float(np.median(hu[inside]) - np.median(hu[ring]))
    if contrast <= 0.0:
        return None
    return ((1.0 - alpha) * contrast * _edge_weight(mask, side) * shown).astype(np.float32)


def _fade_render(image: np.ndarray, mask: np.ndarray, alpha: float, presets: Sequence[windows.Window],
                 k_est: int, side: int) -> None:
    """Fade one rendered slice (or crop) [H, W, C] in place (unchanged when its contrast is
    unmeasurable)."""
    est = presets[k_est]
    grey_est = image[..., k_est]
    shown = ~windows.render_clipped(grey_est)
    hu_est = windows.unwindow(grey_est, est.level, est.width)
    shift = contrast_shift(hu_est, shown, mask, alpha, side)
    if shift is None:
        return
    moving = shift > 0.0
    for k, p in enumerate(presets):
        grey = image[..., k]
        clipped = windows.render_clipped(grey)
        # A pixel this channel clipped takes the estimating window's HU only where that HU is
        # clipped here too, on the same side (a bleed above 60 HU in a 20-60 HU window); where
        # they disagree (JPEG ringing left skull at 77 HU in the brain window) it keeps its grey.
        est_here = windows.window(hu_est, p.level, p.width)
        agree = windows.render_clipped(est_here) & ((grey >= 0.5) == (est_here >= 0.5))
        hu = np.where(clipped, hu_est, windows.unwindow(grey, p.level, p.width))
        moved = windows.window(hu - shift, p.level, p.width)
        image[..., k] = np.where(moving & (~clipped | agree), moved, grey)


def _fade_hu(hu: np.ndarray, mask: np.ndarray, alpha: float, side: int) -> bool:
    """Fade one HU slice (or crop) [H, W] in place; False when its contrast is unmeasurable."""
    blood_or_brain = (hu >= stats.RING_HU_RANGE[0]) & (hu <= _BLOOD_MAX_HU)
    shift = contrast_shift(hu, blood_or_brain, mask, alpha, side)
    if shift is None:
        return False
    hu -= shift
    return True


def fade_bleeds(batch: dict[str, Any], prob: float, min_alpha: float, rng: np.random.Generator,
                presets: Sequence[windows.Window]) -> dict[str, Any]:
    """Fade the traced bleeds of a share `prob` of a batch's masked slices.

    Args:
      batch: a batched reader dict: image [B, H, W, C] float32 in [0, 1], mask [B, H, W, 1],
        is_hu [B] and, for DICOM shards, hu [B, H, W, 1].
      prob: probability that a slice with a non-empty mask is faded.
      min_alpha: the least share of its contrast a faded bleed keeps (alpha ~ U[min_alpha, 1]).
      rng: the batch's generator; two draws per slice whatever is faded, so the stream after
        this step does not depend on the data.
      presets: the image channels' windows.

    Returns:
      A new dict: image (and hu) replaced by faded copies where a slice was faded; the others
      and every other key are the input's.
    """
    b = batch["image"].shape[0]
    chosen = rng.uniform(size=b) < prob
    alphas = rng.uniform(min_alpha, 1.0, size=b)
    masks = batch["mask"][..., 0] > 0.5
    picked = np.flatnonzero(chosen & masks.any(axis=(1, 2)))
    if not picked.size:
        return batch
    out = dict(batch)
    image = out["image"] = batch["image"].copy()
    is_hu = batch.get("is_hu", np.zeros(b))
    k_est = estimating_channel(presets)
    if "hu" in batch:
        out["hu"] = batch["hu"].copy()
    side = masks.shape[1]  # the slices' height (square at the training size)
    for i in picked:
        box = _box(masks[i])
        if "hu" in batch and is_hu[i] > 0.5:
            hu = out["hu"][i][box]
            if _fade_hu(hu[..., 0], masks[i][box], float(alphas[i]), side):
                image[i][box] = windows.apply_windows(hu, presets).astype(np.float32)
        elif k_est is not None:
            _fade_render(image[i][box], masks[i][box], float(alphas[i]), presets, k_est, side)
        else:
            _warn_no_window(presets)
    return out


def _box(mask: np.ndarray) -> tuple[slice, slice]:
    """The mask's bounding box grown by the ring and the edge's blur (4 sigma): all a fade
    reads or moves (beyond it the shift is under 1e-4 of the contrast), at a fraction of the
    whole slice's CPU."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    side = mask.shape[0]
    grow = int(math.ceil(max(stats.ring_width(side), 4.0 * _edge_sigma(side)))) + 2
    return (slice(max(rows[0] - grow, 0), rows[-1] + grow + 1),
            slice(max(cols[0] - grow, 0), cols[-1] + grow + 1))


_warned: set[tuple[windows.Window, ...]] = set()


def _warn_no_window(presets: Sequence[windows.Window]) -> None:
    key = tuple(presets)
    if key not in _warned:
        _warned.add(key)
        shown = ", ".join(f"{p.level:g}/{p.width:g}" for p in presets)
        log.warning("bleed fading (augment.bleed_fade_prob) skipped on render records: no channel's "
                    "window (level/width HU: %s) shows %g-%g HU unclipped; the brain window, 40/80, "
                    "does. Add one to the shards' windows or set augment.bleed_fade_prob to 0.",
                    shown, *_SHOWN_HU)
