"""fusion.augment_numpy: image, mask and HU moved alike, areas kept in step, seeded draws."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_build import records
from data_build.manifest import Manifest
from data_build.synth.writer import write_synthetic_drop
from fusion import reader
from fusion.augment_numpy import augment_batch
from fusion.config import AugmentConfig

STILL = dict(rotation_deg=0.0, scale=0.0, level_jitter_hu=0.0, width_jitter=0.0, noise_std=0.0,
             flip_left_right=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("augment")
    write_synthetic_drop(work / "drop", n_patients=4, slices_per_patient=2, size=32, seed=1, broken=False)
    out = {}
    for source in ("render", "dicom"):
        out[source] = work / source
        records.build(work / "drop", out[source], source=source, workers=1, fractions=(1.0, 0.0, 0.0),
                      progress=False)
    return out


def _batch(folder: Path, size: int = 32) -> dict:
    return reader.ShardSequence(folder, "train", image_size=size, batch_size=8, as_dicts=True).batch(0)


def test_disabled_returns_the_batch(shards: dict[str, Path]) -> None:
    batch = _batch(shards["render"])
    assert augment_batch(batch, AugmentConfig(enabled=False), np.random.default_rng(0)) is batch


def test_flips_move_image_and_mask_alike(shards: dict[str, Path]) -> None:
    batch = _batch(shards["render"])
    out = augment_batch(batch, AugmentConfig(**{**STILL, "flip_left_right": True}), np.random.default_rng(3))
    flipped = 0
    for i in range(len(batch["id"])):
        if np.array_equal(out["image"][i], batch["image"][i]):
            np.testing.assert_array_equal(out["mask"][i], batch["mask"][i])
        else:
            np.testing.assert_array_equal(out["image"][i], batch["image"][i, :, ::-1])
            np.testing.assert_array_equal(out["mask"][i], batch["mask"][i, :, ::-1])
            flipped += 1
    assert 0 < flipped < len(batch["id"])  # a coin per slice
    np.testing.assert_array_equal(out["area_fraction"], batch["area_fraction"])


def test_rotation_zoom_noise_keep_shapes_masks_and_areas_consistent(shards: dict[str, Path]) -> None:
    batch = _batch(shards["render"])
    cfg = AugmentConfig(rotation_deg=30.0, scale=0.3, noise_std=0.05)
    out = augment_batch(batch, cfg, np.random.default_rng(0))
    for key, value in batch.items():
        assert out[key].shape == value.shape and out[key].dtype == value.dtype, key
    assert set(np.unique(out["mask"])) <= {0.0, 1.0}
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert not np.array_equal(out["image"], batch["image"])
    before, after = batch["mask"].sum(axis=(1, 2, 3)), out["mask"].sum(axis=(1, 2, 3))
    has = before > 0
    assert has.any()
    expected = batch["area_fraction"][has] * after[has] / before[has]
    np.testing.assert_allclose(out["area_fraction"][has], expected, rtol=1e-6)
    again = augment_batch(batch, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(again["image"], out["image"])  # seeded


def test_window_jitter_rewindows_hu_within_bounds(shards: dict[str, Path]) -> None:
    batch = _batch(shards["dicom"])
    assert batch["is_hu"].all()
    presets = list(Manifest.load(shards["dicom"]).presets)
    cfg = AugmentConfig(**{**STILL, "level_jitter_hu": 20.0, "width_jitter": 0.2})
    out = augment_batch(batch, cfg, np.random.default_rng(1), presets)
    np.testing.assert_array_equal(out["hu"], batch["hu"])  # no geometry: HU untouched
    assert not np.allclose(out["image"], batch["image"])
    hu = batch["hu"][..., 0]
    for i in range(len(batch["id"])):
        for c, preset in enumerate(presets):
            image = out["image"][i, ..., c]
            inside = (image > 0.01) & (image < 0.99)
            if inside.sum() < 2 or np.ptp(hu[i][inside]) < 1:
                continue
            slope, intercept = np.polyfit(hu[i][inside], image[inside], 1)  # image = (hu - lower) / width
            width = 1.0 / slope
            level = -intercept * width + width / 2.0
            assert preset.width * 0.8 - 1e-3 <= width <= preset.width * 1.2 + 1e-3
            assert abs(level - preset.level) <= 20.0 + 1e-2


def test_sequence_augments_per_seed_epoch_and_batch(shards: dict[str, Path]) -> None:
    def make() -> reader.ShardSequence:
        return reader.ShardSequence(shards["render"], "train", image_size=32, batch_size=4, as_dicts=True,
                                    augment=AugmentConfig(), seed=5)

    first, second = make(), make()
    np.testing.assert_array_equal(first.batch(0)["image"], second.batch(0)["image"])
    plain = _batch(shards["render"])["image"][:4]
    assert not np.array_equal(first.batch(0)["image"], plain)
    second.on_epoch_end()
    assert not np.array_equal(first.batch(0)["image"], second.batch(0)["image"])


def test_hu_is_warped_with_air_outside(shards: dict[str, Path]) -> None:
    batch = _batch(shards["dicom"])
    cfg = AugmentConfig(**{**STILL, "rotation_deg": 45.0, "scale": 0.0})
    out = augment_batch(batch, cfg, np.random.default_rng(2))
    turned = np.abs(out["hu"] - batch["hu"]).max(axis=(1, 2, 3)) > 0
    assert turned.any()
    assert (out["hu"][turned][:, 0, 0, 0] == -1024.0).all()  # a corner rotated in from outside


def test_batched_warps_and_in_place_noise_equal_the_plain_formula(shards: dict[str, Path]) -> None:
    # The batch is warped into one array and the noise added in its own buffer (speed); the
    # values must stay those of the plain per-slice formula, draw for draw.
    import cv2

    from fusion.augment_numpy import _NOISE_SALT, affine_maps

    batch = _batch(shards["render"])
    cfg = AugmentConfig(rotation_deg=20.0, scale=0.2, noise_std=0.05, flip_up_down=True)
    out = augment_batch(batch, cfg, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    b, h, w = batch["image"].shape[:3]
    maps = affine_maps(cfg, b, h, w, rng)

    def warp(x: np.ndarray, m: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0,) * 4).reshape(x.shape)

    image = np.stack([warp(batch["image"][i], maps[i]) for i in range(b)])
    # The noise: windows of a field of normals twice the slice's size, seeded from this draw.
    key = int(rng.integers(2**62))
    field = np.random.default_rng([key, _NOISE_SALT]).standard_normal((2 * h, 2 * w, 4), dtype=np.float32)
    top, left = rng.integers(0, h + 1, b), rng.integers(0, w + 1, b)
    flip_y, flip_x, sign = rng.integers(0, 2, (3, b)) * 2 - 1
    noise = np.stack([field[top[i]:top[i] + h, left[i]:left[i] + w][::flip_y[i], ::flip_x[i]]
                      * np.float32(cfg.noise_std * sign[i]) for i in range(b)])
    np.testing.assert_array_equal(out["image"], np.clip(image + noise, 0.0, 1.0))
    mask = np.stack([warp(batch["mask"][i], maps[i]) for i in range(b)]) >= 0.5
    np.testing.assert_array_equal(out["mask"], mask.astype(np.float32))
    assert out["image"].dtype == np.float32 and not np.shares_memory(out["image"], batch["image"])


def test_noise_is_white_gaussian_of_the_configured_std_and_differs_per_slice() -> None:
    # Each slice's noise is a window of a shared field: it must still look like i.i.d. normal
    # noise of std noise_std (no structure a model could learn), and differ between slices.
    b, size = 6, 64
    grey = np.full((b, size, size, 4), 0.5, np.float32)
    batch = {"image": grey, "mask": np.zeros((b, size, size, 1), np.float32),
             "area_fraction": np.zeros(b, np.float32), "is_hu": np.zeros(b, np.float32)}
    cfg = AugmentConfig(**{**STILL, "noise_std": 0.05})
    noise = augment_batch(batch, cfg, np.random.default_rng(0), noise_key=(3, 1))["image"] - 0.5
    assert abs(float(noise.mean())) < 0.002 and abs(float(noise.std()) - 0.05) < 0.002
    per_slice = noise.reshape(b, -1)
    corr = np.corrcoef(per_slice)[np.triu_indices(b, 1)]
    assert np.abs(corr).max() < 0.1  # slices are not copies of each other
    for axis in (1, 2, 3):  # neighbouring pixels and windows are uncorrelated
        a, c = np.moveaxis(noise, axis, 0)[:-1].ravel(), np.moveaxis(noise, axis, 0)[1:].ravel()
        assert abs(np.corrcoef(a, c)[0, 1]) < 0.03, axis
    # The same key and generator give the same noise; another epoch's key another field.
    again = augment_batch(batch, cfg, np.random.default_rng(0), noise_key=(3, 1))["image"] - 0.5
    np.testing.assert_array_equal(noise, again)
    other = augment_batch(batch, cfg, np.random.default_rng(0), noise_key=(3, 2))["image"] - 0.5
    assert np.abs(np.corrcoef(noise.ravel(), other.ravel())[0, 1]) < 0.03


def _render_batch(b: int = 3, size: int = 16) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Render-like records: four windows of a known HU ramp (-200 .. 300 HU), no ``hu`` key."""
    from data_build import windows

    hu = np.broadcast_to(np.linspace(-200.0, 300.0, size * size).reshape(size, size), (b, size, size))
    image = windows.apply_windows(hu.astype(np.float32)).astype(np.float32)
    batch = {"image": image, "mask": np.zeros((b, size, size, 1), np.float32),
             "area_fraction": np.zeros(b, np.float32), "is_hu": np.zeros(b, np.float32)}
    return batch, hu


def test_render_jitter_rewindows_the_grey_as_the_jittered_window_would() -> None:
    from data_build import windows

    batch, hu = _render_batch()
    cfg = AugmentConfig(**{**STILL, "level_jitter_hu": 10.0, "width_jitter": 0.1, "jitter_renders": True})
    out = augment_batch(batch, cfg, np.random.default_rng(5))["image"]
    rng = np.random.default_rng(5)  # the jitter's draws come first: [B, 4] shifts, then factors
    shift = rng.uniform(-10.0, 10.0, (3, 4))
    stretch = rng.uniform(0.9, 1.1, (3, 4))
    presets = [windows.PRESETS[n] for n in windows.WINDOW_NAMES]
    for k, p in enumerate(presets):
        for i in range(3):
            expected = windows.window(hu[i], p.level + shift[i, k], p.width * stretch[i, k])
            kept = ~windows.render_clipped(batch["image"][i, ..., k])
            np.testing.assert_allclose(out[i, ..., k][kept], expected[kept], atol=1e-5)
            clipped = batch["image"][i, ..., k][~kept]
            np.testing.assert_array_equal(out[i, ..., k][~kept], clipped)  # unknown HU: stays clipped
    assert np.abs(out - batch["image"]).max() > 0.02  # it moved


def test_render_jitter_leaves_a_jpeg_decoded_clipped_pixel_clipped() -> None:
    """A clipped pixel decodes to 246-255 (or 0-10) after JPEG ringing: its HU is unknown, so the
    jitter must not read 254 as 79.7 HU and darken the skull."""
    batch, _ = _render_batch()
    batch["image"][:, 0, 0, 0] = 254.0 / 255.0  # brain window: bone that JPEG left at 254
    batch["image"][:, 0, 1, 0] = 2.0 / 255.0  # and air left at 2
    cfg = AugmentConfig(**{**STILL, "level_jitter_hu": 10.0, "width_jitter": 0.1, "jitter_renders": True})
    out = augment_batch(batch, cfg, np.random.default_rng(5))["image"]
    np.testing.assert_array_equal(out[:, 0, :2, 0], batch["image"][:, 0, :2, 0])
    assert np.abs(out - batch["image"]).max() > 0.02  # it moved


def test_render_jitter_is_off_unless_asked() -> None:
    batch, _ = _render_batch()
    cfg = AugmentConfig(**{**STILL, "level_jitter_hu": 10.0, "width_jitter": 0.1})
    np.testing.assert_array_equal(augment_batch(batch, cfg, np.random.default_rng(5))["image"], batch["image"])
