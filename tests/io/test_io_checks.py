"""The chest-CT check on synthetic volumes: lungs found, bowel gas and outside air not mistaken for lung."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import NotChestCTError
from covidct.io import CTVolume, check_chest_ct, require_chest_ct

N, SIZE = 10, 128
SPACING = (5.0, 2.5, 2.5)  # a 320 mm field of view


def _ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _body(rng: np.random.Generator) -> np.ndarray:
    hu = np.full((N, SIZE, SIZE), -1000.0)
    hu[:, _ellipse(64, 64, 45, 58)] = 40.0
    return hu + rng.normal(0, 10, hu.shape)


def _chest(rng: np.random.Generator, lung_slices: range = range(N)) -> np.ndarray:
    hu = _body(rng)
    for k in lung_slices:
        for cx in (40, 88):
            lung = _ellipse(62, cx, 30, 18)
            hu[k][lung] = rng.normal(-850, 40, lung.sum())
            vessels = lung & (rng.random((SIZE, SIZE)) < 0.05)
            hu[k][vessels] = 40.0
    return hu


def _volume(hu: np.ndarray) -> CTVolume:
    return CTVolume(np.clip(hu, -1024, 3000).astype(np.int16), SPACING)


def test_lungs_make_a_chest_ct() -> None:
    result = check_chest_ct(_volume(_chest(np.random.default_rng(0))))
    assert result.is_chest_ct, result.reason
    assert result.lung_slices == N
    # two ellipses of about pi*75*45 mm^2 each, over 10 slices of 5 mm
    expected_ml = 2 * np.pi * 75 * 45 * 50 / 1000
    assert result.lung_air_ml == pytest.approx(expected_ml, rel=0.15)
    assert require_chest_ct(_volume(_chest(np.random.default_rng(1)))).is_chest_ct


def test_bowel_gas_is_not_lung() -> None:
    rng = np.random.default_rng(2)
    hu = _body(rng)
    for k in range(N):
        for cy, cx, r in ((50, 40, 9), (70, 80, 11), (85, 55, 8)):  # gas pockets of 16-24 cm^2, pure air
            hu[k][_ellipse(cy, cx, r, r)] = rng.normal(-1000, 15, _ellipse(cy, cx, r, r).sum())
    result = check_chest_ct(_volume(hu))
    assert not result.is_chest_ct
    assert result.lung_slices == 0 and result.rejected_air_ml > 50
    assert "bowel gas" in result.reason
    with pytest.raises(NotChestCTError, match="not a chest CT"):
        require_chest_ct(_volume(hu), source="abdomen.zip")


def test_outside_air_does_not_count() -> None:
    hu = np.full((N, SIZE, SIZE), -1000.0)  # nothing but air, all of it connected to the border
    result = check_chest_ct(_volume(hu))
    assert not result.is_chest_ct and result.lung_slices == 0 and result.rejected_air_ml == 0


def test_a_few_lung_slices_at_the_top_of_an_abdomen_are_not_enough() -> None:
    rng = np.random.default_rng(3)
    hu = np.concatenate([_chest(rng, range(1)), _body(rng), _body(rng)])  # 1 lung slice of 30
    vol = CTVolume(np.clip(hu, -1024, 3000).astype(np.int16), SPACING)
    result = check_chest_ct(vol)
    assert result.lung_slices == 1 and not result.is_chest_ct
    assert "too little lung" in result.reason
