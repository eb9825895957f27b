"""Fit a pipeline's confidence and referral threshold on a site's own labelled studies.

Training fits them on its validation split (the classifier card's ``confidence``). A hospital that adopts a
model should refit them on its own labelled studies, diagnosed exactly as they will be in use (its
segmenter, backend, lesion gate, rule): :func:`calibrate_pipeline` diagnoses the studies, fits the slice
temperature on the kept slices that have slice labels, the patient temperature and the threshold for
``target_accuracy`` on the patients (:func:`covidct.confidence.fit_confidence`), and writes them into the
**pipeline** card's ``confidence``, which takes precedence over the classifier card's.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = ["calibrate_pipeline"]

#: Fewer labelled patients than this: the fit is refused (a threshold from a handful of cases is noise).
MIN_PATIENTS = 6


def calibrate_pipeline(
    model_dir: str | Path,
    data: str | Path | Sequence[str | Path],
    *,
    out_dir: str | Path | None = None,
    target_accuracy: float = 0.95,
    device: str = "cpu",
    min_patients: int = MIN_PATIENTS,
) -> dict[str, Any]:
    """Diagnose the labelled studies of ``data`` with the pipeline ``model_dir`` and write the fitted
    ``confidence`` into its card (into a copy at ``out_dir`` when given); returns the card entry."""
    from covidct.bundle import read_card, write_card
    from covidct.confidence import fit_confidence
    from covidct.data.records import slice_classes
    from covidct.diagnose import Diagnoser
    from covidct.evaluate.cohort import read_cohorts

    if not 0 < target_accuracy <= 1:
        raise ConfigError(f"--target-accuracy must lie in (0, 1], got {target_accuracy}")
    model_dir = Path(model_dir)
    records = read_cohorts(data)
    if len(records) < min_patients:
        raise InputError(
            f"{len(records)} labelled studies: calibration needs at least {min_patients} (more is better; a "
            "threshold chosen on a handful of patients says little)"
        )
    target = model_dir
    if out_dir is not None:
        target = Path(out_dir)
        if target.exists() and any(target.iterdir()):
            raise ConfigError(
                f"{target} exists and is not empty: choose a new folder for the calibrated copy"
            )
    dx = Diagnoser(model_dir, device=device)
    patients: list[tuple[np.ndarray, int, int, tuple[int, int]]] = []
    slice_p: list[np.ndarray] = []
    slice_y: list[np.ndarray] = []
    failed: list[str] = []
    for rec, (_, result, error) in zip(records, dx.diagnose_many([r.path for r in records]), strict=True):
        if error is not None or result is None:
            log.warning("%s: left out of the calibration: %s", rec.case, error)
            failed.append(rec.case)
            continue
        probs = np.asarray(result.probabilities, dtype=np.float64)
        kept = result.decision.kept
        patients.append((probs, rec.label, result.decision.label, kept))
        truth = slice_classes(rec, probs.shape[0])
        if truth is not None:
            rows = np.arange(*kept)
            rows = rows[np.all(np.isfinite(probs[rows]), axis=1)]
            slice_p.append(probs[rows] / probs[rows].sum(axis=1, keepdims=True))
            slice_y.append(truth[rows])
    if len(patients) < min_patients:
        raise InputError(f"only {len(patients)} studies could be diagnosed ({len(failed)} failed): too few")
    fitted = fit_confidence(
        patients,
        slice_probs=np.concatenate(slice_p) if slice_p else None,
        slice_y=np.concatenate(slice_y) if slice_y else None,
        target_accuracy=target_accuracy,
        threshold=dx.threshold,
    )
    entry = fitted.to_card() | {
        "fitted_on": f"covidct calibrate: {len(patients)} labelled studies",
        "lesion_gate": dx.lesion_gate,
        "left_out": len(failed),
    }
    if out_dir is not None:
        shutil.copytree(model_dir, target, dirs_exist_ok=True)
    card = read_card(target, kind="pipeline")
    card["confidence"] = entry
    write_card(target, card)
    log.info(
        "confidence written to %s/model.json: T_slice %.3g, T_patient %.3g, refer below %s",
        target,
        fitted.slice_temperature,
        fitted.patient_temperature,
        entry["refer_below"],
    )
    return entry
