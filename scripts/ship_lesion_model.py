"""Turn a trained lesion bundle into the one shipped in ``models/lesions``: fp16 weights, a card with the data,
its terms, the citations and the measured figures.

Usage (``make lesion-model`` runs the whole chain)::

    covidct train lesions --data DATA/covid-semiseg/train/multiclass \\
        --pseudo DATA/covid-semiseg/train/pseudo-label -o runs/lesions --epochs 30 --steps-per-epoch 80
    python benchmarks/bench_lesions.py --model runs/lesions --out benchmarks/results/lesions.json
    python scripts/ship_lesion_model.py runs/lesions models/lesions \\
        --measured benchmarks/results/lesions.json

Only the weights and the card are copied (never the training cache: it holds real pixels).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

TERMS: dict[str, Any] = {
    "data": "COVID-SemiSeg (Fan et al. 2020, Inf-Net): 50 CT slices with radiologists' infection masks from "
    "the Italian Society of Medical and Interventional Radiology via MedSeg (medicalsegmentation.com, "
    "'COVID-19 CT segmentation dataset'), and 1,600 slices of the COVID-19 CT Collection with model-made "
    "masks (pseudo-labels)",
    "terms": "non-commercial research use only, as the data's terms require; not a medical device",
    "cite": [
        "Fan D-P, Zhou T, Ji G-P, et al. Inf-Net: Automatic COVID-19 Lung Infection Segmentation from CT "
        "Images. IEEE Trans Med Imaging 2020;39(8):2626-2637.",
        "MedSeg. COVID-19 CT segmentation dataset. http://medicalsegmentation.com/covid19/ (2020).",
    ],
}


def main() -> None:
    from covidct.bundle import load_component, save_component

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("source", type=Path, help="lesion bundle written by covidct train lesions")
    p.add_argument("dest", type=Path, help="folder to write (replaced)")
    p.add_argument(
        "--measured", type=Path, default=None, help="bench_lesions.py's JSON, copied into the card"
    )
    args = p.parse_args()
    card, state = load_component(args.source, kind="lesions")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    keep = {
        k: v for k, v in card.items() if k not in ("hash", "weights", "software", "format", "format_version")
    }
    keep["weights_dtype"] = "float16 (loaded into a float32 network)"
    keep["data_terms"] = TERMS
    if args.measured is not None:
        keep["measured"] = json.loads(args.measured.read_text())
    training = dict(keep.get("training") or {})
    training["sources"] = [
        {**s, "path": Path(str(s.get("path", ""))).name} for s in training.get("sources", [])
    ]  # no local paths in a shipped card
    keep["training"] = training
    if args.dest.exists():
        shutil.rmtree(args.dest)
    written = save_component(args.dest, half, keep)
    size = sum(f.stat().st_size for f in args.dest.iterdir())
    print(f"wrote {args.dest} ({size / 1e6:.1f} MB, hash {written['hash'][:12]})")


if __name__ == "__main__":
    main()
