"""Windowing, resizing and lung masking: one implementation shared by training and inference."""

from __future__ import annotations

import numpy as np

from covidct.registry import LUNG_WINDOW, Window


def window(hu: np.ndarray, win: Window = LUNG_WINDOW) -> np.ndarray:
    """Map HU to [0, 1] float32 through a display window (values outside are clipped)."""
    if win.width <= 0:
        raise ValueError(f"window width must be positive, got {win.width}")
    out = (np.asarray(hu, dtype=np.float32) - np.float32(win.low)) / np.float32(win.width)
    return np.clip(out, 0.0, 1.0, out=out)


def window_uint8(hu: np.ndarray, win: Window = LUNG_WINDOW) -> np.ndarray:
    """Lung-window image as uint8 (0-255), what the paper stored as PNG."""
    return np.round(window(hu, win) * 255.0).astype(np.uint8)


def parse_window(text: str) -> Window:
    """Parse ``"LEVEL,WIDTH"`` (e.g. ``"-600,1200"``)."""
    try:
        level_s, width_s = text.split(",")
        win = Window(float(level_s), float(width_s))
    except ValueError:
        raise ValueError(f"bad window {text!r}: give LEVEL,WIDTH in HU, e.g. -600,1200") from None
    if win.width <= 0:
        raise ValueError(f"bad window {text!r}: the width must be positive")
    return win
