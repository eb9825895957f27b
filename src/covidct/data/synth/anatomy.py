"""A parametric chest: body wall, ribs, spine, mediastinum, airways, lungs with lobes, vessels, upper abdomen.

Coordinates (mm): ``s`` runs down from the lung apex (``s = 0``; ``t = s / lung_height`` is 0 at the apex and
1 at the top of the right diaphragm dome), ``X`` is the patient's left (+) / right (-), ``Y`` is posterior (+) /
anterior (-), both centred on the thorax. Image columns follow +X and rows +Y (DICOM LPS with an identity
orientation), so the patient's right lung (label 1) lies on the low-column side of the image.

Everything is evaluated with numpy broadcasting on a work grid (``(z, 1, 1)`` against ``(1, y, x)``); HU values
follow real CT (air -1000, lung about -850, fat -100, muscle and blood +40, liver +60, bone +700 to +1200).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covidct.data.synth.shapes import cylinder_points, smoothstep, splat

#: Lobe codes of :attr:`Anatomy.lobe` = index in ``registry.LOBES`` + 1 (0 = not lung).
LOBE_CODES: dict[str, int] = {"LLL": 1, "LUL": 2, "RLL": 3, "RML": 4, "RUL": 5}


@dataclass(frozen=True)
class Grid:
    """Sampling of one series: ``n_slices`` slices ``dz`` mm apart, ``size`` x ``size`` pixels of ``pixel_mm``.

    Anatomy is rendered on a work grid ``factor`` times coarser in-plane. ``s0`` is the ``s`` of slice 0 (the
    most superior); ``bx, by`` place the thorax centre in the field of view (mm from its centre).
    """

    n_slices: int
    size: int
    factor: int
    pixel_mm: float
    dz: float
    s0: float
    bx: float
    by: float

    @property
    def work_size(self) -> int:
        return self.size // self.factor

    @property
    def work_px(self) -> float:
        return self.pixel_mm * self.factor

    @property
    def work_shape(self) -> tuple[int, int, int]:
        return (self.n_slices, self.work_size, self.work_size)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``s (z,1,1)``, ``Y (1,h,1)``, ``X (1,1,w)`` in mm (thorax-centred) of the work-grid voxel centres."""
        fov = self.size * self.pixel_mm
        c = (np.arange(self.work_size, dtype=np.float32) + 0.5) * self.work_px - fov / 2
        s = (self.s0 + self.dz * np.arange(self.n_slices, dtype=np.float32))[:, None, None]
        return s, (c - self.by)[None, :, None], (c - self.bx)[None, None, :]

    def to_index(self, s: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Fractional work-grid indices ``(n, 3)`` of thorax points in mm."""
        fov = self.size * self.pixel_mm
        zi = (s - self.s0) / self.dz
        yi = (y + self.by + fov / 2) / self.work_px - 0.5
        xi = (x + self.bx + fov / 2) / self.work_px - 0.5
        return np.stack([zi, yi, xi], axis=1)


@dataclass(frozen=True)
class Body:
    """Patient-specific shape parameters (mm unless noted)."""

    lung_height: float  # apex to top of the right dome (inspiration depth)
    aw: float  # half-width of the thoracic cavity at full size
    bw: float  # half-depth (antero-posterior) of the cavity at full size
    fat: float  # subcutaneous fat thickness
    muscle: float
    heart: float  # heart scale (1 = typical)
    heart_x: float
    dome_left: float  # how much lower the left dome is (t units)
    lung_hu: float  # parenchyma HU at mid-depth
    gravity_hu: float  # extra HU of the dependent (posterior) lung
    rib_phase: float
    stomach_air: bool

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Body:
        scale = float(np.clip(rng.normal(1.0, 0.07), 0.85, 1.15))
        return cls(
            lung_height=float(np.clip(rng.normal(225, 18), 185, 265)) * scale,
            aw=float(rng.uniform(122, 148)) * scale,
            bw=float(rng.uniform(82, 105)) * scale,
            fat=float(rng.uniform(5, 22)),
            muscle=float(rng.uniform(7, 14)),
            heart=float(rng.uniform(0.88, 1.12)),
            heart_x=float(rng.uniform(14, 30)),
            dome_left=float(rng.uniform(0.03, 0.08)),
            lung_hu=float(rng.uniform(-880, -835)),
            gravity_hu=float(rng.uniform(25, 70)),
            rib_phase=float(rng.uniform(0, 30)),
            stomach_air=bool(rng.random() < 0.6),
        )


def cavity_axes(t: np.ndarray, b: Body) -> tuple[np.ndarray, np.ndarray]:
    """Half-width and half-depth (mm) of the inner thoracic wall at level ``t``."""
    aw = b.aw * (0.55 + 0.45 * smoothstep(-0.1, 0.42, t))
    bw = b.bw * (0.62 + 0.38 * smoothstep(-0.1, 0.45, t))
    return aw, bw


def _ellipse(x: np.ndarray, y: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return (x / a) ** 2 + (y / b) ** 2


def lung_labels(t: np.ndarray, y: np.ndarray, x: np.ndarray, b: Body) -> np.ndarray:
    """Lung label (0 none, 1 right, 2 left) at thorax points (broadcasting arrays, ``t`` normalised level)."""
    aw, bw = cavity_axes(t, b)
    inside = _ellipse(x, y, aw, bw) < 1.0
    apex = np.clip(t / 0.3, 0.0, 1.0) ** 0.55
    xm = 6.0
    wm = (22.0 + 38.0 * smoothstep(0.15, 0.5, t)) * (
        0.5 + 0.5 * np.exp(-(((y + 0.05 * bw) / (0.55 * bw)) ** 2))
    )
    ya = 0.1 * bw
    right = _ellipse(x + 0.5 * aw + 8, y - ya, 0.62 * aw * apex + 1e-3, 1.1 * bw * apex + 1e-3) < 1.0
    left = _ellipse(x - 0.5 * aw - 8, y - ya, 0.62 * aw * apex + 1e-3, 1.1 * bw * apex + 1e-3) < 1.0
    med = np.abs(x - xm) < wm / 2
    hp = np.sqrt(np.clip(1.0 - ((t - 0.85) / 0.42) ** 2, 0.0, 1.0)) * b.heart
    heart = _ellipse(x - b.heart_x, y + 0.25 * bw, 58.0 * hp + 1e-3, 48.0 * hp + 1e-3) < 1.0
    spine = (x**2 + (y - (bw - 15.0)) ** 2 < 28.0**2) | ((np.abs(x) < 20.0) & (y > bw - 40.0))
    dome_r = 1.0 + 0.3 * (((x + 0.45 * b.aw) / 90.0) ** 2 + (y / 130.0) ** 2) + 0.0006 * y
    dome_l = 1.0 + b.dome_left + 0.3 * (((x - 0.45 * b.aw) / 90.0) ** 2 + (y / 130.0) ** 2) + 0.0006 * y
    common = inside & ~med & ~heart & ~spine & (t > 0)
    lab = np.zeros(np.broadcast_shapes(np.shape(t), np.shape(y), np.shape(x)), dtype=np.uint8)
    lab[common & right & (x < xm) & (t < dome_r)] = 1
    lab[common & left & (x > xm) & (t < dome_l)] = 2
    return lab


def lobe_codes(lab: np.ndarray, t: np.ndarray, y: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """Approximate lobes from the oblique and horizontal fissures (codes of :data:`LOBE_CODES`)."""
    yn = y / bw
    lower = t > 0.62 - 0.30 * yn
    middle = t > 0.47 + 0.05 * yn
    out = np.zeros(lab.shape, dtype=np.uint8)
    r = lab == 1
    lft = lab == 2
    out[lft & lower] = LOBE_CODES["LLL"]
    out[lft & ~lower] = LOBE_CODES["LUL"]
    out[r & lower] = LOBE_CODES["RLL"]
    out[r & ~lower & middle] = LOBE_CODES["RML"]
    out[r & ~lower & ~middle] = LOBE_CODES["RUL"]
    return out


@dataclass
class Anatomy:
    """The rendered chest on the work grid (no disease, no noise)."""

    hu: np.ndarray  # float32 (z, h, w)
    lung: np.ndarray  # uint8 0/1/2
    lobe: np.ndarray  # uint8 lobe codes
    vessel: np.ndarray  # float32 vessel volume fraction
    wall: np.ndarray  # float32 airway wall (outer tube) volume fraction
    airway: np.ndarray  # float32 airway lumen volume fraction
    thorax: np.ndarray  # bool: inside the thoracic cavity, above the domes (where vessels are drawn)
    t: np.ndarray  # (z, 1, 1) normalised level
    y: np.ndarray  # (1, h, 1) mm
    x: np.ndarray  # (1, 1, w) mm
    body: Body
    grid: Grid
    segments: np.ndarray  # vessel tree: (n, 8) s0,y0,x0,s1,y1,x1,radius,generation (mm)


def vessel_tree(b: Body, rng: np.random.Generator) -> np.ndarray:
    """Branching pulmonary vessel tree from both hila: ``(n, 8)`` rows ``s0,y0,x0,s1,y1,x1,radius,generation``."""
    L = b.lung_height
    rows: list[np.ndarray] = []
    for side in (-1.0, 1.0):
        aw_h, _ = cavity_axes(np.asarray(0.45, dtype=np.float32), b)
        hilum = np.array([0.44 * L, 0.0, side * (0.18 * float(aw_h) + 24.0) + (6.0 if side > 0 else 0.0)])
        # trunk targets: random points of this lung, more of them low and posterior (where the lung is big)
        cand = np.column_stack(
            [
                rng.uniform(0.05, 1.05, 400) * L,
                rng.uniform(-1.0, 1.0, 400) * b.bw,
                side * rng.uniform(0.15, 1.0, 400) * b.aw,
            ]
        )
        inside = lung_labels(np.asarray(cand[:, 0] / L), cand[:, 1], cand[:, 2], b) == (1 if side < 0 else 2)
        targets = cand[inside][:16]
        p = np.repeat(hilum[None], len(targets), axis=0)
        d = targets - p
        length = np.linalg.norm(d, axis=1) * 0.35
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        r = np.full(len(targets), 3.6)
        for gen in range(9):
            end = p + d * length[:, None]
            lab = lung_labels(np.asarray(end[:, 0] / L), end[:, 1], end[:, 2], b)
            short = p + d * (0.5 * length)[:, None]
            lab_s = lung_labels(np.asarray(short[:, 0] / L), short[:, 1], short[:, 2], b)
            end = np.where(((lab == 0) & (lab_s > 0))[:, None], short, end)
            ok = (lab > 0) | (lab_s > 0) | (gen == 0)
            p, d, length, r, end = p[ok], d[ok], length[ok], r[ok], end[ok]
            if not len(p):
                break
            rows.append(np.column_stack([p, end, r, np.full(len(p), gen)]))
            # two children per branch, rotated about a random perpendicular axis, drifting away from the hilum
            k = len(p)
            out = end - hilum
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
            rnd = rng.normal(size=(k, 3))
            perp = rnd - (rnd * d).sum(1, keepdims=True) * d
            perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-6)
            ang = rng.uniform(0.45, 0.8, size=(k, 1))
            c1 = np.cos(ang) * d + np.sin(ang) * perp + 0.5 * out
            c2 = np.cos(ang) * d - np.sin(ang) * perp + 0.5 * out
            nd = np.concatenate([c1, c2])
            nd /= np.linalg.norm(nd, axis=1, keepdims=True)
            p = np.concatenate([end, end])
            d = nd
            length = np.concatenate([length, length]) * rng.uniform(0.8, 0.95, size=2 * k)
            r = np.concatenate([r, r]) * rng.uniform(0.68, 0.78, size=2 * k)
            keep = r > 0.45
            p, d, length, r = p[keep], d[keep], length[keep], r[keep]
    return np.concatenate(rows) if rows else np.zeros((0, 8))


def _tube_field(
    seg: np.ndarray, radius: np.ndarray, grid: Grid, b: Body, rng: np.random.Generator
) -> np.ndarray:
    """Volume fraction (0..1) of tubes ``seg`` (mm rows s0,y0,x0,s1,y1,x1) with ``radius`` on the work grid."""
    px = grid.work_px
    vox = px * px * grid.dz
    pts, vol = cylinder_points(seg[:, :3], seg[:, 3:6], radius, rng, point_volume=max(px, 0.8) ** 3 * 0.5)
    idx = grid.to_index(pts[:, 0], pts[:, 1], pts[:, 2])
    field = splat(grid.work_shape, idx, vol / vox, sigma_px=0.55)
    field *= 1.2  # thin vessels still show (partial volume at the work resolution)
    return np.clip(field, 0.0, 1.0, out=field)


def _render_slab(
    s: np.ndarray, y: np.ndarray, x: np.ndarray, b: Body
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HU, lung labels, lobe codes and the thorax mask of the slices at levels ``s`` (``(k, 1, 1)`` mm)."""
    t = s / np.float32(b.lung_height)
    aw, bw = cavity_axes(t, b)
    sh = (s.shape[0], y.shape[1], x.shape[2])
    hu = np.full(sh, -1000.0, dtype=np.float32)

    # table under the patient and body wall layers
    back = bw + 36.0 + b.fat * 0.5
    table = (y > back + 6) & (y < back + 11) & (np.abs(x) < 220)
    hu[np.broadcast_to(table, sh)] = 120.0
    ap = np.where(y > 0, 42.0 + b.fat * 0.5, 8.0 + b.muscle + b.fat)
    shoulder = 35.0 * (1.0 - smoothstep(0.15, 0.6, t))  # shoulder girdle muscles at the upper levels
    body = (_ellipse(x, y, aw + 10 + b.muscle + b.fat + shoulder, bw + ap) < 1.0) & (y < back)
    hu[body] = -105.0
    muscle = _ellipse(x, y, aw + 10 + b.muscle + shoulder, bw + ap - b.fat) < 1.0
    hu[muscle & body] = 42.0
    scap = (t < 0.5) & (_ellipse(np.abs(x) - 0.6 * aw, y - bw - 16.0, 38.0, 3.5) < 1.0)
    hu[scap & body] = 700.0
    ring_out = _ellipse(x, y, aw + 10, bw + 10) < 1.0
    ring_in = _ellipse(x, y, aw + 2, bw + 2) < 1.0
    rib_on = np.cos(2 * np.pi * (s + 0.4 * y + b.rib_phase) / 30.0) > 0.5
    ribs = ring_out & ~ring_in & rib_on & (t > -0.1) & (t < 1.15) & (y > -0.75 * bw)
    cart = ring_out & ~ring_in & rib_on & (t > -0.1) & (t < 1.0) & (y <= -0.75 * bw)
    hu[ribs] = 780.0
    hu[cart] = 130.0
    cavity = _ellipse(x, y, aw, bw) < 1.0
    hu[cavity] = -85.0  # mediastinal / extrapleural fat

    # sternum and spine
    stern = (_ellipse(x, y + bw + 6, 16.0, 7.0) < 1.0) & (t > 0.05) & (t < 0.9)
    hu[stern] = 900.0
    hu[stern & (_ellipse(x, y + bw + 6, 12.0, 4.0) < 1.0)] = 300.0
    yv = bw - 22.0
    disc = np.cos(2 * np.pi * (s + b.rib_phase) / 27.0) > 0.8
    vert = x**2 + (y - yv) ** 2 < 17.0**2
    hu[vert] = 950.0
    hu[vert & (x**2 + (y - yv) ** 2 < 14.5**2)] = 280.0
    hu[vert & disc & (x**2 + (y - yv) ** 2 < 16.0**2)] = 85.0
    canal = x**2 + (y - yv - 27.0) ** 2 < 8.0**2
    arch = ((np.abs(x) < 22.0) & (np.abs(y - yv - 28.0) < 12.0)) | (
        (np.abs(x) < 4.0) & (y > yv + 28) & (y < yv + 55)
    )
    hu[arch & body] = 750.0
    hu[canal] = 15.0

    # mediastinum: heart with pericardial fat, aorta, trachea, oesophagus
    hp = np.sqrt(np.clip(1.0 - ((t - 0.85) / 0.42) ** 2, 0.0, 1.0)) * b.heart
    hx, hy = x - b.heart_x, y + 0.25 * bw
    hu[_ellipse(hx, hy, 62.0 * hp + 1e-3, 52.0 * hp + 1e-3) < 1.0] = -95.0
    hu[_ellipse(hx, hy, 57.0 * hp + 1e-3, 47.0 * hp + 1e-3) < 1.0] = 38.0
    asc = ((x - 8) ** 2 + (y + 0.2 * bw) ** 2 < 15.0**2) & (t > 0.25) & (t < 0.6)
    desc = ((x - 20) ** 2 + (y - bw + 42) ** 2 < 12.0**2) & (t > 0.2) & (t < 1.25)
    # arch: a band from the ascending to the descending aorta
    ax0, ay0, ax1, ay1 = 8.0, -0.2 * bw, 20.0, bw - 42.0
    u = np.clip(
        ((x - ax0) * (ax1 - ax0) + (y - ay0) * (ay1 - ay0)) / ((ax1 - ax0) ** 2 + (ay1 - ay0) ** 2), 0, 1
    )
    arch_ao = (
        ((x - ax0 - u * (ax1 - ax0)) ** 2 + (y - ay0 - u * (ay1 - ay0)) ** 2 < 12.0**2)
        & (t > 0.18)
        & (t < 0.27)
    )
    pa = ((x + 2) ** 2 + (y + 0.05 * bw) ** 2 < 14.0**2) & (t > 0.38) & (t < 0.5)
    hu[asc | desc | arch_ao | pa] = 42.0
    yt = yv - 38.0
    carina = 0.36
    tr_out = (x**2 + (y - yt) ** 2 < 11.0**2) & (t < carina)
    tr_in = (x**2 + (y - yt) ** 2 < 9.0**2) & (t < carina)
    hu[tr_out] = 70.0
    hu[tr_in] = -1000.0
    eso = ((x - 5) ** 2 + (y - yv + 24) ** 2 < 7.0**2) & (t > -0.2)
    hu[eso] = 35.0
    # main bronchi: circles moving out from the carina towards the hila
    for side, tx in ((-1.0, 0.44), (1.0, 0.48)):
        f = np.clip((t - carina) / (tx - carina), 0.0, 1.0)
        bxc = side * (4.0 + 34.0 * f)
        byc = yt + 10.0 * f
        on = (t >= carina) & (t <= tx)
        hu[on & ((x - bxc) ** 2 + (y - byc) ** 2 < 8.5**2)] = 70.0
        hu[on & ((x - bxc) ** 2 + (y - byc) ** 2 < 6.5**2)] = -1000.0

    # upper abdomen under the domes
    dome_r = 1.0 + 0.3 * (((x + 0.45 * b.aw) / 90.0) ** 2 + (y / 130.0) ** 2) + 0.0006 * y
    dome_l = (
        dome_r + b.dome_left + 0.3 * ((((x - 0.45 * b.aw) / 90.0) ** 2) - ((x + 0.45 * b.aw) / 90.0) ** 2)
    )
    below = cavity & (((x < 6) & (t >= dome_r)) | ((x >= 6) & (t >= dome_l)))
    liver = below & (x < 25.0 - 60.0 * smoothstep(1.0, 1.3, t))
    hu[below] = 28.0
    hu[liver] = 62.0
    spleen = below & (_ellipse(x - 0.7 * b.aw, y - 0.5 * bw, 30.0, 45.0) < 1.0)
    hu[spleen] = 48.0
    if b.stomach_air:
        stom = below & (_ellipse(x - 0.4 * b.aw, y + 0.3 * bw, 35.0, 30.0) < 1.0) & (t < 1.25)
        hu[stom & (y < -0.3 * bw) & (t > dome_l + 0.08)] = -1000.0

    # lungs and lobes
    lung = lung_labels(t, y, x, b)
    lobe = lobe_codes(lung, t, y, bw)
    inlung = lung > 0
    paren = b.lung_hu + b.gravity_hu * np.clip(y / bw, -1.0, 1.0) + 20.0 * smoothstep(0.6, 1.1, t)
    hu = np.where(inlung, np.broadcast_to(paren, sh), hu).astype(np.float32)
    return hu, lung, lobe, np.broadcast_to(cavity & ~below, sh)


def build_anatomy(grid: Grid, b: Body, rng: np.random.Generator, *, chunk: int = 8) -> Anatomy:
    """Render the chest of ``b`` on ``grid``'s work grid (``chunk`` slices at a time, cache-friendly)."""
    s, y, x = grid.axes()
    t = s / np.float32(b.lung_height)
    sh = grid.work_shape
    hu = np.empty(sh, dtype=np.float32)
    lung = np.empty(sh, dtype=np.uint8)
    lobe = np.empty(sh, dtype=np.uint8)
    thorax = np.empty(sh, dtype=bool)
    for i in range(0, sh[0], chunk):
        part = slice(i, min(i + chunk, sh[0]))
        hu[part], lung[part], lobe[part], thorax[part] = _render_slab(s[part], y, x, b)

    # vessels (everywhere in the thorax above the domes) and airways (in the lungs)
    seg = vessel_tree(b, rng)
    vessel = _tube_field(seg, seg[:, 6], grid, b, rng)
    big = seg[:, 7] <= 5
    aseg = seg[big].copy()
    shift = np.column_stack([np.zeros(len(aseg)), np.full(len(aseg), 1.0), np.zeros(len(aseg))])
    off = (aseg[:, 6] * 1.6 + 1.0)[:, None] * shift
    aseg[:, 0:3] += off
    aseg[:, 3:6] += off
    wall = _tube_field(aseg, aseg[:, 6] * 0.9 + 0.5, grid, b, rng)
    lumen = _tube_field(aseg, aseg[:, 6] * 0.7, grid, b, rng)
    return Anatomy(
        hu=hu,
        lung=lung,
        lobe=lobe,
        vessel=vessel,
        wall=wall,
        airway=lumen,
        thorax=thorax,
        t=t,
        y=y,
        x=x,
        body=b,
        grid=grid,
        segments=seg,
    )
