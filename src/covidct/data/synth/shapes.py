"""Small vectorised helpers shared by the phantom modules: smooth steps, splatting, 2x up-sampling."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smoothstep(e0: float | np.ndarray, e1: float | np.ndarray, x: np.ndarray | float) -> np.ndarray:
    """Cubic smooth step: 0 below ``e0``, 1 above ``e1`` (works on arrays and scalars)."""
    u = np.clip((np.asarray(x, dtype=np.float32) - e0) / (e1 - e0), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def upsample2(a: np.ndarray, *, chunk: int = 8) -> np.ndarray:
    """Bilinear 2x up-sampling of the last two axes with half-pixel alignment (float32 in, float32 out).

    Work pixel ``i`` covers output pixels ``2i`` and ``2i+1``; edges are clamped. A 3-D array is processed
    ``chunk`` slices at a time (cache-friendly).
    """
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] > chunk:
        out3 = np.empty((a.shape[0], 2 * a.shape[1], 2 * a.shape[2]), dtype=np.float32)
        for i in range(0, a.shape[0], chunk):
            out3[i : i + chunk] = _upsample2(a[i : i + chunk])
        return out3
    return _upsample2(a)


def _upsample2(a: np.ndarray) -> np.ndarray:
    out_y = np.empty((*a.shape[:-2], 2 * a.shape[-2], a.shape[-1]), dtype=np.float32)
    prev = np.concatenate([a[..., :1, :], a[..., :-1, :]], axis=-2)
    nxt = np.concatenate([a[..., 1:, :], a[..., -1:, :]], axis=-2)
    out_y[..., 0::2, :] = 0.75 * a + 0.25 * prev
    out_y[..., 1::2, :] = 0.75 * a + 0.25 * nxt
    out = np.empty((*out_y.shape[:-1], 2 * a.shape[-1]), dtype=np.float32)
    prev = np.concatenate([out_y[..., :1], out_y[..., :-1]], axis=-1)
    nxt = np.concatenate([out_y[..., 1:], out_y[..., -1:]], axis=-1)
    out[..., 0::2] = 0.75 * out_y + 0.25 * prev
    out[..., 1::2] = 0.75 * out_y + 0.25 * nxt
    return out


def nearest2(a: np.ndarray) -> np.ndarray:
    """Nearest-neighbour 2x up-sampling of the last two axes (labels)."""
    out = np.empty((*a.shape[:-2], 2 * a.shape[-2], 2 * a.shape[-1]), dtype=a.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            out[..., dy::2, dx::2] = a
    return out


def splat(
    shape: tuple[int, int, int],
    zyx_index: np.ndarray,
    weights: np.ndarray,
    *,
    sigma_px: float = 0.6,
) -> np.ndarray:
    """Accumulate point ``weights`` at fractional voxel indices ``(n, 3)`` into a float32 field.

    Points are binned to the nearest voxel (a slab of the slice thickness in z, i.e. partial-volume
    averaging), then the field is smoothed in-plane with a Gaussian of ``sigma_px`` work pixels.
    """
    idx = np.rint(zyx_index).astype(np.int64)
    keep = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    idx = idx[keep]
    field = np.zeros(shape, dtype=np.float32)
    if not idx.size:
        return field
    lo = idx.min(axis=0)
    hi = idx.max(axis=0) + 1
    box_shape = tuple(int(v) for v in hi - lo)
    rel = idx - lo
    flat = np.ravel_multi_index((rel[:, 0], rel[:, 1], rel[:, 2]), box_shape)
    counts = np.bincount(flat, weights=weights[keep], minlength=int(np.prod(box_shape)))
    sub = counts.astype(np.float32).reshape(box_shape)
    if sigma_px > 0:
        sub = ndimage.gaussian_filter(sub, (0, sigma_px, sigma_px), truncate=2.5, mode="constant")
    field[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = sub
    return field


def cylinder_points(
    p0: np.ndarray, p1: np.ndarray, radius: np.ndarray, rng: np.random.Generator, *, point_volume: float
) -> tuple[np.ndarray, np.ndarray]:
    """Random points filling cylinders ``p0 -> p1`` (mm, ``(n, 3)``) and the volume each one stands for.

    Returns ``(points (m, 3) mm, volume_mm3 (m,))``; every cylinder gets at least one point per
    ``point_volume`` of its volume and at least one point per radius of its length.
    """
    seg = p1 - p0
    length = np.linalg.norm(seg, axis=1)
    vol = np.pi * radius**2 * length
    n = np.maximum(np.ceil(vol / point_volume), np.ceil(length / np.maximum(radius, 0.3))).astype(np.int64)
    n = np.maximum(n, 1)
    owner = np.repeat(np.arange(len(p0)), n)
    u = rng.random(owner.size).astype(np.float64)
    # uniform in the disc: radius sqrt(U), random angle, in a frame perpendicular to the axis
    d = seg / np.maximum(length, 1e-6)[:, None]
    helper = np.where(np.abs(d[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    e1 = np.cross(d, helper)
    e1 /= np.maximum(np.linalg.norm(e1, axis=1, keepdims=True), 1e-9)
    e2 = np.cross(d, e1)
    rr = radius[owner] * np.sqrt(rng.random(owner.size))
    ang = rng.random(owner.size) * 2 * np.pi
    pts = (
        p0[owner]
        + seg[owner] * u[:, None]
        + e1[owner] * (rr * np.cos(ang))[:, None]
        + e2[owner] * (rr * np.sin(ang))[:, None]
    )
    return pts, (vol / n)[owner]
