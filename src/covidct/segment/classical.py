"""Classical lung segmentation (no weights): threshold, airway removal, components, right/left split, filling.

The method, on a grid downsampled in-plane for speed (``downsample``; by default 2 for fine grids, 1 where a
pixel is already coarse: see :func:`auto_downsample`):

1. Air = HU below ``air_threshold`` (-320 HU). Air connected, within its axial slice, to the image border is
   outside the body; the rest is air inside the body (lungs, airways, bowel gas).
2. Trachea and main bronchi: small (<= ``airway_max_area_mm2``) air regions of a slice close to the body's
   midline are airway seeds; they are tracked downwards slice by slice while they stay small, until they enter
   the lungs (where they merge with a large region). Those regions are removed.
3. 3-D connected components of what is left; the lungs are the largest component and every other component
   that is not tiny and starts in the upper half of it (bowel gas below the diaphragm starts lower).
4. Right/left: a component lying on one side of the midline takes that side. A component holding both lungs
   (they touch at the anterior/posterior junction) is eroded (distance transform) until it falls apart into
   two large parts on opposite sides; every voxel then takes the label of its nearest part.
5. Filling, per axial slice and lung: holes (vessels, nodules, consolidation surrounded by aerated lung) are
   filled, except the tops of diaphragm domes (holes that open into tissue in the slice below), and so are
   concavities of the lung's convex hull that open towards the chest wall (peripheral and
   dependent consolidation, effusion); concavities towards the mediastinum (heart, hilum) are left out, and
   so are concavities that do not rest on lung in the slice below (the liver, spleen or stomach wrapped by the
   costophrenic recesses); slices are filled from the most inferior up for that test.

Labels are those of :class:`covidct.registry.LungLabel`: 0 background, 1 the patient's right lung, 2 the
patient's left lung. Which array column direction is the patient's right comes from ``volume.direction``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from covidct.errors import NotChestCTError
from covidct.io.volume import CTVolume
from covidct.registry import AIR_HU, LungLabel

log = logging.getLogger(__name__)

#: Structuring element connecting pixels within an axial slice only (z, y, x): labels each slice separately.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndi.generate_binary_structure(2, 1)


@dataclass
class ClassicalSegmenter:
    """Threshold-and-morphology lung segmentation; load once (nothing to load), apply to many volumes.

    Parameters are in HU, mm, mm² and ml. ``apply`` raises :class:`NotChestCTError` when no lung is found.
    """

    name: str = "classical"
    air_threshold: float = -320.0
    downsample: int | None = None
    airway_max_area_mm2: float = 600.0
    airway_midline_mm: float = 25.0
    min_component_fraction: float = 0.01
    min_lung_area_mm2: float = 3000.0
    fill_concavities: bool = True

    def __post_init__(self) -> None:
        if self.downsample is not None and self.downsample < 1:
            raise ValueError(
                f"downsample must be >= 1 (or None: chosen from the pixel spacing), got {self.downsample}"
            )

    # ------------------------------------------------------------------ public
    def apply(self, volume: CTVolume) -> np.ndarray:
        """Lung mask of ``volume``: uint8 (z, y, x) like ``volume.hu``, 0 background / 1 right / 2 left."""
        ds = self.downsample if self.downsample is not None else auto_downsample(volume.shape, volume.spacing)
        low = _downsample(volume.hu, ds)
        sz, sy, sx = volume.spacing
        spacing = (float(sz), float(sy) * ds, float(sx) * ds)
        labels = self._segment_low(low, spacing, _right_is_low_x(volume))
        full = np.repeat(np.repeat(labels, ds, axis=1), ds, axis=2)[:, : volume.shape[1], : volume.shape[2]]
        return np.ascontiguousarray(full, dtype=np.uint8)

    # ------------------------------------------------------------------ steps
    def _segment_low(
        self, hu: np.ndarray, spacing: tuple[float, float, float], right_low_x: bool
    ) -> np.ndarray:
        pixel_mm2 = spacing[1] * spacing[2]
        air = hu < self.air_threshold
        outside = _outside_air(air)
        inside = air & ~outside
        body = ~outside
        midline = _midline_x(body)
        airway = self._airways(inside, midline, pixel_mm2, spacing[2])
        lungs = self._lung_components(inside & ~airway, pixel_mm2)
        labels = _split_right_left(lungs, midline, spacing, right_low_x)
        tissue = hu < 200.0  # all but bone: consolidation with its air bronchograms, fluid, soft tissue
        return _fill(labels, body, midline, spacing[2], fill_concavities=self.fill_concavities, tissue=tissue)

    def _airways(self, inside: np.ndarray, midline: float, pixel_mm2: float, pixel_mm: float) -> np.ndarray:
        """Trachea and main bronchi outside the lungs: small air regions seeded at the midline, tracked down."""
        comps, n = ndi.label(inside, structure=_IN_PLANE)
        airway = np.zeros_like(inside)
        if n == 0:
            return airway
        count = np.bincount(comps.ravel(), minlength=n + 1)
        small = count * pixel_mm2 <= self.airway_max_area_mm2
        small[0] = False
        zz, yy, xx = np.nonzero(small[comps])  # the voxels of small regions only: few
        cx = np.bincount(comps[zz, yy, xx], weights=xx, minlength=n + 1) / np.maximum(count, 1)
        seed = small & (np.abs(cx - midline) * pixel_mm <= self.airway_midline_mm)
        previous = np.zeros(inside.shape[1:], dtype=bool)
        for z in range(inside.shape[0]):
            sl = comps[z]
            keep = seed.copy()
            if previous.any():
                touched = np.unique(sl[_dilate_2d(previous) & (sl > 0)])
                keep[touched[small[touched]]] = True
            current = keep[sl]
            airway[z] = current
            previous = current
        return airway

    def _lung_components(self, candidates: np.ndarray, pixel_mm2: float) -> np.ndarray:
        """The lungs among the air regions inside the body: the largest component and those that are not tiny
        and start in its upper half."""
        comps, n = ndi.label(candidates)
        if n == 0:
            raise NotChestCTError(
                "no lungs found: no air-filled region inside the body apart from the airways; "
                "check that the input is a chest CT"
            )
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        largest = int(np.argmax(sizes))
        zext = ndi.find_objects(comps)
        lz = zext[largest - 1][0]
        max_area = float(np.max(np.count_nonzero(comps[lz] == largest, axis=(1, 2)))) * pixel_mm2
        if max_area < self.min_lung_area_mm2:
            raise NotChestCTError(
                f"no lungs found: the largest air region inside the body covers {max_area / 100:.0f} cm² "
                f"in its largest slice (a lung covers > {self.min_lung_area_mm2 / 100:.0f} cm²); "
                "check that the input is a chest CT"
            )
        limit = lz.start + 0.5 * (lz.stop - lz.start)
        keep = np.zeros(n + 1, dtype=bool)
        for label in range(1, n + 1):
            sl = zext[label - 1]
            if sl is None:
                continue
            big = sizes[label] >= self.min_component_fraction * sizes[largest]
            keep[label] = big and sl[0].start <= limit
        return keep[comps]


def auto_downsample(shape: tuple[int, ...], spacing: tuple[float, ...]) -> int:
    """In-plane downsampling factor for a volume of ``shape`` (z, y, x) and ``spacing`` (z, y, x) mm.

    2 for the usual fine grids (512 x 512 at 0.6-0.9 mm: the lungs are resolved at half resolution and the
    segmentation is 3-4x faster); 1 when a slice is small (<= 256 pixels a side) or its pixels are already
    coarse (>= 1.2 mm): halving those leaves 2.5-6 mm pixels, whose staircase border costs several Dice points
    (a one-pixel ring of false positives around each lung, measured on 128 x 128 synthetic cohorts).
    """
    if max(shape[1], shape[2]) <= 256 or min(float(spacing[1]), float(spacing[2])) >= 1.2:
        return 1
    return 2


def _downsample(hu: np.ndarray, factor: int) -> np.ndarray:
    """In-plane block mean (float32), out-of-field values (< -1024 HU) counted as air; pads odd sizes."""
    data = np.maximum(hu, AIR_HU)
    if factor == 1:
        return data.astype(np.float32)
    py, px = (-data.shape[1]) % factor, (-data.shape[2]) % factor
    if py or px:
        data = np.pad(data, ((0, 0), (0, py), (0, px)), mode="edge")
    total = np.zeros((data.shape[0], data.shape[1] // factor, data.shape[2] // factor), dtype=np.float32)
    for dy in range(factor):
        for dx in range(factor):
            total += data[:, dy::factor, dx::factor]
    total /= factor * factor
    return total


def _right_is_low_x(volume: CTVolume) -> bool:
    """True when the patient's right lies at small column indices (LPS: column axis points to the left)."""
    lps_left = float(volume.direction[0, 0])
    if abs(lps_left) < 0.5:
        log.warning(
            "the image columns are not left-right (direction %s): right/left may be swapped",
            volume.direction[:, 0].round(2).tolist(),
        )
    return lps_left >= 0


def _dilate_2d(mask: np.ndarray) -> np.ndarray:
    """One-pixel 4-neighbour dilation of a 2-D boolean mask."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _erode_2d(mask: np.ndarray) -> np.ndarray:
    """One-pixel 4-neighbour erosion of a 2-D boolean mask (pixels outside the array count as background)."""
    return ~_dilate_2d(~np.pad(mask, 1))[1:-1, 1:-1]


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of every axial slice of ``mask`` (z, y, x) within its bounding box."""
    out = mask.copy()
    boxes = ndi.find_objects(mask.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return out
    box = boxes[0]
    padded = np.pad(mask[box], ((0, 0), (1, 1), (1, 1)))
    filled = ~_outside_air(~padded)[:, 1:-1, 1:-1]
    out[box] |= filled
    return out


def _outside_air(air: np.ndarray) -> np.ndarray:
    """Air connected to the border of its own axial slice."""
    comps, n = ndi.label(air, structure=_IN_PLANE)
    border = np.zeros(n + 1, dtype=bool)
    for edge in (comps[:, 0, :], comps[:, -1, :], comps[:, :, 0], comps[:, :, -1]):
        border[np.unique(edge)] = True
    border[0] = False
    return border[comps]


def _midline_x(body: np.ndarray) -> float:
    """Column of the body's left-right centre (median over slices that show a body)."""
    counts = body.sum(axis=1)  # (z, x)
    total = counts.sum(axis=1)
    valid = total > 0
    if not valid.any():
        return body.shape[2] / 2.0
    xs = np.arange(body.shape[2], dtype=np.float64)
    centres = (counts[valid] * xs).sum(axis=1) / total[valid]
    return float(np.median(centres))


def _split_right_left(
    lungs: np.ndarray, midline: float, spacing: tuple[float, float, float], right_low_x: bool
) -> np.ndarray:
    """Label the lung voxels 1 (patient's right) or 2 (left), splitting components that hold both lungs."""
    low_side, high_side = (
        (LungLabel.RIGHT, LungLabel.LEFT) if right_low_x else (LungLabel.LEFT, LungLabel.RIGHT)
    )
    labels = np.zeros(lungs.shape, dtype=np.uint8)
    comps, _ = ndi.label(lungs)
    xs = np.arange(lungs.shape[2])
    for label, sl in enumerate(ndi.find_objects(comps), start=1):
        if sl is None:
            continue
        comp = comps[sl] == label
        colx = xs[sl[2]][None, None, :]
        low = int(np.count_nonzero(comp & (colx < midline)))
        total = int(np.count_nonzero(comp))
        view = labels[sl]
        if min(low, total - low) < 0.15 * total:
            view[comp] = low_side if low >= total - low else high_side
            continue
        # the markers and the nearest-marker split are computed on a grid twice as coarse in-plane: they
        # only decide where the junction line runs, and the distance transforms dominate the running time
        coarse = comp[:, ::2, ::2]
        coarse_spacing = (spacing[0], spacing[1] * 2, spacing[2] * 2)
        parts = _erode_apart(coarse, coarse_spacing, (midline - sl[2].start) / 2)
        if parts is None:
            log.info("lungs could not be separated by erosion; splitting at the midline")
            view[comp & (colx < midline)] = low_side
            view[comp & (colx >= midline)] = high_side
            continue
        _, nearest = ndi.distance_transform_edt(parts == 0, sampling=coarse_spacing, return_indices=True)
        owner = np.repeat(np.repeat(parts[tuple(nearest)], 2, axis=1), 2, axis=2)
        owner = owner[:, : comp.shape[1], : comp.shape[2]]
        view[comp & (owner == 1)] = low_side
        view[comp & (owner == 2)] = high_side
    return labels


def _erode_apart(comp: np.ndarray, spacing: tuple[float, float, float], midline: float) -> np.ndarray | None:
    """Markers 1 (low-x lung) and 2 (high-x lung) from eroding ``comp`` until it splits, or None."""
    depth = ndi.distance_transform_edt(comp, sampling=spacing)
    xs = np.arange(comp.shape[2])[None, None, :]
    for mm in (1.5, 2.5, 3.5, 5.0, 7.0, 9.0, 12.0):
        core = depth > mm
        parts, n = ndi.label(core)
        if n < 2:
            continue
        sizes = np.bincount(parts.ravel())
        sizes[0] = 0
        order = np.argsort(sizes)[::-1][:2]
        a, b = int(order[0]), int(order[1])
        if sizes[b] < 0.2 * sizes[a]:
            continue
        ca = float(np.mean(np.broadcast_to(xs, parts.shape)[parts == a]))
        cb = float(np.mean(np.broadcast_to(xs, parts.shape)[parts == b]))
        if (ca - midline) * (cb - midline) >= 0:
            continue
        lo, hi = (a, b) if ca < cb else (b, a)
        markers = np.zeros(comp.shape, dtype=np.uint8)
        markers[parts == lo] = 1
        markers[parts == hi] = 2
        return markers
    return None


def _fill_lung_holes(mask: np.ndarray, *, min_voxels: int = 100) -> np.ndarray:
    """``mask`` with its per-slice holes filled, except holes that are the top of a structure from below.

    A dome of the diaphragm (liver, spleen, heart apex) shows in the axial slices above its top as an island
    of soft tissue surrounded by lung: a hole. Followed downwards (3-D), such a hole ends in a slice below which
    the same place is neither lung nor hole (the structure opens into the abdomen). Those holes (of at least
    ``min_voxels`` voxels) stay out; holes ending on lung (nodules, vessels, consolidation) are filled.
    """
    filled = _fill_holes_2d(mask)
    holes = filled & ~mask
    comps, n = ndi.label(holes)
    if n == 0:
        return filled
    sizes = np.bincount(comps.ravel())
    for label, box in enumerate(ndi.find_objects(comps), start=1):
        if box is None or sizes[label] < min_voxels:
            continue
        bottom = box[0].stop - 1
        if bottom + 1 >= mask.shape[0]:
            continue
        footprint = comps[bottom][box[1:]] == label
        below = ~filled[bottom + 1][box[1:]] & footprint
        if np.count_nonzero(below) > 0.5 * np.count_nonzero(footprint):
            filled[box][comps[box] == label] = False
    return filled


def _fill(
    labels: np.ndarray,
    body: np.ndarray,
    midline: float,
    pixel_mm: float,
    *,
    fill_concavities: bool,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """Fill holes per slice and lung, the hull concavities of each lung that lie against the chest wall, and
    dense tissue that continues a lung of the slice below (``tissue``: the non-bone pixels, see
    :func:`_from_below`).

    Slices are processed from the most inferior up, so that a slice is judged against the finished mask of
    the slice below it: a concavity is filled only where it rests on lung there (consolidation does; the liver,
    spleen and stomach under a diaphragm dome, wrapped by the posterior costophrenic recess, do not). The
    last slice of the volume has nothing below it and keeps the in-plane rule alone.
    """
    out = labels.copy()
    masks = {int(v): _fill_lung_holes(labels == v) for v in (LungLabel.RIGHT, LungLabel.LEFT)}
    if fill_concavities:
        nz = labels.shape[0]
        largest = {v: int(m.reshape(nz, -1).sum(axis=1).max()) for v, m in masks.items()}
        for z in np.flatnonzero(labels.reshape(nz, -1).any(axis=1))[::-1]:
            depth = _LazyDepth(body[z], pixel_mm)
            below = None
            if z + 1 < nz:
                below = masks[int(LungLabel.RIGHT)][z + 1] | masks[int(LungLabel.LEFT)][z + 1]
            for value, mask in masks.items():
                if mask[z].any():
                    mask[z] = _fill_wall_pockets(mask[z], depth, midline, below=below)
                    if tissue is None or z + 1 >= nz:
                        continue
                    other = masks[int(LungLabel.LEFT) + int(LungLabel.RIGHT) - value]
                    if _falls_short(mask[z], mask[z + 1], other[z], other[z + 1], largest[value]):
                        mask[z] |= _from_below(mask[z], mask[z + 1], tissue[z] & ~other[z], depth)
    for value, mask in masks.items():
        out[mask & (out == 0)] = value
    return out


#: A lung "falls short" of the slice below when its area is under SHORTFALL times the area expected from the
#: slice below scaled as the other lung changes; only slices below which the lung covers at least
#: MIN_AREA_FRAC of its largest slice (not the apex, where the two apices differ in height) are judged.
SHORTFALL = 0.9
MIN_AREA_FRAC = 0.5


def _falls_short(
    here: np.ndarray, below: np.ndarray, other_here: np.ndarray, other_below: np.ndarray, largest: int
) -> bool:
    """Whether one lung's slice lost more area to the slice below than the other lung did (consolidation)."""
    n_below = int(np.count_nonzero(below))
    if n_below == 0 or n_below < MIN_AREA_FRAC * largest:
        return False
    ratio = min(float(np.count_nonzero(other_here)) / max(float(np.count_nonzero(other_below)), 1.0), 1.0)
    return int(np.count_nonzero(here)) < SHORTFALL * n_below * ratio


def _from_below(mask: np.ndarray, below: np.ndarray, tissue: np.ndarray, depth_of: _LazyDepth) -> np.ndarray:
    """Pixels of ``tissue`` (not bone, not the other lung) where the same lung is in the finished slice below.

    A lobar consolidation that reaches from the chest wall to the mediastinum is no hull concavity, but the lung
    below it (aerated, or already filled) shows where the lung is. Kept are the candidates no shallower under
    the skin than the lung's own border here (10th percentile, less one pixel: not the chest wall), after an
    opening by a 1-pixel disk (no thin rims), in components that touch ``mask``.
    """
    cand = below & tissue & ~mask
    if not cand.any():
        return cand
    rows, cols = np.nonzero(mask & ~_erode_2d(mask))
    wall = float(np.percentile(depth_of.at(rows, cols), 10.0)) - depth_of.pixel_mm
    cr, cc = np.nonzero(cand)
    shallow = depth_of.at(cr, cc) < wall
    cand[cr[shallow], cc[shallow]] = False
    cand = ndi.binary_opening(cand, structure=ndi.generate_binary_structure(2, 1))
    comps, n = ndi.label(cand)
    if n == 0:
        return cand
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(comps[_dilate_2d(mask) & cand])] = True
    keep[0] = False
    return keep[comps]


class _LazyDepth:
    """Distance (mm) of pixels of a slice to the outside of the body (its nearest boundary pixel).

    The tree of boundary pixels is built on first use; queries cost only for the pixels asked about.
    """

    def __init__(self, body: np.ndarray, pixel_mm: float) -> None:
        self._body = body
        self.pixel_mm = pixel_mm
        self._tree: Any = None

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self._tree is None:
            from scipy.spatial import cKDTree

            edge = np.argwhere(self._body & ~_erode_2d(self._body))
            self._tree = cKDTree(edge if edge.size else np.array([[-1e6, -1e6]]))
        dist, _ = self._tree.query(np.column_stack([rows, cols]))
        return np.asarray(dist, dtype=np.float64) * self.pixel_mm


#: Fraction of a concavity's pixels that must be lung (after filling) in the slice below for it to be filled.
RESTING_FRACTION = 0.5


def _fill_wall_pockets(
    mask: np.ndarray,
    depth_of: _LazyDepth,
    midline: float,
    *,
    medial_ratio: float = 0.6,
    below: np.ndarray | None = None,
) -> np.ndarray:
    """Add to one lung's 2-D ``mask`` the concavities of its convex hull that lie against the chest wall.

    ``depth_of`` gives each pixel's distance (mm) to the outside of the body. A concavity (a connected part of hull
    minus lung) is closed by a straight "lid" along the hull. Where the lid runs along the chest wall (its depth
    below the skin is about that of the lung's own hull-touching border: the chest wall's thickness) and the
    concavity lies no closer to the midline than ``medial_ratio`` times the lung's mean distance to it, the
    concavity is pleural: consolidation or effusion against the wall, and it is filled. Where the lid cuts
    deep through the mediastinum or the abdomen (heart, hilum, diaphragm dome), or the concavity is medial,
    it is not: the method prefers leaving out a juxta-mediastinal consolidation to swallowing the mediastinum.
    With ``below`` (the lung pixels of the slice below, both lungs, already filled) a concavity is filled only
    when at least :data:`RESTING_FRACTION` of it lies on lung there: the pleural recesses wrap the liver,
    spleen and stomach under the diaphragm domes in a crescent whose hull holds those organs, which rest on
    abdomen, not lung.
    """
    from skimage.morphology import convex_hull_image

    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if np.count_nonzero(mask) < 8:
        return mask
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, mask.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, mask.shape[1])
    crop = mask[r0:r1, c0:c1]
    hull = convex_hull_image(crop)
    pockets, n = ndi.label(hull & ~crop)
    if n == 0:
        return mask
    idx = np.arange(1, n + 1)
    dist = np.broadcast_to(np.abs(np.arange(c0, c1, dtype=np.float64) - midline)[None, :], crop.shape)
    lateral = np.asarray(ndi.mean(dist, pockets, idx)) >= medial_ratio * float(np.mean(dist[crop]))
    if not lateral.any():
        return mask
    rim = hull & ~_erode_2d(hull)
    wall_r, wall_c = np.nonzero(rim & crop)
    if wall_r.size == 0:
        return mask
    thickness = float(np.percentile(depth_of.at(wall_r + r0, wall_c + c0), 25))
    lid_r, lid_c = np.nonzero(rim & (pockets > 0))
    lid_depth = np.full(n, np.inf)
    if lid_r.size:
        lid_label = pockets[lid_r, lid_c]
        lid_values = depth_of.at(lid_r + r0, lid_c + c0)
        present = np.unique(lid_label)
        lid_depth[present - 1] = ndi.median(lid_values, lid_label, present)
    fill = np.zeros(n + 1, dtype=bool)
    fill[1:] = (lid_depth <= 1.4 * thickness + 10.0) & lateral
    if below is not None:
        size = np.bincount(pockets.ravel(), minlength=n + 1)
        on_lung = np.bincount(pockets.ravel(), weights=below[r0:r1, c0:c1].ravel(), minlength=n + 1)
        fill[1:] &= on_lung[1:] >= RESTING_FRACTION * size[1:]
    out = mask.copy()
    out[r0:r1, c0:c1] |= fill[pockets]
    return out
