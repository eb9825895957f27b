"""Disease placed into real lungs: COVID-19 and CAP patterns drawn into a real CT volume, in HU.

Every function edits ``hu`` (float32 ``(z, y, x)``, a real series) in place, only inside ``lung`` (the
pipeline's own lung mask of that series) and returns the lesion fraction (0..1 float32, same shape). Lesion
appearance comes from real donor patches (:mod:`covidct.data.realistic.donors`) or from the phantom
generator's recipe (noise-textured ground glass, crazy paving, consolidation with air bronchograms); the two
sources are used at the same rates for every class, so "real vs procedural texture" never tells a class.

Blending keeps the recipient's own structure: ``new = bg + a * (level + delta - bg)`` with the recipient's
healthy-lung level, then vessels brighter than the lesion stay visible (``max(new, bg)``), as in real
ground glass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidct.data.realistic.donors import LesionBank, LesionPatch
from covidct.data.synth.shapes import smoothstep


@dataclass
class Canvas:
    """A real volume being edited: HU (float32, edited in place), lung labels, spacing, lung level."""

    hu: np.ndarray
    lung: np.ndarray  # uint8 (z, y, x): 0 background, 1 right, 2 left
    spacing: tuple[float, float, float]
    lesion: np.ndarray  # float32 lesion fraction drawn so far

    @classmethod
    def of(cls, hu: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float]) -> Canvas:
        return cls(
            np.asarray(hu, dtype=np.float32),
            np.asarray(lung, np.uint8),
            spacing,
            np.zeros_like(hu, np.float32),
        )

    def lung_level(self, z: int) -> float:
        """The healthy-lung HU of slice ``z`` (median inside the lung, lesions excluded)."""
        sel = (self.lung[z] > 0) & (self.lesion[z] < 0.1)
        return float(np.median(self.hu[z][sel])) if sel.sum() > 100 else -860.0


def peripheral_weights(
    lung: np.ndarray, spacing: tuple[float, float, float], *, band_mm: float
) -> np.ndarray:
    """Per-voxel weight 1 within ``band_mm`` of the lung's edge in its slice (subpleural), else 0.15."""
    out = np.zeros(lung.shape, dtype=np.float32)
    for z in range(lung.shape[0]):
        m = lung[z] > 0
        if m.any():
            d = ndimage.distance_transform_edt(m, sampling=spacing[1:])
            out[z] = np.where(m, np.where(d < band_mm, 1.0, 0.15), 0.0)
    return out


def pick_voxel(
    rng: np.random.Generator, weights: np.ndarray, *, stride: int = 4
) -> tuple[int, int, int] | None:
    """A voxel drawn with probability proportional to ``weights`` (on a ``stride`` grid in y and x)."""
    w = weights[:, ::stride, ::stride]
    flat = w.reshape(-1).astype(np.float64)
    total = flat.sum()
    if total <= 0:
        return None
    k = int(rng.choice(flat.size, p=flat / total))
    z, y, x = np.unravel_index(k, w.shape)
    return int(z), int(y) * stride, int(x) * stride


def procedural_patch(rng: np.random.Generator, radius_px: float, kind: str) -> LesionPatch:
    """The phantom generator's recipe as a 2-D patch: an irregular blob with textured ground glass (some
    with crazy paving or a consolidated core) or consolidation with air bronchograms."""
    r = max(radius_px, 3.0)
    n = int(np.ceil(r * 2.6)) | 1
    yy, xx = np.mgrid[:n, :n].astype(np.float32) - n // 2
    ang = rng.uniform(0, np.pi)
    ex = rng.uniform(0.7, 1.3)
    u = (xx * np.cos(ang) + yy * np.sin(ang)) / (r * ex)
    v = (-xx * np.sin(ang) + yy * np.cos(ang)) / (r / ex)
    rad = np.sqrt(u**2 + v**2)
    wobble = ndimage.gaussian_filter(rng.normal(size=(n, n)).astype(np.float32), max(r / 4, 1.0))
    wobble /= max(float(np.abs(wobble).max()), 1e-6)
    rad = rad * (1.0 + 0.3 * wobble)
    soft = 0.8 if kind == "consolidation" else 0.5  # ground glass fades into the lung over several mm
    alpha = (1.0 - smoothstep(soft, 1.05, rad)).astype(np.float32)
    tex = ndimage.gaussian_filter(rng.normal(size=(n, n)).astype(np.float32), 1.0) * 50.0
    if kind == "consolidation":
        delta = rng.uniform(820.0, 920.0) + tex
        tubes = _lines((n, n), rng, width=0.3, scale=max(r / 8.0, 3.0))  # air bronchograms stay dark
        delta = delta * (1.0 - tubes * rng.uniform(0.3, 1.0)) - 120.0 * tubes
        delta = np.where(rad > 0.8, rng.uniform(250, 450) + tex, delta)  # ground-glass rim
    else:
        delta = rng.uniform(180.0, 520.0) + tex
        if rng.random() < 0.35:  # crazy paving
            delta = delta + 240.0 * _lines((n, n), rng, width=0.35)
        if rng.random() < 0.3:  # consolidated core
            core = smoothstep(0.6, 0.2, rad)
            delta = delta * (1 - core) + rng.uniform(780, 900) * core
    return LesionPatch(delta.astype(np.float32), alpha, kind, "procedural")


def _lines(
    shape: tuple[int, int], rng: np.random.Generator, *, width: float, scale: float = 1.3
) -> np.ndarray:
    """A network of lines (zero crossings of noise band-passed at ``scale`` pixels), 0..1."""
    noise = rng.normal(size=shape).astype(np.float32)
    band = ndimage.gaussian_filter(noise, scale) - ndimage.gaussian_filter(noise, scale * 2.3)
    band /= max(float(band.std()), 1e-6)
    return (1.0 - smoothstep(0.0, width, np.abs(band))).astype(np.float32)


def transform_patch(patch: LesionPatch, rng: np.random.Generator, *, scale: float) -> LesionPatch:
    """A donor patch rotated by a multiple of 90 degrees, maybe mirrored, and zoomed by ``scale``."""
    k = int(rng.integers(4))
    delta, alpha = np.rot90(patch.delta, k), np.rot90(patch.alpha, k)
    if rng.random() < 0.5:
        delta, alpha = delta[:, ::-1], alpha[:, ::-1]
    if abs(scale - 1.0) > 0.05:
        delta = ndimage.zoom(np.ascontiguousarray(delta), scale, order=1)
        alpha = ndimage.zoom(np.ascontiguousarray(alpha), scale, order=1)
    alpha = ndimage.gaussian_filter(np.asarray(alpha, np.float32), 1.0 + 0.5 * scale)  # soft margins
    return LesionPatch(
        np.ascontiguousarray(delta, np.float32),
        np.clip(alpha, 0, 1).astype(np.float32),
        patch.kind,
        patch.source,
    )


def place(
    canvas: Canvas,
    patch: LesionPatch,
    centre: tuple[int, int, int],
    *,
    half_slices: int,
    region: np.ndarray | None = None,
    record: bool = True,
) -> None:
    """Draw ``patch`` as a 3-D lesion: full size at slice ``centre[0]``, shrinking to its core over
    ``half_slices`` slices above and below (an ellipsoid profile). ``region`` (bool, volume shape) limits
    it further than the lung (e.g. one lung for lobar pneumonia). ``record`` False draws a finding that is
    not a lesion (it stays out of ``canvas.lesion`` and so out of the slice labels)."""
    z0, y0, x0 = centre
    h, w = patch.alpha.shape
    zs, ys, xs = canvas.hu.shape
    ya, xa = y0 - h // 2, x0 - w // 2
    py0, px0 = max(0, -ya), max(0, -xa)
    yb, xb = max(ya, 0), max(xa, 0)
    ye, xe = min(ya + h, ys), min(xa + w, xs)
    if ye <= yb or xe <= xb:
        return
    sub_alpha = patch.alpha[py0 : py0 + ye - yb, px0 : px0 + xe - xb]
    sub_delta = patch.delta[py0 : py0 + ye - yb, px0 : px0 + xe - xb]
    inside = ndimage.distance_transform_edt(sub_alpha > 0.2)
    depth = inside / max(float(inside.max()), 1.0)
    for z in range(max(z0 - half_slices, 0), min(z0 + half_slices + 1, zs)):
        t = (z - z0) / (half_slices + 0.5)
        s = float(np.sqrt(max(1.0 - t * t, 0.0)))
        a = sub_alpha * smoothstep(1.0 - s, min(1.0 - s + 0.25, 1.0 + 1e-3), depth)
        allowed = canvas.lung[z, yb:ye, xb:xe] > 0
        if region is not None:
            allowed &= region[z, yb:ye, xb:xe]
        a = (a * allowed).astype(np.float32)
        if not a.any():
            continue
        bg = canvas.hu[z, yb:ye, xb:xe]
        target = canvas.lung_level(z) + sub_delta
        new = bg + a * (target - bg)
        canvas.hu[z, yb:ye, xb:xe] = np.where(a > 0, np.maximum(new, np.minimum(bg, 200.0)), bg)
        if record:
            np.maximum(canvas.lesion[z, yb:ye, xb:xe], a, out=canvas.lesion[z, yb:ye, xb:xe])


def _patch(
    rng: np.random.Generator,
    bank: LesionBank | None,
    kind: str,
    radius_mm: float,
    px_mm: float,
    donor_p: float,
) -> LesionPatch:
    """A donor patch scaled to ``radius_mm`` (with probability ``donor_p`` when a bank is given), else a
    procedural one of that radius."""
    donor = bank.sample(rng, kind) if bank is not None and len(bank) and rng.random() < donor_p else None
    if donor is None:
        return procedural_patch(rng, radius_mm / px_mm, kind)
    size_px = float(np.sqrt(max(float((donor.alpha > 0.5).sum()), 1.0) / np.pi))
    scale = float(np.clip(radius_mm / px_mm / max(size_px, 1.0), 0.4, 3.0))
    return transform_patch(donor, rng, scale=scale)


def covid19(
    canvas: Canvas, rng: np.random.Generator, bank: LesionBank | None, *, burden: float, donor_p: float = 0.5
) -> str:
    """Bilateral, multifocal, peripheral, lower-predominant ground glass (some consolidation)."""
    dz, px = canvas.spacing[0], canvas.spacing[1]
    weights = peripheral_weights(canvas.lung, canvas.spacing, band_mm=15.0)
    z_rel = np.linspace(0.0, 1.0, canvas.hu.shape[0], dtype=np.float32)[:, None, None]
    weights *= 0.4 + z_rel  # lower-lobe predominance (slice 0 is the most superior)
    n = round(2 + burden * 14)
    sides = [1, 2] if rng.random() < 0.85 else [int(rng.integers(1, 3))]
    for i in range(n):
        side = sides[i % len(sides)]
        c = pick_voxel(rng, weights * (canvas.lung == side))
        if c is None:
            continue
        radius = rng.uniform(7.0, 16.0) + burden * rng.uniform(0.0, 22.0)
        kind = "consolidation" if rng.random() < 0.15 else "ggo"
        patch = _patch(rng, bank, kind, radius, px, donor_p)
        place(canvas, patch, c, half_slices=max(1, round(radius * rng.uniform(0.6, 1.1) / dz)))
    return "covid19-peripheral-ggo"


def cap(
    canvas: Canvas, rng: np.random.Generator, bank: LesionBank | None, *, burden: float, donor_p: float = 0.5
) -> str:
    """Lobar/segmental consolidation of one lung with air bronchograms, or clustered bronchopneumonia."""
    dz, px = canvas.spacing[0], canvas.spacing[1]
    side = int(rng.integers(1, 3))
    in_side = canvas.lung == side
    if rng.random() < 0.6:
        c = pick_voxel(rng, in_side.astype(np.float32))
        if c is None:
            return "none"
        radius = 25.0 + burden * 45.0
        region = _blob_region(canvas.lung.shape, c, radius, canvas.spacing, rng) & in_side
        # the patch is larger than the region, which gives the consolidation its lobe-bounded shape; donors are
        # small, so a donor's texture is tiled to that size
        if bank is not None and len(bank) and rng.random() < donor_p:
            donor = bank.sample(rng, "consolidation")
            patch = (
                _tile(donor, 1.6 * radius / px)
                if donor is not None
                else procedural_patch(rng, 1.6 * radius / px, "consolidation")
            )
        else:
            patch = procedural_patch(rng, 1.6 * radius / px, "consolidation")
        place(canvas, patch, c, half_slices=max(2, round(radius * 0.8 / dz)), region=region)
        return "cap-lobar-consolidation"
    clusters = 1 if rng.random() < 0.5 else 2
    for k in range(clusters):
        c0 = pick_voxel(rng, (canvas.lung == (side if k == 0 else 3 - side)).astype(np.float32))
        if c0 is None:
            continue
        spread = rng.uniform(20.0, 45.0) + burden * 20.0
        for _ in range(int(12 + burden * 60)):
            off = rng.normal(scale=[spread / dz / 2, spread / px / 2, spread / px / 2])
            c = (int(c0[0] + off[0]), int(c0[1] + off[1]), int(c0[2] + off[2]))
            if not (
                0 <= c[0] < canvas.hu.shape[0]
                and 0 <= c[1] < canvas.hu.shape[1]
                and 0 <= c[2] < canvas.hu.shape[2]
            ):
                continue
            if canvas.lung[c] == 0:
                continue
            radius = rng.uniform(2.0, 5.5)
            kind = "consolidation" if rng.random() < 0.6 else "ggo"
            patch = _patch(rng, bank, kind, radius, px, donor_p * 0.5)
            place(canvas, patch, c, half_slices=max(1, round(radius / dz)))
    return "cap-bronchopneumonia"


def _tile(patch: LesionPatch, radius_px: float) -> LesionPatch:
    """A donor's texture repeated (mirrored) to cover a lobe-sized blob; the alpha becomes a soft disc."""
    n = int(np.ceil(radius_px * 2.4)) | 1
    reps = (int(np.ceil(n / patch.delta.shape[0])) + 1, int(np.ceil(n / patch.delta.shape[1])) + 1)
    tex = np.block(
        [
            [patch.delta if (i + j) % 2 == 0 else patch.delta[::-1, ::-1] for j in range(reps[1])]
            for i in range(reps[0])
        ]
    )
    tex = tex[:n, :n]
    yy, xx = np.mgrid[:n, :n].astype(np.float32) - n // 2
    alpha = 1.0 - smoothstep(0.8, 1.0, np.sqrt(yy**2 + xx**2) / radius_px)
    level = float(np.median(patch.delta[patch.alpha > 0.5])) if (patch.alpha > 0.5).any() else 800.0
    tex = np.where(np.isfinite(tex) & (tex > level - 250.0), tex, level)  # the donor's own lung is not tiled
    return LesionPatch(tex.astype(np.float32), alpha.astype(np.float32), patch.kind, patch.source)


def _blob_region(
    shape: tuple[int, ...],
    c: tuple[int, int, int],
    radius_mm: float,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """An irregular ellipsoid (bool, volume shape) of about ``radius_mm`` around ``c``."""
    dz, dy, dx = spacing
    rz, ry, rx = (int(np.ceil(radius_mm * 1.3 / s)) for s in spacing)
    out = np.zeros(shape, dtype=bool)
    z0, y0, x0 = c
    box = (
        slice(max(z0 - rz, 0), min(z0 + rz + 1, shape[0])),
        slice(max(y0 - ry, 0), min(y0 + ry + 1, shape[1])),
        slice(max(x0 - rx, 0), min(x0 + rx + 1, shape[2])),
    )
    zz = (np.arange(box[0].start, box[0].stop) - z0)[:, None, None] * dz
    yy = (np.arange(box[1].start, box[1].stop) - y0)[None, :, None] * dy
    xx = (np.arange(box[2].start, box[2].stop) - x0)[None, None, :] * dx
    ax = rng.uniform(0.7, 1.3, size=3) * radius_mm
    r = np.sqrt((zz / ax[0]) ** 2 + (yy / ax[1]) ** 2 + (xx / ax[2]) ** 2)
    out[box] = r < 1.0
    return out


def look_alikes(canvas: Canvas, rng: np.random.Generator) -> list[str]:
    """Findings that are not pneumonia, drawn in every class: calcified granulomas, linear atelectasis."""
    found = []
    dz, px = canvas.spacing[0], canvas.spacing[1]
    lung_w = (canvas.lung > 0).astype(np.float32)
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 4))):
            c = pick_voxel(rng, lung_w)
            if c is None:
                break
            r = rng.uniform(1.5, 3.0) / px
            h = int(np.ceil(r * 1.2)) + 1
            yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float32)
            disc = (1.0 - smoothstep(0.7 * r, 1.1 * r, np.sqrt(yy**2 + xx**2))).astype(np.float32)
            granuloma = LesionPatch(np.full(disc.shape, 1100.0, np.float32), disc, "granuloma", "procedural")
            place(canvas, granuloma, c, half_slices=max(0, int(2.0 / dz)), record=False)
        found.append("granuloma")
    if rng.random() < 0.3:
        c = pick_voxel(rng, peripheral_weights(canvas.lung, canvas.spacing, band_mm=10.0))
        if c is not None:
            length, width = rng.uniform(15, 35) / px, rng.uniform(0.8, 1.6) / px
            n = int(np.ceil(length)) | 1
            yy, xx = np.mgrid[:n, :n].astype(np.float32) - n // 2
            ang = rng.uniform(0, np.pi)
            u = xx * np.cos(ang) + yy * np.sin(ang)
            v = -xx * np.sin(ang) + yy * np.cos(ang)
            band = ((np.abs(u) < length / 2) * (1.0 - smoothstep(width * 0.5, width, np.abs(v)))).astype(
                np.float32
            )
            streak = LesionPatch(
                np.full(band.shape, 450.0, np.float32),
                ndimage.gaussian_filter(band, 1.0),
                "atelectasis",
                "procedural",
            )
            place(canvas, streak, c, half_slices=1, record=False)
            found.append("linear-atelectasis")
    return found
