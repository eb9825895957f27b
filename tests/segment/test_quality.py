"""Dice, voxel counts and volumes of lung masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidct.segment.quality import dice, lung_volumes_ml, lung_voxel_counts, mask_summary


def test_dice_values() -> None:
    a = np.zeros((2, 4, 4), dtype=np.uint8)
    b = np.zeros_like(a)
    a[0, :2] = 1  # 8 voxels
    b[0, :1] = 1  # 4 voxels, all inside a
    assert dice(a, b) == pytest.approx(2 * 4 / 12)
    assert dice(a, a) == 1.0
    assert dice(a, b, label=2) != dice(a, b, label=2)  # NaN: both empty
    assert math.isnan(dice(np.zeros((3,)), np.zeros((3,))))
    c = np.zeros_like(a)
    c[1] = 1
    assert dice(a, c) == 0.0


def test_dice_per_label() -> None:
    a = np.array([1, 1, 2, 2, 0])
    b = np.array([1, 2, 2, 2, 0])
    assert dice(a, b, label=1) == pytest.approx(2 * 1 / 3)
    assert dice(a, b, label=2) == pytest.approx(2 * 2 / 5)
    assert dice(a, b) == 1.0  # any lung vs any lung


def test_dice_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_counts_and_volumes() -> None:
    m = np.zeros((2, 10, 10), dtype=np.uint8)
    m[0, :3] = 1  # 30
    m[1, :5] = 2  # 50
    assert lung_voxel_counts(m) == {"background": 120, "right_lung": 30, "left_lung": 50}
    vol = lung_volumes_ml(m, (2.0, 0.5, 0.5))  # 0.5 mm³ a voxel
    assert vol["right"] == pytest.approx(30 * 0.5 / 1000)
    assert vol["left"] == pytest.approx(50 * 0.5 / 1000)
    doc = mask_summary(m, (10.0, 10.0, 10.0))
    assert doc == {
        "voxels": {"background": 120, "right_lung": 30, "left_lung": 50},
        "volume_ml": {"right": 30.0, "left": 50.0},
    }


def test_counts_refuse_other_values() -> None:
    with pytest.raises(ValueError, match="0, 1 and 2"):
        lung_voxel_counts(np.array([0, 1, 3], dtype=np.uint8))
