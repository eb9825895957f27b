"""Per-source figures of a classifier training that mixes data sources (the card's ``training.per_source``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from covidct.registry import CLASS_NAMES
from covidct.train.data import CachedStudy


def _source(st: CachedStudy) -> str:
    return str(st.record.extra.get("source", "?"))


def source_summary(
    train: Sequence[CachedStudy], weights: Sequence[float] | None, data: Sequence[Any]
) -> dict:
    """Per ``--data`` source: its weight, training studies per class, how many are slice- or patient-labelled,
    and its training slices."""
    w = list(weights or [1.0] * len(data))
    out: dict[str, Any] = {}
    for src, weight in zip(data, w, strict=True):
        mine = [st for st in train if _source(st) == str(src)]
        weak = [st for st in mine if np.any(np.asarray(st.y) < 0)]
        out[str(src)] = {
            "weight": float(weight),
            "train_studies": {c: sum(st.record.diagnosis == c for st in mine) for c in CLASS_NAMES},
            "slice_labelled": len(mine) - len(weak),
            "patient_labelled": len(weak),
            "train_slices": int(sum(st.x.shape[0] for st in mine)),
        }
    return out


def source_validation(val: Sequence[CachedStudy], probs: np.ndarray, answers: Sequence[int]) -> dict:
    """Per source of the validation studies: patients, the rule's accuracy, and the slice AUC of infected vs
    clean (score ``1 - p(normal)``) over the slices with labels (``None`` where undefined)."""
    from covidct.evaluate.metrics import roc_auc

    groups: dict[str, list[int]] = {}
    for i, st in enumerate(val):
        groups.setdefault(_source(st), []).append(i)
    starts = np.cumsum([0] + [int(np.asarray(st.y).size) for st in val])
    out: dict[str, Any] = {}
    for src, idx in groups.items():
        rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx])
        codes = np.concatenate([np.asarray(val[i].y) for i in idx])
        known = codes >= 0
        auc = roc_auc(codes[known] > 0, 1.0 - probs[rows][known, 0]) if known.any() else float("nan")
        right = [answers[i] == val[i].record.label for i in idx]
        out[src] = {
            "patients": len(idx),
            "patient_accuracy": float(np.mean(right)),
            "slice_auc_infected": None if np.isnan(auc) else float(auc),
        }
    return out
