"""The overlay mosaic used for segmentation previews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.io.volume import CTVolume
from covidct.report.overlay import LABEL_COLOURS, overlay_mosaic, pick_slices


def _volume_and_mask() -> tuple[CTVolume, np.ndarray]:
    hu = np.full((10, 32, 40), -1000, dtype=np.int16)
    hu[:, 8:24, 8:32] = 40
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[3:8, 10:20, 10:18] = 1
    mask[3:8, 10:20, 22:30] = 2
    return CTVolume(hu, (2.0, 1.0, 1.0)), mask


def test_mosaic_shape_and_colours(tmp_path: Path) -> None:
    volume, mask = _volume_and_mask()
    out = tmp_path / "sub" / "preview.png"
    img = overlay_mosaic(volume, mask, n=4, columns=2, path=out)
    assert img.dtype == np.uint8
    assert img.shape == (2 * 32, 2 * 40, 3)
    # the first tile's right-lung outline has the right-lung colour; air outside is dark, tissue bright
    assert tuple(img[10, 10]) == LABEL_COLOURS[1]
    assert tuple(img[10, 22]) == LABEL_COLOURS[2]
    air = round((-1000 + 1200) / 1200 * 255)  # lung window -600/1200: -1000 HU is dark grey
    assert tuple(img[0, 0]) == (air, air, air)
    assert img[23, 20, 0] == img[23, 20, 1] == img[23, 20, 2] > 0
    assert out.exists()
    np.testing.assert_array_equal(np.asarray(Image.open(out)), img)
    assert not list(out.parent.glob(".*partial*"))


def test_pick_slices_spread_over_the_lungs() -> None:
    _, mask = _volume_and_mask()
    picks = pick_slices(mask, 3)
    assert picks == sorted(picks)
    assert all(3 <= z < 8 for z in picks)
    assert len(picks) == 3
    assert pick_slices(np.zeros((5, 2, 2), dtype=np.uint8), 2) == [1, 3]
    with pytest.raises(ValueError):
        pick_slices(mask, 0)


def test_explicit_indices_and_errors() -> None:
    volume, mask = _volume_and_mask()
    img = overlay_mosaic(volume, mask, indices=[0, 9], columns=3)
    assert img.shape == (32, 80, 3)
    with pytest.raises(ValueError, match="outside the volume"):
        overlay_mosaic(volume, mask, indices=[10])
    with pytest.raises(ValueError, match="shape"):
        overlay_mosaic(volume, mask[:5])
