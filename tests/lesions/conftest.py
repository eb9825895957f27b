"""Tiny synthetic lesion data: slice-image folders with masks, a chest volume with known lesions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.io.volume import CTVolume

SPACING = (5.0, 1.5, 1.5)  # mm (z, y, x)
SHAPE = (30, 160, 160)


def slice_image(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit lung-window-like crop (dark lungs, brighter tissue) and a 0/1/2 lesion mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), 200.0)
    for cx in (size * 0.3, size * 0.7):
        img[((xx - cx) / (size * 0.18)) ** 2 + ((yy - size / 2) / (size * 0.4)) ** 2 <= 1] = 50.0
    mask = np.zeros((size, size), np.uint8)
    cy, cx = size / 2 + rng.integers(-8, 8), size * 0.3
    ggo = (xx - cx) ** 2 + (yy - cy) ** 2 <= (size * 0.1) ** 2
    cons = (xx - size * 0.7) ** 2 + (yy - size / 2) ** 2 <= (size * 0.05) ** 2
    img[ggo], mask[ggo] = 120.0, 1
    img[cons], mask[cons] = 190.0, 2
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_lesion_folder(root: Path, n: int, *, binary: bool = False, size: int = 96) -> Path:
    """``root/Imgs/<i>.png`` + ``root/GT/<i>.png`` (0/1/2, or 0/255 when ``binary``)."""
    (root / "Imgs").mkdir(parents=True)
    (root / "GT").mkdir()
    for i in range(n):
        img, mask = slice_image(i, size)
        Image.fromarray(img).save(root / "Imgs" / f"{i}.png")
        m = np.where(mask > 0, 255, 0).astype(np.uint8) if binary else mask
        Image.fromarray(m).save(root / "GT" / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def lesion_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lesion_folder(tmp_path_factory.mktemp("semiseg") / "multiclass", 12)


@dataclass
class Chest:
    volume: CTVolume
    lung: np.ndarray  # 0/1/2
    lesions: np.ndarray  # 0/1/2


def make_chest(*, lungs: bool = True) -> Chest:
    """Body ellipse in air, two lung ellipsoids (-850 HU) and, in the right lung's lower third, a ground-glass
    ball (-500 HU) and a consolidation ball (20 HU)."""
    rng = np.random.default_rng(0)
    nz, ny, nx = SHAPE
    z = (np.arange(nz) * SPACING[0])[:, None, None]
    y = ((np.arange(ny) - ny / 2) * SPACING[1])[None, :, None]
    x = ((np.arange(nx) - nx / 2) * SPACING[2])[None, None, :]
    hu = np.full(SHAPE, -1000.0)
    hu[np.broadcast_to((x / 110.0) ** 2 + (y / 80.0) ** 2 <= 1.0, SHAPE)] = 40.0
    lung = np.zeros(SHAPE, np.uint8)
    lesions = np.zeros(SHAPE, np.uint8)
    if lungs:
        for value, cx in ((1, -50.0), (2, 50.0)):
            lung[((x - cx) / 38.0) ** 2 + (y / 55.0) ** 2 + ((z - 75.0) / 65.0) ** 2 <= 1.0] = value
        hu[lung > 0] = -850.0
        ggo = (lung == 1) & ((x + 55.0) ** 2 + (y - 10.0) ** 2 + (z - 110.0) ** 2 <= 14.0**2)
        cons = (lung == 1) & ((x + 45.0) ** 2 + (y + 25.0) ** 2 + (z - 115.0) ** 2 <= 9.0**2)
        hu[ggo], lesions[ggo] = -500.0, 1
        hu[cons], lesions[cons] = 20.0, 2
    hu += rng.normal(0.0, 10.0, SHAPE)
    vol = CTVolume(np.clip(hu, -1024, 3000).astype(np.int16), SPACING, direction=np.diag([1.0, 1.0, -1.0]))
    return Chest(vol, lung, lesions)


@pytest.fixture(scope="session")
def chest() -> Chest:
    return make_chest()


@pytest.fixture(scope="session")
def lesion_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from covidct.testing import random_lesion_bundle

    return random_lesion_bundle(tmp_path_factory.mktemp("lesion_bundle") / "lesions")
