"""Involvement figures on masks whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.lesions.quantify import MAX_TOTAL, involvement, pan_score, zone_slices


@pytest.mark.parametrize(
    ("percent", "score"),
    [
        (0.0, 0),
        (0.01, 1),
        (4.99, 1),
        (5.0, 2),
        (25.0, 2),
        (25.01, 3),
        (49.9, 3),
        (50.0, 4),
        (75.0, 4),
        (75.1, 5),
        (100.0, 5),
    ],
)
def test_pan_bands(percent: float, score: int) -> None:
    assert pan_score(percent) == score


def test_pan_score_is_zero_without_lesion_voxels() -> None:
    assert pan_score(0.0, 0) == 0
    assert pan_score(float("nan")) == 0


def test_zone_slices_cut_each_lungs_own_extent_in_thirds() -> None:
    z = np.zeros(20, bool)
    z[5:17] = True
    assert zone_slices(z) == [(5, 9), (9, 13), (13, 17)]
    assert zone_slices(np.zeros(4, bool)) == [(0, 0)] * 3


def test_involvement_counts_volumes_zones_scores_and_worst_slice() -> None:
    lung = np.zeros((9, 10, 20), np.uint8)
    lung[0:9, :, 0:10] = 1  # right lung: 9 slices of 100 voxels
    lung[3:9, :, 10:20] = 2  # left lung: slices 3-8
    les = np.zeros_like(lung)
    les[7, 0:6, 0:10] = 1  # right lower third (slices 6-8): 60 of 300 voxels = 20 % ground glass
    les[8, 0:1, 0:10] = 2  # + 10 voxels consolidation -> 70/300 = 23.3 %
    les[0, 0, 15] = 1  # outside every lung: not counted
    doc = involvement(les, lung, (20.0, 10.0, 10.0))  # 2 ml a voxel
    right = doc["lungs"]["right"]
    assert right["lung_ml"] == pytest.approx(900 * 2.0)
    lower = right["zones"]["lower"]
    assert lower["slices"] == [6, 9]
    assert lower["ground_glass_ml"] == pytest.approx(120.0)
    assert lower["consolidation_ml"] == pytest.approx(20.0)
    assert lower["percent"] == pytest.approx(100 * 70 / 300, abs=0.01)
    assert lower["score"] == 2
    assert right["zones"]["upper"]["score"] == 0
    left = doc["lungs"]["left"]
    assert left["zones"]["upper"]["slices"] == [3, 5]
    assert left["lesion_ml"] == 0
    assert doc["total"]["score"] == 2
    assert doc["total"]["score_max"] == MAX_TOTAL == 30
    assert doc["total"]["lesion_ml"] == pytest.approx(140.0)
    assert doc["worst_slice"] == {"index": 7, "percent_of_lung": 30.0}


def test_involvement_without_lesions_has_no_worst_slice() -> None:
    lung = np.ones((3, 4, 4), np.uint8)
    doc = involvement(np.zeros_like(lung), lung, (1.0, 1.0, 1.0))
    assert doc["worst_slice"] is None
    assert doc["total"]["score"] == 0


def test_involvement_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same 3-D shape"):
        involvement(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 4), np.uint8), (1.0, 1.0, 1.0))
