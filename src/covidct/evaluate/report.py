"""Write an evaluation: ``metrics.json``, confusion-matrix PNGs and a Markdown summary (paper Tables 2 and 3).

``metrics.json`` layout (undefined values - a zero denominator, an AUC with one class absent - are JSON
``null``, never ``NaN``)::

    {"classes": ["normal", "cap", "covid19"],
     "undefined_values": "null",
     "patient": {"n", "overall_accuracy": RATE, "confusion_matrix": [[...]] (rows truth, cols prediction),
                 "per_class": {class: {"tp","fp","fn","tn","support", accuracy|sensitivity|specificity|
                                        fpr|fnr|fdr|precision|f1: RATE}},
                 "kappa", "roc_auc": {class: {"value", "ci95": [lo, hi] | null, "n_boot", "n_boot_valid"}}},
     "slice": {same as patient, without roc_auc} | null,
     "ablation": {"n", "n_missing", "n_incomplete", "params", "variants": {variant: {...}}},
     "timing": {"n_timed", "total_s", "per_study_mean_s", "per_study_median_s", "per_study_max_s"},
     "cases": [{"case", "truth", "prediction", "correct"[, "origin": "real" | "synthetic"]}],
     "real": ORIGIN | null, "synthetic": ORIGIN | null,
     "probe": {...} | null, "clean_shift": {...} | null,
     "files": {...}}

where ``RATE = {"value": float | null, "numerator": int, "denominator": int}``. ``real`` and ``synthetic``
hold the figures of the real CT and the synthetic (phantom or realistic) studies apart (``ORIGIN``: see
:func:`covidct.evaluate.origin.origin_summary`: patient accuracy and the slice AUC of infected vs not
infected), ``probe`` the synthetic-vs-real shortcut probe (see
:meth:`covidct.evaluate.probe.ProbeResult.to_json`); ``clean_shift`` the infected score of
not-infected real vs synthetic slices (:func:`covidct.evaluate.origin.clean_slice_shift`); they are null when
the evaluation did not know the studies' origin (a predictions CSV) or had no such studies.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidct._files import atomic_write_text
from covidct.evaluate.ablation import ablation_markdown, ablation_table
from covidct.evaluate.metrics import RATE_NAMES, classification_summary
from covidct.evaluate.origin import clean_shift_line, origin_markdown
from covidct.evaluate.plots import confusion_matrix_png
from covidct.evaluate.predictions import PredictionRecord, to_records
from covidct.evaluate.probe import probe_line
from covidct.registry import CLASS_NAMES, DISPLAY_NAMES

__all__ = ["metrics_markdown", "write_evaluation"]

log = logging.getLogger(__name__)

SliceRecord = tuple[str, Sequence[int], Sequence[int]]


def _slice_pairs(
    records: Sequence[PredictionRecord], slice_records: Iterable[SliceRecord] | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Concatenated (truth, prediction) slice labels, skipping slices without a label or a prediction."""
    pairs: list[tuple[Sequence[int], Sequence[int], str]] = []
    if slice_records is not None:
        pairs = [(t, p, c) for c, t, p in slice_records]
    else:
        pairs = [
            (r.slice_truth, r.slice_predictions, r.case)
            for r in records
            if r.slice_truth and r.slice_predictions
        ]
    if not pairs:
        return None
    truth, pred = [], []
    for t, p, case in pairs:
        if len(t) != len(p):
            raise ValueError(f"case {case!r}: {len(t)} slice labels but {len(p)} slice predictions")
        ta, pa = np.asarray(t, dtype=np.int64), np.asarray(p, dtype=np.int64)
        ok = (ta >= 0) & (pa >= 0)
        truth.append(ta[ok])
        pred.append(pa[ok])
    return np.concatenate(truth), np.concatenate(pred)


def _timing(records: Sequence[PredictionRecord], timing: Mapping[str, Any] | None) -> dict[str, Any]:
    per: dict[str, float] = {r.case: r.time_s for r in records if r.time_s is not None}
    total: float | None = None
    if timing is not None:
        per.update({str(k): float(v) for k, v in dict(timing.get("per_study_s", {})).items()})
        if timing.get("total_s") is not None:
            total = float(timing["total_s"])
    values = list(per.values())
    if total is None and values:
        total = float(sum(values))
    return {
        "n_timed": len(values),
        "total_s": total,
        "per_study_mean_s": statistics.fmean(values) if values else None,
        "per_study_median_s": statistics.median(values) if values else None,
        "per_study_max_s": max(values) if values else None,
    }


def _fmt(rate: Mapping[str, Any]) -> str:
    v = rate["value"]
    return "n/a" if v is None else f"{100 * v:.2f}%"


def metrics_markdown(summary: Mapping[str, Any], *, title: str) -> str:
    """Table 3 layout: one row per class, columns accuracy, sensitivity, specificity, ... with counts."""
    lines = [f"### {title}", ""]
    oa = summary["overall_accuracy"]
    kappa = summary.get("kappa")
    lines.append(
        f"Overall accuracy **{_fmt(oa)}** ({oa['numerator']}/{oa['denominator']}); Cohen's kappa "
        f"{'n/a' if kappa is None else f'{kappa:.3f}'}."
    )
    lines += [
        "",
        "| Class | " + " | ".join(n.upper() if len(n) <= 3 else n.capitalize() for n in RATE_NAMES) + " |",
    ]
    lines.append("|" + "---|" * (1 + len(RATE_NAMES)))
    for name, display in zip(CLASS_NAMES, DISPLAY_NAMES, strict=True):
        m = summary["per_class"][name]
        cells = [f"{_fmt(m[k])} ({m[k]['numerator']}/{m[k]['denominator']})" for k in RATE_NAMES]
        lines.append(f"| {display} | " + " | ".join(cells) + " |")
    lines += ["", "Confusion matrix (rows truth, columns prediction):", ""]
    lines.append("| Truth \\ Prediction | " + " | ".join(DISPLAY_NAMES) + " |")
    lines.append("|---|" + "---|" * len(DISPLAY_NAMES))
    for display, row in zip(DISPLAY_NAMES, summary["confusion_matrix"], strict=True):
        lines.append(f"| {display} | " + " | ".join(str(v) for v in row) + " |")
    if "roc_auc" in summary:
        lines += ["", "| Class | ROC AUC | 95% CI (bootstrap) |", "|---|---|---|"]
        for name, display in zip(CLASS_NAMES, DISPLAY_NAMES, strict=True):
            a = summary["roc_auc"][name]
            auc = "n/a" if a["value"] is None else f"{a['value']:.3f}"
            ci = "n/a" if a["ci95"] is None else f"{a['ci95'][0]:.3f}-{a['ci95'][1]:.3f}"
            lines.append(f"| {display} | {auc} | {ci} |")
    return "\n".join(lines) + "\n"


def _timing_markdown(t: Mapping[str, Any]) -> str:
    if not t["n_timed"] and t["total_s"] is None:
        return "_No timing recorded._\n"
    parts = [f"Total diagnosis time {t['total_s']:.1f} s" if t["total_s"] is not None else "Total time n/a"]
    if t["n_timed"]:
        parts.append(
            f"per study mean {t['per_study_mean_s']:.2f} s, median {t['per_study_median_s']:.2f} s, "
            f"max {t['per_study_max_s']:.2f} s over {t['n_timed']} studies"
        )
    return "; ".join(parts) + " (the paper: 35 min for 98 patients, about 21 s per patient).\n"


def _which_studies(origins: Mapping[str, str] | None, synthetic: str) -> str:
    """Suffix of the pooled tables' headings saying which studies they pool."""
    if not origins:
        return ""
    kinds = set(origins.values())
    if kinds == {"real"}:
        return " - real CT"
    if kinds == {"synthetic"}:
        return f" - {synthetic}"
    return f" - all studies, real CT and {synthetic} pooled"


def _origin_counts(origins: Mapping[str, str] | None, synthetic: str) -> str:
    if origins is None:
        return ""
    values = list(origins.values())
    return f": {values.count('real')} real CT, {values.count('synthetic')} {synthetic}"


def write_evaluation(
    records: Iterable[PredictionRecord | Sequence[Any]],
    out_dir: str | Path,
    *,
    slice_records: Iterable[SliceRecord] | None = None,
    timing: Mapping[str, Any] | None = None,
    rule: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    origins: Mapping[str, str] | None = None,
    real: Mapping[str, Any] | None = None,
    synthetic: Mapping[str, Any] | None = None,
    probe: Mapping[str, Any] | None = None,
    clean_shift: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score patient predictions; write ``metrics.json``, ``confusion_patient.png``, ``confusion_slice.png``
    (when slice labels exist) and ``summary.md`` into ``out_dir``; return the metrics dict (as written).

    ``records``: :class:`PredictionRecord` s or ``(case, truth, StudyResult | Decision | class)`` tuples.
    ``slice_records``: ``(case, slice_truth, slice_predictions)`` label sequences (``-1`` = skip), overriding
    the records' own ``slice_truth``. ``timing``: optional ``{"total_s": float, "per_study_s": {case: s}}``
    (per-study times otherwise come from the records). AUC uses the records' scores when all have them.
    ``rule``: the patient-rule parameters ``{"head", "tail", "threshold"}`` the Table 2 ablation re-applies
    (those the diagnoses were made with, e.g. the model card's; registry defaults when ``None``).
    ``origins``: ``{case: "real" | "synthetic"}`` (every case), labelling the cases and the tables' titles;
    ``real`` / ``synthetic`` / ``probe`` / ``clean_shift``: the sections of :mod:`covidct.evaluate.origin` and
    :mod:`covidct.evaluate.probe`, written as given and shown in the summary apart from the pooled tables.
    ``calibration``: the section of :func:`covidct.evaluate.referral.calibration_section` (its PNGs are
    already in ``out_dir``).
    """
    from covidct.bundle import check_rule

    params = check_rule(dict(rule) if rule is not None else {}, where="write_evaluation", error=ValueError)
    recs = to_records(records)
    if not recs:
        raise ValueError("no records to evaluate")
    if any(r.truth < 0 for r in recs):
        raise ValueError("every record needs a truth label to be evaluated")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = np.array([r.truth for r in recs])
    pred = np.array([r.prediction for r in recs])
    scores = None
    if all(r.scores is not None for r in recs):
        scores = np.array([r.scores for r in recs], dtype=np.float64)
    patient = classification_summary(truth, pred, scores=scores, n_boot=n_boot, seed=seed)
    files = {"metrics": "metrics.json", "summary": "summary.md", "confusion_patient": "confusion_patient.png"}
    confusion_matrix_png(
        np.array(patient["confusion_matrix"]), out / files["confusion_patient"], title="Patients"
    )
    slice_summary = None
    pairs = _slice_pairs(recs, slice_records)
    if pairs is not None and pairs[0].size:
        slice_summary = classification_summary(*pairs)
        files["confusion_slice"] = "confusion_slice.png"
        confusion_matrix_png(
            np.array(slice_summary["confusion_matrix"]), out / files["confusion_slice"], title="Slices"
        )
    if origins is not None:
        missing = [r.case for r in recs if origins.get(r.case) not in ("real", "synthetic")]
        if missing:
            raise ValueError(f"origins must give 'real' or 'synthetic' for every case; not for {missing[:5]}")
        origins = {r.case: origins[r.case] for r in recs}
    ablation = ablation_table(recs, head=params["head"], tail=params["tail"], threshold=params["threshold"])
    time_info = _timing(recs, timing)
    metrics: dict[str, Any] = {
        "classes": list(CLASS_NAMES),
        "undefined_values": "null",
        "patient": patient,
        "slice": slice_summary,
        "ablation": ablation,
        "timing": time_info,
        "cases": [
            {
                "case": r.case,
                "truth": CLASS_NAMES[r.truth],
                "prediction": CLASS_NAMES[r.prediction],
                "correct": r.truth == r.prediction,
                **({"origin": origins[r.case]} if origins is not None else {}),
            }
            for r in recs
        ],
        "real": None if real is None else dict(real),
        "synthetic": None if synthetic is None else dict(synthetic),
        "probe": None if probe is None else dict(probe),
        "clean_shift": None if clean_shift is None else dict(clean_shift),
        "calibration": None if calibration is None else dict(calibration),
        "files": files | ({} if calibration is None else dict(calibration.get("files", {}))),
    }
    synthetic_name = str(synthetic["label"]) if synthetic is not None else "synthetic (phantom)"
    which = _which_studies(origins, synthetic_name)
    text = json.dumps(metrics, indent=2, allow_nan=False)
    md = [
        "# covidct evaluation",
        "",
        f"{len(recs)} studies{_origin_counts(origins, synthetic_name)}. Undefined rates (zero denominator) "
        "are shown as n/a and written as null.",
        "",
    ]
    if origins is not None and "synthetic" in origins.values():
        md += [
            f"Figures on {synthetic_name} studies do not show how a model does on real scans: judge it on "
            "the real CT figures.",
            "",
        ]
    for section in (real, synthetic):
        if section is not None:
            md += [origin_markdown(section)]
    if probe is not None or clean_shift is not None:
        md += ["## Synthetic-vs-real shortcut checks", ""]
    if clean_shift is not None:
        md += [
            clean_shift_line(clean_shift) + ".",
            "",
            "A classifier that learnt real texture as the disease cue scores clean real lungs as infected "
            "and clean synthetic ones as normal (AUC near 1): the shortcut in use, on its own outputs.",
            "",
        ]
    if probe is not None:
        md += [
            probe_line(dict(probe)) + ".",
            "",
            "A logistic regression on the classifier's penultimate features, cross-validated, predicts "
            "whether a slice is real CT or synthetic; high balanced accuracy means the classifier could tell "
            "them apart and use that as a shortcut (it does not prove that it does). Folds keep each study's "
            "slices together when both origins have at least five studies; otherwise they split slices, and "
            "the probe may partly recognise the patients themselves.",
            "",
        ]
    md += [
        f"## Table 2 - ablation of the patient rule (patient-level accuracy){which}",
        "",
        "Each variant re-applies the rule to the slice predictions; Table 3 scores the predictions as given.",
        "",
        ablation_markdown(ablation),
        f"## Table 3 - per-class performance{which}",
        "",
        metrics_markdown(patient, title="Patient level"),
    ]
    if slice_summary is not None:
        md += [metrics_markdown(slice_summary, title="Slice level")]
    if calibration is not None:
        from covidct.evaluate.referral import calibration_markdown

        md += [calibration_markdown(calibration)]
    md += ["## Diagnosis time", "", _timing_markdown(time_info)]
    atomic_write_text(out / files["summary"], "\n".join(md))
    atomic_write_text(out / files["metrics"], text + "\n")
    log.info("evaluation written to %s (accuracy %s)", out, _fmt(patient["overall_accuracy"]))
    return json.loads(text)
