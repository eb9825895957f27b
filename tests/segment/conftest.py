"""A numeric chest phantom with a known lung mask, for the segmentation tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from covidct.io.volume import CTVolume

SPACING = (4.0, 1.75, 1.75)  # mm (z, y, x)
SHAPE = (48, 192, 192)


@dataclass
class Phantom:
    volume: CTVolume
    truth: np.ndarray  # uint8 0/1/2, 1 = patient's right lung (small x: direction[0, 0] = +1)
    airway: np.ndarray  # bool, trachea and main bronchi
    lesion: np.ndarray  # bool, the consolidation blob (inside the right lung, touching the pleura)


def make_phantom(*, seed: int = 0, gap_mm: float = 40.0, lungs: bool = True, dome: bool = False) -> Phantom:
    """Body ellipse (40 HU) in air; two lung ellipsoids (-850 HU) ``gap_mm`` apart at the midline; a trachea
    (-1000 HU) from the top splitting into two bronchi that enter the lungs; a 0 HU consolidation blob in the
    right lung against the lateral chest wall; with ``dome`` a 40 HU sphere (a diaphragm dome) rising from below
    into the right lung base, so that its top is an island of tissue surrounded by lung in the axial slices.
    Coordinates in mm from the volume centre, LPS (+x = left); ``lesion`` is the dome when ``dome``."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = SHAPE
    z = (np.arange(nz) * SPACING[0])[:, None, None]  # 0 = top (superior)
    y = ((np.arange(ny) - ny / 2) * SPACING[1])[None, :, None]
    x = ((np.arange(nx) - nx / 2) * SPACING[2])[None, None, :]
    hu = np.full(SHAPE, -1000.0)
    body = (x / 150.0) ** 2 + (y / 110.0) ** 2 <= 1.0
    hu[np.broadcast_to(body, SHAPE)] = 40.0
    truth = np.zeros(SHAPE, dtype=np.uint8)
    half = gap_mm / 2
    right = ((x + half + 50.0) / 50.0) ** 2 + (y / 70.0) ** 2 + ((z - 110.0) / 80.0) ** 2 <= 1.0
    left = ((x - half - 50.0) / 50.0) ** 2 + (y / 70.0) ** 2 + ((z - 110.0) / 80.0) ** 2 <= 1.0
    lesion = np.zeros(SHAPE, dtype=bool)
    if lungs:
        truth[right] = 1
        truth[left & ~right] = 2
        hu[truth > 0] = -850.0
        lesion = right & ((x + half + 88.0) ** 2 + y**2 + (z - 110.0) ** 2 <= 16.0**2)
        hu[lesion] = 0.0
        if dome:
            lesion = np.broadcast_to(body, SHAPE) & (
                (x + half + 50.0) ** 2 + y**2 + (z - 200.0) ** 2 <= 50.0**2
            )
            truth[lesion] = 0
            hu[lesion] = 40.0
    trachea = (x**2 + (y + 25.0) ** 2 <= 8.0**2) & (z <= 60.0)
    airway = np.broadcast_to(trachea, SHAPE).copy()
    if lungs:
        for sign in (-1.0, 1.0):  # bronchi: from the carina (z 60) out to the lungs (x +-(half+15), z 90)
            t = np.clip((z - 60.0) / 30.0, 0.0, 1.0)
            cx = sign * t * (half + 15.0)
            bronchus = ((x - cx) ** 2 + (y + 25.0 * (1 - t)) ** 2 <= 6.0**2) & (z >= 56.0) & (z <= 90.0)
            airway |= bronchus & (truth == 0)
    hu[airway] = -1000.0
    hu += rng.normal(0.0, 20.0, size=SHAPE)
    volume = CTVolume(np.clip(hu, -1024, 3000).astype(np.int16), SPACING, direction=np.diag([1.0, 1.0, -1.0]))
    return Phantom(volume, truth, airway, lesion)


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return make_phantom()


@pytest.fixture(name="make_phantom", scope="session")
def make_phantom_fixture() -> Callable[..., Phantom]:
    """The phantom builder itself, for tests that need other variants."""
    return make_phantom
