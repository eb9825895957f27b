"""Time synthetic patient generation: small (128x128, 30-60 slices) and full (512x512x200), and writing.

Run: ``.venv/bin/python benchmarks/bench_synth.py [--repeats 3]``; prints seconds per patient, wall clock and
CPU time of this process (on a shared machine the CPU time is the figure to compare: generation is one thread).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from covidct.data.synth import generate_cohort, generate_patient


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for label, kwargs, n in (
        ("small patient (128x128, 30-60 slices)", {"size": "small"}, args.repeats * 3),
        ("full patient (512x512x200, in memory)", {"size": "full", "n_slices": 200}, args.repeats),
    ):
        wall, cpu = [], []
        for i in range(n):
            t, c = time.perf_counter(), time.process_time()
            generate_patient(("normal", "cap", "covid19")[i % 3], seed=i, **kwargs)  # type: ignore[arg-type]
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        print(
            f"{label}: wall median {np.median(wall):.2f} s (max {max(wall):.2f}), "
            f"CPU median {np.median(cpu):.2f} s (max {max(cpu):.2f})"
        )
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        generate_cohort(
            Path(tmp) / "c", patients=1, mix=["covid19"], seed=0, size="full", site="siemens-scope"
        )
        print(
            f"full patient generated + written (siemens-scope, JPEG Lossless): {time.perf_counter() - t:.2f} s"
        )


if __name__ == "__main__":
    main()
