"""Calibration of predicted probabilities: temperature scaling, Brier, ECE, reliability and risk-coverage.

Conventions:

- ``probs`` is ``(n, C)``: one row of class probabilities per case (rows sum to 1), classes in registry order;
  ``y`` holds the true labels ``0..C-1``. Top-label ``confidence`` is the largest probability of a row and
  ``correct`` says whether its class is the truth.
- Temperature scaling divides log-probabilities by ``T`` and renormalises: ``T > 1`` softens an overconfident
  model, ``T < 1`` sharpens it; the predicted class never changes.
- Reliability bins are equal-width on ``[0, 1]``, each ``[lower, upper)`` except the last, ``[lower, 1]``.
- Referral: a threshold ``t`` accepts the cases with ``confidence >= t`` and refers the rest to a reader, so
  cases of equal confidence are always accepted or referred together.
- Undefined values (empty input, an empty bin) are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from covidct._files import atomic_write
from covidct.confidence import (
    EPS,
    check_confidence,
    check_probs_labels,
    fit_temperature,
    nll,
    referral_threshold,
    risk_coverage,
    scale_probabilities,
)

__all__ = [
    "brier_score",
    "calibration_summary",
    "expected_calibration_error",
    "fit_temperature",
    "plot_reliability",
    "plot_risk_coverage",
    "referral_threshold",
    "reliability_bins",
    "risk_coverage",
    "scale_probabilities",
    "top_label",
]


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def brier_score(probs: np.ndarray, y: np.ndarray) -> float:
    """Multiclass Brier score: mean over cases of ``sum_k (p_k - [y == k])^2`` (0 best, 2 worst); NaN if empty."""
    p, t = check_probs_labels(probs, y)
    if t.size == 0:
        return math.nan
    onehot = np.zeros_like(p)
    onehot[np.arange(t.size), t] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def top_label(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, correct)``: the largest probability per row and whether its class (first on ties) is ``y``."""
    p, t = check_probs_labels(probs, y)
    if t.size == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return p.max(axis=1), p.argmax(axis=1) == t


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 10
) -> list[dict[str, Any]]:
    """Equal-width bins on ``[0, 1]``: ``{"lower", "upper", "count", "confidence", "accuracy"}`` per bin.

    ``confidence`` and ``accuracy`` are the bin's mean confidence and fraction correct (NaN when empty).
    """
    _check_n_bins(n_bins)
    c, k = check_confidence(confidence, correct)
    edges = np.arange(n_bins + 1) / n_bins
    idx = np.minimum(np.searchsorted(edges, c, side="right") - 1, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        count = int(sel.sum())
        out.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": float(c[sel].mean()) if count else math.nan,
                "accuracy": float(k[sel].mean()) if count else math.nan,
            }
        )
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 10) -> float:
    """ECE: ``sum over bins count/n * |accuracy - confidence|`` (empty bins skipped); NaN on empty input."""
    bins = reliability_bins(confidence, correct, n_bins=n_bins)
    n = sum(b["count"] for b in bins)
    if n == 0:
        return math.nan
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def _scores(p: np.ndarray, t: np.ndarray, n_bins: int) -> dict[str, float]:
    conf, corr = top_label(p, t)
    empty = t.size == 0
    return {
        "ece": expected_calibration_error(conf, corr, n_bins=n_bins),
        "brier": brier_score(p, t),
        "nll": nll(np.log(np.clip(p, EPS, None)), t),
        "accuracy": math.nan if empty else float(corr.mean()),
        "mean_confidence": math.nan if empty else float(conf.mean()),
    }


def calibration_summary(
    probs: np.ndarray, y: np.ndarray, *, temperature: float | None = None, n_bins: int = 10
) -> dict[str, Any]:
    """JSON-ready ECE, Brier, NLL, accuracy and mean confidence, before and (given ``temperature``) after scaling.

    ``{"n", "temperature", "before": {...}, "after": {...} | None}``; undefined values are NaN.
    """
    _check_n_bins(n_bins)
    p, t = check_probs_labels(probs, y)
    after = None if temperature is None else _scores(scale_probabilities(p, temperature), t, n_bins)
    return {
        "n": int(t.size),
        "temperature": None if temperature is None else float(temperature),
        "before": _scores(p, t, n_bins),
        "after": after,
    }


def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))


def plot_reliability(
    path: str | Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    n_bins: int = 10,
    title: str = "",
) -> Path:
    """Reliability diagram PNG: bin accuracy vs bin confidence per named ``(confidence, correct)`` curve with
    the diagonal above, the cases per bin (histogram) below; returns ``path``."""
    _check_n_bins(n_bins)
    if not curves:
        raise ValueError("curves is empty: pass at least one {name: (confidence, correct)}")
    fig = _figure((5.0, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect calibration")
    edges = np.arange(n_bins + 1) / n_bins
    for name, (confidence, correct) in curves.items():
        bins = reliability_bins(confidence, correct, n_bins=n_bins)
        ece = expected_calibration_error(confidence, correct, n_bins=n_bins)
        xs = [b["confidence"] for b in bins if b["count"]]
        ys = [b["accuracy"] for b in bins if b["count"]]
        (line,) = top.plot(xs, ys, marker="o", label=f"{name} (ECE {ece:.3f})")
        counts = [b["count"] for b in bins]
        bottom.stairs(counts, edges, color=line.get_color(), label=name)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title or "Reliability diagram")
    top.legend(loc="upper left", fontsize=8, frameon=False)
    bottom.set_xlabel("confidence (top-label probability)")
    bottom.set_ylabel("cases")
    fig.tight_layout()
    return _save(fig, path)


def plot_risk_coverage(
    path: str | Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    target_accuracy: float | None = None,
    title: str = "",
) -> Path:
    """Accuracy of the accepted cases vs coverage PNG, one line per named ``(confidence, correct)`` curve and
    a dashed line at ``target_accuracy`` (if given); returns ``path``."""
    if not curves:
        raise ValueError("curves is empty: pass at least one {name: (confidence, correct)}")
    fig = _figure((5.5, 4.0))
    ax = fig.subplots()
    for name, (confidence, correct) in curves.items():
        rc = risk_coverage(confidence, correct)
        ax.plot(rc["coverage"], rc["accuracy"], marker="." if rc["coverage"].size < 50 else None, label=name)
    if target_accuracy is not None:
        ax.axhline(target_accuracy, color="gray", linestyle="--", label=f"target {target_accuracy:.0%}")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("coverage (fraction of cases accepted)")
    ax.set_ylabel("accuracy of accepted cases")
    ax.set_title(title or "Risk-coverage")
    ax.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)
