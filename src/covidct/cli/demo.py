"""``covidct demo``: the whole system on embedded synthetic data (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="generate synthetic cohorts, train both networks, evaluate on another scanner's cohort",
        description="The end-to-end demo on embedded synthetic data, CPU only, about 12 minutes on 2 cores.",
    )
    p.add_argument("-o", "--output", default="runs/demo", metavar="OUT_DIR", help="default runs/demo")
    p.add_argument(
        "--real", metavar="DIR", help="also train on and diagnose a real COVID-CT-MD-layout folder"
    )
    p.add_argument(
        "--show-real",
        metavar="DIR",
        default="auto",
        help="real COVID-CT-MD-layout series to end on, diagnosed with the demo model and the pretrained "
        "pipeline (default: ../shared/data/covid-ct-md or $COVIDCT_REAL_DATA when present; 'none': skip)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--supervision",
        choices=("auto", "slice", "patient", "mixed"),
        default="auto",
        help="the classifier's supervision (see covidct train classifier --help; default auto)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few-minute smoke run (numbers not meaningful)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from covidct.cli._common import show_progress
    from covidct.demo import DemoSettings, run_demo
    from covidct.registry import DISPLAY_NAMES, class_index

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    settings = replace(settings, seed=args.seed, classifier_supervision=args.supervision)
    summary = run_demo(
        args.output,
        real=args.real,
        show_real=None if args.show_real == "none" else args.show_real,
        settings=settings,
        device=args.device,
        progress=show_progress(args.no_progress),
    )
    acc = summary["overall_accuracy"]
    out = summary["out_dir"]
    print(f"demo finished in {summary['timing_s']['total']:.0f} s; outputs in {out}/")
    print(
        f"  model folder:   {summary['model_dir']}  (covidct diagnose INPUT --model {summary['model_dir']})"
    )
    print(
        f"  PHANTOM test accuracy: {acc['value']:.1%} ({acc['numerator']}/{acc['denominator']} synthetic "
        "patients of another scanner profile; phantoms, not real CT)"
    )
    print(f"  report:         {out}/evaluation/summary.md")
    print("  seeds:          " + ", ".join(f"{k} {v}" for k, v in summary["seeds"].items()))
    for what in ("segmenter", "classifier"):
        t = summary["training"][what]
        print(
            f"  {what + ':':15s} {t['epochs_run']} of {t['epochs_max']} epochs x {t['steps_per_epoch']} steps, "
            f"kept epoch {t['kept_epoch']}, weights sha256 {str(t['weights_sha256'])[:12]}"
        )
    print(f"  model hash:     {summary['training']['pipeline_hash']}")
    if summary["real"]:
        print("  REAL CT (COVID-CT-MD development series; slice AUC = infected vs clean slices):")
    for row in summary["real"]:
        who = f"{row.get('model', 'demo')} model" + (
            " (seen in training)" if row.get("seen_in_training") else ""
        )
        if "error" in row:
            print(f"  real {row['case']} [{who}]: FAILED: {row['error']}", file=sys.stderr)
            continue
        truth = DISPLAY_NAMES[class_index(row["truth"])]
        said = DISPLAY_NAMES[class_index(row["diagnosis"])]
        auc = "n/a (no infected slice)" if row.get("slice_auc") is None else f"{row['slice_auc']:.3f}"
        print(
            f"  real {row['case']} (truth {truth}) [{who}]: {said}, slice AUC {auc}  - {row['explanation']}"
        )
    return 0
