"""The classical lesion baseline: lung mask and HU bands, no learning.

Inside the lung, ground glass is taken where the HU lie in :data:`GGO_HU` and consolidation in
:data:`CONSOLIDATION_HU`; an opening by a disc of :data:`VESSEL_RADIUS_MM` removes the thin bright
structures (vessels, fissures, airway walls) that share those HU. This is how lesions were measured before
learnt segmenters (threshold-based quantification); it is kept as the baseline that shows what the network
adds, and as a fallback needing no weights (``covidct lesions --model classical``). The lower ground-glass
bound and the opening radius were chosen on the 42 training images of COVID-SemiSeg's multiclass set
(-800 HU and 2 mm gave the best mean Dice there, 0.29, of -800/-750/-700/-650 HU x 1/2/3 mm).

For 8-bit slice images (no HU), grey levels go back to HU by the image's own healthy-lung and soft-tissue
levels, and the lung mask is estimated from the dark lung with holes filled
(:func:`covidct.data.lesionfolder.lung_mask_2d`), so dense lesions inside the lung outline are kept.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from scipy import ndimage

from covidct.registry import LesionLabel

#: HU band of ground-glass opacity (hazy increase of lung attenuation, vessels still visible).
GGO_HU: Final[tuple[float, float]] = (-800.0, -300.0)
#: HU band of consolidation (air replaced by fluid or cells).
CONSOLIDATION_HU: Final[tuple[float, float]] = (-300.0, 100.0)
#: Radius of the opening that removes vessels from the thresholded lesions (mm).
VESSEL_RADIUS_MM: Final[float] = 2.0
#: In-plane pixel size assumed for slice images, whose spacing is unknown (mm).
IMAGE_PIXEL_MM: Final[float] = 0.8


def _disc(radius_px: float) -> np.ndarray:
    r = max(1, round(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return np.asarray(yy * yy + xx * xx <= r * r)


def threshold_slice(hu: np.ndarray, lung: np.ndarray, *, pixel_mm: float) -> np.ndarray:
    """Lesion labels of one slice (HU, boolean lung) by the HU bands, vessels opened away."""
    lung = np.asarray(lung, bool)
    out = np.zeros(hu.shape, np.uint8)
    if not lung.any():
        return out
    dense = lung & (hu >= GGO_HU[0]) & (hu < CONSOLIDATION_HU[1])
    dense = ndimage.binary_opening(dense, structure=_disc(VESSEL_RADIUS_MM / pixel_mm))
    out[dense & (hu < GGO_HU[1])] = LesionLabel.GROUND_GLASS
    out[dense & (hu >= CONSOLIDATION_HU[0])] = LesionLabel.CONSOLIDATION
    return out


class ClassicalLesionSegmenter:
    """The threshold baseline with :class:`~covidct.lesions.model.LesionSegmenter`'s interface."""

    def __init__(self) -> None:
        self.card: dict[str, Any] = {
            "kind": "lesions",
            "name": "covidct-classical-lesions",
            "method": f"HU bands {GGO_HU} ground glass, {CONSOLIDATION_HU} consolidation inside the lung, "
            f"opening of {VESSEL_RADIUS_MM} mm",
        }

    def segment_image(self, img: np.ndarray) -> np.ndarray:
        """Lesion labels of one slice image (grey 0..255, cropped to the lungs), at the image's size."""
        from covidct.data.lesionfolder import lung_mask_2d
        from covidct.data.realistic.donors import LUNG_HU, SOFT_TISSUE_HU, hu_anchors

        img = np.asarray(img, np.float32)
        none = np.zeros(img.shape, np.uint8)
        lung = lung_mask_2d(img, none)
        lo, soft = hu_anchors(img, none)
        hu = LUNG_HU + (img - lo) * (SOFT_TISSUE_HU - LUNG_HU) / (soft - lo)
        return threshold_slice(hu, lung, pixel_mm=IMAGE_PIXEL_MM)

    def apply(self, volume: Any, lung_mask: np.ndarray, *, progress: Any | None = None) -> np.ndarray:
        """The lesion mask of a CT volume inside its lung mask (uint8 ``(z, y, x)``)."""
        lung = np.asarray(lung_mask) > 0
        if lung.shape != volume.shape:
            raise ValueError(f"lung mask shape {lung.shape} differs from the volume's {volume.shape}")
        pixel_mm = float(np.mean(volume.spacing[1:]))
        out = np.zeros(volume.shape, np.uint8)
        for z in range(volume.n_slices):
            if lung[z].any():
                out[z] = threshold_slice(np.asarray(volume.hu[z], np.float32), lung[z], pixel_mm=pixel_mm)
            if progress is not None:
                progress.update(1)
        return out
