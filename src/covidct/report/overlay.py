"""Overlay mosaic: a lung mask drawn over lung-window axial slices, for previews and visual checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from covidct._files import atomic_write
from covidct.io.volume import CTVolume
from covidct.preprocess import window_uint8
from covidct.registry import LUNG_WINDOW, Window
from covidct.report.images import LUNG_COLOURS

#: RGB colours of the mask labels: the project's one palette (:data:`covidct.report.images.LUNG_COLOURS`).
LABEL_COLOURS: dict[int, tuple[int, int, int]] = LUNG_COLOURS


def overlay_mosaic(
    volume: CTVolume,
    mask: np.ndarray,
    *,
    n: int = 6,
    indices: Sequence[int] | None = None,
    columns: int = 3,
    alpha: float = 0.3,
    window: Window = LUNG_WINDOW,
    path: str | Path | None = None,
) -> np.ndarray:
    """Tile ``n`` axial slices (lung window) with the mask tinted and outlined; RGB uint8 (H, W, 3).

    Slices are spread evenly over those that hold lung (over the whole volume if the mask is empty), unless
    ``indices`` (slice indices, 0 = most superior) are given; tiles run left to right, top to bottom, in the
    order of the indices.
    With ``path`` the mosaic is also written as PNG (temporary name, then renamed).
    """
    if mask.shape != volume.hu.shape:
        raise ValueError(f"mask shape {mask.shape} does not match volume shape {volume.hu.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    chosen = list(indices) if indices is not None else pick_slices(mask, n)
    if not chosen:
        raise ValueError("no slices to show")
    for z in chosen:
        if not 0 <= z < volume.n_slices:
            raise ValueError(f"slice index {z} is outside the volume (0..{volume.n_slices - 1})")
    tiles = [_tile(volume.hu[z], mask[z], alpha=alpha, window=window) for z in chosen]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    h, w = tiles[0].shape[:2]
    mosaic = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        mosaic[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    if path is not None:
        _write_png(mosaic, Path(path))
    return mosaic


def pick_slices(mask: np.ndarray, n: int) -> list[int]:
    """``n`` slice indices spread evenly over the slices that hold any mask label (all slices if none)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    occupied = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if occupied.size == 0:
        occupied = np.arange(mask.shape[0])
    picks = np.linspace(0, occupied.size - 1, num=min(n, occupied.size) + 2)[1:-1]
    if picks.size == 0:
        picks = np.array([0.0])
    return sorted({int(occupied[round(float(p))]) for p in picks})


def _tile(hu: np.ndarray, mask: np.ndarray, *, alpha: float, window: Window) -> np.ndarray:
    grey = window_uint8(hu, window).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for value, colour in LABEL_COLOURS.items():
        region = mask == value
        if not region.any():
            continue
        tint = np.asarray(colour, dtype=np.float32)
        rgb[region] = (1.0 - alpha) * rgb[region] + alpha * tint
        edge = region & ~ndi.binary_erosion(region)
        rgb[edge] = tint
    return rgb.round().astype(np.uint8)


def _write_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
