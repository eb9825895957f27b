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
5. Filling (:mod:`covidct.segment.fill`), per axial slice and lung: holes (vessels, nodules, consolidation
   surrounded by aerated lung) are filled, except the tops of diaphragm domes (holes that open into tissue in
   the slice below), and so are concavities of the lung's convex hull that open towards the chest wall
   (peripheral and dependent consolidation, effusion); concavities towards the mediastinum (heart, hilum) are
   left out, and so are concavities that do not rest on lung in the slice below (the liver, spleen or stomach
   wrapped by the costophrenic recesses); slices are filled from the most inferior up for that test.

Labels are those of :class:`covidct.registry.LungLabel`: 0 background, 1 the patient's right lung, 2 the
patient's left lung. Which array column direction is the patient's right comes from ``volume.direction``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from covidct.errors import NotChestCTError
from covidct.io.volume import CTVolume
from covidct.registry import AIR_HU, LungLabel
from covidct.segment.fill import _IN_PLANE, _dilate_2d, _fill, _outside_air

log = logging.getLogger(__name__)


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
