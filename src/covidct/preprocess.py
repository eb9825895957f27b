"""Windowing, resizing and lung masking: one implementation shared by training and inference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from covidct.registry import CLASSIFIER_IMAGE_SIZE, LUNG_WINDOW, SEGMENTER_IMAGE_SIZE, Window

if TYPE_CHECKING:
    import torch

    from covidct.io.volume import CTVolume


def window(hu: np.ndarray, win: Window = LUNG_WINDOW) -> np.ndarray:
    """Map HU to [0, 1] float32 through a display window (values outside are clipped)."""
    if win.width <= 0:
        raise ValueError(f"window width must be positive, got {win.width}")
    out = (np.asarray(hu, dtype=np.float32) - np.float32(win.low)) / np.float32(win.width)
    return np.clip(out, 0.0, 1.0, out=out)


#: Alias for use inside functions whose ``window`` argument shadows :func:`window`.
window_fn = window


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


# --- slice preparation shared by training and inference ---------------------------------------------

#: Window of the U-Net segmenter's input: -1000 to +600 HU mapped to [0, 1] (air to soft tissue).
SEGMENTER_WINDOW: Window = Window(level=-200.0, width=1600.0)


def _select(n: int, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Slice indices as an int64 array, validated against ``n`` slices (``None`` = all)."""
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"slice indices must lie in [0, {n}), got {idx.min()}..{idx.max()}")
    return idx


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """The ``(out_size, in_size)`` float32 matrix of 1-D bilinear resampling, as PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)`` does it: a triangle filter around each output pixel's
    centre, widened by the scale when shrinking (``antialias=True``, as in PIL) and renormalised at the edges."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got {in_size} -> {out_size}")
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)  # float32 throughout, as PyTorch's CPU kernel computes them
    if scale < 1.0:  # enlarging: plain bilinear between the two nearest source pixels
        up = np.zeros((out_size, in_size), dtype=np.float32)
        for i in range(out_size):
            src = max(scale * f32(i + 0.5) - f32(0.5), f32(0.0))
            i0 = min(int(src), in_size - 1)
            i1 = min(i0 + 1, in_size - 1)
            l1 = f32(src - f32(i0))
            up[i, i0] += f32(1.0) - l1
            up[i, i1] += l1
        return up
    support, inv = scale, f32(1.0) / scale  # shrinking: the triangle widened by the scale
    w = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        center = scale * f32(i + 0.5)
        lo = max(int(center - support + f32(0.5)), 0)
        hi = min(int(center + support + f32(0.5)), in_size)
        j = np.arange(lo, hi, dtype=np.float32)
        taps = np.clip(f32(1.0) - np.abs((j - center + f32(0.5)) * inv), f32(0.0), None)
        total = taps.sum(dtype=np.float32)
        if total > 0:
            w[i, lo:hi] = taps / total
    return w


def resize_images(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a stack ``(n, h, w)`` float32 to ``(n, S, S)`` (or ``(n, H, W)``) with bilinear interpolation.

    Anti-aliased when shrinking, so a 512 slice at 128 keeps thin structures as averages instead of aliasing.
    NumPy only (two matrix products per slice with :func:`resize_weights`), equal to :func:`resize_tensor`
    (PyTorch) to float rounding; deterministic. A stack that already has the size is returned as a copy.
    """
    arr = np.ascontiguousarray(images, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"resize_images expects (n, h, w), got shape {arr.shape}")
    out_hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if arr.shape[1:] == out_hw or arr.shape[0] == 0:
        return np.zeros((0, *out_hw), np.float32) if arr.shape[0] == 0 else arr.copy()
    wy = resize_weights(arr.shape[1], out_hw[0])
    wx = resize_weights(arr.shape[2], out_hw[1])
    cols = np.matmul(arr, wx.T)  # (n, h, W): along the width first, then the height, as PyTorch does
    return np.ascontiguousarray(np.matmul(wy, cols), dtype=np.float32)


def resize_labels(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a label stack ``(n, h, w)`` with nearest-neighbour sampling; keeps the dtype (uint8 masks)."""
    out_hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"resize_labels expects (n, h, w), got shape {lab.shape}")
    if lab.shape[1:] == out_hw:
        return lab.copy()
    rows, cols = _nearest_index(lab.shape[1:], out_hw)
    return lab[:, rows[:, None], cols[None, :]]


def _nearest_index(in_hw: tuple[int, ...], out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column sources of nearest-neighbour resizing: out pixel i samples floor((i + 0.5) * h / H)."""
    h, w = int(in_hw[0]), int(in_hw[1])
    rows = np.minimum(((np.arange(out_hw[0]) + 0.5) * h / out_hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_hw[1]) + 0.5) * w / out_hw[1]).astype(np.int64), w - 1)
    return rows, cols


def classifier_inputs(
    volume: CTVolume,
    mask: np.ndarray,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    image_size: int = CLASSIFIER_IMAGE_SIZE,
    window: Window = LUNG_WINDOW,
) -> np.ndarray:
    """The classifier's input: lung-window slices with everything outside the lung set to 0, resized.

    ``volume.hu`` is ``(z, y, x)`` HU; ``mask`` is the lung mask, same shape (non-zero = lung).
    Returns float32 ``(n, 1, S, S)`` in [0, 1], one row per entry of ``indices`` (all slices when ``None``),
    in the order given. The mask is applied at the native resolution, then the slice is resized, exactly as in
    training (the preprocessing cache calls this function).
    """
    hu = volume.hu
    m = np.asarray(mask)
    if m.shape != hu.shape:
        raise ValueError(f"lung mask shape {m.shape} does not match the volume shape {hu.shape}")
    idx = _select(hu.shape[0], indices)
    win = window_fn(hu[idx], window)
    win[m[idx] == 0] = 0.0
    return resize_images(win, image_size)[:, None]


def segmenter_inputs(
    volume: CTVolume,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    image_size: int = SEGMENTER_IMAGE_SIZE,
    window: Window = SEGMENTER_WINDOW,
) -> np.ndarray:
    """The U-Net segmenter's input: slices in :data:`SEGMENTER_WINDOW` resized to ``(n, 1, S, S)`` float32."""
    idx = _select(volume.hu.shape[0], indices)
    return resize_images(window_fn(volume.hu[idx], window), image_size)[:, None]


# --- the same preparation on torch tensors (on the model's device: no host round trip on a GPU) ---------


def window_tensor(hu: torch.Tensor, win: Window = LUNG_WINDOW) -> torch.Tensor:
    """:func:`window` for a tensor of HU (any real dtype, any device): float32 in [0, 1]."""
    if win.width <= 0:
        raise ValueError(f"window width must be positive, got {win.width}")
    return ((hu.float() - float(win.low)) / float(win.width)).clamp_(0.0, 1.0)


def resize_tensor(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """:func:`resize_images` for a float32 tensor ``(n, h, w)`` (same interpolation, on its device)."""
    import torch.nn.functional as F

    out_hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if images.ndim != 3:
        raise ValueError(f"resize_tensor expects (n, h, w), got shape {tuple(images.shape)}")
    if tuple(images.shape[1:]) == out_hw or images.shape[0] == 0:
        return images.new_zeros((images.shape[0], *out_hw)) if images.shape[0] == 0 else images.clone()
    shrink = out_hw[0] < images.shape[1] or out_hw[1] < images.shape[2]
    r = F.interpolate(images[:, None], size=out_hw, mode="bilinear", align_corners=False, antialias=shrink)
    return r[:, 0]


def resize_labels_tensor(labels: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """:func:`resize_labels` for a tensor ``(n, h, w)`` (the same pixel-centre sampling, on its device)."""
    import torch

    out_hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if labels.ndim != 3:
        raise ValueError(f"resize_labels_tensor expects (n, h, w), got shape {tuple(labels.shape)}")
    rows, cols = _nearest_index(tuple(labels.shape[1:]), out_hw)
    r = torch.from_numpy(rows).to(labels.device)
    c = torch.from_numpy(cols).to(labels.device)
    return labels[:, r[:, None], c[None, :]]


def classifier_inputs_tensor(
    hu: torch.Tensor,
    mask: torch.Tensor,
    *,
    image_size: int = CLASSIFIER_IMAGE_SIZE,
    window: Window = LUNG_WINDOW,
) -> torch.Tensor:
    """:func:`classifier_inputs` for the chosen slices already as tensors: HU ``(n, h, w)`` and lung mask
    ``(n, h, w)`` on one device; returns float32 ``(n, 1, S, S)`` there."""
    if tuple(mask.shape) != tuple(hu.shape):
        raise ValueError(f"lung mask shape {tuple(mask.shape)} does not match the slices {tuple(hu.shape)}")
    win = window_tensor(hu, window)
    win[mask == 0] = 0.0
    return resize_tensor(win, image_size)[:, None]


def segmenter_inputs_tensor(
    hu: torch.Tensor, *, image_size: int = SEGMENTER_IMAGE_SIZE, window: Window = SEGMENTER_WINDOW
) -> torch.Tensor:
    """:func:`segmenter_inputs` for HU slices ``(n, h, w)`` already as a tensor: ``(n, 1, S, S)`` float32."""
    return resize_tensor(window_tensor(hu, window), image_size)[:, None]
