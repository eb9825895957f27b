"""Lung involvement from a lesion mask: volumes, percentages and a CT severity score per lung and zone.

Zones: each lung is cut along z into thirds of its own extent (the slices where that lung has voxels):
upper (most superior third), middle, lower, so six zones in all. Each zone gets the lesion volume (ml), the
percent of the zone's lung volume it occupies, the ground glass / consolidation split, and a score with the
bands of the lobar CT severity score of Pan et al. (Radiology 2020;295:715-721): 0 no involvement, 1 < 5 %,
2 5-25 %, 3 26-49 %, 4 50-75 %, 5 > 75 %. Pan et al. scored five lobes (total 0-25); covidct scores six
z-zones, so its total ranges 0-30. The zones are not lobes: the right middle lobe lies in the right lung's
middle and lower thirds, the lingula in the left's middle third, and the fissures run obliquely across
thirds, so compare totals with Pan's only roughly (about x 25/30).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from covidct.registry import LesionLabel, LungLabel

#: Zone names, superior to inferior.
ZONES: Final[tuple[str, ...]] = ("upper", "middle", "lower")
#: Lungs by label value.
LUNGS: Final[dict[int, str]] = {int(LungLabel.RIGHT): "right", int(LungLabel.LEFT): "left"}
#: Upper percent bounds of Pan et al.'s bands 1-4 (band 5 above the last); 0 means no lesion voxel at all.
PAN_BANDS: Final[tuple[tuple[float, int], ...]] = ((5.0, 1), (25.0, 2), (50.0, 3), (75.0, 4))
#: The highest total: six zones of at most 5.
MAX_TOTAL: Final[int] = 5 * len(ZONES) * len(LUNGS)


def pan_score(percent: float, lesion_voxels: int = 1) -> int:
    """The band (0-5) of ``percent`` of a zone involved: 0 when no lesion voxel, 1 below 5 %, 2 to 25 %,
    3 below 50 %, 4 to 75 %, 5 above 75 %."""
    if lesion_voxels <= 0 or not percent > 0:
        return 0
    for bound, score in PAN_BANDS:
        if percent < bound or (score in (2, 4) and percent <= bound):
            return score
    return 5


def zone_slices(lung_z: np.ndarray) -> list[tuple[int, int]]:
    """Start/stop slice indices of the upper, middle and lower thirds of the slices ``lung_z`` marks.

    ``lung_z``: boolean per slice, whether the lung has voxels there. Empty ranges when it has none.
    """
    idx = np.flatnonzero(lung_z)
    if idx.size == 0:
        return [(0, 0)] * len(ZONES)
    first, last = int(idx[0]), int(idx[-1]) + 1
    cuts = np.linspace(first, last, len(ZONES) + 1).round().astype(int)
    return [(int(cuts[i]), int(cuts[i + 1])) for i in range(len(ZONES))]


def _measure(lung: np.ndarray, lesion: np.ndarray, voxel_ml: float) -> dict[str, Any]:
    """Volumes of one region (boolean lung voxels, lesion labels restricted to them)."""
    n_lung = int(np.count_nonzero(lung))
    ggo = int(np.count_nonzero(lung & (lesion == LesionLabel.GROUND_GLASS)))
    cons = int(np.count_nonzero(lung & (lesion == LesionLabel.CONSOLIDATION)))
    n_les = ggo + cons
    percent = 100.0 * n_les / n_lung if n_lung else 0.0
    return {
        "lung_ml": round(n_lung * voxel_ml, 1),
        "lesion_ml": round(n_les * voxel_ml, 1),
        "ground_glass_ml": round(ggo * voxel_ml, 1),
        "consolidation_ml": round(cons * voxel_ml, 1),
        "percent": round(percent, 2),
        "score": pan_score(percent, n_les),
    }


def involvement(
    lesions: np.ndarray, lung_mask: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, Any]:
    """Involvement of a study (see the module text): ``{"lungs": {...}, "total": {...}, "worst_slice": ...}``.

    ``lesions``: uint8 ``(z, y, x)`` of :class:`LesionLabel`; ``lung_mask``: 0/1/2 (right/left), same shape;
    ``spacing``: (z, y, x) mm. Lesion voxels outside the lungs are not counted.
    """
    les = np.asarray(lesions)
    lung = np.asarray(lung_mask)
    if les.shape != lung.shape or les.ndim != 3:
        raise ValueError(f"lesion mask {les.shape} and lung mask {lung.shape} must be the same 3-D shape")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lungs: dict[str, Any] = {}
    total_score = 0
    for value, side in LUNGS.items():
        this = lung == value
        entry = _measure(this, les, voxel_ml)
        zones: dict[str, Any] = {}
        for zone, (z0, z1) in zip(ZONES, zone_slices(this.any(axis=(1, 2))), strict=True):
            zones[zone] = {"slices": [z0, z1], **_measure(this[z0:z1], les[z0:z1], voxel_ml)}
            total_score += zones[zone]["score"]
        entry.pop("score")
        lungs[side] = {**entry, "zones": zones}
    both = _measure(lung > 0, les, voxel_ml)
    both.pop("score")
    in_lung = (les > 0) & (lung > 0)
    per_slice = in_lung.sum(axis=(1, 2))
    lung_per_slice = (lung > 0).sum(axis=(1, 2))
    frac = np.divide(
        per_slice, lung_per_slice, out=np.zeros(per_slice.shape, float), where=lung_per_slice > 0
    )
    worst = int(np.argmax(frac)) if per_slice.any() else None
    return {
        "zones": "thirds of each lung along z (upper, middle, lower); slice 0 most superior",
        "score_bands": "Pan et al. 2020: 0 none, 1 <5%, 2 5-25%, 3 26-49%, 4 50-75%, 5 >75% per zone",
        "lungs": lungs,
        "total": {**both, "score": total_score, "score_max": MAX_TOTAL},
        "worst_slice": None
        if worst is None
        else {"index": worst, "percent_of_lung": round(100.0 * float(frac[worst]), 2)},
    }
