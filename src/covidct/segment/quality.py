"""Mask quality figures: Dice overlap, voxel counts and volumes per lung label."""

from __future__ import annotations

import math

import numpy as np

from covidct.registry import LUNG_LABEL_NAMES, LungLabel


def dice(a: np.ndarray, b: np.ndarray, label: int | None = None) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two masks of the same shape.

    With ``label`` the sets are the voxels equal to ``label``; without it, every non-zero voxel. NaN when both
    sets are empty (the ratio is undefined).
    """
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    sa = (a == label) if label is not None else (a != 0)
    sb = (b == label) if label is not None else (b != 0)
    total = int(np.count_nonzero(sa)) + int(np.count_nonzero(sb))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(sa & sb)) / total


def lung_voxel_counts(mask: np.ndarray) -> dict[str, int]:
    """Voxels per label: ``{"background": n, "right_lung": n, "left_lung": n}``.

    Raises ``ValueError`` when the mask holds values other than 0, 1 and 2.
    """
    m = np.asarray(mask)
    if m.size and (int(m.min()) < 0 or int(m.max()) >= len(LUNG_LABEL_NAMES)):
        raise ValueError(f"a lung mask holds only 0, 1 and 2; found values up to {int(m.max())}")
    # one label at a time: a bool temporary per label, not an int64 copy of the volume (8x its uint8 size)
    counts = {value: int(np.count_nonzero(m == value)) for value in LUNG_LABEL_NAMES if value}
    counts[0] = int(m.size) - sum(counts.values())
    return {name: counts[value] for value, name in LUNG_LABEL_NAMES.items()}


def lung_volumes_ml(mask: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """Lung volumes in millilitres ``{"right": x, "left": y}`` from a mask and its voxel spacing (mm)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = lung_voxel_counts(mask)
    return {
        "right": counts[LUNG_LABEL_NAMES[LungLabel.RIGHT]] * voxel_ml,
        "left": counts[LUNG_LABEL_NAMES[LungLabel.LEFT]] * voxel_ml,
    }


def mask_summary(mask: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, dict[str, float | int]]:
    """The ``covidct segment --json`` document: voxel counts and volumes (ml, rounded to 0.1)."""
    volumes = lung_volumes_ml(mask, spacing)
    return {
        "voxels": dict(lung_voxel_counts(mask)),
        "volume_ml": {side: round(value, 1) for side, value in volumes.items()},
    }
