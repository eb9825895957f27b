"""Lung-window mosaic: one synthetic patient per class next to real P001, cap001 and normal001.

Rows: normal, CAP, COVID-19; columns: real at 35 %, 55 %, 75 % of the series, then synthetic at the same
relative levels. Run: ``.venv/bin/python scripts/synth_mosaic.py [-o docs/images/synth_vs_real.png]``
(needs ../shared/data; the real series are read with covidct.io.load_study).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from covidct.data.synth import generate_patient
from covidct.io import load_study

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "covid-ct-md" / "Sample data"
CASES = (
    ("normal", "Normal subjects/normal001"),
    ("cap", "Cap subjects/cap001"),
    ("covid19", "COVID-19 subjects/P001"),
)
LEVELS = (0.35, 0.55, 0.75)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--out", default="docs/images/synth_vs_real.png")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", default="full")
    args = ap.parse_args()
    fig, axes = plt.subplots(3, 6, figsize=(12, 6.4))
    for r, (cls, rel) in enumerate(CASES):
        real = load_study(REAL / rel).hu
        synth = generate_patient(cls, seed=args.seed + r, size=args.size).hu
        for c, lev in enumerate(LEVELS):
            for k, (vol, tag) in enumerate(((real, "real"), (synth, "synthetic"))):
                ax = axes[r, c + 3 * k]
                ax.imshow(np.clip(vol[int(lev * (len(vol) - 1))], -1200, 0), cmap="gray", vmin=-1200, vmax=0)
                ax.set_axis_off()
                ax.set_title(f"{tag} {cls} {int(lev * 100)}%", fontsize=7)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=55)
    print(args.out)


if __name__ == "__main__":
    main()
