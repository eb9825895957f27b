"""The calibration and referral section of a cohort evaluation: ECE, Brier and reliability diagrams before and
after the model's temperatures, at slice and patient level, and the risk-coverage curve of the referral.

"Before" is the model's raw output (slice probabilities; the patient-level probability of
:func:`covidct.confidence.patient_probabilities` at ``T = 1``); "after" applies the fitted temperatures of
the model's ``confidence`` card entry (the diagnosis' own :class:`~covidct.confidence.StudyConfidence`).
Slice figures use the kept slices that have a slice label; patient figures the rule's answer and its
confidence against the patient's truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.confidence import (
    ConfidenceModel,
    StudyConfidence,
    patient_probabilities,
    referral_threshold,
    risk_coverage,
    scale_probabilities,
)
from covidct.evaluate.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    plot_reliability,
    plot_risk_coverage,
    top_label,
)

__all__ = ["ScoredStudy", "calibration_line", "calibration_markdown", "calibration_section", "scores_section"]

FILES = {
    "slice": "reliability_slice.png",
    "patient": "reliability_patient.png",
    "risk_coverage": "risk_coverage.png",
}


@dataclass(frozen=True)
class ScoredStudy:
    """One diagnosed study as the section needs it (``slice_truth`` ``None``: no slice labels)."""

    probabilities: np.ndarray  # (n, 3), NaN rows = not classified
    slice_truth: np.ndarray | None
    kept: tuple[int, int]
    truth: int
    answer: int
    confidence: StudyConfidence | None


def _clean(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    return p / p.sum(axis=1, keepdims=True)


def calibration_section(
    studies: Sequence[ScoredStudy],
    model: ConfidenceModel | None,
    out_dir: Path,
    *,
    threshold: float = 0.2,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Compute the section, write its three PNGs into ``out_dir``; returns the JSON-ready section."""
    out_dir = Path(out_dir)
    m = model or ConfidenceModel()
    sp, sy = [], []
    for st in studies:
        if st.slice_truth is None:
            continue
        lo, hi = st.kept
        p, y = np.asarray(st.probabilities)[lo:hi], np.asarray(st.slice_truth)[lo:hi]
        ok = np.all(np.isfinite(p), axis=1) & (y >= 0)
        sp.append(p[ok])
        sy.append(y[ok])
    section: dict[str, Any] = {
        "fitted": model is not None,
        "temperatures": {"slice": m.slice_temperature, "patient": m.patient_temperature},
        "files": {},
    }
    if sp and sum(len(y) for y in sy):
        probs, y = _clean(np.concatenate(sp)), np.concatenate(sy).astype(np.int64)
        section["slice"] = calibration_summary(probs, y, temperature=m.slice_temperature, n_bins=n_bins)
        plot_reliability(
            out_dir / FILES["slice"],
            {
                "before": top_label(probs, y),
                "after": top_label(scale_probabilities(probs, m.slice_temperature), y),
            },
            n_bins=n_bins,
            title="Slices (kept, labelled)",
        )
        section["files"]["slice"] = FILES["slice"]
    truth = np.array([st.truth for st in studies], dtype=np.int64)
    answer = np.array([st.answer for st in studies], dtype=np.int64)
    correct = truth == answer
    before = np.array(
        [patient_probabilities(st.probabilities, kept=st.kept, threshold=threshold) for st in studies]
    )
    have_conf = all(st.confidence is not None for st in studies)
    after = (
        np.array([st.confidence.probabilities for st in studies if st.confidence is not None])
        if have_conf
        else before
    )
    idx = np.arange(len(studies))
    conf_b, conf_a = before[idx, answer], after[idx, answer]
    section["patient"] = {
        "n": len(studies),
        "accuracy": float(correct.mean()) if len(studies) else math.nan,
        "before": {
            "ece": expected_calibration_error(conf_b, correct, n_bins=n_bins),
            "brier": brier_score(_clean(before), truth),
        },
        "after": {
            "ece": expected_calibration_error(conf_a, correct, n_bins=n_bins),
            "brier": brier_score(_clean(after), truth),
        },
    }
    plot_reliability(
        out_dir / FILES["patient"],
        {"before": (conf_b, correct), "after": (conf_a, correct)},
        n_bins=n_bins,
        title="Patients (confidence of the rule's answer)",
    )
    section["files"]["patient"] = FILES["patient"]
    target = m.target_accuracy or 0.95
    curve = risk_coverage(conf_a, correct)
    referred = conf_a < m.refer_below if m.refer_below is not None else np.zeros(len(studies), bool)
    section["referral"] = {
        "threshold": None
        if m.refer_below is None
        else (m.refer_below if math.isfinite(m.refer_below) else "inf"),
        "target_accuracy": target,
        "referred": int(referred.sum()),
        "accepted": int((~referred).sum()),
        "accepted_accuracy": float(correct[~referred].mean()) if (~referred).any() else math.nan,
        "best_on_this_cohort": referral_threshold(conf_a, correct, target_accuracy=target),
        "risk_coverage": {k: [round(float(v), 6) for v in vals] for k, vals in curve.items()},
    }
    plot_risk_coverage(
        out_dir / FILES["risk_coverage"],
        {"patients": (conf_a, correct)},
        target_accuracy=target,
        title="Accuracy of accepted patients vs coverage",
    )
    section["files"]["risk_coverage"] = FILES["risk_coverage"]
    return _json_ready(section)


def scores_section(
    scores: np.ndarray, truth: np.ndarray, prediction: np.ndarray, out_dir: Path, *, n_bins: int = 10
) -> dict[str, Any]:
    """The section for a predictions CSV with patient scores (``p_normal,p_cap,p_covid19``): ECE, Brier,
    reliability and risk-coverage of the scores as given (no temperatures, no threshold: 'after' = 'before')."""
    p = _clean(np.asarray(scores, dtype=np.float64))
    truth, prediction = np.asarray(truth, dtype=np.int64), np.asarray(prediction, dtype=np.int64)
    conf, correct = p[np.arange(len(p)), prediction], prediction == truth
    scored = {"ece": expected_calibration_error(conf, correct, n_bins=n_bins), "brier": brier_score(p, truth)}
    plot_reliability(out_dir / FILES["patient"], {"scores": (conf, correct)}, n_bins=n_bins, title="Patients")
    plot_risk_coverage(out_dir / FILES["risk_coverage"], {"patients": (conf, correct)}, target_accuracy=0.95)
    curve = risk_coverage(conf, correct)
    section = {
        "fitted": False,
        "temperatures": {"slice": 1.0, "patient": 1.0},
        "patient": {"n": len(p), "accuracy": float(correct.mean()), "before": scored, "after": scored},
        "referral": {
            "threshold": None,
            "target_accuracy": 0.95,
            "referred": 0,
            "accepted": len(p),
            "accepted_accuracy": float(correct.mean()),
            "best_on_this_cohort": referral_threshold(conf, correct, target_accuracy=0.95),
            "risk_coverage": {k: [round(float(v), 6) for v in vals] for k, vals in curve.items()},
        },
        "files": {"patient": FILES["patient"], "risk_coverage": FILES["risk_coverage"]},
        "source": "the predictions CSV's p_normal, p_cap, p_covid19 (confidence: the score of the prediction)",
    }
    return _json_ready(section)


def calibration_line(section: Mapping[str, Any]) -> str:
    """One line for the terminal: patient ECE before/after and what the threshold referred."""
    pat, r = section["patient"], section["referral"]
    text = f"calibration (patients): ECE {_f(pat['before']['ece'])}"
    if section["fitted"]:
        text += f" -> {_f(pat['after']['ece'])} with the fitted temperatures"
    if r["threshold"] is None:
        return text + "; no referral threshold"
    return (
        text
        + f"; referred {r['referred']} of {pat['n']}, accuracy of the accepted {_f(r['accepted_accuracy'])}"
    )


def _json_ready(obj: Any) -> Any:
    """NaN -> None (the evaluation's "undefined" is null), infinity -> "inf" (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return None if math.isnan(v) else ("inf" if math.isinf(v) else v)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _f(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def _t(v: Any) -> str:
    return v if isinstance(v, str) else f"{v:.3f}"


def calibration_markdown(section: Mapping[str, Any]) -> str:
    """The summary's "Calibration and referral" section."""
    t = section["temperatures"]
    lines = [
        "## Calibration and referral",
        "",
        (
            f"Temperatures fitted on the model's validation split: slice {t['slice']:.3g}, patient "
            f"{t['patient']:.3g}."
            if section["fitted"]
            else f"Scored as given: {section['source']}; 'after' equals 'before'."
            if section.get("source")
            else "The model has no fitted temperatures (an older bundle): 'after' equals 'before'."
        ),
        "",
        "| level | n | ECE before | ECE after | Brier before | Brier after |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for level in ("slice", "patient"):
        s = section.get(level)
        if s:
            lines.append(
                f"| {level} | {s['n']} | {_f(s['before']['ece'])} | {_f((s['after'] or {}).get('ece'))} | "
                f"{_f(s['before']['brier'])} | {_f((s['after'] or {}).get('brier'))} |"
            )
    r = section["referral"]
    lines += [""]
    if r["threshold"] is None:
        lines.append("No referral threshold was fitted: no study is referred.")
    elif r["threshold"] == "inf":
        lines.append(
            f"Every study is referred: on its validation patients the model reached "
            f"{r['target_accuracy']:.0%} accuracy at no confidence threshold."
        )
    else:
        lines.append(
            f"Referral below confidence {_t(r['threshold'])} "
            f"(chosen on validation for {r['target_accuracy']:.0%} accuracy of accepted patients): "
            f"{r['referred']} referred, {r['accepted']} accepted, accuracy of the accepted "
            f"{_f(r['accepted_accuracy'])}."
        )
    best = r["best_on_this_cohort"]
    lines += [
        "",
        f"On this cohort itself, the largest coverage reaching {r['target_accuracy']:.0%} is "
        f"{best['coverage']:.0%} (threshold {_t(best['threshold'])}); "
        "a threshold chosen on the data it is scored on is optimistic.",
        "",
    ]
    return "\n".join(lines)
