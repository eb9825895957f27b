"""Read and validate predictions CSVs, and turn diagnosis results into uniform evaluation records.

The predictions CSV (UTF-8, header row, comma-separated)::

    case,truth,prediction[,p_normal,p_cap,p_covid19][,slice_predictions][,slice_truth][,time_s]

- ``case``: a unique study id; ``truth`` / ``prediction``: a class name (``normal``, ``cap``, ``covid19``;
  ``COVID-19``, ``CAP``, ``Normal`` accepted) or its label 0/1/2.
- ``p_normal,p_cap,p_covid19``: optional patient-level scores (all three or none), used for ROC AUC.
- ``slice_predictions``: optional per-slice labels, superior -> inferior, separated by spaces, ``;`` or ``|``
  (``-1`` = slice not classified), used for the Table 2 ablation.
- ``slice_truth``: optional per-slice truth labels, same format (``-1`` = no label), for slice-level metrics.
- ``time_s``: optional diagnosis time of the study in seconds.
- ``error``: optional; a row with an error (a study that could not be diagnosed, as in the ``results.csv`` of a
  cohort run) is left out of the scores, and how many were left out is logged.

Reader CSVs (``covidct readers``) use the same parser with ``case,prediction,time_s`` (see ``readers.py``).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import InputError
from covidct.registry import CLASS_NAMES, class_index

log = logging.getLogger(__name__)

__all__ = ["PredictionRecord", "parse_class", "read_predictions", "to_records"]

PROB_COLUMNS: tuple[str, ...] = ("p_normal", "p_cap", "p_covid19")
KNOWN_COLUMNS: tuple[str, ...] = (
    "case",
    "truth",
    "prediction",
    *PROB_COLUMNS,
    "slice_predictions",
    "slice_truth",
    "time_s",
)


@dataclass(frozen=True)
class PredictionRecord:
    """One study: truth and predicted labels (registry order), optional scores, slice labels and time."""

    case: str
    truth: int
    prediction: int
    scores: tuple[float, float, float] | None = None
    slice_predictions: tuple[int, ...] | None = None
    slice_truth: tuple[int, ...] | None = None
    time_s: float | None = None


def parse_class(value: str | int) -> int:
    """Class label from a name (any registry spelling) or a label 0/1/2; ``ValueError`` otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < len(CLASS_NAMES):
            return int(value)
        raise ValueError(f"label {value} is not 0, 1 or 2")
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return parse_class(int(text))
    return class_index(text)


def _parse_slices(text: str) -> tuple[int, ...]:
    parts = text.replace(";", " ").replace("|", " ").replace(",", " ").split()
    values = tuple(int(p) for p in parts)
    if any(v < -1 or v > 2 for v in values):
        raise ValueError("slice labels must be -1, 0, 1 or 2")
    return values


def read_predictions(path: str | Path, *, require_truth: bool = True) -> list[PredictionRecord]:
    """Read a predictions CSV (module docstring). Raises :class:`InputError` naming the file, line and fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: predictions file not found; check the path (a CSV with columns case,truth,prediction)"
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read as a UTF-8 CSV ({exc})") from exc
    if not rows:
        raise InputError(f"{path}: empty file; expected a header 'case,truth,prediction'")
    header = [h.strip().lower() for h in rows[0]]
    needed = ("case", "truth", "prediction") if require_truth else ("case", "prediction")
    missing = [c for c in needed if c not in header]
    if missing:
        raise InputError(
            f"{path}, line 1: missing column(s) {', '.join(missing)}; the header must contain "
            f"{','.join(needed)} (found {','.join(header) or 'nothing'})"
        )
    present_probs = [c for c in PROB_COLUMNS if c in header]
    if present_probs and len(present_probs) != len(PROB_COLUMNS):
        raise InputError(
            f"{path}, line 1: give all of {','.join(PROB_COLUMNS)} or none (found {present_probs})"
        )
    col = {name: header.index(name) for name in KNOWN_COLUMNS if name in header}
    error_col = header.index("error") if "error" in header else None
    failed = 0
    records: list[PredictionRecord] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(
                f"{path}, line {lineno}: {len(row)} fields but the header has {len(header)}; quote fields "
                "that contain commas"
            )
        if error_col is not None and row[error_col].strip():
            failed += 1
            continue
        cells = {name: row[i].strip() for name, i in col.items()}
        case = cells["case"]
        if not case:
            raise InputError(f"{path}, line {lineno}: empty case id")
        if case in seen:
            raise InputError(
                f"{path}, line {lineno}: case {case!r} already on line {seen[case]}; ids must be unique"
            )
        seen[case] = lineno
        records.append(_parse_row(path, lineno, cells, require_truth))
    if failed:
        log.warning("%s: %d studies with an error are left out of the scores", path.name, failed)
    if not records:
        raise InputError(
            f"{path}: no data rows after the header" + (f" ({failed} rows have an error)" if failed else "")
        )
    return records


def _parse_row(path: Path, lineno: int, cells: dict[str, str], require_truth: bool) -> PredictionRecord:
    where = f"{path}, line {lineno}"
    labels: dict[str, int] = {}
    for name in ("truth", "prediction"):
        if name not in cells or (name == "truth" and not require_truth and not cells[name]):
            labels[name] = -1
            continue
        try:
            labels[name] = parse_class(cells[name])
        except ValueError as exc:
            raise InputError(
                f"{where}: bad {name} {cells[name]!r}: use one of {', '.join(CLASS_NAMES)}"
            ) from exc
    scores: tuple[float, float, float] | None = None
    if "p_normal" in cells:
        try:
            vals = [float(cells[c]) for c in PROB_COLUMNS]
        except ValueError as exc:
            raise InputError(f"{where}: probabilities must be numbers ({exc})") from exc
        if any(math.isnan(v) or v < 0.0 for v in vals):
            raise InputError(f"{where}: probabilities must be non-negative numbers, got {vals}")
        scores = (vals[0], vals[1], vals[2])
    slices: dict[str, tuple[int, ...] | None] = {}
    for name in ("slice_predictions", "slice_truth"):
        text = cells.get(name, "")
        if not text:
            slices[name] = None
            continue
        try:
            slices[name] = _parse_slices(text)
        except ValueError as exc:
            raise InputError(
                f"{where}: bad {name}: give labels -1/0/1/2 separated by spaces, ';' or '|' ({exc})"
            ) from exc
    sp, st = slices["slice_predictions"], slices["slice_truth"]
    if sp is not None and st is not None and len(sp) != len(st):
        raise InputError(f"{where}: slice_predictions has {len(sp)} slices but slice_truth has {len(st)}")
    time_s: float | None = None
    if cells.get("time_s"):
        try:
            time_s = float(cells["time_s"])
        except ValueError as exc:
            raise InputError(f"{where}: time_s must be seconds as a number, got {cells['time_s']!r}") from exc
        if not math.isfinite(time_s) or time_s < 0:
            raise InputError(f"{where}: time_s must be a non-negative number of seconds, got {time_s}")
    return PredictionRecord(
        case=cells["case"],
        truth=labels["truth"],
        prediction=labels["prediction"],
        scores=scores,
        slice_predictions=sp,
        slice_truth=st,
        time_s=time_s,
    )


def _from_result(case: str, truth: int, obj: Any) -> PredictionRecord:
    """Record from a ``StudyResult`` (has ``.decision``), a ``Decision``, a class name or a label."""
    decision = getattr(obj, "decision", obj)
    if hasattr(decision, "slice_predictions") and hasattr(decision, "label"):
        fr = decision.fractions
        scores = (float(fr["normal"]), float(fr["cap"]), float(fr["covid19"]))
        probs = getattr(obj, "probabilities", None)
        if probs is not None:
            start, stop = decision.kept
            kept = np.asarray(probs, dtype=np.float64)[start:stop]
            kept = kept[~np.isnan(kept).any(axis=1)]
            if kept.size:
                mean = kept.mean(axis=0)
                scores = (float(mean[0]), float(mean[1]), float(mean[2]))
        timing = getattr(obj, "timing_s", None) or {}
        t = timing.get("total")
        return PredictionRecord(
            case=case,
            truth=truth,
            prediction=int(decision.label),
            scores=scores,
            slice_predictions=tuple(int(v) for v in decision.slice_predictions),
            time_s=None if t is None else float(t),
        )
    return PredictionRecord(case=case, truth=truth, prediction=parse_class(obj))


def to_records(records: Iterable[PredictionRecord | Sequence[Any]]) -> list[PredictionRecord]:
    """Normalise ``PredictionRecord`` s and ``(case, truth, result_or_prediction)`` tuples.

    ``result_or_prediction`` is a ``StudyResult`` (scores = mean slice probabilities over the classified kept
    slices; slice predictions from its decision; time = ``timing_s["total"]``), a ``Decision`` (scores = the
    kept-slice vote fractions) or a class name / label.
    """
    out: list[PredictionRecord] = []
    for item in records:
        if isinstance(item, PredictionRecord):
            out.append(item)
            continue
        if len(item) != 3:
            raise ValueError(f"a record is (case, truth, result_or_prediction), got {item!r}")
        case, truth, obj = item
        out.append(_from_result(str(case), parse_class(truth), obj))
    cases = [r.case for r in out]
    if len(set(cases)) != len(cases):
        dup = sorted({c for c in cases if cases.count(c) > 1})
        raise ValueError(f"duplicate case ids in the records: {dup[:5]}")
    return out
