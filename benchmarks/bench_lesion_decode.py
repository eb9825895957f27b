"""How the lesion network's output is turned into a mask: measured on the COVID-SemiSeg validation fifth.

Compares, for one trained lesion bundle, on the radiologist-labelled images it never trained on:

- ``labels-nearest``: argmax at the network's size, labels resized back with nearest neighbour (the decoding
  before this benchmark);
- ``probs-bilinear``: class probabilities resized back bilinearly, argmax at the image's own size;
- ``probs-bilinear+flip``: the same, averaged with the left-right mirrored input's (test-time augmentation);
- ``probs-bilinear+flip4``: averaged over the identity, both mirrorings and their composition.

Usage::

    python benchmarks/bench_lesion_decode.py --model models/lesions \\
        --data ../shared/data/covid-semiseg/train/multiclass [--out benchmarks/results/lesion-decode.json]

Real CT (COVID-SemiSeg, non-commercial terms): only figures are written, never pixels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def _probabilities(net: Any, x: np.ndarray, flips: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Mean softmax ``(n, C, S, S)`` of ``net`` over the given flips of ``x`` ``(n, S, S)``."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[:, None]
    acc = None
    with torch.inference_mode():
        for dims in flips:
            inp = torch.flip(t, dims) if dims else t
            p = torch.softmax(net(inp), dim=1)
            p = torch.flip(p, dims) if dims else p
            acc = p if acc is None else acc + p
    if acc is None:
        raise ValueError("give at least one flip (the empty tuple is the identity)")
    return (acc / len(flips)).numpy()


def decode(probs: np.ndarray, shape: tuple[int, int], *, bilinear: bool) -> np.ndarray:
    """Labels at ``shape`` from probabilities ``(C, S, S)``."""
    from covidct.preprocess import resize_images, resize_labels

    if not bilinear:
        return np.asarray(resize_labels(probs.argmax(0)[None].astype(np.uint8), shape)[0])
    return np.asarray(resize_images(probs, shape).argmax(0), np.uint8)


VARIANTS: dict[str, tuple[bool, tuple[tuple[int, ...], ...]]] = {
    "labels-nearest": (False, ((),)),
    "probs-bilinear": (True, ((),)),
    "probs-bilinear+flip": (True, ((), (3,))),
    "probs-bilinear+flip4": (True, ((), (3,), (2,), (2, 3))),
}


def main() -> None:
    from covidct.data.realistic.donors import image_pairs, is_validation_image
    from covidct.evaluate.lesions import lesion_scores
    from covidct.lesions.folders import image_inputs, read_image, read_mask
    from covidct.lesions.model import LesionSegmenter

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", type=Path, default=Path("models/lesions"))
    p.add_argument("--data", type=Path, required=True, help="lesion folder (ROOT/Imgs + ROOT/GT)")
    p.add_argument("--split", default="val", choices=("val", "train", "all"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    seg = LesionSegmenter.from_bundle(args.model)
    images, truths = [], []
    for img_path, mask_path in image_pairs(args.data):
        if args.split != "all" and is_validation_image(img_path.stem) != (args.split == "val"):
            continue
        img = read_image(img_path)
        images.append(img)
        truths.append(read_mask(mask_path, img.shape)[0])
    if not images:
        raise SystemExit(f"{args.data}: no image in split {args.split}")
    x = np.stack([image_inputs(img, seg.image_size) for img in images])
    results: dict[str, Any] = {}
    for name, (bilinear, flips) in VARIANTS.items():
        t0 = time.perf_counter()
        probs = _probabilities(seg.network, x, flips)
        preds = [decode(pr, img.shape[:2], bilinear=bilinear) for pr, img in zip(probs, images, strict=True)]
        scores = lesion_scores(preds, truths)
        scores["seconds"] = time.perf_counter() - t0
        results[name] = scores
        print(
            f"{name:24s} dice {scores['dice']:.4f}  sens {scores['sensitivity']:.4f}  "
            f"spec {scores['specificity']:.4f}  ggo {scores['dice_ggo']:.4f}  "
            f"cons {scores['dice_consolidation']:.4f}  ({scores['seconds']:.1f} s)"
        )
    doc = {"model": seg.card.get("name"), "split": args.split, "images": len(images), "variants": results}
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
