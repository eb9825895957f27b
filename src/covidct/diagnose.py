"""Diagnosis of whole studies: volume -> lung mask -> slice probabilities -> patient decision.

``StudyResult`` is the contract between diagnosis and everything downstream (CLI JSON, reports, the service).
The ``Diagnoser`` (load the bundles once, diagnose many studies) lives here too.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct.errors import ConfigError, NotChestCTError
from covidct.registry import CLASS_NAMES

if TYPE_CHECKING:
    from covidct.decide import Decision
    from covidct.io.volume import CTVolume

log = logging.getLogger(__name__)


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
    """Right and left lung volumes in millilitres, rounded to 0.1 ml (``segment.quality.lung_volumes_ml``)."""
    from covidct.segment.quality import lung_volumes_ml as volumes

    return {side: round(value, 1) for side, value in volumes(mask, volume.spacing).items()}


def check_device(device: str) -> str:
    """``device`` if torch can use it here (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...), else ConfigError."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device!r}: covidct runs on cpu or cuda only")
    return device


#: Backends that need calibration slices (int8 quantisation, or the agreement check of auto-reduced).
CALIBRATED_BACKENDS: tuple[str, ...] = ("onnx-int8", "openvino-int8", "auto-reduced")
#: At most this many of a study's kept slices (evenly spaced) calibrate a backend lazily.
LAZY_CALIBRATION_SLICES: int = 64


class Diagnoser:
    """Segment, classify and decide for many studies with models loaded once.

    >>> diagnoser = Diagnoser("runs/demo/model")          # doctest: +SKIP
    >>> result = diagnoser.diagnose("path/to/dicom_dir")  # doctest: +SKIP
    >>> result.diagnosis                                  # doctest: +SKIP
    'covid19'

    Only the slices the patient rule keeps are classified unless ``classify_all`` is set (the truncated
    slices never count, so classifying them would only cost time); their probability rows are NaN.

    ``backend`` is a name :func:`covidct.classify.backends.make_runner` accepts. The int8 backends and
    ``"auto-reduced"`` need calibration slices: the classifier bundle's ``calibration.npy`` when it has one;
    otherwise the reduced runner is built on the first diagnosed study from up to
    :data:`LAZY_CALIBRATION_SLICES` of its preprocessed kept slices (logged; the float32 PyTorch runner is not
    used for any study). Safe to share between threads.
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
        from covidct.classify.backends import BACKENDS, unavailable_reason

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if backend not in ("auto", "auto-reduced", *BACKENDS):
            raise ConfigError(
                f"unknown backend {backend!r}: use one of auto, auto-reduced, {', '.join(BACKENDS)}"
            )
        self.device = check_device(device)
        if backend not in ("auto", "auto-reduced"):
            reason = unavailable_reason(backend, device)
            if reason is not None:
                raise ConfigError(f"backend {backend!r} cannot run here: {reason}")
        self.model_dir = Path(model_dir)
        self.batch_size = batch_size
        self.classify_all = classify_all
        self.workers = workers
        self.pipeline = load_pipeline(self.model_dir, device=device)
        rule = self.pipeline.rule
        self.head = rule["head"]
        self.tail = rule["tail"]
        self.threshold = rule["threshold"]
        self._software = software_versions()
        self._lock = threading.Lock()
        self._pending: str | None = None
        self.backend = self._install_backend(backend)

    def _install_backend(self, backend: str) -> str:
        """Swap the classifier's runner for the requested backend (or defer it until calibration exists)."""
        classifier = self.pipeline.classifier
        if backend == "torch":
            return "torch"
        if backend in CALIBRATED_BACKENDS and classifier.calibration is None:
            self._pending = backend
            log.info(
                "backend %s: the classifier bundle has no calibration.npy; calibrating on the first "
                "study's kept slices",
                backend,
            )
            return backend
        runner = classifier.make_runner(backend, cache_dir=self._cache_dir())
        classifier.runner = runner
        return str(getattr(runner, "name", backend))

    def _calibrate_lazily(self, volume: CTVolume, mask: np.ndarray, kept: range) -> None:
        """Build the pending reduced-precision runner from this study's preprocessed kept slices."""
        with self._lock:
            backend = self._pending
            if backend is None:
                return
            classifier = self.pipeline.classifier
            n = min(len(kept), LAZY_CALIBRATION_SLICES)
            picks = np.unique(np.linspace(kept.start, kept.stop - 1, n).round().astype(np.int64))
            calib = classifier.preprocess(volume, mask, picks)
            log.info(
                "backend %s: calibrating on %d preprocessed kept slices of this study", backend, len(calib)
            )
            runner = classifier.make_runner(backend, calibration=calib, cache_dir=self._cache_dir())
            classifier.runner = runner
            self.backend = str(getattr(runner, "name", backend))
            self._pending = None

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
        if self._pending is not None:
            self._calibrate_lazily(volume, mask, range(start, stop))
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
