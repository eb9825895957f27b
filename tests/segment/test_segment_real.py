"""Classical segmentation on real chest CT in ../shared/data (skipped where the data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidct.io import load_study
from covidct.segment import ClassicalSegmenter
from covidct.segment.quality import lung_volumes_ml, lung_voxel_counts

pytestmark = pytest.mark.shared_data

#: lungmask R231 on more-ct/lidc-two-slices (../shared/data/README.md).
R231_LIDC = {"right_lung": 64_752, "left_lung": 36_536}


def test_lidc_two_slices_within_10_percent_of_r231(more_ct: Path) -> None:
    volume = load_study(more_ct / "lidc-two-slices")
    counts = lung_voxel_counts(ClassicalSegmenter().apply(volume))
    for name, reference in R231_LIDC.items():
        assert abs(counts[name] - reference) <= 0.10 * reference, (name, counts[name], reference)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("series", "infected"),
    [("p001_dir", range(26, 125)), ("cap001_dir", range(48, 139)), ("normal001_dir", range(0))],
)
def test_covid_ct_md_series(request: pytest.FixtureRequest, series: str, infected: range) -> None:
    volume = load_study(request.getfixturevalue(series))
    mask = ClassicalSegmenter().apply(volume)
    volumes = lung_volumes_ml(mask, volume.spacing)
    assert 2000 <= volumes["right"] + volumes["left"] <= 8000, volumes
    assert min(volumes.values()) >= 0.3 * max(volumes.values()), volumes
    # the right lung lies at small column indices (LPS), the left at large ones
    xs = np.arange(mask.shape[2])
    assert xs[np.nonzero(mask == 1)[2]].mean() < xs[np.nonzero(mask == 2)[2]].mean()
    # every infected slice holds lung on both sides
    for z in infected:
        assert (mask[z] == 1).any() and (mask[z] == 2).any(), z


def test_abdominal_series_is_refused(more_ct: Path) -> None:
    from covidct.errors import NotChestCTError

    volume = load_study(more_ct / "abdomen-j2k")
    with pytest.raises(NotChestCTError, match="no lungs found"):
        ClassicalSegmenter().apply(volume)
