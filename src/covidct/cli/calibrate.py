"""``covidct calibrate``: fit a pipeline's confidence and referral threshold on your own labelled studies."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit the confidence (temperature scaling) and the referral threshold on labelled studies",
        description="Diagnose labelled studies (COVID-CT-MD-layout folders or manifest CSVs) with the "
        "pipeline exactly as it will be used, then fit the slice and patient temperatures and the confidence "
        "below which a study is referred, chosen so that the accepted studies reach --target-accuracy. "
        "Writes the result into the pipeline's model.json (or into a copy with -o). Use studies the model "
        "was not trained on.",
    )
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="pipeline folder to calibrate")
    p.add_argument("--data", required=True, nargs="+", metavar="DIR_OR_CSV", help="labelled studies")
    p.add_argument("-o", "--output", metavar="OUT_DIR", help="write a calibrated copy here (a new folder)")
    p.add_argument(
        "--target-accuracy",
        type=float,
        default=0.95,
        help="accuracy the accepted (not referred) studies must reach (default 0.95)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from covidct.calibrate import calibrate_pipeline

    entry = calibrate_pipeline(
        args.model,
        args.data,
        out_dir=args.output,
        target_accuracy=args.target_accuracy,
        device=args.device,
    )
    print(json.dumps(entry))
    return 0
