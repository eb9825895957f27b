"""Validation measures used for early stopping and model cards (NaN where undefined).

One implementation of each measure in covidct: the AUC is :func:`covidct.evaluate.metrics.roc_auc`
(Mann-Whitney, ties count 1/2, NaN with one class or a NaN score); the lung Dice used by segmenter training is
:func:`covidct.segment.quality.dice`.
"""

from __future__ import annotations

import numpy as np

from covidct.evaluate.metrics import roc_auc
from covidct.registry import CLASS_NAMES


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(y == pred)) if y.size else float("nan")


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (NaN when ``y`` is empty)."""
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else float("nan")


def classification_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Slice-level accuracy, balanced accuracy, one-vs-rest AUC per class and their macro mean."""
    pred = probs.argmax(axis=1) if probs.size else np.zeros(0, int)
    out = {"accuracy": accuracy(y, pred), "balanced_accuracy": balanced_accuracy(y, pred)}
    aucs = []
    for c, name in enumerate(CLASS_NAMES):
        a = roc_auc(y == c, probs[:, c]) if probs.size else float("nan")
        out[f"auc_{name}"] = a
        aucs.append(a)
    finite = [a for a in aucs if not np.isnan(a)]
    out["macro_auc"] = float(np.mean(finite)) if finite else float("nan")
    return out
