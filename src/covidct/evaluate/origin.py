"""Real CT vs synthetic studies in an evaluation: which is which, and the figures of each kept apart.

A model trained partly on phantoms can score well on phantoms and be at chance on real scans, so every
evaluation reports the two groups separately: patient accuracy and the **slice AUC of infected vs not
infected** (score ``1 - p(normal)``, truth ``slice class != normal`` from
:func:`covidct.data.records.slice_classes`; every slice of a normal study is negative), over all classified
slices of the group's studies that have slice classes. The AUC's 95% interval resamples whole studies
(slices of one study are not independent); it is ``None`` when fewer than 10 resamples hold both classes.

The rule deciding that a study is synthetic, and of which kind, lives in :func:`synthetic_kind` and nowhere
else: phantoms (``covidct.data.synth`` cohorts) and realistic studies (real lungs with drawn lesions,
``covidct.data.realistic`` cohorts) are both synthetic.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from covidct.evaluate.metrics import Rate, roc_auc
from covidct.registry import Diagnosis

if TYPE_CHECKING:
    from covidct.data.records import StudyRecord

__all__ = [
    "LABELS",
    "StudySlices",
    "auc_line",
    "clean_shift_line",
    "clean_slice_shift",
    "is_synthetic",
    "origin_markdown",
    "origin_of",
    "origin_summary",
    "study_slices",
    "synthetic_kind",
    "synthetic_label",
]

#: The table a phantom cohort writes at its root (``covidct.data.synth.generate_cohort``).
COHORT_TABLE: Final[str] = "cohort.csv"
#: The card a realistic cohort writes at its root (``covidct.data.realistic.build_realistic_cohort``).
REALISTIC_CARD: Final[str] = "cohort.json"
REALISTIC_KIND: Final[str] = "realistic-cohort"
#: How many folders above a study its cohort root may be (class folders sit up to three below the root).
_LEVELS: Final[int] = 4
#: Display names of the two origins, used in metrics.json, summary.md and the CLI.
LABELS: Final[dict[str, str]] = {"real": "real CT", "synthetic": "synthetic (phantom)"}


@functools.lru_cache(maxsize=64)
def _cohort_patients(table: str, _stamp: tuple[int, int]) -> frozenset[str] | None:
    """Patients a synthetic cohort's table lists (empty set: the table names none); ``None`` when the file
    is not a synthetic cohort's table (no ``site`` column) or cannot be read."""
    try:
        with open(table, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [(k or "").strip().lower() for k in reader.fieldnames or []]
            if "site" not in fields:
                return None
            return frozenset((row.get("patient") or row.get("case") or "").strip() for row in reader) - {""}
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


@functools.lru_cache(maxsize=64)
def _realistic_cases(card: str, _stamp: tuple[int, int]) -> frozenset[str] | None:
    """Cases a realistic cohort's card lists; ``None`` when the file is not such a card."""
    try:
        with open(card, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") != REALISTIC_KIND:
        return None
    studies = doc.get("studies") or []
    return frozenset(str(s.get("case", "")) for s in studies if isinstance(s, dict)) - {""}


def _stamp(path: Path) -> tuple[int, int] | None:
    """(mtime, size) of a file, the key of the caches above; ``None`` when it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def synthetic_kind(record: StudyRecord) -> str | None:
    """``"phantom"``, ``"realistic"`` or ``None`` (real CT): the one rule of covidct's evaluation.

    Looking in the four folders above the study, nearest first, the first cohort file found decides:

    - ``cohort.csv`` with a ``site`` column (the table every phantom cohort writes at its root): the study is
      a phantom when the table lists it in its ``patient`` column (its case name or its folder/file name; a
      table without patient names covers its whole folder), else real;
    - ``cohort.json`` with ``"kind": "realistic-cohort"`` (a cohort of real lungs with drawn lesions): the
      study is realistic when the card lists its case, else real.

    Every other study is real. The dataset readers need not set anything: COVID-CT-MD folders and manifest
    CSVs pointing into a synthetic cohort are both recognised.
    """
    path = Path(record.path)
    names = {record.case, path.name, path.name.split(".")[0]}
    for folder in list(path.parents)[:_LEVELS]:
        table, card = folder / COHORT_TABLE, folder / REALISTIC_CARD
        stamp = _stamp(table)
        patients = None if stamp is None else _cohort_patients(str(table), stamp)
        if patients is not None:
            return "phantom" if not patients or names & patients else None
        stamp = _stamp(card)
        cases = None if stamp is None else _realistic_cases(str(card), stamp)
        if cases is not None:
            return "realistic" if names & cases else None
    return None


def is_synthetic(record: StudyRecord) -> bool:
    """Whether a study is synthetic, phantom or realistic (see :func:`synthetic_kind`)."""
    return synthetic_kind(record) is not None


def synthetic_label(kinds: Iterable[str]) -> str:
    """The display name of a group of synthetic studies of these kinds (``"synthetic (phantom)"`` ...)."""
    found = set(kinds)
    if found == {"realistic"}:
        return "synthetic (real lungs, drawn lesions)"
    if found == {"phantom", "realistic"}:
        return "synthetic (phantoms, and real lungs with drawn lesions)"
    return LABELS["synthetic"]


def origin_of(record: StudyRecord) -> str:
    """``"synthetic"`` or ``"real"`` (see :func:`is_synthetic`)."""
    return "synthetic" if is_synthetic(record) else "real"


@dataclass(frozen=True)
class StudySlices:
    """One diagnosed study as the origin figures see it.

    ``infected`` / ``score``: per classified slice, ``slice class != normal`` and ``1 - p(normal)``; both
    ``None`` for a study without slice classes (an abnormal study without slice labels).
    """

    case: str
    truth: str
    prediction: str
    infected: np.ndarray | None = None
    score: np.ndarray | None = None


def study_slices(record: StudyRecord, probabilities: np.ndarray, prediction: str) -> StudySlices:
    """The infected flags and scores of a study's classified slices (rows of ``probabilities`` that are
    finite; NaN rows were not classified)."""
    from covidct.data.records import slice_classes

    probs = np.asarray(probabilities, dtype=np.float64)
    classes = slice_classes(record, probs.shape[0])
    if classes is None:
        return StudySlices(record.case, record.diagnosis, prediction)
    done = np.isfinite(probs).all(axis=1)
    return StudySlices(
        record.case,
        record.diagnosis,
        prediction,
        infected=classes[done] != int(Diagnosis.NORMAL),
        score=1.0 - probs[done, int(Diagnosis.NORMAL)],
    )


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _study_bootstrap(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], *, n_boot: int, seed: int
) -> tuple[list[float] | None, int]:
    """95% percentile interval of the pooled slice AUC, resampling whole studies; ``(None, n_valid)`` when
    fewer than 10 resamples hold both classes."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(parts), size=len(parts))
        v = roc_auc(np.concatenate([parts[i][0] for i in pick]), np.concatenate([parts[i][1] for i in pick]))
        if not math.isnan(v):
            values.append(v)
    if len(values) < 10:
        return None, len(values)
    lo, hi = np.quantile(values, [0.025, 0.975])
    return [float(lo), float(hi)], len(values)


def origin_summary(
    studies: Sequence[StudySlices],
    *,
    origin: str,
    n_boot: int = 1000,
    seed: int = 0,
    label: str | None = None,
) -> dict[str, Any]:
    """JSON-ready figures of one origin's studies (``origin`` ``"real"`` or ``"synthetic"``)::

        {"origin", "label", "n_studies", "patient_accuracy": RATE,
         "slice_auc": {"value", "ci95", "ci_method", "n_boot", "n_boot_valid", "n_slices", "n_infected",
                       "n_not_infected", "n_studies", "score", "truth"},
         "studies": [{"case", "truth", "prediction", "correct", "n_slices", "n_infected", "slice_auc"}]}

    Slice figures count only studies with slice classes; undefined values are ``None``. ``label``: the
    display name (default ``LABELS[origin]``; see :func:`synthetic_label`).
    """
    if origin not in LABELS:
        raise ValueError(f"origin must be one of {tuple(LABELS)}, got {origin!r}")
    parts = [(s.infected, s.score) for s in studies if s.infected is not None and s.score is not None]
    infected = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, bool)
    scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    value = roc_auc(infected, scores)
    ci, valid = _study_bootstrap(parts, n_boot=n_boot, seed=seed) if parts else (None, 0)
    rows: list[dict[str, Any]] = []
    for s in studies:
        row: dict[str, Any] = {"case": s.case, "truth": s.truth, "prediction": s.prediction}
        row.update(correct=s.truth == s.prediction, n_slices=None, n_infected=None, slice_auc=None)
        if s.infected is not None and s.score is not None:
            row.update(
                n_slices=int(s.infected.size),
                n_infected=int(s.infected.sum()),
                slice_auc=_num(roc_auc(s.infected, s.score)),
            )
        rows.append(row)
    correct = sum(bool(r["correct"]) for r in rows)
    return {
        "origin": origin,
        "label": label or LABELS[origin],
        "n_studies": len(studies),
        "patient_accuracy": Rate(correct, len(rows)).to_json(),
        "slice_auc": {
            "value": _num(value),
            "ci95": ci,
            "ci_method": "percentile bootstrap over studies",
            "n_boot": n_boot,
            "n_boot_valid": valid,
            "n_slices": int(infected.size),
            "n_infected": int(infected.sum()),
            "n_not_infected": int(infected.size - infected.sum()),
            "n_studies": len(parts),
            "score": "1 - p(normal)",
            "truth": "slice class != normal",
        },
        "studies": rows,
    }


def _pct(rate: Mapping[str, Any]) -> str:
    v = rate["value"]
    return ("n/a" if v is None else f"{100 * v:.2f}%") + f" ({rate['numerator']}/{rate['denominator']})"


def auc_line(section: Mapping[str, Any]) -> str:
    """One line: ``<label> slice AUC (infected vs not infected): 0.912 (95% CI ...), N slices ...``."""
    a = section["slice_auc"]
    value = "n/a" if a["value"] is None else f"{a['value']:.3f}"
    ci = "" if a["ci95"] is None else f" (95% CI {a['ci95'][0]:.3f}-{a['ci95'][1]:.3f}, studies resampled)"
    return (
        f"{section['label']} slice AUC, infected vs not infected: {value}{ci}; {a['n_slices']} slices "
        f"({a['n_infected']} infected, {a['n_not_infected']} not) of {a['n_studies']} studies"
    )


def origin_markdown(section: Mapping[str, Any]) -> str:
    """The summary.md section of one origin (a level-2 heading, the accuracy and AUC lines, a study table)."""
    label = section["label"]
    title = label[0].upper() + label[1:]
    lines = [
        f"## {title} ({section['n_studies']} studies)",
        "",
        f"Patient accuracy on {label}: **{_pct(section['patient_accuracy'])}**.",
        "",
        auc_line(section) + " (score 1 - p(normal), every classified slice; a normal study's slices are all "
        "not infected).",
        "",
        "| Study | Truth | Prediction | Slices | Infected slices | Slice AUC |",
        "|---|---|---|---|---|---|",
    ]
    for r in section["studies"]:
        auc = "n/a" if r["slice_auc"] is None else f"{r['slice_auc']:.3f}"
        n = "-" if r["n_slices"] is None else str(r["n_slices"])
        k = "-" if r["n_infected"] is None else str(r["n_infected"])
        lines.append(f"| {r['case']} | {r['truth']} | {r['prediction']} | {n} | {k} | {auc} |")
    return "\n".join(lines) + "\n"


def clean_slice_shift(real: Sequence[StudySlices], synthetic: Sequence[StudySlices]) -> dict[str, Any] | None:
    """Whether the classifier scores clean lungs differently when they are real: its infected score
    (``1 - p(normal)``) on the **not infected** slices of real CT vs synthetic studies.

    The phantom shortcut shows here directly: a classifier that learnt "real texture" as disease gives real
    clean slices high scores and phantom ones low (AUC near 1). Returns ``None`` when either origin has no
    scored clean slice; else ``{"real_mean", "synthetic_mean", "auc", "n_real", "n_synthetic", "reading"}``
    where ``auc`` is the ROC AUC of the score for "real" among clean slices (0.5: no shift).
    """

    def clean(studies: Sequence[StudySlices]) -> np.ndarray:
        parts = [s.score[~s.infected] for s in studies if s.infected is not None and s.score is not None]
        return np.concatenate(parts) if parts else np.zeros(0)

    r, s = clean(real), clean(synthetic)
    if not r.size or not s.size:
        return None
    auc = roc_auc(np.concatenate([np.ones(r.size, bool), np.zeros(s.size, bool)]), np.concatenate([r, s]))
    if math.isnan(auc):
        reading = "undefined"
    elif abs(auc - 0.5) < 0.1:
        reading = "clean real and synthetic lungs get about the same scores"
    elif auc > 0.5:
        reading = "clean real lungs get higher infected scores than clean synthetic ones: a shortcut in use"
    else:
        reading = "clean synthetic lungs get higher infected scores than clean real ones"
    return {
        "real_mean": float(r.mean()),
        "synthetic_mean": float(s.mean()),
        "auc": _num(auc),
        "n_real": int(r.size),
        "n_synthetic": int(s.size),
        "score": "1 - p(normal) on not-infected slices; auc: real positive",
        "reading": reading,
    }


def clean_shift_line(doc: Mapping[str, Any]) -> str:
    """One line of :func:`clean_slice_shift`'s result."""
    auc = "n/a" if doc["auc"] is None else f"{doc['auc']:.3f}"
    return (
        f"not-infected slices, mean 1 - p(normal): real CT {doc['real_mean']:.3f} ({doc['n_real']} slices) "
        f"vs synthetic {doc['synthetic_mean']:.3f} ({doc['n_synthetic']}), AUC real vs synthetic {auc}: "
        f"{doc['reading']}"
    )
