"""``covidct evaluate``: score predictions or a diagnosed cohort as in the paper's Tables 2 and 3."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from covidct.cli._common import show_progress
from covidct.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics, ablation (Table 2), per-class table (Table 3) and confusion matrices",
        description="Either score an existing predictions CSV (--predictions) or diagnose a labelled cohort "
        "(--data with --model). Writes metrics.json, summary.md and confusion-matrix PNGs into OUT_DIR. "
        "Predictions CSV: case,truth,prediction[,p_normal,p_cap,p_covid19][,slice_predictions]"
        "[,slice_truth][,time_s]. With --data, real CT and synthetic studies are also scored apart (patient "
        "accuracy, slice AUC of infected vs not infected) and, with both, a probe says whether the "
        "classifier's features tell synthetic from real slices.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", metavar="CSV", help="predictions CSV to score")
    src.add_argument(
        "--data",
        nargs="+",
        metavar="DIR",
        help="labelled cohort(s) to diagnose first (COVID-CT-MD layout or manifest CSV); give real series "
        "and a synthetic cohort together to get the synthetic-vs-real probe",
    )
    p.add_argument("--model", metavar="MODEL_DIR", help="pipeline folder (with --data)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (with --data; default cpu)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for the results")
    p.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="AUC bootstrap resamples (default 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap and probe seed (default 0)")
    p.add_argument(
        "--probe-slices",
        type=int,
        default=400,
        metavar="N",
        help="with real and synthetic studies: lung slices of each the synthetic-vs-real probe uses "
        "(default 400; 0: no probe)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (with --data)")
    p.set_defaults(func=run)


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    patient = metrics["patient"]
    oa = patient["overall_accuracy"]
    acc = "n/a" if oa["value"] is None else f"{100 * oa['value']:.2f}%"
    print(f"patients: {patient['n']}  accuracy {acc} ({oa['numerator']}/{oa['denominator']})")
    for variant, row in metrics.get("ablation", {}).get("variants", {}).items():
        a = row["accuracy"]
        v = "n/a" if a["value"] is None else f"{100 * a['value']:.2f}%"
        print(f"  rule variant {variant:<14} accuracy {v}")
    from covidct.evaluate.origin import auc_line, clean_shift_line
    from covidct.evaluate.probe import probe_line

    for key in ("real", "synthetic"):
        section = metrics.get(key)
        if section:
            a = section["patient_accuracy"]
            acc = "n/a" if a["value"] is None else f"{100 * a['value']:.2f}%"
            print(f"{section['label']}: {section['n_studies']} studies, accuracy {acc} ({a['numerator']}/"
                  f"{a['denominator']}); {auc_line(section)}")  # fmt: skip
    if metrics.get("clean_shift"):
        print(clean_shift_line(metrics["clean_shift"]))
    if metrics.get("probe"):
        print(probe_line(metrics["probe"]))
    if metrics.get("calibration"):
        from covidct.evaluate.referral import calibration_line

        print(calibration_line(metrics["calibration"]))
    print(f"written: {out / 'metrics.json'}, {out / 'summary.md'}")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if args.bootstrap < 0:
        raise ConfigError("--bootstrap must be >= 0")
    if args.probe_slices < 0:
        raise ConfigError("--probe-slices must be >= 0 (0: no probe)")
    if args.predictions:
        if args.model:
            raise ConfigError("--model is only used with --data; to score a CSV pass --predictions alone")
        from covidct.evaluate.predictions import read_predictions
        from covidct.evaluate.report import write_evaluation

        records = read_predictions(args.predictions)
        section = None
        if records and all(r.scores is not None for r in records):
            import numpy as np

            from covidct.evaluate.referral import scores_section

            out.mkdir(parents=True, exist_ok=True)
            section = scores_section(
                np.array([r.scores for r in records]),
                np.array([r.truth for r in records]),
                np.array([r.prediction for r in records]),
                out,
            )
        metrics = write_evaluation(records, out, n_boot=args.bootstrap, seed=args.seed, calibration=section)
    else:
        if not args.model:
            raise ConfigError("--data needs --model MODEL_DIR (the pipeline folder to diagnose with)")
        from covidct.evaluate.cohort import evaluate_cohort

        metrics = evaluate_cohort(
            args.data[0] if len(args.data) == 1 else args.data,
            args.model,
            out,
            device=args.device,
            progress=show_progress(args.no_progress),
            n_boot=args.bootstrap,
            seed=args.seed,
            probe_slices=args.probe_slices,
        )
    if sys.stdout is not None:
        _print_summary(metrics, out)
    return 0
