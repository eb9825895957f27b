"""The paper's Table 2: patient accuracy without truncation, without the custom rule, and with both.

Every variant re-applies :func:`covidct.decide.decide` to the same per-study slice predictions, so the table
isolates the rule from the classifier. Studies without slice predictions (or with none classified) are left
out and counted in ``n_missing``.
Slices not classified (``-1``, e.g. truncated slices that diagnosis skipped) are ignored by every variant,
which makes ``no_truncation`` equal to ``full`` for such studies; ``n_incomplete`` reports how many there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from covidct.decide import VARIANTS, decide
from covidct.evaluate.metrics import confusion_matrix, overall_accuracy, per_class_metrics
from covidct.evaluate.predictions import PredictionRecord
from covidct.registry import (
    ABNORMAL_FRACTION_THRESHOLD,
    CLASS_NAMES,
    DISPLAY_NAMES,
    TRUNCATE_HEAD,
    TRUNCATE_TAIL,
)

__all__ = ["VARIANT_TITLES", "ablation_markdown", "ablation_table"]

#: Row titles of Table 2, in the paper's order.
VARIANT_TITLES: dict[str, str] = {
    "no_truncation": "Without truncation",
    "no_rule": "Without the custom rule (plain majority)",
    "full": "Full method (truncation + rule)",
}


def ablation_table(
    records: Sequence[PredictionRecord],
    *,
    head: float = TRUNCATE_HEAD,
    tail: float = TRUNCATE_TAIL,
    threshold: float = ABNORMAL_FRACTION_THRESHOLD,
) -> dict[str, Any]:
    """Per variant: overall accuracy (value and counts), per-class sensitivity and the per-case answers.

    Returns ``{"n", "n_missing", "n_incomplete", "params", "variants": {variant: {...}}}``;
    ``n == 0`` (no study has slice predictions) gives empty ``variants``.
    """
    usable = [r for r in records if r.slice_predictions and max(r.slice_predictions) >= 0]
    slices = [r.slice_predictions for r in usable if r.slice_predictions]
    incomplete = sum(1 for s in slices if -1 in s)
    out: dict[str, Any] = {
        "n": len(usable),
        "n_missing": len(records) - len(usable),
        "n_incomplete": incomplete,
        "params": {"head": head, "tail": tail, "threshold": threshold},
        "variants": {},
    }
    if not usable:
        return out
    truth = np.array([r.truth for r in usable])
    for variant in VARIANTS:
        preds = []
        for s in slices:
            d = decide(list(s), variant=variant, head=head, tail=tail, threshold=threshold)
            preds.append(d.label)
        pred = np.array(preds)
        cm = confusion_matrix(truth, pred)
        per_class = per_class_metrics(cm)
        out["variants"][variant] = {
            "title": VARIANT_TITLES[variant],
            "accuracy": overall_accuracy(cm).to_json(),
            "sensitivity": {name: per_class[name]["sensitivity"].to_json() for name in CLASS_NAMES},
            "confusion_matrix": cm.tolist(),
            "predictions": {r.case: CLASS_NAMES[p] for r, p in zip(usable, preds, strict=True)},
        }
    return out


def _pct(rate: dict[str, Any]) -> str:
    v = rate["value"]
    return "n/a" if v is None else f"{100 * v:.2f}% ({rate['numerator']}/{rate['denominator']})"


def ablation_markdown(table: dict[str, Any]) -> str:
    """Table 2 as Markdown: one row per variant, overall accuracy then per-class sensitivity."""
    if not table["variants"]:
        return "_No slice predictions: the ablation (Table 2) cannot be computed._\n"
    head = "| Method | Accuracy | " + " | ".join(f"{d} sensitivity" for d in DISPLAY_NAMES) + " |"
    lines = [head, "|" + "---|" * (2 + len(DISPLAY_NAMES))]
    for variant in VARIANTS:
        row = table["variants"][variant]
        cells = [row["title"], _pct(row["accuracy"]), *(_pct(row["sensitivity"][c]) for c in CLASS_NAMES)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"{table['n']} studies with slice predictions"]
    if table["n_missing"]:
        notes.append(f"{table['n_missing']} without (left out)")
    if table["n_incomplete"]:
        notes.append(
            f"{table['n_incomplete']} with unclassified slices (ignored by every variant, so 'without "
            "truncation' only differs where slices outside the kept range were classified)"
        )
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + ".\n"
