"""Diagnose a labelled cohort and score it as the paper did (Tables 2 and 3, slice level, timing)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidct.errors import CovidCTError, InputError

if TYPE_CHECKING:
    from covidct.data.records import StudyRecord
    from covidct.diagnose import Diagnoser

log = logging.getLogger(__name__)

#: Which slice strips ``evaluate_cohort`` draws.
STRIP_CHOICES = ("none", "first_per_class", "all")


def read_cohort(data: str | Path) -> list[StudyRecord]:
    """Studies of a labelled cohort: a COVID-CT-MD-layout folder (real or synthetic) or a manifest CSV."""
    from covidct.data.covidctmd import read_covidctmd
    from covidct.data.manifest import read_manifest

    path = Path(data)
    if not path.exists():
        raise InputError(f"{path} does not exist: give a COVID-CT-MD-layout folder or a manifest CSV")
    records = read_manifest(path) if path.is_file() else read_covidctmd(path)
    if not records:
        raise InputError(f"{path}: no studies found")
    return records


def evaluate_cohort(
    data_dir: str | Path,
    model_dir: str | Path | None,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    backend: str = "auto",
    diagnoser: Diagnoser | None = None,
    strips: str = "first_per_class",
    progress: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Diagnose every study of a labelled cohort and write the evaluation into ``out_dir``.

    Every slice is classified (``classify_all``) so that the Table 2 ablation can re-apply the rule without
    truncation. Writes ``studies/<case>.json`` per study, ``metrics.json``, ``summary.md``, confusion
    matrices and slice strips (see ``strips``); returns the metrics, with ``failures`` listing studies that
    could not be diagnosed (they are reported and left out, the others still count).
    The diagnoser's ``classify_all`` is restored afterwards; the ablation uses the diagnoser's rule
    parameters. A study that fails for any reason is logged and listed in ``failures``.
    """
    from covidct.diagnose import Diagnoser

    if strips not in STRIP_CHOICES:
        raise ValueError(f"strips must be one of {STRIP_CHOICES}, got {strips!r}")
    records = read_cohort(data_dir)
    if diagnoser is None:
        if model_dir is None:
            raise ValueError("give model_dir or a diagnoser")
        diagnoser = Diagnoser(model_dir, device=device, backend=backend, classify_all=True)
    saved_classify_all = diagnoser.classify_all
    if not saved_classify_all:
        log.info("classifying every slice for the ablation (classify_all)")
    diagnoser.classify_all = True
    try:
        return _evaluate(
            records,
            diagnoser,
            Path(out_dir),
            data_dir,
            strips=strips,
            progress=progress,
            n_boot=n_boot,
            seed=seed,
        )
    finally:
        diagnoser.classify_all = saved_classify_all


def _evaluate(
    records: list[StudyRecord],
    diagnoser: Diagnoser,
    out: Path,
    data_dir: str | Path,
    *,
    strips: str,
    progress: bool,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    from tqdm import tqdm

    from covidct._files import atomic_write_text
    from covidct.data.records import slice_classes
    from covidct.evaluate.report import write_evaluation
    from covidct.report.strip import slice_strip

    (out / "studies").mkdir(parents=True, exist_ok=True)
    predictions: list[tuple[str, str, Any]] = []
    slice_records: list[tuple[str, list[int], list[int]]] = []
    failures: list[dict[str, str]] = []
    drawn: set[str] = set()
    t0 = time.perf_counter()
    outcomes = diagnoser.diagnose_many([rec.path for rec in records])
    for rec, (_, result, error) in tqdm(
        zip(records, outcomes, strict=True), total=len(records), desc="diagnosing", unit="study",
        disable=not progress,
    ):  # fmt: skip
        try:
            if error is not None:
                raise error
            assert result is not None  # an outcome holds a result or an error
            truth = slice_classes(rec, result.volume.n_slices)
            doc = result.to_json()
            doc["case"], doc["truth"] = rec.case, rec.diagnosis
            atomic_write_text(out / "studies" / f"{rec.case}.json", json.dumps(doc, allow_nan=False))
            if strips == "all" or (strips == "first_per_class" and rec.diagnosis not in drawn):
                slice_strip(result, out / "strips" / f"{rec.case}_{rec.diagnosis}.png")
                drawn.add(rec.diagnosis)
        except CovidCTError as exc:
            log.warning("%s: not diagnosed: %s", rec.case, exc)
            failures.append({"case": rec.case, "error": str(exc)})
            continue
        except Exception as exc:  # one broken study must not abort hours of work
            log.error(
                "%s: not diagnosed (unexpected %s): %s", rec.case, type(exc).__name__, exc, exc_info=True
            )
            failures.append({"case": rec.case, "error": f"{type(exc).__name__}: {exc}"})
            continue
        predictions.append((rec.case, rec.diagnosis, result))
        if truth is not None:
            slice_records.append((rec.case, truth.tolist(), list(result.decision.slice_predictions)))
    total = time.perf_counter() - t0
    if not predictions:
        raise InputError(f"{data_dir}: no study could be diagnosed ({len(failures)} failed)")
    metrics = write_evaluation(
        predictions,
        out,
        slice_records=slice_records or None,
        timing={"total_s": total},
        rule={"head": diagnoser.head, "tail": diagnoser.tail, "threshold": diagnoser.threshold},
        n_boot=n_boot,
        seed=seed,
    )
    metrics["failures"] = failures
    return metrics
