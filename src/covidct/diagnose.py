"""Diagnosis of whole studies: volume -> lung mask -> slice probabilities -> patient decision.

``StudyResult`` is the contract between diagnosis and everything downstream (CLI JSON, reports, the service).
The ``Diagnoser`` (load the bundles once, diagnose many studies) lives here too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct.errors import ConfigError, NotChestCTError
from covidct.registry import ABNORMAL_FRACTION_THRESHOLD, CLASS_NAMES, TRUNCATE_HEAD, TRUNCATE_TAIL

if TYPE_CHECKING:
    from covidct.decide import Decision
    from covidct.io.volume import CTVolume


@dataclass
class StudyResult:
    """Everything known about one diagnosed study.

    ``probabilities`` is ``(n_slices, 3)`` float32, rows superior to inferior, columns normal, cap, covid19
    (slices the classifier did not look at, e.g. truncated ones when only kept slices are classified,
    are NaN).
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


class Diagnoser:
    """Segment, classify and decide for many studies with models loaded once.

    >>> diagnoser = Diagnoser("runs/demo/model")          # doctest: +SKIP
    >>> result = diagnoser.diagnose("path/to/dicom_dir")  # doctest: +SKIP
    >>> result.diagnosis                                  # doctest: +SKIP
    'covid19'

    Only the slices the patient rule keeps are classified unless ``classify_all`` is set (the truncated
    slices never count, so classifying them would only cost time); their probability rows are NaN.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        backend: str = "auto",
        batch_size: int = 16,
        classify_all: bool = False,
        workers: int | None = None,
    ) -> None:
        from covidct.bundle import load_pipeline, software_versions

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = Path(model_dir)
        self.device = device
        self.batch_size = batch_size
        self.classify_all = classify_all
        self.workers = workers
        self.pipeline = load_pipeline(self.model_dir, device=device)
        self.backend = self._install_backend(backend)
        rule = self.pipeline.rule
        self.head = float(rule.get("head", TRUNCATE_HEAD))
        self.tail = float(rule.get("tail", TRUNCATE_TAIL))
        self.threshold = float(rule.get("threshold", ABNORMAL_FRACTION_THRESHOLD))
        self._software = software_versions()

    def _install_backend(self, backend: str) -> str:
        """Swap the classifier's runner for a faster backend where one is available."""
        classifier = self.pipeline.classifier
        if backend == "torch":
            return "torch"
        try:
            from covidct.classify.backends import make_runner
        except ImportError:
            if backend != "auto":
                raise ConfigError(f"backend {backend!r} is not available in this installation") from None
            return "torch"
        runner = make_runner(
            classifier.network,
            backend=backend,
            image_size=classifier.image_size,
            device=self.device,
            cache_dir=self._cache_dir(),
        )
        classifier.runner = runner
        return str(getattr(runner, "name", backend))

    def _cache_dir(self) -> Path:
        """Exported/quantised models go beside the weights, or to the user cache if that is read-only."""
        import os

        from covidct.classify.backends import default_cache_dir

        local = self.model_dir / ".cache"
        if os.access(local if local.exists() else self.model_dir, os.W_OK):
            return local
        return default_cache_dir()

    @property
    def model_card(self) -> dict[str, Any]:
        return dict(self.pipeline.card)

    def diagnose(self, source: str | Path | CTVolume, *, progress: bool = False) -> StudyResult:
        """Diagnose one study (a path any ingestion format accepts, or a loaded volume)."""
        from covidct.decide import decide, kept_range
        from covidct.io import check_chest_ct, load_study
        from covidct.io.volume import CTVolume

        timing: dict[str, float] = {}
        t_start = time.perf_counter()
        if isinstance(source, CTVolume):
            volume, name = source, "<volume>"
        else:
            name = str(source)
            volume = load_study(source, workers=self.workers, progress=progress)
        timing["load"] = time.perf_counter() - t_start

        t = time.perf_counter()
        check = check_chest_ct(volume)
        if not check.is_chest_ct:
            raise NotChestCTError(f"{name}: {check.reason}; covidct needs a chest CT that shows the lungs")
        mask = self.pipeline.segmenter.apply(volume)
        timing["segment"] = time.perf_counter() - t
        if not np.any(mask):
            raise NotChestCTError(f"{name}: no lung was found by the segmenter; is this a chest CT?")

        t = time.perf_counter()
        n = volume.n_slices
        start, stop = kept_range(n, head=self.head, tail=self.tail)
        indices = None if self.classify_all else list(range(start, stop))
        probs = self.pipeline.classifier.predict_volume(
            volume, mask, indices=indices, batch_size=self.batch_size
        )
        timing["classify"] = time.perf_counter() - t

        t = time.perf_counter()
        decision = decide(probs, head=self.head, tail=self.tail, threshold=self.threshold)
        timing["decide"] = time.perf_counter() - t
        timing["total"] = time.perf_counter() - t_start
        model: dict[str, Any] = dict(self.pipeline.identity.to_json())
        model["backend"] = self.backend
        return StudyResult(
            input=name,
            volume=volume,
            mask=mask,
            probabilities=np.asarray(probs, dtype=np.float32),
            decision=decision,
            timing_s=timing,
            model=model,
            software=self._software,
        )
