"""Time synthetic patient generation: small (128x128, 30-60 slices) and full (512x512x200), and writing.

Run: ``.venv/bin/python benchmarks/bench_synth.py [--repeats 3]``; prints seconds per patient.
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
    small = []
    for i in range(args.repeats * 3):
        t = time.perf_counter()
        generate_patient(("normal", "cap", "covid19")[i % 3], seed=i, size="small")
        small.append(time.perf_counter() - t)
    print(f"small patient (128x128, 30-60 slices): median {np.median(small):.3f} s, max {max(small):.3f} s")
    full = []
    for i in range(args.repeats):
        t = time.perf_counter()
        generate_patient(("normal", "cap", "covid19")[i % 3], seed=i, size="full", n_slices=200)
        full.append(time.perf_counter() - t)
    print(f"full patient (512x512x200, in memory): median {np.median(full):.2f} s, max {max(full):.2f} s")
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
