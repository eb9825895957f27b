"""``covidct readers``: radiologists versus the AI (accuracy, COVID-19 sensitivity, time, kappa, McNemar)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from covidct.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "readers",
        help="compare readers with the AI (the paper's Fig. 4)",
        description="Truth CSV: case,truth. Reader CSV: case,prediction,time_s (reading time in seconds). "
        "AI CSV: the predictions CSV (case,prediction[,time_s]). "
        "Writes readers.json, readers.md and readers.png.",
    )
    p.add_argument("--truth", required=True, metavar="CSV", help="case,truth")
    p.add_argument(
        "--reader",
        action="append",
        default=[],
        metavar="NAME=CSV",
        help="a reader's reads (repeat per reader)",
    )
    p.add_argument("--ai", required=True, metavar="CSV", help="the AI's predictions CSV")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.set_defaults(func=run)


def parse_reader_args(values: list[str]) -> dict[str, str]:
    """``["R1=a.csv", "R2=b.csv"]`` -> ``{"R1": "a.csv", ...}``; ``ConfigError`` on a bad/repeated name."""
    readers: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--reader {value!r}: write it as NAME=reads.csv")
        if name in readers:
            raise ConfigError(f"--reader {name!r} given twice; reader names must be unique")
        readers[name] = path
    if not readers:
        raise ConfigError("give at least one --reader NAME=reads.csv")
    return readers


def run(args: argparse.Namespace) -> int:
    from covidct.evaluate.readers import write_readers

    out = Path(args.output)
    result = write_readers(args.truth, parse_reader_args(args.reader), args.ai, out)
    for name, row in result["raters"].items():
        acc, sens = row["accuracy"]["value"], row["covid19_sensitivity"]["value"]
        mean = row["mean_time_s"]
        print(
            f"{name:<12} accuracy {'n/a' if acc is None else f'{100 * acc:.1f}%':>7}  "
            f"COVID-19 sensitivity {'n/a' if sens is None else f'{100 * sens:.1f}%':>7}  "
            f"time {'n/a' if mean is None else f'{mean:.1f} s/case'}"
        )
    print(f"written: {out / 'readers.json'}, {out / 'readers.md'}, {out / 'readers.png'}")
    return 0
