"""Classification metrics of the paper's evaluation: confusion matrix, one-vs-rest rates, AUC, kappa, McNemar.

Conventions:

- Labels are ints in the registry order (0 normal, 1 cap, 2 covid19). The confusion matrix has **rows = truth,
  columns = prediction**, in that order.
- Every rate is a :class:`Rate`: ``value = numerator / denominator``, with both counts kept beside it, and
  ``value`` is NaN when the denominator is zero (e.g. the false discovery rate of a class never predicted).
- One-vs-rest per class ``k``: ``tp = cm[k, k]``, ``fn = row k - tp``, ``fp = column k - tp``,
  ``tn = total - tp - fn - fp``; accuracy ``(tp+tn)/total``, sensitivity ``tp/(tp+fn)``, specificity
  ``tn/(tn+fp)``, fpr ``fp/(fp+tn)``, fnr ``fn/(fn+tp)``, fdr ``fp/(fp+tp)``, precision ``tp/(tp+fp)``,
  f1 ``2tp/(2tp+fp+fn)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from covidct.registry import CLASS_NAMES, NUM_CLASSES

__all__ = [
    "Rate",
    "bootstrap_auc_ci",
    "classification_summary",
    "cohen_kappa",
    "confusion_matrix",
    "mcnemar",
    "overall_accuracy",
    "per_class_metrics",
    "roc_auc",
]

RATE_NAMES: tuple[str, ...] = (
    "accuracy",
    "sensitivity",
    "specificity",
    "fpr",
    "fnr",
    "fdr",
    "precision",
    "f1",
)


@dataclass(frozen=True)
class Rate:
    """``numerator / denominator`` (NaN when the denominator is zero), counts kept for the reader."""

    numerator: int
    denominator: int

    @property
    def value(self) -> float:
        return self.numerator / self.denominator if self.denominator else math.nan

    def to_json(self) -> dict[str, Any]:
        """``{"value": float | None, "numerator": int, "denominator": int}``; undefined -> ``None`` (null)."""
        v = self.value
        return {
            "value": None if math.isnan(v) else v,
            "numerator": self.numerator,
            "denominator": self.denominator,
        }


def _labels(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of labels, got shape {arr.shape}")
    if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise ValueError(f"{what} must be integer labels 0..{NUM_CLASSES - 1} ({', '.join(CLASS_NAMES)})")
    return arr.astype(np.int64)


def confusion_matrix(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> np.ndarray:
    """``(3, 3)`` int64 counts, rows truth, columns prediction, order normal, cap, covid19."""
    t, p = _labels(truth, "truth"), _labels(pred, "prediction")
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction lengths differ: {t.size} vs {p.size}")
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _check_cm(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.dtype.kind not in "iu" or np.any(cm < 0):
        raise ValueError(f"a confusion matrix must be a square array of non-negative counts, got {cm!r}")
    return cm.astype(np.int64)


def per_class_metrics(cm: np.ndarray) -> dict[str, dict[str, Any]]:
    """One-vs-rest counts and rates per class: ``{name: {"tp","fp","fn","tn","support", <rate>: Rate}}``."""
    cm = _check_cm(cm)
    total = int(cm.sum())
    out: dict[str, dict[str, Any]] = {}
    for k in range(cm.shape[0]):
        tp = int(cm[k, k])
        fn = int(cm[k, :].sum()) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = total - tp - fn - fp
        name = CLASS_NAMES[k] if cm.shape[0] == NUM_CLASSES else str(k)
        out[name] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "support": tp + fn,
            "accuracy": Rate(tp + tn, total),
            "sensitivity": Rate(tp, tp + fn),
            "specificity": Rate(tn, tn + fp),
            "fpr": Rate(fp, fp + tn),
            "fnr": Rate(fn, fn + tp),
            "fdr": Rate(fp, fp + tp),
            "precision": Rate(tp, tp + fp),
            "f1": Rate(2 * tp, 2 * tp + fp + fn),
        }
    return out


def overall_accuracy(cm: np.ndarray) -> Rate:
    """Correct / all (the trace over the total)."""
    cm = _check_cm(cm)
    return Rate(int(np.trace(cm)), int(cm.sum()))


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa of a confusion matrix: ``(po - pe) / (1 - pe)``; NaN when empty or when ``pe == 1``."""
    cm = _check_cm(cm).astype(np.float64)
    total = cm.sum()
    if total == 0:
        return math.nan
    po = np.trace(cm) / total
    pe = float((cm.sum(axis=0) * cm.sum(axis=1)).sum()) / total**2
    if math.isclose(pe, 1.0):
        return math.nan
    return float((po - pe) / (1.0 - pe))


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC (Mann-Whitney, ties count 1/2); NaN when one class is absent or a score is NaN."""
    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0 or np.isnan(s).any():
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc_ci(
    positive: np.ndarray,
    scores: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, int]:
    """Percentile bootstrap interval of :func:`roc_auc` (cases resampled with replacement, seeded).

    Returns ``(low, high, n_valid)``: resamples holding one class only are skipped; the interval is NaN
    when fewer than 10 resamples were valid or ``n_boot`` is 0.
    """
    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, pos.size, size=pos.size)
        v = roc_auc(pos[idx], s[idx])
        if not math.isnan(v):
            values.append(v)
    if len(values) < 10:
        return math.nan, math.nan, len(values)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi), len(values)


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """McNemar's test of two raters on the same cases, from per-case correctness.

    ``b`` = A right and B wrong, ``c`` = A wrong and B right. With ``b + c < 25`` the exact two-sided binomial
    test (``p = min(1, 2 * P[X <= min(b, c)])``, ``X ~ Bin(b + c, 1/2)``); otherwise the chi-square statistic
    with continuity correction ``(|b - c| - 1)^2 / (b + c)`` on 1 degree of freedom. No discordant case:
    ``p = 1``.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"McNemar needs the same cases for both raters: {a.size} vs {b_.size}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "method": "exact", "statistic": None, "p_value": 1.0}
    from scipy import stats

    if n < 25:
        p = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), n, 0.5)))
        return {"b": b, "c": c, "method": "exact", "statistic": float(min(b, c)), "p_value": p}
    chi2 = (abs(b - c) - 1.0) ** 2 / n
    return {"b": b, "c": c, "method": "chi2_cc", "statistic": chi2, "p_value": float(stats.chi2.sf(chi2, 1))}


def _rate_json(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: {k: (v.to_json() if isinstance(v, Rate) else v) for k, v in m.items()}
        for name, m in metrics.items()
    }


def classification_summary(
    truth: Sequence[int] | np.ndarray,
    pred: Sequence[int] | np.ndarray,
    *,
    scores: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """JSON-ready summary: n, overall accuracy, confusion matrix, per-class rates, kappa, AUC (if scores).

    ``scores``: ``(n, 3)`` per-class scores (probabilities) or ``None``. AUC is one-vs-rest per class with a
    seeded percentile bootstrap 95 % interval. Undefined values are ``None`` (JSON null).
    """
    t, p = _labels(truth, "truth"), _labels(pred, "prediction")
    cm = confusion_matrix(t, p)
    kappa = cohen_kappa(cm)
    out: dict[str, Any] = {
        "n": int(t.size),
        "classes": list(CLASS_NAMES),
        "overall_accuracy": overall_accuracy(cm).to_json(),
        "confusion_matrix": cm.tolist(),
        "per_class": _rate_json(per_class_metrics(cm)),
        "kappa": None if math.isnan(kappa) else kappa,
    }
    if scores is not None:
        sc = np.asarray(scores, dtype=np.float64)
        if sc.shape != (t.size, NUM_CLASSES):
            raise ValueError(f"scores must be (n, {NUM_CLASSES}) = ({t.size}, {NUM_CLASSES}), got {sc.shape}")
        auc: dict[str, Any] = {}
        for k, name in enumerate(CLASS_NAMES):
            value = roc_auc(t == k, sc[:, k])
            lo, hi, valid = bootstrap_auc_ci(t == k, sc[:, k], n_boot=n_boot, seed=seed + k)
            auc[name] = {
                "value": None if math.isnan(value) else value,
                "ci95": None if math.isnan(lo) else [lo, hi],
                "n_boot": n_boot,
                "n_boot_valid": valid,
            }
        out["roc_auc"] = auc
    return out
