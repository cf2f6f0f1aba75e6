"""Augmentation: the same geometry for image and mask, seeded, HU window jitter."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from data_build import windows
from fusion.augment import augment_batch, augment_dataset
from fusion.config import AugmentConfig

S = 32
GEOMETRY_ONLY = AugmentConfig(flip_up_down=True, rotation_deg=30.0, scale=0.2, level_jitter_hu=0.0,
                              width_jitter=0.0, noise_std=0.0)


def make_batch(b: int = 4, is_hu: tuple[float, ...] = (0, 0, 1, 1)) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(1)
    mask = np.zeros((b, S, S, 1), np.float32)
    mask[:, 6:14, 4:20] = 1.0
    mask[1, 20:28, 18:30] = 1.0  # an asymmetric shape, so flips and rotations show
    hu = rng.normal(40.0, 60.0, (b, S, S, 1)).astype(np.float32)
    image = np.repeat(mask, 4, axis=-1)  # channel values = the mask: geometry must agree
    return {
        "image": tf.constant(image),
        "hu": tf.constant(hu),
        "is_hu": tf.constant(is_hu[:b], tf.float32),
        "mask": tf.constant(mask),
        "area_fraction": tf.constant(mask.mean(axis=(1, 2, 3))),
        "has_mask": tf.ones([b]),
        "id": tf.constant([f"ID_{i}" for i in range(b)]),
    }


def test_shapes_dtypes_and_keys_are_kept() -> None:
    batch = make_batch()
    out = augment_batch(batch, tf.constant([3, 4]), AugmentConfig())
    assert set(out) == set(batch)
    for key in batch:
        assert out[key].shape == batch[key].shape and out[key].dtype == batch[key].dtype, key
    assert set(np.unique(out["mask"].numpy())) <= {0.0, 1.0}
    image = out["image"].numpy()
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_image_and_mask_get_the_same_geometry() -> None:
    batch = make_batch(is_hu=(0, 0, 0, 0))
    out = augment_batch(batch, tf.constant([5, 6]), GEOMETRY_ONLY)
    moved = out["mask"].numpy()[..., 0]
    assert not np.array_equal(moved, batch["mask"].numpy()[..., 0])  # something happened
    for c in range(4):
        agree = np.mean((out["image"].numpy()[..., c] >= 0.5) == (moved >= 0.5))
        assert agree > 0.99
    # area_fraction follows the mask's change in size.
    np.testing.assert_allclose(out["area_fraction"].numpy(), moved.mean(axis=(1, 2)), rtol=1e-5)


def test_seeded_and_reproducible() -> None:
    batch = make_batch()
    a = augment_batch(batch, tf.constant([1, 2]), AugmentConfig())
    b = augment_batch(batch, tf.constant([1, 2]), AugmentConfig())
    c = augment_batch(batch, tf.constant([2, 2]), AugmentConfig())
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())


def test_window_jitter_rewindows_hu_records_only() -> None:
    batch = make_batch()
    no_geometry = dict(flip_left_right=False, rotation_deg=0.0, scale=0.0, noise_std=0.0)
    exact = augment_batch(
        batch, tf.constant([0, 1]), AugmentConfig(level_jitter_hu=0.0, width_jitter=1e-9, **no_geometry)
    )
    image = exact["image"].numpy()
    # Render records (is_hu 0) keep their pixels; HU records are re-windowed from hu.
    np.testing.assert_allclose(image[:2], batch["image"].numpy()[:2], atol=1e-6)
    expected = windows.apply_windows(batch["hu"].numpy()[2:])
    np.testing.assert_allclose(image[2:], expected, atol=1e-5)
    jittered = augment_batch(
        batch, tf.constant([0, 1]), AugmentConfig(level_jitter_hu=30.0, width_jitter=0.3, **no_geometry)
    )
    assert np.abs(jittered["image"].numpy()[2:] - expected).max() > 0.01
    np.testing.assert_allclose(jittered["image"].numpy()[:2], batch["image"].numpy()[:2], atol=1e-6)


def test_disabled_is_identity() -> None:
    batch = make_batch()
    out = augment_batch(batch, tf.constant([0, 1]), AugmentConfig(enabled=False))
    assert out is batch


def test_dataset_is_reproducible_and_changes_each_epoch() -> None:
    base = tf.data.Dataset.from_tensors(make_batch()).repeat(2)

    def epoch(ds: tf.data.Dataset) -> np.ndarray:
        return np.stack([b["image"].numpy() for b in ds])

    ds1 = augment_dataset(base, AugmentConfig(), seed=11)
    ds2 = augment_dataset(base, AugmentConfig(), seed=11)
    first = epoch(ds1)
    np.testing.assert_array_equal(first, epoch(ds2))  # same seed, same augmentations
    assert not np.array_equal(first, epoch(ds1))  # next epoch: new draws
    assert not np.array_equal(first[0], first[1])  # each batch draws its own
