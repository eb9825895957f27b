"""What diagnosing one study gives: :class:`StudyResult`, the contract between diagnosis and everything
downstream (CLI JSON, reports, the service, the DICOM node), and the per-study JSON document."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from covidct.registry import CLASS_NAMES

if TYPE_CHECKING:
    from covidct.confidence import StudyConfidence
    from covidct.decide import Decision
    from covidct.io.volume import CTVolume

__all__ = ["Outcome", "StudyResult", "lung_volumes_ml", "slice_lesion_fraction", "study_document"]


@dataclass
class StudyResult:
    """Everything known about one diagnosed study.

    ``probabilities`` is ``(n_slices, 3)`` float32, rows superior to inferior, columns normal, cap, covid19
    (slices the classifier did not look at, e.g. truncated ones when only kept slices are classified,
    are NaN).
    ``mask`` is the uint8 lung mask shaped like ``volume.hu``.
    ``lesions`` (uint8, 0 / 1 ground glass / 2 consolidation) and ``involvement`` (see
    :func:`covidct.lesions.quantify.involvement`) are set when the diagnoser has a lesion model.
    With a lesion gate (:func:`covidct.decide.gate_by_lesions`), ``probabilities`` are the gated ones the
    rule counted, ``classifier_probabilities`` the classifier's own and ``lesion_fraction`` each slice's
    lesion pixels over lung pixels. ``confidence`` is the calibrated probability of the answer and the
    referral flag (:mod:`covidct.confidence`).
    """

    input: str
    volume: CTVolume
    mask: np.ndarray
    probabilities: np.ndarray
    decision: Decision
    timing_s: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    software: dict[str, str] = field(default_factory=dict)
    lesions: np.ndarray | None = None
    involvement: dict[str, Any] | None = None
    classifier_probabilities: np.ndarray | None = None
    lesion_fraction: np.ndarray | None = None
    confidence: StudyConfidence | None = None

    @property
    def diagnosis(self) -> str:
        return self.decision.diagnosis

    @property
    def slice_predictions(self) -> list[int]:
        return list(self.decision.slice_predictions)

    def to_json(self) -> dict[str, Any]:
        """The JSON document written per study (issue #5 schema)."""
        probs = [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in self.probabilities]
        trace = self.decision.to_json()
        doc: dict[str, Any] = {
            "input": self.input,
            "diagnosis": self.decision.diagnosis,
            "classes": list(CLASS_NAMES),
            "n_slices": int(self.volume.n_slices),
            "slice_probabilities": probs,
            "slice_predictions": self.slice_predictions,
            "kept_slices": trace["kept_slices"],
            "counts": trace["counts"],
            "rule": trace,
            "lung_volume_ml": lung_volumes_ml(self.mask, self.volume),
            "timing_s": {k: round(v, 4) for k, v in self.timing_s.items()},
            "model": self.model,
            "software": self.software,
        }
        if self.confidence is not None:
            doc["confidence"] = self.confidence.to_json()
        if self.involvement is not None:
            doc["involvement"] = self.involvement
        if self.classifier_probabilities is not None and self.lesion_fraction is not None:
            doc["lesion_gate"] = {
                "min_fraction": self.decision.params.get("lesion_gate"),
                "gated_slices": self.decision.gated_slices,
                "slice_lesion_fraction": [round(float(v), 6) for v in self.lesion_fraction],
                "classifier_probabilities": [
                    [None if np.isnan(v) else round(float(v), 6) for v in row]
                    for row in self.classifier_probabilities
                ],
            }
        return doc


def study_document(result: StudyResult) -> dict[str, Any]:
    """The per-study JSON: ``result.to_json()`` plus how the input was read (``series_choice``: the series
    chosen and those left out, when the input held several; no identifiers)."""
    doc: dict[str, Any] = result.to_json()
    extra = getattr(getattr(result.volume, "meta", None), "extra", None) or {}
    if extra.get("series_choice") is not None:
        doc["series_choice"] = extra["series_choice"]
    return doc


class Outcome(NamedTuple):
    """One study of :meth:`Diagnoser.diagnose_many`: its source and either the result or the error."""

    source: str | Path | CTVolume
    result: StudyResult | None
    error: Exception | None


def slice_lesion_fraction(lesions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each slice's lesion pixels inside the lung over its lung pixels (0 for a slice without lung)."""
    lung = np.asarray(mask) > 0
    lung_px = lung.sum(axis=(1, 2))
    lesion_px = ((np.asarray(lesions) > 0) & lung).sum(axis=(1, 2))
    return np.where(lung_px > 0, lesion_px / np.maximum(lung_px, 1), 0.0)


def lung_volumes_ml(mask: np.ndarray, volume: CTVolume) -> dict[str, float]:
    """Right and left lung volumes in millilitres, rounded to 0.1 ml (``segment.quality.lung_volumes_ml``)."""
    from covidct.segment.quality import lung_volumes_ml as volumes

    return {side: round(value, 1) for side, value in volumes(mask, volume.spacing).items()}
