"""Benchmark inputs: real COVID-CT-MD series when present, synthetic volumes otherwise.

Each helper prefers the project's own component (``covidct.io``, ``covidct.segment``, ``covidct.preprocess``)
and falls back to a small local equivalent when that component is not there yet, saying which it used.
"""

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


def _decode_one(path: str) -> tuple[float, np.ndarray]:
    import pydicom

    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return float(ds.ImagePositionPatient[2]), hu.astype(np.int16)


def load_hu(folder: Path) -> tuple[np.ndarray, str]:
    """HU volume (z, y, x) int16, slice 0 most superior, and which loader was used."""
    try:
        from covidct.io import load_study

        vol = load_study(folder)
        return np.asarray(vol.hu), "covidct.io.load_study"
    except ImportError:
        pass
    pairs = [_decode_one(str(p)) for p in dicom_files(folder)]
    pairs.sort(key=lambda t: -t[0])  # superior (largest z) first
    return np.stack([p[1] for p in pairs]), "pydicom (covidct.io not available)"


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


def lung_mask(volume: Any, hu: np.ndarray) -> tuple[np.ndarray, str]:
    try:
        from covidct.segment import get_segmenter

        return get_segmenter("classical").apply(volume), "covidct classical segmenter"
    except (ImportError, AttributeError, NotImplementedError):
        return crude_lung_mask(hu), "crude threshold mask (classical segmenter not available)"


def classifier_slices(hu: np.ndarray, mask: np.ndarray, *, size: int = 224) -> np.ndarray:
    """Lung-window slices with outside-lung set to 0, resized: float32 (n, 1, size, size)."""
    import torch
    import torch.nn.functional as F

    from covidct.preprocess import window

    img = window(hu) * (mask > 0)
    t = torch.from_numpy(img[:, None].astype(np.float32))
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).numpy()


def real_classifier_inputs(folder: Path, *, size: int = 224) -> tuple[np.ndarray, str]:
    """Classifier inputs for every slice of a real series, and a note on how they were made."""
    hu, how = load_hu(folder)
    mask = crude_lung_mask(hu)
    try:
        from covidct.io.volume import CTVolume
        from covidct.preprocess import classifier_inputs

        vol = CTVolume(hu=hu, spacing=(2.0, 0.7, 0.7))
        return classifier_inputs(
            vol, mask, image_size=size
        ), f"{how}; crude mask; preprocess.classifier_inputs"
    except Exception:
        return classifier_slices(hu, mask, size=size), f"{how}; crude mask; local lung-window + resize"


def synthetic_inputs(n: int, *, size: int = 224, seed: int = 0) -> np.ndarray:
    """Smooth random slices in [0, 1] (stand-ins when no real data is present)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.random((n, 1, size // 16, size // 16), dtype=np.float32))
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).numpy()
