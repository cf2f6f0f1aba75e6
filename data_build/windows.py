"""CT windows: the one windowing function and the four presets of the drop.

`window` is used unchanged by the build (NumPy), by the training reader (TensorFlow through
`tensorflow.experimental.numpy`) and by the exported model (`keras.ops`): pass the array module
as `xp`. Every module of the project that needs windowed pixels calls this function, so the
three paths cannot drift apart.

Presets (level, width in HU). The drop ships renders made with presets nobody published, so
these are the standard clinical windows under the drop's folder names:

- ``brain_window``      L40   W80    brain window (Radiopaedia "Windowing (CT)": W80 L40).
- ``subdural_window``   L80   W200   subdural window used by most RSNA 2019 ICH solutions
                                     (Radiopaedia: W130-300, L50-100).
- ``brain_bone_window`` L600  W2800  bone window (Radiopaedia: W2800 L600); the project brief calls
                                     this channel's sibling ``bone_window``, see `ALIASES`.
- ``max_contrast_window`` L40 W40    narrow "stroke" window that maximises grey/white contrast
                                     (Radiopaedia: W8-40, L32-40).

Users whose renders came from other settings can override them (``fusion-build --window``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

#: Canonical channel order of every image tensor in the project: [H, W, 4] in this order.
WINDOW_NAMES: tuple[str, ...] = (
    "brain_window",
    "subdural_window",
    "brain_bone_window",
    "max_contrast_window",
)

#: Folder names seen for the same channel. The real drop has ``brain_window``; the project brief
#: names ``bone_window`` in its place. Both map to the same canonical channel.
ALIASES: Mapping[str, str] = {
    "bone_window": "brain_window",
}


@dataclass(frozen=True)
class Window:
    """A CT display window in Hounsfield units."""

    level: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"window width must be > 0 HU, got {self.width}")


PRESETS: Mapping[str, Window] = {
    "brain_window": Window(40.0, 80.0),
    "subdural_window": Window(80.0, 200.0),
    "brain_bone_window": Window(600.0, 2800.0),
    "max_contrast_window": Window(40.0, 40.0),
}


def canonical_window_name(name: str) -> str | None:
    """Map a render folder name to its canonical channel name, or None if it is not a window."""
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in WINDOW_NAMES else None


#: How close to 0 or 1 a rendered grey is taken as clipped by its window. JPEG ringing spreads a
#: clipped pixel: on the phantom's renders (brain window, 32 slices at 512 px) pixels far above
#: the window decode to 246-255 and far below it to 0-10; within 4 grey levels of either end lie
#: 99.2 % and 99.98 % of them. In-window pixels that close to an end (1.3 HU in the brain window)
#: are taken as clipped too.
RENDER_CLIP_MARGIN = 4.0 / 255.0


def render_clipped(grey: Any) -> Any:
    """Bool array: where a decoded render's grey in [0, 1] is (likely) clipped by its window."""
    return (grey <= RENDER_CLIP_MARGIN) | (grey >= 1.0 - RENDER_CLIP_MARGIN)


def window(hu: Any, level: float, width: float, xp: Any = np) -> Any:
    """Map Hounsfield units to [0, 1] through one CT window.

    ``out = clip((hu - (level - width / 2)) / width, 0, 1)``

    Args:
      hu: array of HU values, any shape, float (never unsigned ints: the subtraction would wrap).
      level: window centre in HU.
      width: window width in HU, > 0.
      xp: array module providing ``clip``: ``numpy`` (default), ``keras.ops`` or
        ``tensorflow.experimental.numpy``.

    Returns:
      Array of the same shape, float, in [0, 1].
    """
    lower = level - width / 2.0
    return xp.clip((hu - lower) / width, 0.0, 1.0)


def unwindow(unit: Any, level: float, width: float, xp: Any = np) -> Any:
    """The inverse of `window` inside the window: [0, 1] -> Hounsfield units.

    ``hu = (level - width / 2) + unit * width``. Values `window` clipped (below or above the
    window) cannot come back: 0 maps to the window's floor, 1 to its ceiling.

    Args:
      unit: array of windowed values in [0, 1], any shape, float.
      level, width: the window it was made with (width > 0).
      xp: array module (unused by the formula; kept for symmetry with `window`).
    """
    del xp
    return (level - width / 2.0) + unit * width


def apply_windows(
    hu: Any,
    presets: Sequence[Window] | None = None,
    xp: Any = np,
    stack: Any = None,
) -> Any:
    """Window one HU image into the canonical channels.

    Args:
      hu: [..., H, W] or [..., H, W, 1] HU, float32.
      presets: one `Window` per channel, default the four `PRESETS` in `WINDOW_NAMES` order.
      xp: array module, as for `window`.
      stack: function stacking a list on the last axis; defaults to ``xp.stack(..., axis=-1)``.

    Returns:
      [..., H, W, C] float in [0, 1], C = len(presets).
    """
    if presets is None:
        presets = [PRESETS[n] for n in WINDOW_NAMES]
    shape = getattr(hu, "shape", None)
    if shape is not None and len(shape) >= 3 and shape[-1] == 1:
        hu = hu[..., 0]
    channels = [window(hu, p.level, p.width, xp=xp) for p in presets]
    if stack is not None:
        return stack(channels)
    return xp.stack(channels, axis=-1)


def parse_window_override(text: str) -> tuple[str, Window]:
    """Parse ``NAME=LEVEL,WIDTH`` (a CLI override of one preset)."""
    try:
        name, values = text.split("=", 1)
        level, width = (float(v) for v in values.split(","))
    except ValueError:
        raise ValueError(
            f"window override {text!r} is not NAME=LEVEL,WIDTH (e.g. brain_window=40,80)"
        ) from None
    canonical = canonical_window_name(name)
    if canonical is None:
        raise ValueError(f"unknown window {name!r}; expected one of {', '.join(WINDOW_NAMES)}")
    return canonical, Window(level, width)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 0..255 with rounding (how renders are written)."""
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
