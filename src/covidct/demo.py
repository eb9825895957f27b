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

import numpy as np

from covidct._files import atomic_write_text
from covidct.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and training budgets of the demo.

    The budgets are work, not time: ``*_epochs`` epochs of ``*_steps_per_epoch`` steps, so one ``seed``
    gives one model however busy the machine is. They were chosen so that a 2-core CPU spends about as long
    as the earlier wall-time budgets allowed (6 minutes for the classifier, where a quiet run managed
    about 5 epochs of ~90 steps, and 3 for the segmenter). ``classifier_minutes`` / ``segmenter_minutes``
    (default ``None``) add a wall-time cap, which makes the result depend on the machine's speed.

    Seeds: the training cohort is generated with ``seed``, the test cohort with ``seed + 1000``; the patient
    split and the training of both networks use ``seed``.
    """

    train_patients: int = 36
    test_patients: int = 15
    train_site: str = "siemens-scope"
    test_site: str = "ge-lightspeed"
    size: str = "small"
    classifier_arch: str = "resnet18"
    classifier_image_size: int = 128
    classifier_epochs: int = 6
    classifier_steps_per_epoch: int = 64
    classifier_batch_size: int = 16
    classifier_minutes: float | None = None
    segmenter_image_size: int = 128
    segmenter_epochs: int = 3
    segmenter_steps_per_epoch: int = 80
    segmenter_batch_size: int = 8
    segmenter_minutes: float | None = None
    max_slices_per_study: int | None = 48
    classifier_supervision: str = "auto"
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        """A few-minute variant for tests and smoke runs (numbers are not meaningful)."""
        return cls(
            train_patients=9,
            test_patients=6,
            classifier_epochs=2,
            classifier_steps_per_epoch=6,
            segmenter_epochs=2,
            segmenter_steps_per_epoch=12,
            classifier_image_size=64,
            segmenter_image_size=64,
            max_slices_per_study=16,
        )

    def seeds(self) -> dict[str, int]:
        """Every seed the demo uses, by what it draws."""
        return {
            "train_data": self.seed,
            "test_data": self.seed + 1000,
            "split": self.seed,
            "training": self.seed,
        }

    def budgets(self) -> dict[str, dict[str, Any]]:
        """The training work of both networks (epochs at most; early stopping may end the classifier sooner)."""
        return {
            "segmenter": {
                "epochs": self.segmenter_epochs,
                "steps_per_epoch": self.segmenter_steps_per_epoch,
                "batch_size": self.segmenter_batch_size,
                "max_minutes": self.segmenter_minutes,
            },
            "classifier": {
                "epochs": self.classifier_epochs,
                "steps_per_epoch": self.classifier_steps_per_epoch,
                "batch_size": self.classifier_batch_size,
                "max_minutes": self.classifier_minutes,
            },
        }

    def check(self) -> None:
        """Refuse settings that cannot give every class a validation patient (ConfigError), before any work."""
        from covidct.data.synth.cohort import class_counts

        counts = class_counts(self.train_patients, None)
        small = {c: n for c, n in counts.items() if n < 2}
        if small:
            raise ConfigError(
                f"{self.train_patients} training patients give {counts}: every class needs at least 2 "
                "(one for training, one for validation); use more training patients"
            )


def _step(name: str) -> float:
    log.info("demo: %s", name)
    return time.perf_counter()


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    real: str | Path | None = None,
    show_real: str | Path | None = "auto",
    settings: DemoSettings | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns a summary (also written to ``out_dir/demo.json``).

    ``out_dir`` gets ``data/train``, ``data/test`` (the synthetic cohorts), ``model/`` (the pipeline folder
    ``covidct diagnose --model`` takes), ``evaluation/`` (metrics.json, summary.md, confusion matrices, slice
    strips) and ``real/`` (one JSON and slice strip per real series and model).

    The demo ends on real CT: the labelled real series of ``show_real`` (``"auto"``: ``$COVIDCT_REAL_DATA``,
    else ``../shared/data/covid-ct-md`` beside a source checkout, when present; ``None``: none) are diagnosed
    with the model just trained and with the pretrained pipeline (``models/``), each with its slice AUC
    (infected vs not, against the slice labels). ``real`` also adds those series to training (then they are
    no longer unseen by the demo model, and the summary says so).
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
    s.check()
    if real is not None and not Path(real).is_dir():
        raise ConfigError(
            f"--real {real}: not a folder; give the COVID-CT-MD root (the folder with Index.csv)"
        )
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    seeds, budgets = s.seeds(), s.budgets()
    log.info(
        "demo: seeds %s; segmenter %d epochs x %d steps, classifier %d epochs x %d steps",
        ", ".join(f"{k} {v}" for k, v in seeds.items()),
        s.segmenter_epochs,
        s.segmenter_steps_per_epoch,
        s.classifier_epochs,
        s.classifier_steps_per_epoch,
    )

    train_dir, test_dir = out / "data" / "train", out / "data" / "test"
    t = _step(f"generating {s.train_patients} training and {s.test_patients} test patients")
    cohorts = (
        (train_dir, s.train_patients, s.train_site, seeds["train_data"]),
        (test_dir, s.test_patients, s.test_site, seeds["test_data"]),
    )
    for folder, n, site, seed in cohorts:
        generate_cohort(
            folder, patients=n, seed=seed, size=s.size, site=site, progress=progress, overwrite=True
        )
    timings["generate"] = time.perf_counter() - t

    model_dir = out / "model"
    cache = out / "cache"
    sources = [train_dir] + ([Path(real)] if real is not None else [])
    provenance = {
        "generator": "covidct.data.synth.generate_cohort",
        "patients": s.train_patients,
        "site": s.train_site,
        "size": s.size,
        "seed": seeds["train_data"],
    }
    t = _step("training the U-Net lung segmenter")
    train_segmenter(
        SegmenterConfig(
            data=[train_dir],
            out_dir=model_dir / "segmenter",
            image_size=s.segmenter_image_size,
            epochs=s.segmenter_epochs,
            steps_per_epoch=s.segmenter_steps_per_epoch,
            batch_size=s.segmenter_batch_size,
            max_minutes=s.segmenter_minutes,
            max_slices_per_study=s.max_slices_per_study,
            seed=seeds["training"],
            split_seed=seeds["split"],
            device=device,
            cache_dir=cache,
            progress=progress,
            data_provenance=provenance,
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
            steps_per_epoch=s.classifier_steps_per_epoch,
            batch_size=s.classifier_batch_size,
            max_minutes=s.classifier_minutes,
            max_slices_per_study=s.max_slices_per_study,
            seed=seeds["training"],
            split_seed=seeds["split"],
            device=device,
            cache_dir=cache,
            progress=progress,
            data_provenance=provenance | ({"real": str(real)} if real is not None else {}),
            supervision=s.classifier_supervision,
        )
    )
    timings["train_classifier"] = time.perf_counter() - t
    trained = _training_outcome(model_dir)

    t = _step(f"evaluating on the {s.test_site} test cohort")
    diagnoser = Diagnoser(model_dir, device=device, classify_all=True)
    metrics = evaluate_cohort(test_dir, None, out / "evaluation", diagnoser=diagnoser, progress=progress)
    timings["evaluate"] = time.perf_counter() - t

    real_answers: list[dict[str, Any]] = []
    real_dir = _real_dir(show_real) if real is None else Path(real)
    if real_dir is not None:
        t = _step(f"diagnosing the real series in {real_dir}")
        models = {"demo": diagnoser}
        from covidct.diagnose import shipped_model_dir

        shipped = shipped_model_dir()
        if shipped is not None:
            models["pretrained"] = Diagnoser(shipped, device=device, classify_all=True)
        for label, dx in models.items():
            for row in _diagnose_real(dx, real_dir, out / "real" / label, read_cohort):
                row["model"] = label
                row["seen_in_training"] = label == "pretrained" or real is not None
                real_answers.append(row)
        timings["real"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    summary: dict[str, Any] = {
        "out_dir": str(out),
        "model_dir": str(model_dir),
        "settings": s.__dict__,
        "seeds": seeds,
        "budgets": budgets,
        "training": trained,
        "overall_accuracy": metrics["patient"]["overall_accuracy"],
        "ablation": metrics["ablation"],
        "real": real_answers,
        "timing_s": {k: round(v, 1) for k, v in timings.items()},
    }
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=1, allow_nan=False, default=str))
    return summary


def _training_outcome(model_dir: Path) -> dict[str, Any]:
    """Per network: what its card says about the run (work done, why it stopped, the model's hashes)."""
    from covidct.bundle import read_card

    out: dict[str, Any] = {}
    for what in ("segmenter", "classifier"):
        card = read_card(model_dir / what, kind=what)
        t = dict(card.get("training") or {})
        out[what] = {
            "epochs_run": t.get("epochs_run"),
            "epochs_max": t.get("epochs_max"),
            "steps_per_epoch": t.get("steps_per_epoch"),
            "kept_epoch": t.get("best_epoch"),
            "stopped_by": t.get("stopped_by"),
            "stopped": t.get("stopped"),
            "weights_sha256": dict(card.get("weights") or {}).get("sha256"),
            "hash": card.get("hash"),
        }
    out["pipeline_hash"] = read_card(model_dir, kind="pipeline").get("hash")
    return out


def _real_dir(show_real: str | Path | None) -> Path | None:
    """The labelled real series to end the demo on (see :func:`run_demo`), or ``None``."""
    import os

    if show_real is None:
        return None
    if show_real != "auto":
        path = Path(show_real)
        if not path.is_dir():
            raise ConfigError(f"{path}: not a folder; give the COVID-CT-MD root (the folder with Index.csv)")
        return path
    env = os.environ.get("COVIDCT_REAL_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(__file__).resolve().parents[3] / "shared" / "data" / "covid-ct-md"
    return here if here.is_dir() else None


def _diagnose_real(diagnoser: Any, root: Path, out: Path, read_cohort: Any) -> list[dict[str, Any]]:
    from covidct.data.records import slice_classes
    from covidct.errors import CovidCTError
    from covidct.evaluate.metrics import roc_auc
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
        probs = np.asarray(result.probabilities, dtype=np.float64)
        truth = slice_classes(rec, probs.shape[0])
        scored = ~np.isnan(probs[:, 0])
        auc = float("nan")
        if truth is not None and scored.any():
            auc = roc_auc((truth != 0)[scored], 1.0 - probs[scored, 0])
        answers.append(
            {
                "case": rec.case,
                "truth": rec.diagnosis,
                "diagnosis": result.diagnosis,
                "slice_auc": None if np.isnan(auc) else round(auc, 3),
                "explanation": result.decision.explain(),
                "seconds": round(result.timing_s.get("total", 0.0), 1),
            }
        )
    return answers
