"""Calibrated confidence of a diagnosis, and when to refer it to a reader.

The slice classifier's probabilities are tempered (temperature scaling, ``T_slice``), the kept slices'
mean probability of each class is turned into a patient-level probability that agrees with the paper's
rule, tempered again (``T_patient``), and the probability of the rule's answer is the study's
**confidence**. A study is **referred** when its confidence falls below a threshold chosen on validation
patients: the lowest confidence at which the accepted validation patients reached a target accuracy
(e.g. 95 %). The temperatures and the threshold are fitted after training (:func:`fit_confidence`) and
kept in the classifier card under ``confidence``.

The patient-level probability: with ``f`` the mean (tempered) slice probabilities over the kept slices and
the rule's threshold ``t`` (0.2), ``s = (f_normal / (1 - t), f_cap / t, f_covid / t)``, normalised. The rule
answers a disease as soon as diseased slices exceed ``t`` of the kept ones, so dividing by the rule's own
cut-offs puts the decision boundary of ``s`` where the rule's is; ``T_patient`` then calibrates it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from covidct.errors import ModelError

__all__ = [
    "ConfidenceModel",
    "StudyConfidence",
    "confidence_model_of",
    "fit_confidence",
    "fit_temperature",
    "patient_probabilities",
    "referral_threshold",
    "risk_coverage",
    "scale_probabilities",
    "study_confidence",
]

EPS = 1e-12  # probabilities are clipped here before a log


def check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs must be a 2-D (n_cases, n_classes) array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs must be finite and non-negative; pass softmax probabilities, not logits")
    sums = p.sum(axis=1)
    if sums.size and not np.allclose(sums, 1.0, atol=1e-3):
        raise ValueError(
            f"each row of probs must sum to 1 (row sums {sums.min():.4g}..{sums.max():.4g}); "
            "apply a softmax to the scores first"
        )
    return p


def check_probs_labels(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = check_probs(probs)
    t = np.asarray(y)
    if t.ndim != 1 or t.size != p.shape[0]:
        raise ValueError(f"y must be 1-D with one label per row of probs ({p.shape[0]}), got shape {t.shape}")
    if t.size and (t.dtype.kind not in "iu" or t.min() < 0 or t.max() >= p.shape[1]):
        raise ValueError(f"y must be integer labels 0..{p.shape[1] - 1} (one per column of probs)")
    return p, t.astype(np.int64)


def check_confidence(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64)
    k = np.asarray(correct)
    if c.ndim != 1 or k.shape != c.shape:
        raise ValueError(f"confidence and correct must be 1-D of equal length, got {c.shape} and {k.shape}")
    if not np.all(np.isfinite(c)) or np.any((c < 0) | (c > 1)):
        raise ValueError("confidence must be finite values in [0, 1] (top-label probabilities)")
    if k.size and not np.all((k == 0) | (k == 1)):
        raise ValueError("correct must be booleans (or 0/1): whether each top-label prediction was right")
    return c, k.astype(bool)


def _scaled_log(logp: np.ndarray, temperature: float) -> np.ndarray:
    """Log-softmax of ``logp / T`` (row max subtracted first, so nothing overflows)."""
    z = logp / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def scale_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` per row (``p`` clipped at 1e-12); ``T = 1`` gives back the input renormalised."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    p = check_probs(probs)
    if p.shape[0] == 0:
        return p.copy()
    return np.exp(_scaled_log(np.log(np.clip(p, EPS, None)), float(temperature)))


def nll(logp: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(logp[np.arange(y.size), y])) if y.size else math.nan


def fit_temperature(probs: np.ndarray, y: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature in ``bounds`` minimising the mean negative log-likelihood of the scaled probabilities.

    The NLL is convex in ``1/T``, hence unimodal in ``log T``: a 41-point grid on ``log T`` brackets the
    minimum, then golden-section search refines it (deterministic). Empty input returns 1.0, as does input
    whose NLL does not depend on ``T`` (e.g. uniform rows), clipped to ``bounds``. One-class input is allowed:
    its minimiser is usually a bound.
    """
    lo, hi = (float(b) for b in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"bounds must be (low, high) with 0 < low < high, both finite; got {bounds!r}")
    p, t = check_probs_labels(probs, y)
    if t.size == 0:
        return min(max(1.0, lo), hi)
    logp = np.log(np.clip(p, EPS, None))

    def loss(s: float) -> float:
        return nll(_scaled_log(logp, math.exp(s)), t)

    grid = np.linspace(math.log(lo), math.log(hi), 41)
    values = np.array([loss(float(s)) for s in grid])
    if values.max() - values.min() <= 1e-12 * max(1.0, abs(values.min())):
        return min(max(1.0, lo), hi)
    i = int(np.argmin(values))
    a, b = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, grid.size - 1)])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0  # golden section: keep the sub-interval holding the lower point
    while b - a > 1e-7:
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if loss(c) <= loss(d):
            b = d
        else:
            a = c
    return float(min(max(math.exp((a + b) / 2.0), lo), hi))


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy of the accepted cases as the threshold falls: ``{"coverage", "accuracy", "threshold"}``.

    Cases are sorted by confidence, highest first; one point per distinct confidence, at the end of its group
    of ties (``threshold`` accepts every case with ``confidence >= threshold``), so coverage rises to 1.
    """
    c, k = check_confidence(confidence, correct)
    order = np.argsort(-c, kind="stable")
    c, k = c[order], k[order]
    ends = np.flatnonzero(np.append(c[1:] != c[:-1], True)) if c.size else np.zeros(0, dtype=np.int64)
    accepted = ends + 1
    return {
        "coverage": accepted / max(c.size, 1),
        "accuracy": np.cumsum(k)[ends] / np.maximum(accepted, 1),
        "threshold": c[ends],
    }


def referral_threshold(
    confidence: np.ndarray, correct: np.ndarray, *, target_accuracy: float = 0.95
) -> dict[str, float]:
    """The lowest threshold whose accepted cases (``confidence >= t``) reach ``target_accuracy``.

    Returns ``{"threshold", "coverage", "accuracy", "target_accuracy", "n"}`` for the largest coverage meeting
    the target (1e-12 slack for rounding). When none does (or the input is empty), ``threshold`` is ``inf``,
    ``coverage`` 0.0 and ``accuracy`` NaN: every case is referred.
    """
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be a fraction in (0, 1], got {target_accuracy!r}")
    curve = risk_coverage(confidence, correct)
    out: dict[str, float] = {"target_accuracy": float(target_accuracy), "n": int(np.asarray(confidence).size)}
    ok = np.flatnonzero(curve["accuracy"] >= target_accuracy - 1e-12)
    if ok.size == 0:
        return {"threshold": math.inf, "coverage": 0.0, "accuracy": math.nan, **out}
    j = int(ok[-1])
    return {
        "threshold": float(curve["threshold"][j]),
        "coverage": float(curve["coverage"][j]),
        "accuracy": float(curve["accuracy"][j]),
        **out,
    }


#: Temperature search ranges. A validation set the classifier separates perfectly drives the likelihood
#: towards T -> 0 (certainty); the lower bounds keep a few validation patients from making every answer 1.0.
SLICE_BOUNDS = (0.25, 10.0)
PATIENT_BOUNDS = (0.5, 10.0)


def patient_probabilities(probs: np.ndarray, *, kept: tuple[int, int], threshold: float = 0.2) -> np.ndarray:
    """The patient-level probability ``(3,)`` of a study's slice probabilities ``(n, 3)`` (module doc).

    Rows that are NaN (slices not classified) are skipped; ``kept`` is the rule's ``[start, stop)``.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold!r}")
    p = np.asarray(probs, dtype=np.float64)[slice(*kept)]
    p = p[np.all(np.isfinite(p), axis=1)]
    if p.shape[0] == 0:
        return np.full(3, 1.0 / 3.0)
    f = p.mean(axis=0)
    s = f / np.array([1.0 - threshold, threshold, threshold])
    return np.asarray(s / s.sum())


@dataclass(frozen=True)
class ConfidenceModel:
    """Fitted temperatures and the referral threshold (``None``: never refer, no threshold was fitted)."""

    slice_temperature: float = 1.0
    patient_temperature: float = 1.0
    refer_below: float | None = None
    target_accuracy: float | None = None
    fitted: dict[str, Any] | None = None  # what the fit saw: patients, slices, accuracies, ECE

    def to_card(self) -> dict[str, Any]:
        return {
            "slice_temperature": self.slice_temperature,
            "patient_temperature": self.patient_temperature,
            "refer_below": None if self.refer_below is None else _finite_or_str(self.refer_below),
            "target_accuracy": self.target_accuracy,
            "fitted": self.fitted or {},
        }

    @classmethod
    def from_card(cls, entry: Any, *, where: str = "model.json") -> ConfidenceModel:
        """Read the card's ``confidence`` entry; :class:`ModelError` naming ``where`` when it is malformed."""
        if not isinstance(entry, dict):
            raise ModelError(f"{where}: confidence must be an object, got {entry!r}; retrain or remove it")
        try:
            ts = float(entry.get("slice_temperature", 1.0))
            tp = float(entry.get("patient_temperature", 1.0))
            rb = entry.get("refer_below")
            refer = None if rb is None else (math.inf if rb == "inf" else float(rb))
            target = entry.get("target_accuracy")
            target = None if target is None else float(target)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{where}: unreadable confidence entry ({exc}); retrain or remove it") from None
        if not (ts > 0 and tp > 0 and math.isfinite(ts) and math.isfinite(tp)):
            raise ModelError(f"{where}: confidence temperatures must be positive numbers, got {ts}, {tp}")
        return cls(ts, tp, refer, target, dict(entry.get("fitted") or {}))


def _finite_or_str(v: float) -> float | str:
    return v if math.isfinite(v) else "inf"  # strict JSON has no Infinity


@dataclass(frozen=True)
class StudyConfidence:
    """One study's confidence: the calibrated probability of the rule's answer, and whether to refer."""

    value: float
    refer: bool | None  # None: the model has no fitted threshold
    threshold: float | None
    probabilities: tuple[float, float, float]  # calibrated patient-level (normal, cap, covid19)
    calibrated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 4),
            "refer": self.refer,
            "threshold": None if self.threshold is None else _finite_or_str(self.threshold),
            "probabilities": dict(
                zip(("normal", "cap", "covid19"), (round(v, 4) for v in self.probabilities), strict=True)
            ),
            "calibrated": self.calibrated,
        }


def study_confidence(
    probs: np.ndarray,
    label: int,
    *,
    kept: tuple[int, int],
    model: ConfidenceModel | None,
    threshold: float = 0.2,
) -> StudyConfidence:
    """The confidence of the rule's answer ``label`` for slice probabilities ``(n, 3)`` (module doc)."""
    m = model or ConfidenceModel()
    p = np.asarray(probs, dtype=np.float64)
    ok = np.all(np.isfinite(p), axis=1)
    scaled = p.copy()
    if ok.any():
        scaled[ok] = scale_probabilities(p[ok] / p[ok].sum(axis=1, keepdims=True), m.slice_temperature)
    q = scale_probabilities(
        patient_probabilities(scaled, kept=kept, threshold=threshold)[None], m.patient_temperature
    )[0]
    value = float(q[label])
    refer = None if m.refer_below is None else bool(value < m.refer_below)
    return StudyConfidence(
        value, refer, m.refer_below, (float(q[0]), float(q[1]), float(q[2])), model is not None
    )


def fit_confidence(
    studies: Sequence[tuple[np.ndarray, int, int, tuple[int, int]]],
    *,
    slice_probs: np.ndarray | None = None,
    slice_y: np.ndarray | None = None,
    target_accuracy: float = 0.95,
    threshold: float = 0.2,
) -> ConfidenceModel:
    """Fit ``T_slice`` on labelled validation slices (``slice_probs``, ``slice_y``; 1 when they hold fewer
    than two classes), ``T_patient`` on validation ``studies`` given as ``(slice probs, truth, rule answer,
    kept)``, and the referral threshold for ``target_accuracy`` on the same patients."""
    fitted: dict[str, Any] = {"patients": len(studies)}
    ts = 1.0
    if slice_probs is not None and slice_y is not None and np.unique(slice_y).size > 1:
        ts = fit_temperature(slice_probs, slice_y, bounds=SLICE_BOUNDS)
        fitted["slices"] = int(np.asarray(slice_y).size)
    else:
        fitted["slices"] = 0
        fitted["slice_temperature_note"] = (
            "not fitted: validation slices with labels of two classes or more needed"
        )
    if not studies:
        return ConfidenceModel(ts, 1.0, None, None, fitted | {"note": "no validation patients: no threshold"})
    pre = ConfidenceModel(ts, 1.0)
    s = np.array(
        [
            study_confidence(p, a, kept=k, model=pre, threshold=threshold).probabilities
            for p, _, a, k in studies
        ]
    )
    truth = np.array([t for _, t, _, _ in studies], dtype=np.int64)
    answer = np.array([a for _, _, a, _ in studies], dtype=np.int64)
    s = s / s.sum(axis=1, keepdims=True)
    tp = fit_temperature(s, truth, bounds=PATIENT_BOUNDS)
    conf = scale_probabilities(s, tp)[np.arange(len(studies)), answer]
    correct = answer == truth
    ref = referral_threshold(conf, correct, target_accuracy=target_accuracy)
    fitted |= {
        "temperature_at_bound": [
            name
            for name, t, b in (("slice", ts, SLICE_BOUNDS), ("patient", tp, PATIENT_BOUNDS))
            if min(abs(math.log(t / v)) for v in b) < 1e-3
        ],
        "patient_accuracy": float(correct.mean()),
        "accepted_accuracy": ref["accuracy"],
        "coverage": ref["coverage"],
    }
    return ConfidenceModel(ts, tp, float(ref["threshold"]), float(target_accuracy), fitted)


def confidence_model_of(
    pipeline_card: dict[str, Any], classifier_card: dict[str, Any], *, where: str
) -> ConfidenceModel | None:
    """The fitted confidence of a pipeline: its own card's ``confidence`` (``covidct calibrate``), else the
    classifier card's (fitted after training); ``None`` for bundles made before either existed."""
    for card, name in ((pipeline_card, "model.json"), (classifier_card, "classifier/model.json")):
        if card.get("confidence") is not None:
            return ConfidenceModel.from_card(card["confidence"], where=f"{where}/{name}")
    return None
