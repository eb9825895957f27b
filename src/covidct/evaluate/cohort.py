"""Diagnose a labelled cohort and score it as the paper did (Tables 2 and 3, slice level, timing).

Real CT and synthetic studies (:func:`covidct.evaluate.origin.is_synthetic`) are also scored apart: patient
accuracy and the slice AUC of infected vs not infected per origin, and, when both are present, the
synthetic-vs-real shortcut probe (:mod:`covidct.evaluate.probe`) on the classifier's features of up to
``probe_slices`` lung slices of each origin.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct.errors import ConfigError, CovidCTError, InputError

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


def read_cohorts(sources: str | Path | Sequence[str | Path]) -> list[StudyRecord]:
    """Studies of one or several labelled cohorts (see :func:`read_cohort`), with unique case names.

    A case name that two sources share (a synthetic cohort names its patients P001, cap001, normal001 like
    the real series) is prefixed with its source's folder or file name (``<source>-<case>``) in every source.
    """
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(p) for p in sources]
    if not paths:
        raise InputError("no data given: pass a COVID-CT-MD-layout folder or a manifest CSV")
    per_source = [(p, read_cohort(p)) for p in paths]
    seen: dict[str, int] = {}
    for _, recs in per_source:
        for rec in recs:
            seen[rec.case] = seen.get(rec.case, 0) + 1
    records: list[StudyRecord] = []
    taken: set[str] = set()
    for path, recs in per_source:
        for rec in recs:
            if seen[rec.case] > 1:
                stem = f"{path.name.split('.')[0] or 'data'}-{rec.case}"
                name, k = stem, 2
                while name in taken or name in seen:
                    name, k = f"{stem}-{k}", k + 1
                rec.extra.setdefault("source_case", rec.case)
                rec.case = name
            taken.add(rec.case)
            records.append(rec)
    return records


def evaluate_cohort(
    data_dir: str | Path | Sequence[str | Path],
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
    probe_slices: int = 400,
) -> dict[str, Any]:
    """Diagnose every study of a labelled cohort and write the evaluation into ``out_dir``.

    ``data_dir``: one cohort or several (e.g. real series and a synthetic cohort together; see
    :func:`read_cohorts`). Real CT and synthetic studies get their own figures (``real`` / ``synthetic`` in
    the metrics); with both present, the synthetic-vs-real probe runs on at most ``probe_slices`` lung slices
    of each (``0``: no probe).

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
    if probe_slices < 0:
        raise ConfigError(f"probe_slices must be >= 0 (0: no probe), got {probe_slices}")
    records = read_cohorts(data_dir)
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
            probe_slices=probe_slices,
        )
    finally:
        diagnoser.classify_all = saved_classify_all


def _evaluate(
    records: list[StudyRecord],
    diagnoser: Diagnoser,
    out: Path,
    data_dir: str | Path | Sequence[str | Path],
    *,
    strips: str,
    progress: bool,
    n_boot: int,
    seed: int,
    probe_slices: int,
) -> dict[str, Any]:
    from tqdm import tqdm

    from covidct._files import atomic_write_text
    from covidct.data.records import slice_classes
    from covidct.evaluate.origin import (
        clean_slice_shift,
        origin_summary,
        study_slices,
        synthetic_kind,
        synthetic_label,
    )
    from covidct.evaluate.referral import ScoredStudy, calibration_section
    from covidct.evaluate.report import write_evaluation
    from covidct.report.strip import slice_strip

    (out / "studies").mkdir(parents=True, exist_ok=True)
    predictions: list[tuple[str, str, Any]] = []
    scored: list[ScoredStudy] = []
    slice_records: list[tuple[str, list[int], list[int]]] = []
    failures: list[dict[str, str]] = []
    drawn: set[str] = set()
    kinds = {rec.case: synthetic_kind(rec) for rec in records}
    origins = {case: "real" if kind is None else "synthetic" for case, kind in kinds.items()}
    by_origin: dict[str, list[Any]] = {"real": [], "synthetic": []}
    n_of = {o: sum(v == o for v in origins.values()) for o in by_origin}
    probing = probe_slices > 0 and min(n_of.values()) > 0
    features: dict[str, list[tuple[str, np.ndarray]]] = {"real": [], "synthetic": []}
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
            doc["case"], doc["truth"], doc["origin"] = rec.case, rec.diagnosis, origins[rec.case]
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
        scored.append(
            ScoredStudy(
                np.asarray(result.probabilities),
                truth,
                result.decision.kept,
                rec.label,
                result.decision.label,
                result.confidence,
            )
        )
        origin = origins[rec.case]
        by_origin[origin].append(study_slices(rec, result.probabilities, result.diagnosis))
        if probing:
            try:
                quota = math.ceil(probe_slices / n_of[origin])
                features[origin].append((rec.case, _probe_features(diagnoser, result, quota)))
            except Exception as exc:  # the probe is a check beside the evaluation: never abort it
                log.warning("synthetic-vs-real probe left out: %s: %s", type(exc).__name__, exc)
                probing = False
        if truth is not None:
            slice_records.append((rec.case, truth.tolist(), list(result.decision.slice_predictions)))
    total = time.perf_counter() - t0
    if not predictions:
        raise InputError(f"{data_dir}: no study could be diagnosed ({len(failures)} failed)")
    diagnosed = {case for case, _, _ in predictions}
    labels = {
        "real": None,
        "synthetic": synthetic_label(k for c, k in kinds.items() if k is not None and c in diagnosed),
    }
    sections = {
        o: origin_summary(studies, origin=o, n_boot=n_boot, seed=seed, label=labels[o]) if studies else None
        for o, studies in by_origin.items()
    }
    probe = _run_probe(features, max_per_group=probe_slices, seed=seed) if probing else None
    shift = clean_slice_shift(by_origin["real"], by_origin["synthetic"])
    metrics = write_evaluation(
        predictions,
        out,
        slice_records=slice_records or None,
        timing={"total_s": total},
        rule={"head": diagnoser.head, "tail": diagnoser.tail, "threshold": diagnoser.threshold},
        n_boot=n_boot,
        seed=seed,
        origins={c: o for c, o in origins.items() if c in diagnosed},
        real=sections["real"],
        synthetic=sections["synthetic"],
        probe=probe,
        clean_shift=shift,
        calibration=calibration_section(
            scored, diagnoser.confidence_model, out, threshold=diagnoser.threshold
        ),
    )
    metrics["failures"] = failures
    return metrics


def probe_indices(mask: np.ndarray, kept: range, quota: int) -> np.ndarray:
    """Up to ``quota`` evenly spaced slices of ``kept`` that hold lung (all of them when fewer)."""
    m = np.asarray(mask)
    lung = np.asarray(m.reshape(m.shape[0], -1).any(axis=1), dtype=bool)
    candidates = np.array([i for i in kept if lung[i]], dtype=np.int64)
    if candidates.size <= quota:
        return candidates
    return np.unique(candidates[np.round(np.linspace(0, candidates.size - 1, quota)).astype(np.int64)])


def _probe_features(diagnoser: Diagnoser, result: Any, quota: int) -> np.ndarray:
    """Penultimate features of up to ``quota`` lung slices the rule keeps, from the classifier inputs the
    diagnosis used (the pipeline classifier's ``preprocess`` on the result's volume and mask)."""
    from covidct.decide import kept_range
    from covidct.evaluate.probe import extract_features

    classifier = diagnoser.pipeline.classifier
    start, stop = kept_range(result.volume.n_slices, head=diagnoser.head, tail=diagnoser.tail)
    idx = probe_indices(result.mask, range(start, stop), quota)
    if idx.size == 0:
        return np.zeros((0, 0), np.float32)
    return extract_features(classifier, classifier.preprocess(result.volume, result.mask, idx))


def _run_probe(
    features: dict[str, list[tuple[str, np.ndarray]]], *, max_per_group: int, seed: int
) -> dict[str, Any] | None:
    """The probe's JSON, or ``None`` (logged) when a group has too few slices. Folds keep studies whole
    when each origin has at least five studies."""
    from covidct.evaluate.probe import probe_features

    def stack(parts: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, list[str]]:
        parts = [(case, f) for case, f in parts if f.size]
        if not parts:
            return np.zeros((0, 0), np.float32), []
        return np.concatenate([f for _, f in parts], axis=0), [case for case, f in parts for _ in f]

    (real, real_ids), (synthetic, synthetic_ids) = stack(features["real"]), stack(features["synthetic"])
    try:
        result = probe_features(
            real,
            synthetic,
            max_per_group=max_per_group,
            seed=seed,
            real_studies=real_ids,
            synthetic_studies=synthetic_ids,
        )
    except ConfigError as exc:
        log.warning("%s", exc)
        return None
    log.info("%s", result.line())
    return result.to_json()
