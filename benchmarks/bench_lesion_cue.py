"""How well the lesion model's burden separates infected from clean slices of real COVID-CT-MD series (issue 11).

The shipped lesion model (``models/lesions``) was trained on COVID-SemiSeg only, so every COVID-CT-MD series
is unseen by it. Per series: the fraction of each slice's lung (classical mask) it marks as lesion, the slice
AUC of that fraction against the official slice labels (normal series: all negatives, pooled only), and the
mean fraction over the slices the patient rule keeps. Real CT only; no phantom is involved.

    .venv/bin/python benchmarks/bench_lesion_cue.py --out benchmarks/results/lesion-cue.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--covid-ct-md", type=Path, default=ROOT.parent / "shared/data/covid-ct-md")
    p.add_argument("--model", default=None, help="lesion bundle (default: the shipped models/lesions)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    from covidct.data.covidctmd import read_covidctmd
    from covidct.decide import kept_range
    from covidct.evaluate.metrics import roc_auc
    from covidct.io import load_study
    from covidct.lesions.api import load_lesion_segmenter
    from covidct.segment.classical import ClassicalSegmenter

    seg = load_lesion_segmenter(args.model)
    rows: list[dict[str, Any]] = []
    labels_all, frac_all = [], []
    for rec in read_covidctmd(args.covid_ct_md):
        volume = load_study(rec.path)
        lung = np.asarray(ClassicalSegmenter().apply(volume), np.uint8)
        lesions = np.asarray(seg.apply(volume, lung), np.uint8)
        n = volume.n_slices
        truth = np.asarray(rec.slice_labels[:n] if rec.slice_labels is not None else np.zeros(n), bool)
        lung_vox = (lung > 0).sum(axis=(1, 2))
        frac = ((lesions > 0) & (lung > 0)).sum(axis=(1, 2)) / np.maximum(lung_vox, 1)
        start, stop = kept_range(n)
        row = {
            "case": rec.case,
            "class": rec.diagnosis,
            "slices": n,
            "infected_slices": int(truth.sum()),
            "slice_auc": round(float(roc_auc(truth, frac)), 4) if truth.any() and not truth.all() else None,
            "mean_fraction_kept": round(float(frac[start:stop].mean()), 4),
            "kept_slices_over_2pct": int((frac[start:stop] > 0.02).sum()),
            "kept_slices": stop - start,
        }
        rows.append(row)
        labels_all.append(truth)
        frac_all.append(frac)
        print(json.dumps(row), flush=True)
    pooled = float(roc_auc(np.concatenate(labels_all), np.concatenate(frac_all)))
    doc = {"model": seg.card.get("name"), "series": rows, "pooled_slice_auc": round(pooled, 4)}
    print("pooled slice AUC", round(pooled, 4))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
