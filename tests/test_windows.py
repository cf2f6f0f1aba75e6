"""Windowing against its formula, on every array module the project passes as `xp`."""
from __future__ import annotations

import numpy as np
import pytest

from data_build import windows
from data_build.windows import PRESETS, WINDOW_NAMES, Window, apply_windows, window


def _formula(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    out = (hu - (level - width / 2.0)) / width
    return np.minimum(np.maximum(out, 0.0), 1.0)


HU = np.array([-1024.0, -1000.0, -20.0, 0.0, 40.0, 79.9, 80.0, 100.0, 1500.0, 3071.0], np.float32)


@pytest.mark.parametrize("name", WINDOW_NAMES)
def test_window_matches_formula_for_each_preset(name: str) -> None:
    preset = PRESETS[name]
    np.testing.assert_allclose(
        window(HU, preset.level, preset.width), _formula(HU, preset.level, preset.width), atol=1e-7
    )


def test_brain_window_endpoints() -> None:
    # L40 W80: 0 HU is the bottom of the window, 80 HU the top, 40 HU the middle.
    out = window(np.array([0.0, 40.0, 80.0, -500.0, 500.0]), 40, 80)
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 0.0, 1.0])


def test_keras_ops_and_tf_numpy_give_the_numpy_result() -> None:
    keras = pytest.importorskip("keras")
    tnp = pytest.importorskip("tensorflow.experimental.numpy")
    expected = apply_windows(HU[None, :])
    via_keras = np.asarray(apply_windows(keras.ops.convert_to_tensor(HU[None, :]), xp=keras.ops))
    via_tf = np.asarray(apply_windows(tnp.asarray(HU[None, :]), xp=tnp))
    np.testing.assert_allclose(via_keras, expected, atol=1e-6)
    np.testing.assert_allclose(via_tf, expected, atol=1e-6)


def test_apply_windows_channel_order_and_trailing_channel() -> None:
    hu = np.full((2, 3, 1), 40.0, np.float32)
    out = apply_windows(hu)
    assert out.shape == (2, 3, len(WINDOW_NAMES))
    for c, name in enumerate(WINDOW_NAMES):
        p = PRESETS[name]
        np.testing.assert_allclose(out[..., c], _formula(hu[..., 0], p.level, p.width))


def test_unsigned_input_would_wrap_so_float_is_required() -> None:
    # The documented reason for float input: uint16 arithmetic wraps below zero.
    stored = np.array([10], np.uint16)
    assert (stored - np.uint16(1024))[0] > 60000
    assert window(stored.astype(np.float32) - 1024, 40, 80)[0] == 0.0


def test_aliases_and_overrides() -> None:
    assert windows.canonical_window_name("bone_window") == "brain_window"
    assert windows.canonical_window_name("Subdural_Window") == "subdural_window"
    assert windows.canonical_window_name("lung_window") is None
    assert windows.parse_window_override("brain_window=35,90") == ("brain_window", Window(35, 90))
    with pytest.raises(ValueError, match="NAME=LEVEL,WIDTH"):
        windows.parse_window_override("brain_window:35")
    with pytest.raises(ValueError, match="unknown window"):
        windows.parse_window_override("lung=1,2")
    with pytest.raises(ValueError, match="width"):
        Window(40, 0)


def test_to_uint8_rounds_and_clips() -> None:
    out = windows.to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0]))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255]
