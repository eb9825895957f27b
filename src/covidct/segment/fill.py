"""Step 5 of the classical segmenter, the filling, and the per-slice morphology it shares with the rest.

Per axial slice and lung: holes (vessels, nodules, consolidation surrounded by aerated lung) are filled,
except the tops of diaphragm domes (holes that open into tissue in the slice below), and so are concavities of
the lung's convex hull that open towards the chest wall (peripheral and dependent consolidation, effusion);
concavities towards the mediastinum (heart, hilum) are left out, and so are concavities that do not rest on
lung in the slice below (the liver, spleen or stomach wrapped by the costophrenic recesses); slices are filled
from the most inferior up for that test. See :mod:`covidct.segment.classical` for steps 1-4.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from covidct.registry import LungLabel

#: Structuring element connecting pixels within an axial slice only (z, y, x): labels each slice separately.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndi.generate_binary_structure(2, 1)


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
