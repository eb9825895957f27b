"""Ingestion speed: a 150-slice JPEG-Lossless series (COVID-CT-MD P001), serial vs parallel decoding.

Prints slices/s (median of ``--repeats`` runs after one warm-up) for: reading the headers only
(``open_study``), and ``load_study`` with 1 worker and with a process pool. Run from the project root:

    .venv/bin/python benchmarks/bench_ingest.py [--series DIR] [--repeats 3] [--workers 1,2]

The machine may be shared: compare rows of one run (ratios), not runs on different days.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SERIES = (
    REPO.parent / "shared" / "data" / "covid-ct-md" / "Sample data" / "COVID-19 subjects" / "P001"
)


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """One untimed warm-up, then ``repeats`` timed calls; (median, all runs) in seconds."""
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def main(argv: list[str] | None = None) -> int:
    from covidct.io import load_study, open_study

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=Path, default=DEFAULT_SERIES, help="DICOM folder (default: P001)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (1 = serial)")
    args = ap.parse_args(argv)
    if not args.series.is_dir():
        print(f"bench_ingest: {args.series} is missing (needs ../shared/data)", file=sys.stderr)
        return 2
    study = open_study(args.series)
    n = study.n_slices
    print(f"series: {args.series.name}, {n} slices, {study.meta.extra.get('transfer_syntax_name', '')}")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpus} CPU(s) available, load average {load:.2f}; median of {args.repeats} runs")
    rows: list[tuple[str, float, list[float]]] = []
    med, runs = median_seconds(lambda: open_study(args.series), args.repeats)
    rows.append(("open_study (headers only)", med, runs))
    for w in [int(v) for v in args.workers.split(",")]:
        med, runs = median_seconds(lambda w=w: load_study(args.series, workers=w), args.repeats)
        label = "load_study serial (workers=1)" if w == 1 else f"load_study parallel (workers={w}, processes)"
        rows.append((label, med, runs))
    print(f"{'stage':48s} {'median s':>9s} {'slices/s':>9s}  runs")
    for label, med, runs in rows:
        print(f"{label:48s} {med:9.2f} {n / med:9.1f}  {', '.join(f'{r:.2f}' for r in runs)}")
    serial = next((m for lbl, m, _ in rows if "serial" in lbl), None)
    for label, med, _ in rows:
        if serial and "parallel" in label:
            print(f"speed-up {label.split('(')[1].rstrip(')')}: {serial / med:.2f}x over serial")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
