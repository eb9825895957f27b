"""Readers versus AI (the paper's Fig. 4): accuracy, COVID-19 sensitivity, reading time, kappa, McNemar.

Inputs are CSVs (UTF-8, header row):

- truth: ``case,truth`` (class names or labels 0/1/2);
- each reader: ``case,prediction,time_s`` - ``time_s`` is the reading time of that case in seconds
  (``time`` is accepted as the column name too);
- the AI: the predictions CSV of ``covidct evaluate`` (``case,prediction`` and optionally ``time_s``; a
  ``truth`` column there is ignored - the truth file decides).

Every reader and the AI must answer every case of the truth file; reads of cases not in the truth file are
ignored with a warning. Kappa is Cohen's kappa against the truth (3 classes); McNemar compares per-case
correctness of the reader with the AI's (exact binomial when discordant cases < 25).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct._files import atomic_write_text
from covidct.errors import InputError
from covidct.evaluate.metrics import (
    cohen_kappa,
    confusion_matrix,
    mcnemar,
    overall_accuracy,
    per_class_metrics,
)
from covidct.evaluate.plots import readers_chart_png
from covidct.evaluate.predictions import parse_class, read_predictions

__all__ = ["Reads", "compare_readers", "read_reads", "read_truth", "readers_markdown", "write_readers"]

log = logging.getLogger(__name__)

AI_NAME = "AI"


@dataclass(frozen=True)
class Reads:
    """One rater's answers: case -> label, and case -> reading time in seconds (may be empty)."""

    labels: dict[str, int]
    times_s: dict[str, float]


def _read_rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read as a UTF-8 CSV ({exc})") from exc
    if not rows:
        raise InputError(f"{path}: empty file; expected a header with {','.join(required)}")
    header = [h.strip().lower() for h in rows[0]]
    if "time" in header and "time_s" not in header:
        header[header.index("time")] = "time_s"
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(
            f"{path}, line 1: missing column(s) {', '.join(missing)}; expected {','.join(required)}"
        )
    out = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise InputError(f"{path}, line {lineno}: {len(row)} fields but the header has {len(header)}")
        cells = {h: c.strip() for h, c in zip(header, row, strict=True)}
        case = cells["case"]
        if not case:
            raise InputError(f"{path}, line {lineno}: empty case id")
        if case in seen:
            raise InputError(f"{path}, line {lineno}: case {case!r} already on line {seen[case]}")
        seen[case] = lineno
        out.append((lineno, cells))
    if not out:
        raise InputError(f"{path}: no data rows after the header")
    return header, out


def _label(path: Path, lineno: int, column: str, value: str) -> int:
    try:
        return parse_class(value)
    except ValueError as exc:
        raise InputError(
            f"{path}, line {lineno}: bad {column} {value!r}: use normal, cap or covid19"
        ) from exc


def read_truth(path: str | Path) -> dict[str, int]:
    """``case,truth`` CSV -> ``{case: label}``."""
    p = Path(path)
    _, rows = _read_rows(p, ("case", "truth"))
    return {cells["case"]: _label(p, n, "truth", cells["truth"]) for n, cells in rows}


def read_reads(path: str | Path, *, require_time: bool = True) -> Reads:
    """``case,prediction,time_s`` CSV -> :class:`Reads` (``time_s`` seconds, non-negative)."""
    p = Path(path)
    required = ("case", "prediction", "time_s") if require_time else ("case", "prediction")
    _, rows = _read_rows(p, required)
    labels, times = {}, {}
    for n, cells in rows:
        labels[cells["case"]] = _label(p, n, "prediction", cells["prediction"])
        text = cells.get("time_s", "")
        if not text:
            if require_time:
                raise InputError(f"{p}, line {n}: empty time_s; give the reading time in seconds")
            continue
        try:
            t = float(text)
        except ValueError as exc:
            raise InputError(f"{p}, line {n}: time_s must be seconds as a number, got {text!r}") from exc
        if not math.isfinite(t) or t < 0:
            raise InputError(f"{p}, line {n}: time_s must be a non-negative number of seconds, got {text!r}")
        times[cells["case"]] = t
    return Reads(labels, times)


def read_ai(path: str | Path) -> Reads:
    """The AI's predictions CSV (``case,prediction[,time_s]``, other columns ignored) -> :class:`Reads`."""
    recs = read_predictions(path, require_truth=False)
    return Reads(
        {r.case: r.prediction for r in recs}, {r.case: r.time_s for r in recs if r.time_s is not None}
    )


def _row(truth: np.ndarray, pred: np.ndarray, times: list[float]) -> dict[str, Any]:
    cm = confusion_matrix(truth, pred)
    kappa = cohen_kappa(cm)
    return {
        "n": int(truth.size),
        "accuracy": overall_accuracy(cm).to_json(),
        "covid19_sensitivity": per_class_metrics(cm)["covid19"]["sensitivity"].to_json(),
        "kappa_vs_truth": None if math.isnan(kappa) else kappa,
        "total_time_s": float(sum(times)) if times else None,
        "mean_time_s": statistics.fmean(times) if times else None,
        "n_timed": len(times),
        "confusion_matrix": cm.tolist(),
    }


def compare_readers(truth: Mapping[str, int], readers: Mapping[str, Reads], ai: Reads) -> dict[str, Any]:
    """Per rater (readers, then ``"AI"``): accuracy, COVID-19 sensitivity, times, kappa; McNemar vs AI.

    Raises :class:`InputError` if a rater misses cases of the truth (the message lists the first few).
    """
    cases = sorted(truth)
    t = np.array([truth[c] for c in cases])
    if AI_NAME in readers:
        raise InputError(f"reader name {AI_NAME!r} is reserved for the AI; rename that reader")
    raters = {**readers, AI_NAME: ai}
    preds: dict[str, np.ndarray] = {}
    for name, reads in raters.items():
        missing = [c for c in cases if c not in reads.labels]
        if missing:
            raise InputError(
                f"{name} has no answer for {len(missing)} of {len(cases)} cases "
                f"(e.g. {', '.join(missing[:3])}); "
                "every rater must read every case of the truth file"
            )
        extra = set(reads.labels) - set(truth)
        if extra:
            log.warning("%s: %d read(s) of cases not in the truth file ignored", name, len(extra))
        preds[name] = np.array([reads.labels[c] for c in cases])
    ai_correct = preds[AI_NAME] == t
    rows: dict[str, Any] = {}
    for name, reads in raters.items():
        times = [reads.times_s[c] for c in cases if c in reads.times_s]
        row = _row(t, preds[name], times)
        row["mcnemar_vs_ai"] = None if name == AI_NAME else mcnemar(preds[name] == t, ai_correct)
        rows[name] = row
    return {"n_cases": len(cases), "raters": rows}


def _pct(rate: Mapping[str, Any]) -> str:
    v = rate["value"]
    return "n/a" if v is None else f"{100 * v:.1f}% ({rate['numerator']}/{rate['denominator']})"


def readers_markdown(result: Mapping[str, Any]) -> str:
    """The comparison as a Markdown table (one row per rater)."""
    lines = [
        f"# Readers vs AI ({result['n_cases']} cases)",
        "",
        "| Rater | Accuracy | COVID-19 sensitivity | Mean time (s/case) | Total time (s) | Kappa vs truth "
        "| McNemar vs AI (b/c, p) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["raters"].items():
        mean = "n/a" if r["mean_time_s"] is None else f"{r['mean_time_s']:.1f}"
        total = "n/a" if r["total_time_s"] is None else f"{r['total_time_s']:.0f}"
        kappa = "n/a" if r["kappa_vs_truth"] is None else f"{r['kappa_vs_truth']:.3f}"
        m = r["mcnemar_vs_ai"]
        mc = "-" if m is None else f"{m['b']}/{m['c']}, p={m['p_value']:.3g} ({m['method']})"
        lines.append(
            f"| {name} | {_pct(r['accuracy'])} | {_pct(r['covid19_sensitivity'])} | {mean} | {total} "
            f"| {kappa} | {mc} |"
        )
    lines += [
        "",
        "b = reader right and AI wrong, c = reader wrong and AI right. Undefined values: n/a (JSON null).",
    ]
    return "\n".join(lines) + "\n"


def write_readers(
    truth_csv: str | Path, reader_csvs: Mapping[str, str | Path], ai_csv: str | Path, out_dir: str | Path
) -> dict[str, Any]:
    """Read the CSVs, compare, write ``readers.json``, ``readers.md``, ``readers.png``; return the result."""
    if not reader_csvs:
        raise InputError("no reader given: pass --reader NAME=reads.csv at least once")
    truth = read_truth(truth_csv)
    readers = {name: read_reads(path) for name, path in reader_csvs.items()}
    result = compare_readers(truth, readers, read_ai(ai_csv))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart = {
        name: {
            "accuracy": r["accuracy"]["value"],
            "covid19_sensitivity": r["covid19_sensitivity"]["value"],
            "mean_time_s": r["mean_time_s"],
        }
        for name, r in result["raters"].items()
    }
    readers_chart_png(chart, out / "readers.png")
    result["files"] = {"json": "readers.json", "summary": "readers.md", "chart": "readers.png"}
    for name, text in (
        ("readers.md", readers_markdown(result)),
        ("readers.json", json.dumps(result, indent=2, allow_nan=False) + "\n"),
    ):
        atomic_write_text(out / name, text)
    return result
