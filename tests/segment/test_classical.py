"""Classical lung segmentation on a numeric phantom with a known mask."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import NotChestCTError
from covidct.io.volume import CTVolume
from covidct.segment import ClassicalSegmenter, Segmenter, get_segmenter
from covidct.segment.classical import auto_downsample
from covidct.segment.quality import dice


@pytest.fixture(scope="module")
def result(phantom):  # type: ignore[no-untyped-def]
    return ClassicalSegmenter().apply(phantom.volume)


def test_output_type_shape_and_labels(phantom, result) -> None:  # type: ignore[no-untyped-def]
    assert result.dtype == np.uint8
    assert result.shape == phantom.volume.shape
    assert set(np.unique(result).tolist()) == {0, 1, 2}


def test_dice_per_lung_on_phantom(phantom, result) -> None:  # type: ignore[no-untyped-def]
    assert dice(result, phantom.truth, 1) >= 0.95
    assert dice(result, phantom.truth, 2) >= 0.95


def test_right_lung_is_at_small_x_for_lps_columns(phantom, result) -> None:  # type: ignore[no-untyped-def]
    xs = np.arange(result.shape[2])
    right_x = xs[np.nonzero(result == 1)[2]].mean()
    left_x = xs[np.nonzero(result == 2)[2]].mean()
    assert right_x < result.shape[2] / 2 < left_x


def test_consolidation_against_the_pleura_stays_in_the_lung(phantom, result) -> None:  # type: ignore[no-untyped-def]
    assert phantom.lesion.sum() > 100
    assert np.mean(result[phantom.lesion] == 1) >= 0.95


def test_trachea_and_bronchi_are_removed(phantom, result) -> None:  # type: ignore[no-untyped-def]
    # trachea, carina and the extrapulmonary bronchi (z <= 72 mm, slices 0-18) are all background; only the
    # last bronchial segment, where it merges with the lung in the axial plane, may be kept
    upper = phantom.airway[:19]
    assert upper.sum() > 1000
    assert not result[:19][upper].any()
    assert np.mean(result[phantom.airway] > 0) < 0.15


def test_mediastinum_is_not_swallowed(phantom, result) -> None:  # type: ignore[no-untyped-def]
    # the soft tissue between the lungs (a 30 mm band on the midline, outside the airways) stays background
    mid = result.shape[2] // 2
    band = result[:, :, mid - 8 : mid + 8]
    assert np.mean(band[~phantom.airway[:, :, mid - 8 : mid + 8]] > 0) < 0.01


def test_flipped_columns_swap_the_labels(phantom, result) -> None:  # type: ignore[no-untyped-def]
    v = phantom.volume
    flipped = CTVolume(v.hu[:, :, ::-1].copy(), v.spacing, direction=np.diag([-1.0, 1.0, -1.0]))
    out = ClassicalSegmenter().apply(flipped)
    np.testing.assert_array_equal(out[:, :, ::-1], result)


@pytest.mark.parametrize("gap_mm", [0.0, -10.0])
def test_touching_lungs_are_split(make_phantom, gap_mm: float) -> None:  # type: ignore[no-untyped-def]
    ph = make_phantom(gap_mm=gap_mm, seed=1)
    out = ClassicalSegmenter().apply(ph.volume)
    assert dice(out, ph.truth, 1) >= 0.95
    assert dice(out, ph.truth, 2) >= 0.95


def test_diaphragm_dome_is_not_filled_in(make_phantom) -> None:  # type: ignore[no-untyped-def]
    ph = make_phantom(dome=True, seed=2)
    out = ClassicalSegmenter().apply(ph.volume)
    ring = ph.lesion[38:42]  # slices where the dome's top is an island surrounded by lung
    assert ring.sum() > 500
    assert not (ph.truth[38:42][ring]).any()
    assert np.mean(out[38:42][ring] > 0) < 0.1  # 1.0 when every slice hole is filled
    assert dice(out, ph.truth, 1) >= 0.95


def test_no_lungs_raises_not_chest_ct(make_phantom) -> None:  # type: ignore[no-untyped-def]
    ph = make_phantom(lungs=False)
    with pytest.raises(NotChestCTError, match="no lungs"):
        ClassicalSegmenter().apply(ph.volume)


def test_empty_air_volume_raises_not_chest_ct() -> None:
    v = CTVolume(np.full((4, 32, 32), 40, dtype=np.int16), (2.0, 1.0, 1.0))
    with pytest.raises(NotChestCTError):
        ClassicalSegmenter().apply(v)


def test_odd_sizes_and_no_downsampling_keep_the_shape(phantom) -> None:  # type: ignore[no-untyped-def]
    v = phantom.volume
    odd = CTVolume(v.hu[:, 1:, 3:].copy(), v.spacing)
    out = ClassicalSegmenter(downsample=2).apply(odd)  # odd sizes are padded for the block mean
    assert out.shape == odd.shape
    assert dice(out, phantom.truth[:, 1:, 3:], 1) >= 0.95
    full = ClassicalSegmenter(downsample=1).apply(v)
    assert dice(full, phantom.truth, 1) >= 0.95


def test_deterministic(phantom, result) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_array_equal(ClassicalSegmenter().apply(phantom.volume), result)


def test_downsampling_factor_follows_the_grid() -> None:
    assert auto_downsample((100, 512, 512), (1.0, 0.7, 0.7)) == 2
    assert auto_downsample((100, 512, 512), (1.0, 1.25, 1.25)) == 1  # coarse pixels: keep them
    assert auto_downsample((40, 256, 256), (5.0, 0.9, 0.9)) == 1
    assert auto_downsample((40, 128, 128), (5.0, 2.8, 2.8)) == 1


def test_default_downsampling_is_chosen_per_volume(phantom) -> None:  # type: ignore[no-untyped-def]
    v = phantom.volume  # 192 x 192: not downsampled by default
    np.testing.assert_array_equal(ClassicalSegmenter().apply(v), ClassicalSegmenter(downsample=1).apply(v))


def test_bad_downsample_is_refused() -> None:
    with pytest.raises(ValueError, match="downsample"):
        ClassicalSegmenter(downsample=0)


def test_get_segmenter() -> None:
    from covidct.errors import ConfigError

    seg = get_segmenter("classical")
    assert isinstance(seg, Segmenter)
    assert seg.name == "classical"
    with pytest.raises(ConfigError, match="unknown segmentation method"):
        get_segmenter("magic")
    with pytest.raises(ConfigError, match="model"):
        get_segmenter("unet")


def _notched_lung() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axial slice: a body disk, a lung disk inside its wall with a bite out of it against the chest wall
    (consolidation or, under a dome, the liver); returns body, lung with the bite, the bite."""
    yy, xx = np.mgrid[:128, :128]
    body = (yy - 64) ** 2 + (xx - 64) ** 2 <= 60**2
    disk = (yy - 64) ** 2 + (xx - 30) ** 2 <= 18**2
    bite = disk & (xx < 20) & (np.abs(yy - 64) < 8)
    return body, disk & ~bite, bite


def test_wall_concavity_is_filled_only_where_it_rests_on_lung() -> None:
    from covidct.segment.fill import _fill_wall_pockets, _LazyDepth

    body, lung, bite = _notched_lung()
    filled = _fill_wall_pockets(lung, _LazyDepth(body, 1.0), 64.0)  # no slice below: in-plane rule alone
    assert filled[bite].mean() > 0.8  # the lid is a straight chord: the rim of the bite stays out
    on_lung = _fill_wall_pockets(lung, _LazyDepth(body, 1.0), 64.0, below=lung | bite)
    np.testing.assert_array_equal(on_lung[bite], filled[bite])
    on_abdomen = _fill_wall_pockets(lung, _LazyDepth(body, 1.0), 64.0, below=np.zeros_like(lung))
    assert not on_abdomen[bite].any()
    np.testing.assert_array_equal(on_abdomen, lung)


def test_lobar_consolidation_from_wall_to_mediastinum_stays_in_the_lung(make_phantom) -> None:  # type: ignore[no-untyped-def]
    """The anterior half of the right lung consolidated (20 HU) over 10 slices above aerated lung: no hull
    concavity (it reaches the mediastinum), filled from the lung of the slices below."""
    ph = make_phantom()
    hu = ph.volume.hu.copy()
    rows = np.arange(hu.shape[1])[None, :, None]
    lobe = (ph.truth == 1) & (rows < hu.shape[1] // 2)
    lobe[:18] = False
    lobe[28:] = False
    hu[lobe] = 20
    out = ClassicalSegmenter().apply(CTVolume(hu, ph.volume.spacing, direction=ph.volume.direction))
    assert np.mean(out[lobe] == 1) >= 0.9
    assert dice(out, ph.truth, 1) >= 0.95
    assert dice(out, ph.truth, 2) >= 0.95
    # what it adds outside the lung is at most a rim where the lung widens downwards (prior from below)
    extra = np.count_nonzero((out > 0) & (ph.truth == 0)) - np.count_nonzero(
        (ClassicalSegmenter().apply(ph.volume) > 0) & (ph.truth == 0)
    )
    assert extra <= 0.1 * np.count_nonzero(lobe)
