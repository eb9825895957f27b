"""Seconds to segment a 150-slice chest CT series (COVID-CT-MD P001) with the classical method.

Usage: ``python benchmarks/bench_segment.py [SERIES_DIR] [--repeats 3]``. The series is read once (not timed);
the figure is the median of the repeats of ``ClassicalSegmenter().apply``. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from covidct.io import load_study
from covidct.segment import ClassicalSegmenter
from covidct.segment.quality import lung_volumes_ml

DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "covid-ct-md" / "Sample data"
DEFAULT_SERIES = DEFAULT / "COVID-19 subjects" / "P001"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("series", nargs="?", default=str(DEFAULT_SERIES.resolve()))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    volume = load_study(args.series)
    segmenter = ClassicalSegmenter()
    times: list[float] = []
    cpu: list[float] = []
    mask = np.zeros(0)
    for _ in range(max(1, args.repeats)):
        start, start_cpu = time.perf_counter(), time.process_time()
        mask = segmenter.apply(volume)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    median = statistics.median(times)
    vols = lung_volumes_ml(mask, volume.spacing)
    print(f"series: {Path(args.series).name}, shape {list(volume.shape)}")
    print(
        f"classical segmentation: {median:.2f} s per series (median of {len(times)}: "
        f"{', '.join(f'{t:.2f}' for t in times)}), {volume.n_slices / median:.1f} slices/s"
    )
    # CPU seconds of this process: a figure less disturbed than wall time on a shared machine
    print(
        f"CPU time: {statistics.median(cpu):.2f} s per series (median), load average {os.getloadavg()[0]:.1f}"
    )
    print(f"lung volume: right {vols['right']:.0f} ml, left {vols['left']:.0f} ml")


if __name__ == "__main__":
    main()
