"""Lesions with the radiological patterns that tell the classes apart, and normal look-alikes.

- COVID-19: bilateral, multifocal, peripheral / subpleural, lower-lobe predominant rounded ground-glass
  opacities (about -700 to -300 HU), some with crazy paving (reticulation) or a consolidated core.
- CAP: lobar or segmental consolidation (about -100 to +50 HU) stopping at the fissures, with air bronchograms,
  usually in one lobe of one lung; or bronchopneumonia (clustered centrilobular nodules); sometimes an effusion.
- Every class: look-alikes that are not lesions (dependent atelectasis, small calcified granulomas).

All functions edit the work-grid HU in place and return a lesion fraction field (0..1, float32) or masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from covidct.data.synth.anatomy import LOBE_CODES, Anatomy, cavity_axes
from covidct.data.synth.shapes import smoothstep, splat


@dataclass
class Disease:
    """What was drawn: lesion fraction (0..1), effusion mask, a short pattern name and parameters."""

    lesion: np.ndarray  # float32 (z, h, w) lesion fraction
    effusion: np.ndarray  # bool (z, h, w)
    pattern: str
    details: dict[str, float | str] = field(default_factory=dict)


def _peripheral_candidates(a: Anatomy, rng: np.random.Generator, n: int, *, lower_bias: float) -> np.ndarray:
    """``n`` work-grid voxel indices in the lung, drawn towards the pleura, the bases and the back."""
    coarse = a.lung[:, ::2, ::2] > 0
    inner = ndimage.binary_erosion(coarse, iterations=3, border_value=0)
    periph = coarse & ~inner
    zz, yy, xx = np.nonzero(periph)
    if zz.size == 0:
        zz, yy, xx = np.nonzero(coarse)
    if zz.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    t = a.t[zz, 0, 0]
    _, bw = cavity_axes(t, a.body)
    yn = a.y[0, 2 * yy, 0] / bw
    w = np.exp(lower_bias * (np.clip(t, 0, 1.1) - 0.5)) * (1.0 + 0.8 * np.clip(yn, -1, 1))
    w = np.maximum(w, 1e-6)
    pick = rng.choice(zz.size, size=n, replace=True, p=w / w.sum())
    return np.column_stack([zz[pick], 2 * yy[pick], 2 * xx[pick]])


def _blob(
    a: Anatomy, center: np.ndarray, radii_mm: np.ndarray, rng: np.random.Generator
) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """A soft, irregular ellipsoid (0..1) around work-grid voxel ``center``; returns (box, values)."""
    g = a.grid
    rz = max(int(np.ceil(radii_mm[0] * 1.3 / g.dz)), 1)
    ry = max(int(np.ceil(radii_mm[1] * 1.3 / g.work_px)), 1)
    rx = max(int(np.ceil(radii_mm[2] * 1.3 / g.work_px)), 1)
    z0, y0, x0 = (int(v) for v in center)
    sz, sy, sx = g.work_shape
    box = (
        slice(max(z0 - rz, 0), min(z0 + rz + 1, sz)),
        slice(max(y0 - ry, 0), min(y0 + ry + 1, sy)),
        slice(max(x0 - rx, 0), min(x0 + rx + 1, sx)),
    )
    dz = (np.arange(box[0].start, box[0].stop) - z0)[:, None, None] * g.dz / radii_mm[0]
    dy = (np.arange(box[1].start, box[1].stop) - y0)[None, :, None] * g.work_px / radii_mm[1]
    dx = (np.arange(box[2].start, box[2].stop) - x0)[None, None, :] * g.work_px / radii_mm[2]
    r = np.sqrt(dz**2 + dy**2 + dx**2).astype(np.float32)
    shape = r.shape
    wobble = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), (0.6, 1.5, 1.5)) * 1.2
    r = r * (1.0 + 0.35 * np.clip(wobble, -1, 1))
    return box, (1.0 - smoothstep(0.7, 1.05, r)).astype(np.float32)


def _reticulation(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A network of thin lines (crazy paving): zero crossings of band-passed noise, 0..1."""
    n = rng.normal(size=shape).astype(np.float32)
    band = ndimage.gaussian_filter(n, (0.5, 1.3, 1.3)) - ndimage.gaussian_filter(n, (0.5, 3.0, 3.0))
    band /= max(float(band.std()), 1e-6)
    return (1.0 - smoothstep(0.0, 0.35, np.abs(band))).astype(np.float32)


def covid19(a: Anatomy, rng: np.random.Generator, *, burden: float) -> Disease:
    """Bilateral peripheral lower-predominant GGO; ``burden`` 0..1 sets number and size of the lesions."""
    hu, lung = a.hu, a.lung > 0
    lesion = np.zeros(hu.shape, dtype=np.float32)
    n = round(4 + burden * 20)
    centres = _peripheral_candidates(a, rng, n, lower_bias=2.5)
    n_crazy = n_cons = 0
    for c in centres:
        size = rng.uniform(12, 22) + burden * rng.uniform(10, 40)
        radii = np.array(
            [size * rng.uniform(0.8, 1.3), size * rng.uniform(0.7, 1.1), size * rng.uniform(0.7, 1.1)]
        )
        box, f = _blob(a, c, radii, rng)
        f = f * lung[box]
        ggo = rng.uniform(-700, -350)
        tex = ndimage.gaussian_filter(rng.normal(size=f.shape).astype(np.float32), (0.5, 1.0, 1.0)) * 60.0
        target = ggo + tex
        if rng.random() < 0.35:  # crazy paving: septal lines on the GGO
            target = target + 260.0 * _reticulation(f.shape, rng)
            n_crazy += 1
        if rng.random() < 0.3 + 0.3 * burden:  # consolidated core
            core = smoothstep(0.55, 0.9, f)
            target = target * (1 - core) + rng.uniform(-80, 30) * core
            n_cons += 1
        sub = hu[box]
        hu[box] = sub + f * (target - sub)
        np.maximum(lesion[box], f, out=lesion[box])
    return Disease(
        lesion,
        np.zeros(hu.shape, dtype=bool),
        "ggo-bilateral-peripheral",
        {"lesions": float(n), "crazy_paving": float(n_crazy), "consolidation": float(n_cons)},
    )


def cap(a: Anatomy, rng: np.random.Generator, *, burden: float) -> Disease:
    """Lobar/segmental consolidation with air bronchograms, or bronchopneumonia; sometimes an effusion."""
    hu, lung = a.hu, a.lung > 0
    lobes = list(LOBE_CODES)
    weights = np.array([0.27, 0.15, 0.3, 0.13, 0.15])  # LLL LUL RLL RML RUL
    lobe = lobes[int(rng.choice(len(lobes), p=weights / weights.sum()))]
    in_lobe = a.lobe == LOBE_CODES[lobe]
    lesion = np.zeros(hu.shape, dtype=np.float32)
    zz, yy, xx = np.nonzero(in_lobe[:, ::2, ::2])
    if zz.size == 0:
        return Disease(lesion, np.zeros(hu.shape, dtype=bool), "none")
    if rng.random() < 0.7:
        pattern = f"lobar-consolidation-{lobe}"
        k = int(rng.integers(zz.size))
        c = np.array([zz[k], 2 * yy[k], 2 * xx[k]])
        size = 35 + burden * 50
        box, f = _blob(a, c, np.array([size * 1.2, size, size]), rng)
        f = f * in_lobe[box]
        tex = ndimage.gaussian_filter(rng.normal(size=f.shape).astype(np.float32), (0.5, 1.0, 1.0)) * 40.0
        target = rng.uniform(-90, 40) + tex
        # GGO rim around the consolidation
        target = np.where(f < 0.6, -450.0 + tex, target)
        sub = hu[box]
        blend = hu[box] + f * (target - sub)
        # air bronchograms: the airway lumen stays dark inside the consolidation
        air = a.airway[box]
        hu[box] = blend + np.clip(air * 1.4, 0, 1) * f * (-990.0 - blend)
        lesion[box] = np.maximum(lesion[box], f)
    else:
        pattern = f"bronchopneumonia-{lobe}"
        m = int(40 + burden * 260)
        pick = rng.choice(zz.size, size=min(m, zz.size) * 3, replace=True)
        c = np.column_stack([zz[pick], 2 * yy[pick], 2 * xx[pick]]).astype(np.float64)
        anchor = c[int(rng.integers(len(c)))]
        dist = np.linalg.norm((c - anchor) * [a.grid.dz, a.grid.work_px, a.grid.work_px], axis=1)
        c = c[np.argsort(dist)[:m]] + rng.uniform(-0.5, 0.5, size=(min(m, len(c)), 3))
        pts = np.repeat(c, 6, axis=0) + rng.normal(scale=[0.3, 1.2, 1.2], size=(len(c) * 6, 3))
        f = splat(a.grid.work_shape, pts, np.full(len(pts), 0.9, dtype=np.float64), sigma_px=0.9)
        f = np.clip(f, 0, 1) * lung
        target = rng.uniform(-250, 0)
        hu += f * (target - hu)
        lesion = f.astype(np.float32)
    effusion = np.zeros(hu.shape, dtype=bool)
    if rng.random() < 0.3:
        side = 1 if lobe.startswith("R") else 2
        depth = rng.uniform(8, 25)
        aw, bw = cavity_axes(a.t, a.body)
        rho = np.sqrt((a.x / aw) ** 2 + (a.y / bw) ** 2)
        d = depth * smoothstep(0.55, 1.0, a.t)
        effusion = (a.lung == side) & (a.y > 0) & (rho > 1.0 - d / bw)
        hu[effusion] = rng.uniform(5, 20)
        pattern += "+effusion"
    return Disease(lesion, effusion, pattern, {"lobe": lobe, "burden": burden})


def look_alikes(a: Anatomy, rng: np.random.Generator) -> list[str]:
    """Normal findings that are not lesions: dependent atelectasis, calcified granulomas. Edits ``a.hu``."""
    found: list[str] = []
    hu = a.hu
    if rng.random() < 0.55:
        aw, bw = cavity_axes(a.t, a.body)
        rho = np.sqrt((a.x / aw) ** 2 + (a.y / bw) ** 2)
        thick = rng.uniform(3, 9)
        band = (a.lung > 0) & (a.y > 0.3 * bw) & (rho > 1.0 - thick / bw) & (a.t > 0.55)
        f = band * smoothstep(0.0, thick / bw, rho - (1.0 - thick / bw))
        hu += f * (rng.uniform(-450, -150) - hu)
        found.append("dependent-atelectasis")
    if rng.random() < 0.3:
        zz, yy, xx = np.nonzero(a.lung[:, ::4, ::4])
        for _ in range(int(rng.integers(1, 3))):
            k = int(rng.integers(zz.size))
            box, f = _blob(a, np.array([zz[k], 4 * yy[k], 4 * xx[k]]), np.full(3, rng.uniform(2, 3.5)), rng)
            hu[box] += f * (rng.uniform(150, 400) - hu[box])
        found.append("granuloma")
    return found
