"""``covidct synth-real``: synthetic disease drawn into real lungs (a manifest cohort for training)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synth-real",
        help="draw synthetic COVID-19 / CAP lesions into real normal lungs (realistic training data)",
        description="Build a training cohort from real labelled series: their normal slices are the "
        "backgrounds, and each background gets variants of every class (nothing, COVID-19, CAP) with "
        "lesion textures from real lesion folders (--donors) and from the phantom recipe. Writes "
        "OUT/manifest.csv for `covidct train classifier --data`. Same arguments, same cohort.",
    )
    p.add_argument(
        "backgrounds",
        nargs="+",
        metavar="REAL_DATA",
        help="COVID-CT-MD-layout folders or manifest CSVs of real series with slice labels (or normal)",
    )
    p.add_argument("-o", "--out", required=True, help="output folder (must not exist, or be empty)")
    p.add_argument(
        "--donors",
        nargs="*",
        default=[],
        metavar="LESION_DIR",
        help="lesion folders with Imgs/ and GT/ (e.g. COVID-SemiSeg train/multiclass, train/pseudo-label); "
        "their held-out validation images are never used",
    )
    p.add_argument("--variants", type=int, default=3, help="variants per class per background (default 3)")
    p.add_argument("--exclude", nargs="*", default=[], metavar="CASE", help="case names to leave out")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from covidct.cli._common import show_progress
    from covidct.data.realistic import RealisticSettings, build_realistic_cohort

    manifest = build_realistic_cohort(
        args.backgrounds,
        args.out,
        donors=args.donors,
        exclude=args.exclude,
        settings=RealisticSettings(variants=args.variants, seed=args.seed),
        overwrite=args.overwrite,
        progress=show_progress(args.no_progress),
    )
    print(manifest)
    return 0
