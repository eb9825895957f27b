"""``covidct synth``: write a synthetic cohort in the COVID-CT-MD layout (with ground-truth masks)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from covidct.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    from covidct.registry import SYNTH_SITES as SITES

    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic normal / CAP / COVID-19 cohort (COVID-CT-MD layout + ground truth)",
        description="Generate synthetic chest CT studies in the COVID-CT-MD layout, with lung and lesion "
        "masks (NIfTI), slice/lobe label arrays and a cohort.csv manifest. Same seed, same bytes.",
    )
    p.add_argument("-o", "--out", required=True, help="output folder (must not exist, or be empty)")
    p.add_argument("--patients", type=int, required=True, help="number of patients")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--classes", help="comma-separated classes, split evenly (normal,cap,covid19)")
    group.add_argument("--mix", help="fractions normal,cap,covid19 (default 0.3,0.2,0.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--size",
        choices=("full", "small"),
        default="full",
        help="full: 512x512, 100-300 slices; small: 128x128, 30-60 slices (tests)",
    )
    p.add_argument(
        "--site",
        choices=SITES,
        default="default",
        help="scanner profile ('default' mixes all profiles patient by patient)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _mix(args: argparse.Namespace) -> list[float] | list[str] | None:
    if args.classes:
        return [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.mix:
        try:
            return [float(v) for v in args.mix.split(",")]
        except ValueError:
            raise ConfigError(f"--mix must be three numbers like 0.3,0.2,0.5, got {args.mix!r}") from None
    return None


def run(args: argparse.Namespace) -> int:
    from covidct.data.synth import generate_cohort

    out = generate_cohort(
        args.out,
        patients=args.patients,
        mix=_mix(args),
        seed=args.seed,
        size=args.size,
        site=args.site,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(out)
    return 0
