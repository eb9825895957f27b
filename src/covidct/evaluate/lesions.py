"""Lesion segmentation scores, as published methods on COVID-SemiSeg report them: per image, then averaged.

Infection = ground glass + consolidation (any non-zero label; "lesion, type not given" counts). Ratios that
are undefined for an image (no infection in truth or prediction for Dice, none in truth for sensitivity) are
NaN for it and left out of the mean; a mean over no image is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidct.registry import LESION_ANY, LesionLabel


def _ratio(num: float | np.integer[Any], den: float | np.integer[Any]) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def dice_of(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (NaN when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    return _ratio(2 * np.count_nonzero(p & t), np.count_nonzero(p) + np.count_nonzero(t))


def image_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Scores of one image: infection Dice, sensitivity, specificity; per-class Dice where the truth is typed."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the truth's {truth.shape}")
    p, t = pred > 0, truth > 0
    tp, fp = np.count_nonzero(p & t), np.count_nonzero(p & ~t)
    fn, tn = np.count_nonzero(~p & t), np.count_nonzero(~p & ~t)
    out = {
        "dice": dice_of(p, t),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }
    typed = not np.any(truth == LESION_ANY)
    for label, name in (
        (LesionLabel.GROUND_GLASS, "dice_ggo"),
        (LesionLabel.CONSOLIDATION, "dice_consolidation"),
    ):
        out[name] = dice_of(pred == label, truth == label) if typed else float("nan")
    return out


#: The scores :func:`image_scores` gives, in the order they are reported.
SCORE_KEYS: tuple[str, ...] = ("dice", "sensitivity", "specificity", "dice_ggo", "dice_consolidation")


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Means over images of :func:`image_scores` rows (NaN-aware), plus ``images``, their count."""
    out: dict[str, float] = {}
    for k in SCORE_KEYS:
        vals = np.array([r[k] for r in rows], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        out[k] = float(finite.mean()) if finite.size else float("nan")
    out["images"] = float(len(rows))
    return out


def lesion_scores(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, float]:
    """Means over images of :func:`image_scores` (NaN-aware), plus ``images``, their count."""
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} truths")
    return mean_scores([image_scores(p, t) for p, t in zip(preds, truths, strict=True)])


def score_lesion_folder(segmenter: Any, root: str | Path, *, split: str = "val") -> dict[str, float]:
    """:func:`lesion_scores` of ``segmenter`` (anything with ``segment_image``) on the images of a lesion
    folder (``ROOT/Imgs`` + ``ROOT/GT``) in ``split`` ("val": the fifth held out from training), at the
    images' own size."""
    from covidct.data.realistic.donors import image_pairs, is_validation_image
    from covidct.lesions.folders import read_image, read_mask

    preds, truths = [], []
    for img_path, mask_path in image_pairs(Path(root)):
        if split != "all" and is_validation_image(img_path.stem) != (split == "val"):
            continue
        img = read_image(img_path)
        truths.append(read_mask(mask_path, img.shape)[0])
        preds.append(segmenter.segment_image(img))
    return lesion_scores(preds, truths)
