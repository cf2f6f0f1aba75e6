"""The drop's bone colour map and its inverse: renders must give the values of window(hu)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from data_build import renders
from data_build.windows import PRESETS, to_uint8, window

REAL = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def test_inverse_is_exact_on_every_grey_level() -> None:
    grey = np.arange(256, dtype=np.uint8)
    back = renders.rgb_to_grey(renders.grey_to_rgb(grey))
    np.testing.assert_array_equal(np.rint(back * 255).astype(int), grey)


def test_bone_map_is_bluish_and_its_channel_sum_strictly_rises() -> None:
    lut = renders.BONE_LUT.astype(int)
    assert (lut[1:-1, 2] >= lut[1:-1, 0]).all() and (lut[64:192, 2] > lut[64:192, 0] + 10).all()
    assert (np.diff(lut.sum(axis=1)) > 0).all()


def test_jpeg_render_inverts_to_the_windowed_grey_far_better_than_luminance() -> None:
    rng = np.random.default_rng(0)
    hu = cv2.GaussianBlur(rng.uniform(-20, 120, (96, 96)).astype(np.float32), (7, 7), 2)
    grey = to_uint8(window(hu, PRESETS["brain_window"].level, PRESETS["brain_window"].width))
    ok, data = cv2.imencode(".jpg", renders.grey_to_rgb(grey)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    rgb = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]
    inverted = np.abs(renders.rgb_to_grey(rgb) * 255 - grey).mean()
    luminance = np.abs(cv2.cvtColor(rgb[..., ::-1], cv2.COLOR_BGR2GRAY).astype(float) - grey).mean()
    assert inverted < 1.5
    assert luminance > 3 * inverted


def test_tensorflow_numpy_gives_the_numpy_result() -> None:
    tnp = pytest.importorskip("tensorflow.experimental.numpy")
    rgb = renders.grey_to_rgb(np.arange(256, dtype=np.uint8).reshape(16, 16))
    np.testing.assert_allclose(np.asarray(renders.rgb_to_grey(tnp.asarray(rgb), xp=tnp)),
                               renders.rgb_to_grey(rgb), atol=1e-7)


def test_real_renders_lie_on_the_bone_map() -> None:
    cases = sorted((REAL / "xn-cases").glob("*/render.png"))
    if not cases:
        pytest.skip("../shared/data/real is absent")
    lut = renders.BONE_LUT.astype(int)
    for path in cases:
        rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].reshape(-1, 3).astype(int)
        sample = rgb[:: max(1, len(rgb) // 5000)]
        nearest = ((sample[:, None, :] - lut[None]) ** 2).sum(-1).min(axis=1)
        # JPEG noise of a few levels per channel; a plain grey image would be ~10x further off.
        assert np.sqrt(nearest.mean()) < 5, path


def test_luma_inverse_is_within_a_grey_level_and_a_half() -> None:
    grey = np.arange(256)
    rgb = renders.BONE_LUT.astype(float)
    luma = np.rint(rgb @ np.array([0.299, 0.587, 0.114]))
    back = renders.luma_to_grey(luma) * 255
    assert np.abs(back - grey).max() < 1.5
    assert (np.diff(renders.GREY_FROM_LUMA) >= 0).all()
