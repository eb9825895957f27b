"""The end-to-end demo: synthetic cohorts -> trained models -> evaluation on another "centre".

``run_demo`` is what ``covidct demo`` and ``make demo`` run: on a fresh machine, CPU only, it generates a
training cohort and a test cohort from another scanner profile, trains the U-Net segmenter and a CPU-sized
slice classifier, evaluates the full pipeline on the test cohort (Tables 2 and 3, confusion matrices, one
slice strip per class) and, with ``real``, adds real labelled series to training and diagnoses each.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct._files import atomic_write_text
from covidct.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and time budgets of the demo, chosen to finish within 20 minutes on a 2-core CPU."""

    train_patients: int = 36
    test_patients: int = 15
    train_site: str = "siemens-scope"
    test_site: str = "ge-lightspeed"
    size: str = "small"
    classifier_arch: str = "resnet18"
    classifier_image_size: int = 128
    classifier_epochs: int = 12
    classifier_minutes: float = 6.0
    segmenter_image_size: int = 128
    segmenter_epochs: int = 8
    segmenter_minutes: float = 3.0
    max_slices_per_study: int | None = 48
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        """A few-minute variant for tests and smoke runs (numbers are not meaningful)."""
        return cls(
            train_patients=9,
            test_patients=6,
            classifier_epochs=2,
            classifier_minutes=1.0,
            segmenter_epochs=2,
            segmenter_minutes=0.7,
            classifier_image_size=64,
            segmenter_image_size=64,
            max_slices_per_study=16,
        )


def _step(name: str) -> float:
    log.info("demo: %s", name)
    return time.perf_counter()


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    real: str | Path | None = None,
    settings: DemoSettings | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns a summary (also written to ``out_dir/demo.json``).

    ``out_dir`` gets ``data/train``, ``data/test`` (the synthetic cohorts), ``model/`` (the pipeline folder
    ``covidct diagnose --model`` takes), ``evaluation/`` (metrics.json, summary.md, confusion matrices, slice
    strips) and, with ``real``, ``real/`` (one JSON and slice strip per real series).
    """
    from covidct.data.synth import generate_cohort
    from covidct.diagnose import Diagnoser, check_device
    from covidct.evaluate.cohort import evaluate_cohort, read_cohort
    from covidct.train.classifier import train_classifier
    from covidct.train.config import ClassifierConfig, SegmenterConfig
    from covidct.train.segmenter import train_segmenter

    s = settings or DemoSettings()
    out = Path(out_dir)
    check_device(device)  # before minutes of training, not after
    if real is not None and not Path(real).is_dir():
        raise ConfigError(
            f"--real {real}: not a folder; give the COVID-CT-MD root (the folder with Index.csv)"
        )
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    train_dir, test_dir = out / "data" / "train", out / "data" / "test"
    t = _step(f"generating {s.train_patients} training and {s.test_patients} test patients")
    for folder, n, site, seed in (
        (train_dir, s.train_patients, s.train_site, s.seed),
        (test_dir, s.test_patients, s.test_site, s.seed + 1000),
    ):
        generate_cohort(
            folder, patients=n, seed=seed, size=s.size, site=site, progress=progress, overwrite=True
        )
    timings["generate"] = time.perf_counter() - t

    model_dir = out / "model"
    cache = out / "cache"
    sources = [train_dir] + ([Path(real)] if real is not None else [])
    t = _step("training the U-Net lung segmenter")
    train_segmenter(
        SegmenterConfig(
            data=[train_dir],
            out_dir=model_dir / "segmenter",
            image_size=s.segmenter_image_size,
            epochs=s.segmenter_epochs,
            max_minutes=s.segmenter_minutes,
            max_slices_per_study=s.max_slices_per_study,
            seed=s.seed,
            device=device,
            cache_dir=cache,
            progress=progress,
        )
    )
    timings["train_segmenter"] = time.perf_counter() - t
    t = _step(f"training the {s.classifier_arch} slice classifier")
    train_classifier(
        ClassifierConfig(
            data=sources,
            out_dir=model_dir / "classifier",
            arch=s.classifier_arch,
            image_size=s.classifier_image_size,
            epochs=s.classifier_epochs,
            max_minutes=s.classifier_minutes,
            max_slices_per_study=s.max_slices_per_study,
            seed=s.seed,
            device=device,
            cache_dir=cache,
            progress=progress,
        )
    )
    timings["train_classifier"] = time.perf_counter() - t

    t = _step(f"evaluating on the {s.test_site} test cohort")
    diagnoser = Diagnoser(model_dir, device=device, classify_all=True)
    metrics = evaluate_cohort(test_dir, None, out / "evaluation", diagnoser=diagnoser, progress=progress)
    timings["evaluate"] = time.perf_counter() - t

    real_answers: list[dict[str, Any]] = []
    if real is not None:
        t = _step(f"diagnosing the real series in {real}")
        real_answers = _diagnose_real(diagnoser, Path(real), out / "real", read_cohort)
        timings["real"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    summary: dict[str, Any] = {
        "out_dir": str(out),
        "model_dir": str(model_dir),
        "settings": s.__dict__,
        "overall_accuracy": metrics["patient"]["overall_accuracy"],
        "ablation": metrics["ablation"],
        "real": real_answers,
        "timing_s": {k: round(v, 1) for k, v in timings.items()},
    }
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=1, allow_nan=False, default=str))
    return summary


def _diagnose_real(diagnoser: Any, root: Path, out: Path, read_cohort: Any) -> list[dict[str, Any]]:
    from covidct.errors import CovidCTError
    from covidct.report.strip import slice_strip

    out.mkdir(parents=True, exist_ok=True)
    answers: list[dict[str, Any]] = []
    for rec in read_cohort(root):
        try:
            result = diagnoser.diagnose(rec.path)
        except CovidCTError as exc:
            answers.append({"case": rec.case, "truth": rec.diagnosis, "error": str(exc)})
            continue
        doc = result.to_json()
        atomic_write_text(out / f"{rec.case}.json", json.dumps(doc, allow_nan=False))
        slice_strip(result, out / f"{rec.case}_strip.png")
        answers.append(
            {
                "case": rec.case,
                "truth": rec.diagnosis,
                "diagnosis": result.diagnosis,
                "explanation": result.decision.explain(),
                "seconds": round(result.timing_s.get("total", 0.0), 1),
            }
        )
    return answers
