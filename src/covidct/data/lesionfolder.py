"""2-D slice folders with lesion masks (the COVID-SemiSeg layout ``ROOT/Imgs`` + ``ROOT/GT``) as classifier
inputs, to score a slice classifier on real infected slices from outside the COVID-CT-MD series.

The images are 8-bit lung-window slices cropped to the lungs and rotated 90 degrees from the usual display;
no HU survive. :func:`classifier_inputs_from_image` turns one into what the classifier sees at diagnosis
time as closely as the image allows: rotated back, a lung mask estimated from the dark lung (lesions and
vessels filled in), everything outside it set to 0, the crop padded so the lungs span about
:data:`LUNG_SPAN` of the field of view as on a whole 512 x 512 slice, and resized like any slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from covidct.data.realistic.donors import image_pairs, is_validation_image, read_pair

#: Fraction of the field of view the lungs span across on a whole axial chest slice (measured on the real
#: series here: about 0.6-0.7).
LUNG_SPAN = 0.65
#: Grey level under which a pixel of a lung-window image counts as aerated lung.
LUNG_GREY = 110


def lung_mask_2d(img: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """Aerated lung (dark) plus the lesions, holes (vessels) filled, components under 2% of the image gone."""
    lung = (img < LUNG_GREY) | (lesion > 0)
    lung = ndimage.binary_opening(lung, iterations=1)
    border = np.zeros_like(lung)  # air outside the body touches the border of a lung crop only rarely
    lab, n = ndimage.label(lung)
    if n == 0:
        return border
    sizes = ndimage.sum(lung, lab, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= 0.02 * lung.size) + 1
    mask = np.isin(lab, keep)
    mask = ndimage.binary_closing(mask, iterations=3)
    return ndimage.binary_fill_holes(mask)


def classifier_inputs_from_image(img: np.ndarray, lesion: np.ndarray, image_size: int) -> np.ndarray:
    """One lesion-folder image as a classifier input, float32 ``(1, S, S)`` in [0, 1]."""
    from covidct.preprocess import resize_images

    img = np.rot90(np.asarray(img, np.float32), -1)
    lesion = np.rot90(np.asarray(lesion), -1)
    mask = lung_mask_2d(img, lesion)
    x = np.where(mask, img / 255.0, 0.0).astype(np.float32)
    side = int(np.ceil(max(x.shape) / LUNG_SPAN))
    canvas = np.zeros((side, side), np.float32)
    y0, x0 = (side - x.shape[0]) // 2, (side - x.shape[1]) // 2
    canvas[y0 : y0 + x.shape[0], x0 : x0 + x.shape[1]] = x
    return resize_images(canvas[None], image_size)


def lesion_folder_inputs(
    root: str | Path, *, image_size: int, split: str = "val", min_infected_px: int = 200
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Classifier inputs ``(n, 1, S, S)``, infection flags ``(n,)`` and image names of a lesion folder.

    ``split`` "val" keeps the images held out from lesion donation (:func:`is_validation_image`), "all" every
    image. An image counts as infected when its mask marks at least ``min_infected_px`` pixels.
    """
    pairs = image_pairs(Path(root))
    if split == "val":
        pairs = [p for p in pairs if is_validation_image(p[0].stem)]
    xs, flags, names = [], [], []
    for img_path, mask_path in pairs:
        img, labels = read_pair(img_path, mask_path)
        xs.append(classifier_inputs_from_image(img, labels, image_size))
        flags.append(int((labels > 0).sum()) >= min_infected_px)
        names.append(img_path.stem)
    if not xs:
        return np.zeros((0, 1, image_size, image_size), np.float32), np.zeros(0, bool), []
    return np.stack(xs).astype(np.float32), np.asarray(flags, bool), names
