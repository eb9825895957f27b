"""Ingestion speed: a 150-slice JPEG-Lossless series (COVID-CT-MD P001), serial vs parallel decoding.

Prints slices/s (median of ``--repeats`` runs after one warm-up) for: reading the headers only
(``open_study``), and ``load_study`` with 1 worker and with a process pool. Run from the project root:

    .venv/bin/python benchmarks/bench_ingest.py [--series DIR] [--repeats 3] [--workers 1,2]

The machine may be shared: compare rows of one run (ratios), not runs on different days.
"""

from __future__ import annotations

import argparse
import os
import resource
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


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decoding processes), in seconds."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], float]:
    """One untimed warm-up, then ``repeats`` timed calls; (median wall s, all runs, median CPU s)."""
    fn()
    runs, cpu = [], []
    for _ in range(repeats):
        c0, t0 = _cpu_seconds(), time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
        cpu.append(_cpu_seconds() - c0)
    return statistics.median(runs), runs, statistics.median(cpu)


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
    rows: list[tuple[str, float, list[float], float]] = []
    med, runs, cpu = median_seconds(lambda: open_study(args.series), args.repeats)
    rows.append(("open_study (headers only)", med, runs, cpu))
    for w in [int(v) for v in args.workers.split(",")]:
        med, runs, cpu = median_seconds(lambda w=w: load_study(args.series, workers=w), args.repeats)
        label = "load_study serial (workers=1)" if w == 1 else f"load_study parallel (workers={w}, processes)"
        rows.append((label, med, runs, cpu))
    # CPU s = work done (this process + decoding processes); wall < CPU only when cores were free to share it
    print(f"{'stage':48s} {'median s':>9s} {'slices/s':>9s} {'CPU s':>7s}  runs")
    for label, med, runs, cpu in rows:
        print(f"{label:48s} {med:9.2f} {n / med:9.1f} {cpu:7.2f}  {', '.join(f'{r:.2f}' for r in runs)}")
    serial = next((m for lbl, m, _, _ in rows if "serial" in lbl), None)
    for label, med, _, _ in rows:
        if serial and "parallel" in label:
            print(f"speed-up {label.split('(')[1].rstrip(')')}: {serial / med:.2f}x over serial")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
