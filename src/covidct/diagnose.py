"""Diagnosis of whole studies: volume -> lung mask -> slice probabilities -> patient decision.

The ``Diagnoser`` loads the bundles once and diagnoses many studies; what it gives is a
:class:`~covidct.result.StudyResult` (``covidct.result``), and which pipeline it loads by default is
``covidct.model_dirs``' business. Both are re-exported here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct.confidence import confidence_model_of, study_confidence
from covidct.errors import ConfigError, NotChestCTError
from covidct.model_dirs import (
    MATCHING_MASKS,
    mask_mismatch,
    resolve_model_dir,
    shipped_model_dir,
    shipped_models_root,
)
from covidct.result import Outcome, StudyResult, lung_volumes_ml, slice_lesion_fraction, study_document

if TYPE_CHECKING:
    from covidct.io.volume import CTVolume

__all__ = [
    "MATCHING_MASKS",
    "Diagnoser",
    "Outcome",
    "StudyResult",
    "check_device",
    "default_batch_size",
    "lung_volumes_ml",
    "mask_mismatch",
    "resolve_model_dir",
    "shipped_model_dir",
    "shipped_models_root",
    "slice_lesion_fraction",
    "study_document",
]

log = logging.getLogger(__name__)


def check_device(device: str) -> str:
    """``device`` if torch can use it here, else ConfigError (see :func:`covidct._device.check_device`)."""
    from covidct._device import check_device as check

    return check(device)


#: Slices per classifier batch when none is given: one CUDA batch holds a whole study's kept slices.
DEFAULT_BATCH_SIZE: dict[str, int] = {"cpu": 16, "cuda": 128}


def default_batch_size(device: str) -> int:
    """The classifier batch size used on ``device`` when none is given (:data:`DEFAULT_BATCH_SIZE`)."""
    return DEFAULT_BATCH_SIZE["cuda" if device.startswith("cuda") else "cpu"]


#: ``Diagnoser.backend`` (and ``model.backend`` in results) of the torch-free path.
TORCH_FREE: str = "onnxruntime (torch-free)"
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
        batch_size: int | None = None,
        classify_all: bool = False,
        workers: int | None = None,
        lesion_model: str | Path | None = None,
        lesion_gate: float | None = None,
    ) -> None:
        from covidct.bundle import check_lesion_gate, software_versions
        from covidct.classify.backend_names import BACKENDS, unavailable_reason

        if batch_size is None:
            batch_size = default_batch_size(device)
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
        self.pipeline = self._load_pipeline(backend)
        mismatch = mask_mismatch(self.pipeline.card)
        if mismatch:
            log.warning("%s: %s", self.model_dir, mismatch)
        self.confidence_model = confidence_model_of(
            self.pipeline.card, self.pipeline.classifier.card, where=str(self.model_dir)
        )
        rule = self.pipeline.rule
        self.head = rule["head"]
        self.tail = rule["tail"]
        self.threshold = rule["threshold"]
        self._software = software_versions()
        self._lock = threading.Lock()
        self._pending: str | None = None
        self._checker = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidct-check")
            if self.device.startswith("cuda")
            else None
        )
        self.backend = TORCH_FREE if self.torch_free else self._install_backend(backend)
        self.lesion_segmenter = self._load_lesions(lesion_model)
        self.lesion_gate = (
            self.pipeline.lesion_gate
            if lesion_gate is None
            else check_lesion_gate(lesion_gate, where="lesion gate", error=ConfigError)
        )
        if self.lesion_gate > 0 and self.lesion_segmenter is None:
            raise ConfigError(
                f"the lesion gate ({self.lesion_gate:g} of the lung) needs a lesion model: give one "
                "(--lesions) or turn the gate off (--lesion-gate 0)"
            )

    def _load_pipeline(self, backend: str) -> Any:
        """Both networks on ONNX Runtime without torch (CPU, ``backend="auto"``, the bundle's exports present
        and current; written once here when the model folder is writable), else the PyTorch pipeline."""
        from covidct.infer.onnx import ExportMismatch, light_pipeline_reason, onnxruntime_available
        from covidct.pipeline import load_pipeline

        self.torch_free = False
        if self.device != "cpu" or backend != "auto" or not onnxruntime_available():
            return load_pipeline(self.model_dir, device=self.device)
        writable = os.access(self.model_dir, os.W_OK)
        altered = False
        for attempt in range(2):
            reason = light_pipeline_reason(self.model_dir)
            if reason is None:
                try:
                    pipeline = load_pipeline(self.model_dir, onnx=True)
                except ExportMismatch as exc:  # an export file altered or damaged: redo it when we may
                    reason, altered = str(exc), True
                else:
                    self.torch_free = True
                    return pipeline
            if attempt or not writable:
                break
            from covidct.infer.export import export_pipeline

            log.info("%s; exporting the networks to ONNX once (later runs need no torch)", reason)
            export_pipeline(self.model_dir, force=altered)
        log.info("PyTorch inference: %s (`covidct export-onnx MODEL` makes diagnosis torch-free)", reason)
        return load_pipeline(self.model_dir, device=self.device)

    def _load_lesions(self, lesion_model: str | Path | None) -> Any:
        """The lesion segmenter: ``lesion_model`` (a bundle, ``"classical"``), else the pipeline's own
        ``lesions/`` bundle when it has one, else none (no ``involvement`` in the results)."""
        from covidct.registry import LESION_FOLDER

        if lesion_model is None and not (self.model_dir / LESION_FOLDER / "model.json").is_file():
            return None
        from covidct.lesions.api import load_lesion_segmenter

        chosen = lesion_model if lesion_model is not None else self.model_dir / LESION_FOLDER
        # the pipeline's own lesion model joins the torch-free path (exported once into the model folder, like the
        # other networks); a lesion bundle given apart (e.g. the shipped one) is never written to: it runs on ONNX
        # Runtime once `covidct export-onnx` has exported it
        if self.torch_free and lesion_model is None:
            from covidct.bundle import read_card
            from covidct.infer.onnx import sidecar_for

            ldir = self.model_dir / LESION_FOLDER
            if sidecar_for(ldir, read_card(ldir, verify=False)) is None and os.access(ldir, os.W_OK):
                from covidct.infer.export import export_pipeline

                log.info("%s: exporting the lesion model to ONNX once", ldir)
                export_pipeline(ldir)
        return load_lesion_segmenter(chosen, device=self.device)

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
        volume, name, t_load = self._load(source, progress=progress)
        return self._diagnose_volume(volume, name, t_load)

    def diagnose_many(
        self, sources: Iterable[str | Path | CTVolume], *, prefetch: int = 1
    ) -> Iterator[Outcome]:
        """Diagnose many studies, reading the next ``prefetch`` studies while the current one is computed.

        Yields one :class:`Outcome` per source, in input order; a study that fails (bad input, not a chest
        CT, any error) yields its exception in ``Outcome.error`` and the rest go on. Reading (header parsing
        and decoding, in worker processes) overlaps segmentation and classification, which pays most on a
        GPU; ``prefetch=0`` reads each study only when its turn comes. Results equal :meth:`diagnose`'s.
        A study's ``timing_s["load"]`` is its own reading time, partly hidden behind the previous study.
        """
        if prefetch < 0:
            raise ConfigError(f"prefetch must be >= 0, got {prefetch}")
        items = iter(sources)
        pending: deque[tuple[str | Path | CTVolume, Future[tuple[CTVolume, str, float]]]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidct-read") as pool:

            def submit_next() -> None:
                for source in items:
                    pending.append((source, pool.submit(self._load, source)))
                    return

            for _ in range(prefetch + 1):
                submit_next()
            while pending:
                source, future = pending.popleft()
                submit_next()
                try:
                    volume, name, t_load = future.result()
                    result = self._diagnose_volume(volume, name, t_load)
                except Exception as exc:  # reported per study; the caller decides what is fatal
                    yield Outcome(source, None, exc)
                    continue
                yield Outcome(source, result, None)

    def _load(self, source: str | Path | CTVolume, *, progress: bool = False) -> tuple[CTVolume, str, float]:
        """The study's volume, its display name and the seconds spent reading it."""
        from covidct.io import load_study
        from covidct.io.volume import CTVolume

        t = time.perf_counter()
        if isinstance(source, CTVolume):
            return source, "<volume>", 0.0
        volume = load_study(source, workers=self.workers, progress=progress)
        return volume, str(source), time.perf_counter() - t

    def _diagnose_volume(self, volume: CTVolume, name: str, t_load: float) -> StudyResult:
        """Check, segment, classify and decide one loaded study."""
        from covidct.decide import decide, kept_range
        from covidct.io import check_chest_ct
        from covidct.io.checks import ChestCheck

        timing: dict[str, float] = {"load": t_load}
        t_start = time.perf_counter()

        def timed_check() -> tuple[ChestCheck, float]:
            t = time.perf_counter()
            return check_chest_ct(volume), time.perf_counter() - t

        check_future: Future[tuple[ChestCheck, float]]

        def require_chest() -> None:
            check, timing["check"] = check_future.result()
            if not check.is_chest_ct:
                raise NotChestCTError(
                    f"{name}: {check.reason}; covidct needs a chest CT that shows the lungs"
                )

        # On a GPU the CPU would idle while the networks run: the chest check runs beside them, and its
        # verdict is awaited before any answer is given. On a CPU it runs first.
        if self._checker is not None:
            check_future = self._checker.submit(timed_check)
        else:
            check_future = Future()
            check_future.set_result(timed_check())
            require_chest()
        t = time.perf_counter()
        mask = self.pipeline.segmenter.apply(volume)
        timing["segment"] = time.perf_counter() - t
        if not np.any(mask):
            require_chest()
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
        require_chest()

        lesions, involvement = None, None
        if self.lesion_segmenter is not None:
            from covidct.lesions.api import lesions_of_volume

            t = time.perf_counter()
            lesions, involvement = lesions_of_volume(self.lesion_segmenter, volume, mask)
            timing["lesions"] = time.perf_counter() - t
        t = time.perf_counter()
        raw, fraction, gate = None, None, 0.0
        if self.lesion_gate > 0 and lesions is not None:  # the constructor makes sure lesions are segmented
            raw, fraction, gate = (
                np.asarray(probs, np.float32),
                slice_lesion_fraction(lesions, mask),
                self.lesion_gate,
            )
        decision = decide(
            probs,
            head=self.head,
            tail=self.tail,
            threshold=self.threshold,
            lesion_fraction=fraction,
            lesion_gate=gate,
        )
        if fraction is not None:  # the probabilities the rule counted
            from covidct.decide import gate_by_lesions

            probs = gate_by_lesions(probs, fraction, min_fraction=gate)
        confidence = study_confidence(
            probs, decision.label, kept=decision.kept, model=self.confidence_model, threshold=self.threshold
        )
        timing["decide"] = time.perf_counter() - t
        timing["total"] = t_load + time.perf_counter() - t_start
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
            lesions=lesions,
            involvement=involvement,
            classifier_probabilities=raw,
            lesion_fraction=fraction,
            confidence=confidence,
        )
