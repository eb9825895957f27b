"""Slice vs patient vs mixed supervision with the same budget, and calibration, on a held-out scanner site.

Synthetic cohorts (slice truth known): the demo's training cohort (36 patients, site ``siemens-scope``) and
test cohort (15 patients, ``ge-lightspeed``, another site), generated here when missing. Of the training
cohort's abnormal patients only ``--label-fraction`` (30 %, per class, seeded) keep their slice labels:

- ``slice-all``: every slice label (the reference slice-label model);
- ``slice``: slice labels of the 30 % only; the other abnormal patients are left out (today's behaviour);
- ``patient``: patient labels only (``--supervision patient``, multiple-instance learning);
- ``mixed``: slice labels of the 30 %, patient labels of the rest (``--supervision mixed``);
- ``patient-noisy-or``: ``patient`` with noisy-OR pooling instead of top-k (the pooling ablation).

Every run: the same network, image size, epochs x steps x batch (slices per step), seed, and the same patient
split (the first run's ``splits.csv``). On the test site each model diagnoses every study
(``Diagnoser(classify_all=True)``, classical lung masks as in training) and is scored on:

- slice AUC: infected vs clean, score ``1 - p(normal)``, all slices, against the cohort's slice labels;
- patient accuracy of the paper's rule;
- calibration: slice ECE (3-class top label, kept slices) before/after ``T_slice``; patient ECE and Brier
  before (``T = 1``) / after (the fitted temperatures);
- referral: the threshold chosen on validation, the test patients it refers and the accuracy of the rest; the
  risk-coverage curve of the test patients.

    .venv/bin/python benchmarks/weak_supervision.py --work runs/weak [--modes slice-all,slice,patient,mixed]

Writes ``WORK/weak.json``, ``benchmarks/results/weak-supervision.md`` and the curves' PNGs in ``WORK``.
Phantom (synthetic) figures only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "slice-all": ("full", "slice", "topk"),
    "slice": ("partial", "slice", "topk"),
    "patient": ("partial", "patient", "topk"),
    "mixed": ("partial", "mixed", "topk"),
    "patient-noisy-or": ("partial", "patient", "noisy-or"),
}


def cohorts(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    from covidct.data.synth import generate_cohort

    out = []
    for name, n, site, seed in (
        ("train", args.train_patients, "siemens-scope", args.seed),
        ("test", args.test_patients, "ge-lightspeed", args.seed + 1000),
    ):
        d = work / "data" / name
        if not (d / "cohort.csv").is_file():
            generate_cohort(d, patients=n, seed=seed, site=site, size="small")
        out.append(d)
    return out[0], out[1]


def manifests(train_dir: Path, work: Path, fraction: float, seed: int) -> dict[str, Path]:
    """``full.csv`` (every slice label) and ``partial.csv`` (only ``fraction`` of each abnormal class's
    patients keep them)."""
    from copy import copy

    from covidct.data.covidctmd import read_covidctmd
    from covidct.data.manifest import write_manifest

    records = read_covidctmd(train_dir)
    rng = np.random.default_rng(seed)
    partial = []
    kept: list[str] = []
    for cls in ("normal", "cap", "covid19"):
        group = [r for r in records if r.diagnosis == cls]
        keep = set(rng.permutation(len(group))[: round(fraction * len(group))].tolist())
        for i, r in enumerate(group):
            r2 = copy(r)
            if cls != "normal" and i not in keep:
                r2.slice_labels = None
            elif cls != "normal":
                kept.append(r.case)
            partial.append(r2)
    for r in records + partial:
        r.split = None
    return {
        "full": write_manifest(records, work / "manifests" / "full" / "manifest.csv"),
        "partial": write_manifest(partial, work / "manifests" / "partial" / "manifest.csv"),
        "kept": kept,  # type: ignore[dict-item]
    }


def train(mode: str, data: Path, model_dir: Path, splits: Path | None, args: argparse.Namespace) -> float:
    from covidct.train.classifier import train_classifier
    from covidct.train.config import ClassifierConfig

    _, supervision, pooling = MODES[mode]
    t = time.perf_counter()
    train_classifier(
        ClassifierConfig(
            data=[data],
            out_dir=model_dir / "classifier",
            arch="resnet18",
            image_size=args.image_size,
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            batch_size=16,
            patience=args.epochs,
            max_slices_per_study=args.max_slices,
            mask_source="classical",
            seed=args.seed,
            splits_file=splits,
            supervision=supervision,
            pooling=pooling,
            progress=False,
        )
    )
    return time.perf_counter() - t


def score(model_dir: Path, test_dir: Path) -> dict[str, Any]:
    from covidct.confidence import patient_probabilities
    from covidct.data.covidctmd import read_covidctmd
    from covidct.data.records import slice_classes
    from covidct.diagnose import Diagnoser
    from covidct.evaluate.calibration import (
        brier_score,
        expected_calibration_error,
        referral_threshold,
        risk_coverage,
        scale_probabilities,
        top_label,
    )
    from covidct.evaluate.metrics import roc_auc

    dx = Diagnoser(model_dir, classify_all=True)
    cm = dx.confidence_model
    scores, infected, sp, sy = [], [], [], []
    truth, answer, conf_after, p_before, p_after = [], [], [], [], []
    for rec in read_covidctmd(test_dir):
        r = dx.diagnose(rec.path)
        probs = np.asarray(r.probabilities, dtype=np.float64)
        cls = slice_classes(rec, probs.shape[0])
        assert cls is not None
        scores.append(1.0 - probs[:, 0])
        infected.append(cls > 0)
        lo, hi = r.decision.kept
        sp.append(probs[lo:hi])
        sy.append(cls[lo:hi])
        truth.append(rec.label)
        answer.append(r.decision.label)
        assert r.confidence is not None
        conf_after.append(r.confidence.value)
        p_after.append(r.confidence.probabilities)
        p_before.append(patient_probabilities(probs, kept=r.decision.kept))
    y_t, a_t = np.array(truth), np.array(answer)
    correct = a_t == y_t
    slice_p, slice_y = np.concatenate(sp), np.concatenate(sy)
    slice_p = slice_p / slice_p.sum(axis=1, keepdims=True)
    assert cm is not None
    before_c, before_k = top_label(slice_p, slice_y)
    after_c, after_k = top_label(scale_probabilities(slice_p, cm.slice_temperature), slice_y)
    pb, pa = np.array(p_before), np.array(p_after)
    conf_before = pb[np.arange(len(a_t)), a_t]
    refer = np.array(conf_after) < (cm.refer_below if cm.refer_below is not None else -1)
    rc = risk_coverage(np.array(conf_after), correct)
    return {
        "slice_auc": roc_auc(np.concatenate(infected), np.concatenate(scores)),
        "patient_accuracy": float(correct.mean()),
        "patients_right": f"{int(correct.sum())}/{correct.size}",
        "slice_ece_before": expected_calibration_error(before_c, before_k),
        "slice_ece_after": expected_calibration_error(after_c, after_k),
        "patient_ece_before": expected_calibration_error(conf_before, correct),
        "patient_ece_after": expected_calibration_error(np.array(conf_after), correct),
        "patient_brier_before": brier_score(pb / pb.sum(1, keepdims=True), y_t),
        "patient_brier_after": brier_score(pa / pa.sum(1, keepdims=True), y_t),
        "temperatures": [cm.slice_temperature, cm.patient_temperature],
        "refer_below": cm.refer_below,
        "referred": int(refer.sum()),
        "accepted_accuracy": float(correct[~refer].mean()) if (~refer).any() else float("nan"),
        "test_oracle_threshold_95": referral_threshold(np.array(conf_after), correct, target_accuracy=0.95),
        "risk_coverage": {k: v.tolist() for k, v in rc.items()},
        "_curves": {
            "slice": ((before_c, before_k), (after_c, after_k)),
            "patient": ((conf_before, correct), (np.array(conf_after), correct)),
        },
    }


def render(results: dict[str, Any], md: Path) -> str:
    """The markdown table of ``results`` (``weak.json``), written to ``md``."""
    st = results["settings"]

    def f(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"

    lines = [
        "# Weak supervision and calibration (synthetic cohorts: phantom figures, not real CT)",
        "",
        f"`python benchmarks/weak_supervision.py` - training cohort {st['train_patients']} patients "
        f"(siemens-scope), test cohort {st['test_patients']} patients of another site (ge-lightspeed); "
        f"{st['label_fraction']:.0%} of the abnormal training patients keep their slice labels "
        f"({', '.join(results['slice_labels_kept'])}); resnet18 {st['image_size']} px, {st['epochs']} epochs "
        f"x {st['steps']} steps x 16 slices, at most {st['max_slices']} slices per study, seed {st['seed']}, "
        "the same patient split for every run; CPU.",
        "",
        "| training | test slice AUC | test patients right | slice ECE before / after | patient ECE before / "
        "after | patient Brier before / after | T slice, T patient | refer below (validation) | referred | "
        "accuracy of the accepted | train s (wall time; other jobs ran beside some runs) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in MODES:
        r = results.get(mode)
        if r is None:
            continue
        ts, tp = r["temperatures"]
        lines.append(
            f"| {mode} | {f(r['slice_auc'])} | {r['patients_right']} | {f(r['slice_ece_before'])} / "
            f"{f(r['slice_ece_after'])} | {f(r['patient_ece_before'])} / {f(r['patient_ece_after'])} | "
            f"{f(r['patient_brier_before'])} / {f(r['patient_brier_after'])} | {ts:.2f}, {tp:.2f} | "
            f"{r['refer_below'] if isinstance(r['refer_below'], str) else f(r['refer_below'])} | "
            f"{r['referred']}/{st['test_patients']} | {f(r['accepted_accuracy'])} | {r['train_seconds']} |"
        )
    lines += [
        "",
        "Risk-coverage on the test site (accuracy of the accepted patients as the threshold falls, most "
        "confident first):",
        "",
    ]
    for mode in MODES:
        r = results.get(mode)
        if r is None:
            continue
        rc = r["risk_coverage"]
        pts = ", ".join(f"{c:.2f}: {a:.2f}" for c, a in zip(rc["coverage"], rc["accuracy"], strict=True))
        lines.append(f"- {mode} (coverage: accuracy): {pts}")
    text = "\n".join(lines) + "\n"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text, encoding="utf-8")
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "weak")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--train-patients", type=int, default=36)
    p.add_argument("--test-patients", type=int, default=15)
    p.add_argument("--label-fraction", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-slices", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "results" / "weak-supervision.md")
    p.add_argument("--render", action="store_true", help="only re-render the table from WORK/weak.json")
    args = p.parse_args()
    if args.render:
        print(render(json.loads((args.work / "weak.json").read_text()), args.md))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from covidct.evaluate.calibration import plot_reliability, plot_risk_coverage

    work = args.work.resolve()
    train_dir, test_dir = cohorts(work, args)
    man = manifests(train_dir, work, args.label_fraction, args.seed)
    settings = {k: v for k, v in vars(args).items() if k not in ("modes", "md", "render", "work")}
    results: dict[str, Any] = {"settings": settings | {"work": str(work)}, "slice_labels_kept": man["kept"]}
    saved = work / "weak.json"
    if saved.is_file():  # runs of other modes with the same settings are kept (one table)
        old = json.loads(saved.read_text())
        if old.get("settings") == results["settings"]:
            results = old | results
    first = work / next(iter(MODES)) / "classifier" / "training" / "splits.csv"
    splits: Path | None = first if first.is_file() else None  # one patient split for every mode
    rel, risk = {}, {}
    for mode in args.modes.split(","):
        model_dir = work / mode
        seconds = train(mode, man[MODES[mode][0]], model_dir, splits, args)
        splits = splits or model_dir / "classifier" / "training" / "splits.csv"
        res = score(model_dir, test_dir)
        curves = res.pop("_curves")
        rel[f"{mode} before"], rel[f"{mode} after"] = curves["patient"]
        risk[mode] = curves["patient"][1]
        card = json.loads((model_dir / "classifier" / "model.json").read_text())
        res["train_seconds"] = round(seconds, 1)
        res["supervision"] = card["training"]["supervision"]
        res["validation"] = {k: v for k, v in card["validation"].items() if k.startswith("val_")}
        results[mode] = res
        print(
            mode, json.dumps({k: v for k, v in res.items() if k != "risk_coverage"}, default=str), flush=True
        )
        saved.write_text(json.dumps(results, indent=1, default=str))
    plot_reliability(work / "reliability-patient.png", rel, n_bins=5, title="Test site, patient level")
    plot_risk_coverage(work / "risk-coverage.png", risk, target_accuracy=0.95, title="Test site patients")
    print(render(results, args.md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
