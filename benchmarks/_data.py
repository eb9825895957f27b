"""Benchmark inputs: real COVID-CT-MD series when present, synthetic slices otherwise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from _common import SHARED_DATA

logger = logging.getLogger("benchmarks")

SERIES = {
    "P001": "covid-ct-md/Sample data/COVID-19 subjects/P001",
    "cap001": "covid-ct-md/Sample data/Cap subjects/cap001",
    "normal001": "covid-ct-md/Sample data/Normal subjects/normal001",
}


def real_series() -> dict[str, Path]:
    """The sample series that exist on this machine (name -> folder)."""
    out = {}
    for name, rel in SERIES.items():
        p = SHARED_DATA / rel
        if p.is_dir():
            out[name] = p
    return out


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def crude_lung_mask(hu: np.ndarray) -> np.ndarray:
    """Air inside the body (HU < -320, not connected to the image border): a stand-in lung mask, 0/1 uint8."""
    from scipy import ndimage

    air = hu < -320
    out = np.zeros(hu.shape, dtype=np.uint8)
    for z in range(hu.shape[0]):
        lab, n = ndimage.label(air[z])
        if n == 0:
            continue
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        keep = np.isin(lab, border, invert=True) & (lab > 0)
        out[z] = ndimage.binary_opening(keep, iterations=2)
    return out


def real_classifier_inputs(volume: Any, *, size: int = 224) -> tuple[np.ndarray, str]:
    """Classifier inputs for every slice of a loaded real series, and a note on how they were made."""
    from covidct.preprocess import classifier_inputs

    x = classifier_inputs(volume, crude_lung_mask(volume.hu), image_size=size)
    return x, "covidct.io.load_study; crude mask; preprocess.classifier_inputs"


def synthetic_inputs(n: int, *, size: int = 224, seed: int = 0) -> np.ndarray:
    """Smooth random slices in [0, 1] (stand-ins when no real data is present)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.random((n, 1, size // 16, size // 16), dtype=np.float32))
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).numpy()
