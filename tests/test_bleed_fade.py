"""fusion.bleed_fade: a traced bleed loses the drawn share of its contrast, nothing else moves."""
from __future__ import annotations

import numpy as np
import pytest

from data_build import windows
from fusion.augment_numpy import augment_batch
from fusion.bleed_fade import contrast_shift, estimating_channel, fade_bleeds
from fusion.config import AugmentConfig, ConfigError

PRESETS = [windows.PRESETS[n] for n in windows.WINDOW_NAMES]
SIZE = 64
BRAIN_HU, BLEED_HU = 35.0, 60.0


def _slice(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[H, W] HU (bone rim, brain, a noisy bleed disc) and its [H, W] bool mask."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    hu = np.where(r < 28, BRAIN_HU, 1000.0).astype(np.float32)
    mask = np.hypot(yy - 30, xx - 34) < 8
    noise = np.random.default_rng(seed).normal(0.0, 3.0, hu.shape).astype(np.float32)
    hu = np.where(mask, BLEED_HU + noise, hu)
    return hu, mask


def _batch(hu_record: bool) -> dict:
    """Two slices: one with the bleed, one without a mask."""
    hu, mask = _slice()
    hus = np.stack([hu, hu])[..., None]
    image = np.stack([windows.apply_windows(h, PRESETS) for h in hus]).astype(np.float32)
    if not hu_record:  # rendered: 8-bit greys, as decoded from the drop's JPEGs
        image = np.round(image * 255.0) / 255.0
    masks = np.stack([mask, np.zeros_like(mask)])[..., None].astype(np.float32)
    batch = {"image": image.astype(np.float32), "mask": masks, "area_fraction": np.array([0.05, 0.0]),
             "labels": np.ones((2, 6), np.float32), "is_hu": np.full(2, float(hu_record))}
    if hu_record:
        batch["hu"] = hus
    return batch


def _alphas(seed: int, n: int, min_alpha: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rng.uniform(size=n)
    return rng.uniform(min_alpha, 1.0, size=n)


def _brain_hu(image: np.ndarray) -> np.ndarray:
    p = PRESETS[0]
    return windows.unwindow(image[..., 0], p.level, p.width)


def test_estimating_channel_is_the_narrowest_window_showing_brain_and_blood() -> None:
    assert estimating_channel(PRESETS) == 0
    assert estimating_channel([PRESETS[2], PRESETS[1]]) == 1
    assert estimating_channel([PRESETS[3]]) is None  # 20-60 HU clips acute blood


@pytest.mark.parametrize("hu_record", [False, True])
def test_the_bleed_keeps_alpha_of_its_contrast(hu_record: bool) -> None:
    batch = _batch(hu_record)
    out = fade_bleeds(batch, 1.0, 0.2, np.random.default_rng(7), PRESETS)
    alpha = _alphas(7, 2, 0.2)[0]
    mask = batch["mask"][0, ..., 0] > 0
    before, after = _brain_hu(batch["image"][0]), _brain_hu(out["image"][0])
    contrast = np.median(before[mask]) - BRAIN_HU
    assert np.median(after[mask]) - BRAIN_HU == pytest.approx(alpha * contrast, abs=0.6)
    # a shift, not a squeeze: the bleed keeps its texture, and its edge pixels move in full
    assert np.std(after[mask]) == pytest.approx(np.std(before[mask]), rel=0.05)
    drop = (before - after)[mask]
    assert drop.min() > 0.95 * (1.0 - alpha) * contrast - 0.4  # 0.4 HU: the 8-bit renders
    # every channel tells the same HU where it shows it (a channel's clipped pixels take the
    # HU of the brain window: the 20-60 HU window clips half of this bleed before fading)
    for k in (1, 3):
        p, grey = PRESETS[k], out["image"][0, ..., k]
        shown = mask & (grey > 0.02) & (grey < 0.98)
        hu_k = windows.unwindow(grey, p.level, p.width)
        np.testing.assert_allclose(hu_k[shown], after[shown], atol=p.width / 255.0 + 0.01)
    if hu_record:
        np.testing.assert_allclose(out["image"][0], windows.apply_windows(out["hu"][0], PRESETS), atol=1e-6)


@pytest.mark.parametrize("hu_record", [False, True])
def test_nothing_else_moves(hu_record: bool) -> None:
    batch = _batch(hu_record)
    out = fade_bleeds(batch, 1.0, 0.0, np.random.default_rng(3), PRESETS)
    hu, mask = _slice()
    far = np.ones_like(mask)
    far[16:46, 20:50] = False  # the bleed and a margin round it
    np.testing.assert_array_equal(out["image"][0][far], batch["image"][0][far])
    bone = hu >= 1000.0
    np.testing.assert_array_equal(out["image"][0][bone], batch["image"][0][bone])
    np.testing.assert_array_equal(out["image"][1], batch["image"][1])  # no mask: untouched
    for key in ("mask", "area_fraction", "labels", "is_hu"):
        assert out[key] is batch[key]


def test_no_measurable_or_positive_contrast_no_change() -> None:
    hu, mask = _slice()
    assert contrast_shift(hu, np.ones_like(mask), mask, 0.0) is not None
    dark = np.where(mask, 20.0, hu).astype(np.float32)  # a hypodense region: nothing to fade
    assert contrast_shift(dark, np.ones_like(mask), mask, 0.0) is None
    assert contrast_shift(hu, np.zeros_like(mask), mask, 0.0) is None  # nothing shown


def test_prob_zero_and_seeded_draws() -> None:
    batch = _batch(False)
    assert fade_bleeds(batch, 0.0, 0.2, np.random.default_rng(0), PRESETS) is batch
    a = fade_bleeds(batch, 0.5, 0.2, np.random.default_rng(11), PRESETS)
    b = fade_bleeds(batch, 0.5, 0.2, np.random.default_rng(11), PRESETS)
    np.testing.assert_array_equal(a["image"], b["image"])
    # the same number of draws whatever is faded: later augmentation keeps its stream
    faded, kept = np.random.default_rng(5), np.random.default_rng(5)
    fade_bleeds(batch, 1.0, 0.2, faded, PRESETS)
    fade_bleeds(batch, 0.0, 0.2, kept, PRESETS)
    assert faded.uniform() == kept.uniform()


def test_augment_batch_fades_when_asked() -> None:
    still = dict(rotation_deg=0.0, scale=0.0, level_jitter_hu=0.0, width_jitter=0.0, noise_std=0.0,
                 flip_left_right=False)
    batch = _batch(False)
    mask = batch["mask"][0, ..., 0] > 0
    off = augment_batch(batch, AugmentConfig(**still), np.random.default_rng(0))
    on = augment_batch(batch, AugmentConfig(**still, bleed_fade_prob=1.0, bleed_fade_min=0.0),
                       np.random.default_rng(0))
    np.testing.assert_array_equal(off["image"], batch["image"])
    assert np.median(_brain_hu(on["image"][0])[mask]) < np.median(_brain_hu(off["image"][0])[mask]) - 1.0
    with pytest.raises(ConfigError, match="bleed_fade_prob"):
        AugmentConfig(bleed_fade_prob=1.5)
    with pytest.raises(ConfigError, match="bleed_fade_min"):
        AugmentConfig(bleed_fade_min=-0.1)


def test_the_crop_round_the_bleed_fades_as_the_whole_slice_would() -> None:
    """fade_bleeds works on the mask's box (ring and blur included, sized for the whole slice):
    the same greys as the whole slice, for a bleed inside the slice and one against its edge."""
    from fusion.bleed_fade import _fade_render

    size = 256  # large enough that the ring and blur are not at their floors of 1 and 0.5 px
    yy, xx = np.mgrid[:size, :size]
    inner, edge = np.hypot(yy - 120, xx - 130) < 10, np.zeros((size, size), bool)
    edge[:6, 60:100] = True  # against the top edge: the box is cut by the slice
    noise = np.random.default_rng(0).normal(0.0, 3.0, (size, size))
    masks = np.stack([inner, edge])
    hus = np.where(masks, BLEED_HU, BRAIN_HU) + noise
    image = np.stack([np.round(windows.apply_windows(h.astype(np.float32), PRESETS) * 255.0) / 255.0
                      for h in hus]).astype(np.float32)
    batch = {"image": image, "mask": masks[..., None].astype(np.float32), "is_hu": np.zeros(2)}
    out = fade_bleeds(batch, 1.0, 0.2, np.random.default_rng(2), PRESETS)
    alphas = _alphas(2, 2, 0.2)
    for i in range(2):
        whole = batch["image"][i].copy()
        _fade_render(whole, masks[i], float(alphas[i]), PRESETS, 0, size)
        np.testing.assert_allclose(out["image"][i], whole, atol=1e-6)
        assert np.abs(out["image"][i] - batch["image"][i]).max() > 0.01  # it moved


def test_render_shards_without_a_brain_window_are_left_as_they_are(caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from fusion import bleed_fade

    monkeypatch.setattr(bleed_fade, "_warned", set())  # whatever earlier tests warned
    batch = _batch(False)
    narrow = [PRESETS[3]] * 4  # 20-60 HU: clips acute blood, so no contrast can be measured
    with caplog.at_level("WARNING", logger="fusion.bleed_fade"):
        out = fade_bleeds(batch, 1.0, 0.2, np.random.default_rng(0), narrow)
        fade_bleeds(batch, 1.0, 0.2, np.random.default_rng(0), narrow)
    np.testing.assert_array_equal(out["image"], batch["image"])
    warnings = [r.getMessage() for r in caplog.records if "skipped on render records" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per set of windows
    assert "augment.bleed_fade_prob" in warnings[0] and "40/40" in warnings[0] and "brain window" in warnings[0]


def test_skull_that_jpeg_left_under_the_brain_windows_ceiling_stays_bright() -> None:
    """A skull pixel next to the bleed that JPEG ringing decoded to 248 in the brain window
    (~77.8 HU there) is clipped at 255 in the subdural window: its HU is unknown, so it keeps
    its grey in every channel instead of being rewritten from 77.8 HU (mid-grey)."""
    batch = _batch(False)
    mask = batch["mask"][0, ..., 0] > 0
    ys, xs = np.nonzero(mask)
    y, x = ys.min() - 1, xs[0]  # just outside the bleed, where the shift is near full
    batch["image"][0, y, x] = [248.0 / 255.0, 1.0, 0.6, 1.0]
    batch["image"][0, y, x + 1] = [253.0 / 255.0, 1.0, 0.6, 1.0]  # within 4 levels: clipped
    out = fade_bleeds(batch, 1.0, 0.0, np.random.default_rng(4), PRESETS)
    assert out["image"][0, y, x, 1] == 1.0 and out["image"][0, y, x, 3] == 1.0
    assert out["image"][0, y, x, 0] < 248.0 / 255.0  # the brain window shows it: it is shifted
    np.testing.assert_array_equal(out["image"][0, y, x + 1], batch["image"][0, y, x + 1])


def test_hu_records_fade_dense_blood_keep_their_input_and_survive_the_jitter() -> None:
    batch = _batch(True)
    mask = batch["mask"][0, ..., 0] > 0
    batch["hu"][0, ..., 0][mask & (np.arange(SIZE)[None, :] % 3 == 0)] = 85.0  # clotted, > 80 HU
    before = {k: v.copy() for k, v in batch.items()}
    out = fade_bleeds(batch, 1.0, 0.0, np.random.default_rng(1), PRESETS)
    for key, value in before.items():
        np.testing.assert_array_equal(batch[key], value)  # the input is not written
    moved = out["hu"][0, ..., 0] < batch["hu"][0, ..., 0] - 1.0
    assert moved[mask].all()  # every blood pixel, the 85 HU ones too
    # With the window jitter on, HU records are windowed again from the faded HU.
    jitter = AugmentConfig(rotation_deg=0.0, scale=0.0, noise_std=0.0, flip_left_right=False,
                           level_jitter_hu=5.0, width_jitter=0.05, bleed_fade_prob=1.0, bleed_fade_min=0.0)
    plain = AugmentConfig(**{**jitter.__dict__, "bleed_fade_prob": 0.0})
    faded = augment_batch(batch, jitter, np.random.default_rng(0))["image"][0, ..., 0]
    kept = augment_batch(batch, plain, np.random.default_rng(0))["image"][0, ..., 0]
    assert faded[mask].mean() < kept[mask].mean() - 0.05


def test_a_bleed_against_the_skull_leaves_the_bone_alone() -> None:
    """A crescent along the inner table (a subdural's place): the bone beside it is clipped in
    the brain window, so no channel moves it, the bone window (which shows it) included."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    mask = (r >= 23) & (r < 28) & (xx > 40)
    noise = np.random.default_rng(0).normal(0.0, 3.0, (SIZE, SIZE))
    hu = np.where(r < 28, np.where(mask, BLEED_HU, BRAIN_HU) + noise, 1000.0).astype(np.float32)
    image = (np.round(windows.apply_windows(hu, PRESETS) * 255.0) / 255.0).astype(np.float32)
    batch = {"image": image[None], "mask": mask[None, ..., None].astype(np.float32), "is_hu": np.zeros(1)}
    out = fade_bleeds(batch, 1.0, 0.0, np.random.default_rng(6), PRESETS)
    bone = hu >= 1000.0
    np.testing.assert_array_equal(out["image"][0][bone], batch["image"][0][bone])
    assert np.abs(out["image"][0][mask] - batch["image"][0][mask]).max() > 0.05  # the crescent faded
