"""Validation measures used for early stopping and model cards (NaN where undefined)."""

from __future__ import annotations

import numpy as np

from covidct.registry import CLASS_NAMES


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(y == pred)) if y.size else float("nan")


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (NaN when ``y`` is empty)."""
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else float("nan")


def auc_binary(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney statistic (ties count half); NaN without both classes."""
    pos, neg = score[positive], score[~positive]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(allv.size, dtype=np.float64)
    ranks[order] = np.arange(1, allv.size + 1)
    for v in np.unique(allv):  # average ranks of ties
        m = allv == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    r_pos = ranks[: pos.size].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def classification_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Slice-level accuracy, balanced accuracy, one-vs-rest AUC per class and their macro mean."""
    pred = probs.argmax(axis=1) if probs.size else np.zeros(0, int)
    out = {"accuracy": accuracy(y, pred), "balanced_accuracy": balanced_accuracy(y, pred)}
    aucs = []
    for c, name in enumerate(CLASS_NAMES):
        a = auc_binary(probs[:, c], y == c) if probs.size else float("nan")
        out[f"auc_{name}"] = a
        aucs.append(a)
    finite = [a for a in aucs if not np.isnan(a)]
    out["macro_auc"] = float(np.mean(finite)) if finite else float("nan")
    return out


def dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice of one label; NaN when the label is absent from both."""
    p, t = pred == label, truth == label
    denom = int(p.sum()) + int(t.sum())
    return float(2 * np.logical_and(p, t).sum() / denom) if denom else float("nan")
