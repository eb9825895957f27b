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


def score_series(diagnoser: Any, record: Any) -> dict[str, Any]:
    """One labelled real series diagnosed by ``diagnoser`` (built with ``classify_all=True``), scored against
    its official slice labels: the answer and slice AUC (infected vs clean, score 1 - p(normal)) of the
    classifier's own probabilities, and under ``"gated"`` those of the gated ones when the diagnoser has a
    lesion gate. ``seconds``: the diagnosis' wall time."""
    import time

    from covidct.data.records import slice_classes
    from covidct.decide import decide
    from covidct.evaluate.metrics import roc_auc

    t = time.perf_counter()
    result = diagnoser.diagnose(record.path)
    seconds = time.perf_counter() - t
    gated = np.asarray(result.probabilities, dtype=np.float64)
    raw = gated if result.classifier_probabilities is None else np.asarray(result.classifier_probabilities)
    truth = slice_classes(record, raw.shape[0])
    infected = (truth != 0) if truth is not None else np.zeros(raw.shape[0], bool)

    def row(probs: np.ndarray, decision: Any) -> dict[str, Any]:
        s = 1.0 - probs[:, 0]
        return {
            "case": record.case,
            "truth": record.diagnosis,
            "diagnosis": decision.diagnosis,
            "counts": decision.to_json()["counts"],
            "slice_auc": roc_auc(infected, s),
            "infected_slices": int(infected.sum()),
            "slices": int(raw.shape[0]),
            "mean_p_infected_on_clean": float(s[~infected].mean()) if (~infected).any() else float("nan"),
            "scores": s.tolist(),
            "infected": infected.astype(int).tolist(),
            "seconds": round(seconds, 1),
        }

    out = row(raw, result.decision if result.classifier_probabilities is None else decide(raw))
    if result.classifier_probabilities is not None:
        out["gated"] = row(gated, result.decision) | {"gated_slices": result.decision.gated_slices}
    return out
