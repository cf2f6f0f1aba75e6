"""Tests for data_build.synth.phantom: anatomy, where each bleed lies, contrast, determinism."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from data_build.schema import TYPE_NAMES
from data_build.synth import phantom
from data_build.synth.phantom import (
    BLOOD,
    CSF,
    GREY,
    OEDEMA,
    SKULL,
    VENTRICLE,
    WHITE,
    PhantomError,
    make_patient,
    make_slice,
    random_anatomy,
    random_bleed,
    render_slice,
)
from data_build.windows import PRESETS, window

SIZE = 128


def _slice(types: tuple[str, ...], seed: int = 0, size: int = SIZE) -> phantom.PhantomSlice:
    return make_slice(types, size, np.random.default_rng(seed))


def _pair(kind: str, seed: int = 0) -> tuple[phantom.PhantomSlice, phantom.PhantomSlice]:
    """The same head and noise with and without one bleed (to see what the bleed replaced)."""
    rng = np.random.default_rng(seed)
    anatomy = random_anatomy(rng)
    z = 0.42
    bleed = random_bleed(kind, rng, z, 0.2)
    with_bleed = render_slice(anatomy, z, SIZE, (bleed,), np.random.default_rng(1))
    without = render_slice(anatomy, z, SIZE, (), np.random.default_rng(1))
    assert with_bleed.types == (kind,), "fixture bleed too small; pick another seed"
    return with_bleed, without


@pytest.mark.parametrize("kind", TYPE_NAMES)
def test_each_type_alone(kind: str) -> None:
    s = _slice((kind,))
    assert s.types == (kind,) and s.folder_type == kind
    assert s.hu.dtype == np.float32 and s.hu.shape == (SIZE, SIZE)
    assert s.mask.dtype == np.uint8 and set(np.unique(s.mask)) == {0, 1}
    np.testing.assert_array_equal(s.mask, s.type_masks[kind])
    np.testing.assert_array_equal(s.mask.astype(bool), s.tissue == BLOOD)
    # Big enough to segment at 1/4 resolution, small enough to be a plausible bleed.
    assert 0.001 <= s.mask.mean() <= 0.06


def test_normal_and_multi() -> None:
    normal = _slice(())
    assert normal.types == () and normal.folder_type == "normal" and normal.mask.sum() == 0
    assert not (normal.tissue == BLOOD).any()
    multi = _slice(("subdural", "intraparenchymal"), seed=3)
    assert multi.types == ("intraparenchymal", "subdural") and multi.folder_type == "multi"
    union = multi.type_masks["intraparenchymal"] | multi.type_masks["subdural"]
    np.testing.assert_array_equal(multi.mask, union)


def test_multi_patients_draw_types_by_rsna_like_weights() -> None:
    # Epidural blood is rare beside other types in RSNA's labels; the other four are common.
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(phantom.TYPE_NAMES, 0)
    for _ in range(400):
        for bleed in phantom.patient_bleeds("multi", rng, 0.3, 0.6):
            counts[bleed.kind] += 1
    assert abs(sum(phantom.MULTI_TYPE_WEIGHTS) - 1.0) < 1e-9
    assert counts["epidural"] < 0.4 * min(v for k, v in counts.items() if k != "epidural")
    assert all(counts[t] > 150 for t in phantom.TYPE_NAMES if t != "epidural"), counts


def test_tissue_values_in_hu() -> None:
    s = _slice((), seed=5, size=256)
    kernel = np.ones((3, 3), np.uint8)

    def median(code: int) -> float:
        core = cv2.erode((s.tissue == code).astype(np.uint8), kernel).astype(bool)
        return float(np.median(s.hu[core]))

    assert abs(float(np.median(s.hu[s.tissue == 0])) - (-1000.0)) < 5
    assert 20 <= median(WHITE) <= 36
    assert 30 <= median(GREY) <= 46
    assert median(GREY) > median(WHITE) + 4  # grey/white differentiation
    assert -5 <= median(VENTRICLE) <= 15
    skull = s.hu[s.tissue == SKULL]
    assert 700 <= float(np.median(skull)) <= 1500 and skull.max() > 1100
    residual = s.hu[cv2.erode((s.tissue == WHITE).astype(np.uint8), kernel).astype(bool)]
    assert 1.0 < float(np.std(residual)) < 10.0  # noise of a few HU, not none, not huge


@pytest.mark.parametrize("kind", ["epidural", "subdural"])
def test_extra_axial_bleeds_lie_against_the_inner_skull(kind: str) -> None:
    s, plain = _pair(kind, seed=2)
    skull = plain.tissue == SKULL
    touching = cv2.dilate(s.mask, np.ones((3, 3), np.uint8)).astype(bool) & skull
    assert touching.any()
    assert not (s.mask.astype(bool) & skull).any()  # under the bone, not in it
    n, labels = cv2.connectedComponents(s.mask)
    for k in range(1, n):  # every region, not just one, is against the bone
        region = (labels == k).astype(np.uint8)
        assert (cv2.dilate(region, np.ones((3, 3), np.uint8)).astype(bool) & skull).any()


def test_epidural_is_thicker_and_shorter_than_subdural() -> None:
    def shape(kind: str) -> tuple[float, float]:
        s, _ = _pair(kind, seed=4)
        dist = cv2.distanceTransform(s.mask, cv2.DIST_L2, 3)
        thickness = 2.0 * float(dist.max())
        return thickness, float(s.mask.sum()) / thickness  # ~ arc length

    edh_thick, edh_len = shape("epidural")
    sdh_thick, sdh_len = shape("subdural")
    assert edh_thick > sdh_thick
    assert edh_len / edh_thick < sdh_len / sdh_thick  # lens vs crescent


def test_intraventricular_blood_is_in_dependent_ventricles() -> None:
    s, plain = _pair("intraventricular", seed=1)
    ventricles = plain.tissue == VENTRICLE
    assert (s.mask.astype(bool) <= ventricles).all()
    rows = np.nonzero(ventricles)[0]
    blood_rows = np.nonzero(s.mask)[0]
    assert blood_rows.mean() > rows.mean()  # posterior (down on screen) in a supine patient


def test_intraparenchymal_has_oedema_rim() -> None:
    s, plain = _pair("intraparenchymal", seed=0)
    assert not (s.mask.astype(bool) & np.isin(plain.tissue, [SKULL, 0])).any()
    oedema = s.tissue == OEDEMA
    assert oedema.any()
    ring = cv2.dilate(s.mask, np.ones((5, 5), np.uint8)).astype(bool) & ~s.mask.astype(bool)
    assert (ring & oedema).sum() > 0.5 * ring.sum()  # the rim surrounds the blob
    core = cv2.erode(oedema.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert 8.0 < float(s.hu[core].mean()) < 27.0  # hypodense vs brain (~28-40 HU)


def test_subarachnoid_blood_fills_sulci_at_the_surface() -> None:
    s, plain = _pair("subarachnoid", seed=0)
    inside = np.isin(plain.tissue, [CSF, GREY, WHITE])
    blood = s.mask.astype(bool)
    assert (blood & inside).sum() == blood.sum()
    # Thin lines: no pixel of blood is far from the bleed's edge.
    dist = cv2.distanceTransform(s.mask, cv2.DIST_L2, 3)
    assert dist.max() <= 3.0
    # Near the brain surface: close to the skull compared with the brain's size.
    skull_dist = cv2.distanceTransform((plain.tissue != SKULL).astype(np.uint8), cv2.DIST_L2, 3)
    assert float(np.median(skull_dist[blood])) < 0.08 * SIZE


def test_subarachnoid_blood_fills_the_basal_cisterns_and_a_sylvian_fissure() -> None:
    rng = np.random.default_rng(4)
    anatomy = random_anatomy(rng)
    centre = (slice(3 * SIZE // 8, 5 * SIZE // 8), slice(3 * SIZE // 8, 5 * SIZE // 8))
    # Low slices show CSF cisterns around the midbrain; the level of the ventricles shows none.
    low = render_slice(anatomy, 0.22, SIZE, (), np.random.default_rng(1))
    mid = render_slice(anatomy, 0.45, SIZE, (), np.random.default_rng(1))
    assert (low.tissue[centre] == CSF).sum() > 40 and (mid.tissue[centre] == CSF).sum() < 5
    for z, angle in ((0.22, 0.3), (0.38, np.pi - 0.3)):  # bleed on the image right, then left
        bleed = phantom.Bleed("subarachnoid", angle, 0.6, 0.025, 0.0, 70.0, z, 0.2)
        plain = render_slice(anatomy, z, SIZE, (), np.random.default_rng(1))
        s = render_slice(anatomy, z, SIZE, (bleed,), np.random.default_rng(1))
        blood = s.mask.astype(bool)
        # Blood only replaces CSF spaces and brain, never skull or ventricle.
        assert not (blood & np.isin(plain.tissue, [SKULL, VENTRICLE])).any()
        if z < 0.3:  # the basal cisterns fill, deep in the centre of the head
            cisterns = plain.tissue[centre] == CSF
            assert (blood[centre] & cisterns).sum() > 0.8 * cisterns.sum()
        else:  # the Sylvian fissure on the bleed's side: a cleft reaching in from the side
            side = blood[:, SIZE // 2:] if np.cos(angle) > 0 else blood[:, : SIZE // 2][:, ::-1]
            assert side[:, SIZE // 8: SIZE // 4].sum() > 3  # between the surface and the insula
    # Where a ventricle overlaps a cistern or fissure, the blood stays out of the ventricle.
    for seed in range(6):
        rng = np.random.default_rng(seed)
        head = random_anatomy(rng)
        for z in (0.2, 0.26, 0.32, 0.38):
            bleed = phantom.Bleed("subarachnoid", 0.0, 0.6, 0.025, 0.0, 70.0, z, 0.2)
            plain = render_slice(head, z, SIZE, (), np.random.default_rng(1))
            s = render_slice(head, z, SIZE, (bleed,), np.random.default_rng(1))
            assert not (s.mask.astype(bool) & (plain.tissue == VENTRICLE)).any(), (seed, z)


@pytest.mark.parametrize("kind", TYPE_NAMES)
def test_bleeds_are_visible_in_brain_and_subdural_windows(kind: str) -> None:
    s, plain = _pair(kind, seed=0)
    blood = cv2.erode(s.mask, np.ones((2, 2), np.uint8)).astype(bool)
    if not blood.any():
        blood = s.mask.astype(bool)
    brain = np.isin(plain.tissue, [GREY, WHITE]) & ~s.mask.astype(bool)
    for name, minimum in (("brain_window", 0.2), ("subdural_window", 0.07)):
        preset = PRESETS[name]
        unit = window(s.hu, preset.level, preset.width)
        contrast = float(unit[blood].mean() - unit[brain].mean())
        assert contrast > minimum, (name, contrast)


def test_patient_slices_and_smooth_bleed_size() -> None:
    saw_bleed_free_end = False
    for seed in range(6):
        slices = make_patient("epidural", 8, 64, np.random.default_rng(seed))
        zs = [s.z for s in slices]
        assert all(b > a for a, b in zip(zs, zs[1:]))
        areas = [int(s.mask.sum()) for s in slices]
        assert max(areas) > 0
        peak = int(np.argmax(areas))
        # Rises to one peak, then falls (cross-sections of one bleed).
        assert all(b >= a * 0.8 for a, b in zip(areas[:peak], areas[1:peak + 1]))
        assert all(b <= a * 1.25 for a, b in zip(areas[peak:], areas[peak + 1:]))
        for s in slices:
            assert (s.types == ()) == (s.mask.sum() == 0)
        saw_bleed_free_end |= any(s.types == () for s in slices)
    assert saw_bleed_free_end  # bleeding patients also have slices labelled bleed-free


def test_patients_differ_and_seed_fixes_everything() -> None:
    a = make_patient("multi", 2, 64, np.random.default_rng(7))
    b = make_patient("multi", 2, 64, np.random.default_rng(7))
    c = make_patient("multi", 2, 64, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0].hu, b[0].hu)
    np.testing.assert_array_equal(a[1].mask, b[1].mask)
    assert not np.array_equal(a[0].hu, c[0].hu)
    first = random_anatomy(np.random.default_rng(1))
    second = random_anatomy(np.random.default_rng(2))
    assert first.semi_axes != second.semi_axes and first.rotation != second.rotation


def test_ventricles_change_with_slice_position() -> None:
    rng = np.random.default_rng(0)
    anatomy = random_anatomy(rng)
    areas = {z: int((render_slice(anatomy, z, 64, (), rng).tissue == VENTRICLE).sum())
             for z in (0.1, 0.4, 0.55, 0.9)}
    assert areas[0.1] < areas[0.4] and areas[0.9] == 0 and areas[0.55] > 0
    low = render_slice(anatomy, 0.4, 64, (), rng).tissue == VENTRICLE
    high = render_slice(anatomy, 0.58, 64, (), rng).tissue == VENTRICLE
    assert not np.array_equal(low, high)


def test_errors_are_value_errors_with_clear_messages() -> None:
    assert issubclass(PhantomError, ValueError)
    with pytest.raises(PhantomError, match="unknown hemorrhage type"):
        make_slice(("chronic",), 64)
    with pytest.raises(PhantomError, match=">= 32"):
        make_slice((), 16)
    with pytest.raises(PhantomError, match="unknown folder type"):
        make_patient("haemorrhage", 2, 64, np.random.default_rng(0))
    with pytest.raises(PhantomError, match="at least one slice"):
        make_patient("normal", 0, 64, np.random.default_rng(0))


def test_scale_profile_of_a_bleed() -> None:
    bleed = random_bleed("subdural", np.random.default_rng(0), 0.5, 0.2)
    assert bleed.scale_at(0.5) == 1.0
    assert bleed.scale_at(0.75) == 0.0
    assert math.isclose(bleed.scale_at(0.6), math.sqrt(1 - 0.25))
