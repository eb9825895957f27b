"""Small image helpers shared by the report and the service: windowed slices, overlays, PNG encoding.

All images are ``(y, x)`` (rows, columns) in the volume's pixel grid; colours are uint8. Right lung (label 1,
the patient's right) is drawn blue, left lung (label 2) green; heat maps use the ``jet`` colour map with an
opacity that grows with the activation, so cold regions stay transparent.
"""

from __future__ import annotations

import base64
import io
import math
from typing import TYPE_CHECKING

import numpy as np

from covidct.preprocess import window_uint8
from covidct.registry import CLASS_NAMES, LUNG_WINDOW, LungLabel, Window

if TYPE_CHECKING:
    from covidct.diagnose import StudyResult
    from covidct.io.volume import CTVolume

#: RGB colour per lung label, the one palette of every covidct picture (report, strip, overlay mosaic,
#: service overlays): right lung (label 1) blue, left lung (label 2) green.
LUNG_COLOURS: dict[int, tuple[int, int, int]] = {
    int(LungLabel.RIGHT): (40, 140, 255),
    int(LungLabel.LEFT): (40, 220, 90),
}
#: Opacity (0-255) of the lung tint in the transparent mask overlays.
MASK_ALPHA = 110
#: RGBA colour per lung label of the transparent overlays (0 = background is transparent).
MASK_COLOURS: dict[int, tuple[int, int, int, int]] = {k: (*v, MASK_ALPHA) for k, v in LUNG_COLOURS.items()}


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 ``(y, x)`` grey, ``(y, x, 3)`` RGB or ``(y, x, 4)`` RGBA array as PNG."""
    from PIL import Image

    arr = np.ascontiguousarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"png_bytes needs uint8 pixels, got {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI for inlining a PNG into HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def slice_grey(volume: CTVolume, index: int, win: Window = LUNG_WINDOW) -> np.ndarray:
    """Slice ``index`` (0 = most superior) through a display window, uint8 ``(y, x)``."""
    check_index(volume.n_slices, index)
    return window_uint8(np.asarray(volume.hu[index]), win)


def check_index(n_slices: int, index: int) -> None:
    """Raise ``IndexError`` naming the valid range when ``index`` is not a slice of an ``n_slices`` volume."""
    if not 0 <= index < n_slices:
        raise IndexError(f"slice index {index} is outside 0..{n_slices - 1}")


def label_rgba(labels: np.ndarray, colours: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    """Transparent RGBA overlay of a label slice: each label in ``colours`` coloured, the rest transparent."""
    m = np.asarray(labels)
    out = np.zeros((*m.shape, 4), dtype=np.uint8)
    for label, colour in colours.items():
        out[m == label] = colour
    return out


def mask_rgba(mask_slice: np.ndarray) -> np.ndarray:
    """Transparent RGBA overlay of one lung-mask slice (labels 1 and 2 coloured, the rest transparent)."""
    return label_rgba(mask_slice, MASK_COLOURS)


def heat_rgba(cam: np.ndarray, *, max_alpha: float = 0.6, floor: float = 0.15) -> np.ndarray:
    """RGBA heat map of a class-activation map in [0, 1]: jet colours, opacity rising above ``floor``."""
    from matplotlib import colormaps

    c = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    rgba = colormaps["jet"](c)
    alpha = np.clip((c - floor) / max(1e-6, 1.0 - floor), 0.0, 1.0) * max_alpha
    rgba[..., 3] = alpha
    return np.round(rgba * 255.0).astype(np.uint8)


def composite(grey: np.ndarray, *overlays: np.ndarray) -> np.ndarray:
    """Alpha-blend RGBA overlays onto a grey uint8 image; returns RGB uint8."""
    rgb = np.repeat(np.asarray(grey, dtype=np.float32)[..., None], 3, axis=2)
    for over in overlays:
        if over.shape[:2] != rgb.shape[:2]:
            raise ValueError(f"overlay shape {over.shape[:2]} does not match image shape {rgb.shape[:2]}")
        a = over[..., 3:4].astype(np.float32) / 255.0
        rgb = rgb * (1.0 - a) + over[..., :3].astype(np.float32) * a
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def driving_slices(result: StudyResult, *, n: int = 6) -> list[int]:
    """The slices that drove the decision: kept, classified, predicted as the decided class.

    Ranked by the probability of the decided class (highest first); ties broken by slice index. When fewer
    than ``n`` such slices exist, the most confident remaining kept slices fill up the list. Returned in
    slice order (superior first).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    probs = np.asarray(result.probabilities, dtype=np.float64)
    cls = CLASS_NAMES.index(result.decision.diagnosis)
    start, stop = result.decision.kept
    preds = list(result.decision.slice_predictions)
    scored: list[tuple[int, float, int]] = []
    for i in range(start, min(stop, probs.shape[0])):
        p = probs[i, cls]
        if math.isnan(p):
            continue
        agrees = 0 if (i < len(preds) and preds[i] == cls) else 1
        scored.append((agrees, -float(p), i))
    scored.sort()
    picks = [i for _, _, i in scored[:n]]
    return sorted(picks)
