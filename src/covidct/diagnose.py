"""Diagnosis of whole studies: volume -> lung mask -> slice probabilities -> patient decision.

``StudyResult`` is the contract between diagnosis and everything downstream (CLI JSON, reports, the service).
The ``Diagnoser`` (load the bundles once, diagnose many studies) lives here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct.registry import CLASS_NAMES

if TYPE_CHECKING:
    from covidct.decide import Decision
    from covidct.io.volume import CTVolume


@dataclass
class StudyResult:
    """Everything known about one diagnosed study.

    ``probabilities`` is ``(n_slices, 3)`` float32, rows superior to inferior, columns normal, cap, covid19
    (slices the classifier did not look at, e.g. truncated ones when only kept slices are classified, are NaN).
    ``mask`` is the uint8 lung mask shaped like ``volume.hu``.
    """

    input: str
    volume: CTVolume
    mask: np.ndarray
    probabilities: np.ndarray
    decision: Decision
    timing_s: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    software: dict[str, str] = field(default_factory=dict)

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
        return {
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


def lung_volumes_ml(mask: np.ndarray, volume: CTVolume) -> dict[str, float]:
    """Right and left lung volumes in millilitres."""
    counts = np.bincount(mask.reshape(-1), minlength=3)
    return {
        "right": round(float(counts[1]) * volume.voxel_volume_ml, 1),
        "left": round(float(counts[2]) * volume.voxel_volume_ml, 1),
    }
