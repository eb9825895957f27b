"""A cohort's studies in and its results out: the study list (inputs or a manifest) and the results table.

The table (``OUT/results.csv``, and ``OUT/results.parquet`` when pyarrow is installed) has one row per study:
``case, truth, prediction, p_normal, p_cap, p_covid19`` (the patient-level class fractions of the kept
slices), ``branch, lung_right_ml, lung_left_ml, time_s, model_hash, slice_predictions, error``, then
``confidence`` (the probability of the prediction, :mod:`covidct.confidence`) and ``refer`` (``true`` /
``false``; empty when the model has no referral threshold), both empty for documents without a confidence.
The two are last so that the earlier columns keep their places. It is a predictions CSV: ``covidct evaluate
--predictions OUT/results.csv`` scores it (rows with an error are left out and counted; columns it does not
know are ignored).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct._files import atomic_write_text, study_stem
from covidct.errors import InputError
from covidct.registry import CLASS_NAMES, class_index

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "case",
    "truth",
    "prediction",
    "p_normal",
    "p_cap",
    "p_covid19",
    "branch",
    "lung_right_ml",
    "lung_left_ml",
    "time_s",
    "model_hash",
    "slice_predictions",
    "error",
    "confidence",
    "refer",
)


@dataclass(frozen=True)
class CohortStudy:
    """One study of a cohort: a unique case id, where it is, and its class when known."""

    case: str
    path: str
    truth: str | None = None


def unique_cases(paths: Sequence[str], cases: Sequence[str | None] | None = None) -> list[str]:
    """Case ids for ``paths``: the given ones, else the study's name; repeats get ``_2``, ``_3``..."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        base = (cases[i] if cases is not None else None) or study_stem(str(p))
        n = seen.get(base, 0) + 1
        seen[base] = n
        out.append(base if n == 1 else f"{base}_{n}")
    return out


def studies_from_inputs(inputs: Sequence[str]) -> list[CohortStudy]:
    return [CohortStudy(c, p) for c, p in zip(unique_cases(inputs), inputs, strict=True)]


def read_study_list(path: str | Path) -> list[CohortStudy]:
    """A manifest of studies to diagnose: CSV with a ``path`` column (relative to the CSV's folder or
    absolute) and optional ``case`` and ``truth`` (or ``class``) columns. InputError naming the line."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            fields = {(k or "").strip().lower() for k in (rows[0].keys() if rows else [])}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(
            f"{path}: cannot read the manifest ({exc}); give a CSV with a 'path' column"
        ) from None
    if not rows:
        raise InputError(
            f"{path}: no studies; give a CSV with a header 'path[,case][,truth]' and one row per study"
        )
    if "path" not in fields:
        raise InputError(f"{path}: no 'path' column (found {', '.join(sorted(fields)) or 'none'})")
    paths, cases, truths = [], [], []
    for line, row in enumerate(rows, start=2):
        get = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not get.get("path"):
            raise InputError(f"{path}:{line}: empty path")
        study = Path(get["path"])
        paths.append(str(study if study.is_absolute() else path.parent / study))
        cases.append(get.get("case") or None)
        truth = get.get("truth") or get.get("class") or None
        if truth is not None:
            try:
                truth = CLASS_NAMES[class_index(truth)]
            except ValueError as exc:
                raise InputError(f"{path}:{line}: {exc}") from None
        truths.append(truth)
    ids = unique_cases(paths, cases)
    return [CohortStudy(c, p, t) for c, p, t in zip(ids, paths, truths, strict=True)]


def row_of(case: str, truth: str | None, doc: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    """The table row of a study from its per-study JSON document (or its error)."""
    row: dict[str, Any] = {k: "" for k in COLUMNS}
    row.update(case=case, truth=truth or "")
    if error is not None or doc is None:
        row["error"] = error or "not diagnosed"
        return row
    fractions = doc.get("rule", {}).get("fractions", {})
    volumes = doc.get("lung_volume_ml", {})
    row.update(
        prediction=doc["diagnosis"],
        p_normal=fractions.get("normal", ""),
        p_cap=fractions.get("cap", ""),
        p_covid19=fractions.get("covid19", ""),
        branch=doc.get("rule", {}).get("branch", ""),
        lung_right_ml=volumes.get("right", ""),
        lung_left_ml=volumes.get("left", ""),
        time_s=doc.get("timing_s", {}).get("total", ""),
        model_hash=doc.get("model", {}).get("hash", ""),
        slice_predictions=" ".join(str(int(v)) for v in doc.get("slice_predictions", [])),
    )
    confidence = doc.get("confidence") or {}
    if confidence.get("value") is not None:
        row["confidence"] = confidence["value"]
    if confidence.get("refer") is not None:
        row["refer"] = "true" if confidence["refer"] else "false"
    return row


def write_table(rows: Iterable[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``results.csv`` (always) and ``results.parquet`` (when pyarrow is installed), each written atomically."""
    rows = list(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written = [atomic_write_text(out_dir / "results.csv", buf.getvalue())]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        log.info("pyarrow not installed: results.csv only (pip install 'covidct[ray]' adds results.parquet)")
        return written
    from covidct._files import atomic_write

    def numeric(v: Any) -> float | None:
        return None if v == "" else float(v)

    def flag(v: Any) -> bool | None:
        return None if v == "" else v == "true"

    numeric_cols = {"p_normal", "p_cap", "p_covid19", "lung_right_ml", "lung_left_ml", "time_s", "confidence"}
    columns: dict[str, list[Any]] = {}
    for c in COLUMNS:
        convert = numeric if c in numeric_cols else flag if c == "refer" else str
        columns[c] = [convert(r[c]) for r in rows]
    table = pa.table(columns)
    written.append(atomic_write(out_dir / "results.parquet", lambda tmp: pq.write_table(table, tmp)))
    return written


def done_document(out_dir: Path, case: str, model_hash: str) -> dict[str, Any] | None:
    """The per-study JSON of ``case`` when it exists and was made by the model ``model_hash`` (``--resume``)."""
    path = out_dir / f"{case}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("model", {}).get("hash") != model_hash:
        return None
    return doc
