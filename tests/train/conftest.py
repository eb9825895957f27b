"""Tiny, fast phantoms for training tests: NIfTI volumes + ground-truth masks + a manifest CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from covidct.io.volume import CTVolume

SIZE = 48
SLICES = 10


def make_phantom(cls: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hu int16 (z,y,x), lung mask uint8 0/1/2, infected flags (z,)) for one tiny chest phantom.

    Two elliptic lungs of -850 HU in a 0 HU body; COVID-19: faint peripheral ground-glass blobs (-550 HU);
    CAP: dense central consolidation (-50 HU); on the middle slices only (the flags).
    """
    z, n = SLICES, SIZE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    hu = np.full((z, n, n), -1000.0, np.float32)
    body = ((yy - n / 2) / (0.45 * n)) ** 2 + ((xx - n / 2) / (0.47 * n)) ** 2 < 1
    mask = np.zeros((z, n, n), np.uint8)
    flags = np.zeros(z, np.uint8)
    lo, hi = 2, z - 2
    flags[lo:hi] = 0 if cls == "normal" else 1
    for k in range(z):
        sl = np.where(body, 20.0, -1000.0)
        scale = 0.8 + 0.2 * np.sin(np.pi * (k + 0.5) / z)
        for side, cx in ((1, 0.32 * n), (2, 0.68 * n)):  # image left = patient's right
            lung = ((yy - n / 2) / (0.3 * n * scale)) ** 2 + ((xx - cx) / (0.14 * n * scale)) ** 2 < 1
            sl[lung] = -850.0
            mask[k][lung] = side
        if flags[k]:
            lungs = mask[k] > 0
            for _ in range(3):
                if cls == "covid19":
                    cy, cx2, r, v = rng.uniform(0.3, 0.7) * n, rng.choice([0.22, 0.78]) * n, 0.07 * n, -550.0
                else:
                    cy, cx2, r, v = rng.uniform(0.4, 0.6) * n, rng.choice([0.34, 0.66]) * n, 0.11 * n, -50.0
                blob = (yy - cy) ** 2 + (xx - cx2) ** 2 < r**2
                sl[blob & lungs] = v
        hu[k] = sl + rng.normal(0, 15, (n, n))
    return hu.round().astype(np.int16), mask, flags


def write_phantom_set(root: Path, *, per_class: int, seed: int, split: str | None = None) -> Path:
    """``per_class`` phantoms of each class as NIfTI + masks + flags, and ``manifest.csv``; returns the CSV."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for cls in ("normal", "cap", "covid19"):
        for i in range(per_class):
            hu, mask, flags = make_phantom(cls, rng)
            vol = CTVolume(hu, (3.0, 1.0, 1.0))
            name = f"{cls}{i:02d}"
            vol.save(root / f"{name}.nii.gz")
            vol.save(root / f"{name}_lung.nii.gz", mask)
            np.save(root / f"{name}_flags.npy", flags)
            row = {"case": name, "path": f"{name}.nii.gz", "class": cls, "mask": f"{name}_lung.nii.gz"}
            row["slice_labels"] = f"{name}_flags.npy"
            row["split"] = split or ""
            rows.append(row)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "path", "class", "split", "slice_labels", "mask"])
        w.writeheader()
        w.writerows(rows)
    return manifest


@pytest.fixture(scope="session")
def phantom_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_set(tmp_path_factory.mktemp("phantoms") / "train", per_class=4, seed=1)


@pytest.fixture(scope="session")
def phantom_heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_set(tmp_path_factory.mktemp("phantoms") / "heldout", per_class=2, seed=99)


@pytest.fixture
def write_phantoms() -> object:
    """The phantom-set writer itself (tests in importlib mode cannot import this module)."""
    return write_phantom_set


def heldout_slices(classifier_dir: Path, manifest: Path) -> tuple[np.ndarray, np.ndarray]:
    """Slice truth and predicted classes of every study of ``manifest``, through the bundle's own
    preprocessing (``SliceClassifier.predict_volume`` with the studies' ground-truth lung masks)."""
    from covidct.classify import SliceClassifier
    from covidct.data.manifest import read_manifest
    from covidct.data.records import slice_classes
    from covidct.io import load_study

    clf = SliceClassifier.from_bundle(classifier_dir)
    ys, preds = [], []
    for rec in read_manifest(manifest):
        vol = load_study(rec.path)
        mask = np.asarray(load_study(rec.mask_path).hu).astype(np.uint8)  # type: ignore[arg-type]
        truth = slice_classes(rec, vol.n_slices)
        assert truth is not None
        ys.append(truth)
        preds.append(clf.predict_volume(vol, mask).argmax(1))
    return np.concatenate(ys), np.concatenate(preds)


@pytest.fixture
def predict_heldout() -> object:
    """:func:`heldout_slices` (tests in importlib mode cannot import this module)."""
    return heldout_slices
