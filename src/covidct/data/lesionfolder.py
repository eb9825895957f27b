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

from covidct.data.realistic.donors import (
    LUNG_HU,
    SOFT_TISSUE_HU,
    hu_anchors,
    image_pairs,
    is_validation_image,
    read_pair,
)
from covidct.preprocess import window
from covidct.registry import LUNG_WINDOW

#: Fraction of the field of view the lungs span across on a whole axial chest slice (measured on the real
#: series here: about 0.6-0.7).
LUNG_SPAN = 0.65
#: Grey level under which a pixel of a lung-window image counts as aerated lung.
LUNG_GREY = 110
#: Grey level at or under which a pixel is air outside the lung window (outside the body, trachea).
AIR_GREY = 8


def lung_mask_2d(img: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """Aerated lung (dark, under an Otsu cut) plus the lesions, holes (vessels) filled, components under 2% of the image gone."""
    # aerated lung is dark but not black: air outside the body (and in the trachea) is below the window (0)
    # (the grey levels of soft tissue differ from set to set: the lung/tissue cut is Otsu's, at most LUNG_GREY)
    from skimage.filters import threshold_otsu

    body = img[img > AIR_GREY]
    cut = min(float(threshold_otsu(body)), LUNG_GREY) if body.size > 100 else LUNG_GREY
    lung = ((img > AIR_GREY) & (img < cut)) | (lesion > 0)
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
    # grey levels to HU by the image's own lung and soft-tissue levels, then the lung window, as for CT
    lung, soft = hu_anchors(img, lesion)
    hu = LUNG_HU + (img - lung) * (SOFT_TISSUE_HU - LUNG_HU) / (soft - lung)
    x = np.where(mask, window(hu, LUNG_WINDOW), 0.0).astype(np.float32)
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


def _save_png(dest: Path, x: np.ndarray) -> None:
    """A [0, 1] image as an 8-bit PNG, written atomically (its folder created)."""
    from PIL import Image

    from covidct._files import atomic_write

    png = Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8))
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda tmp: png.save(tmp, format="PNG"))


def patient_of(stem: str) -> str:
    """The patient of a COVID-SemiSeg image: ``Data-<k>`` of a pseudo-label name, else one MedSeg group."""
    return stem.split("_", 1)[0] if stem.startswith("Data-") else "medseg"


def export_slice_folder(
    roots: list[Path] | tuple[Path, ...],
    out: str | Path,
    *,
    image_size: int = 256,
    split: str = "train",
    min_infected_px: int = 200,
) -> dict[str, int]:
    """Write lesion-folder slices as a training image folder (``OUT/<class>/<patient>/<stem>.png``).

    A slice whose mask marks at least ``min_infected_px`` pixels is an infected COVID-19 slice, one with an
    empty mask a normal slice (as COVID-CT-MD labels the clean slices of a COVID-19 patient); slices in
    between are left out as uncertain. Only images of ``split`` (:func:`is_validation_image`) are written,
    so the held-out ones stay unseen. Returns the slice counts per class.
    """
    out = Path(out)
    counts = {"normal": 0, "covid19": 0, "uncertain": 0}
    for root in roots:
        for img_path, mask_path in image_pairs(Path(root)):
            if split != "all" and is_validation_image(img_path.stem) != (split == "val"):
                continue
            img, labels = read_pair(img_path, mask_path)
            area = int((labels > 0).sum())
            cls = "covid19" if area >= min_infected_px else "normal" if area == 0 else "uncertain"
            counts[cls] += 1
            if cls == "uncertain":
                continue
            x = classifier_inputs_from_image(img, labels, image_size)[0]
            dest = out / cls / patient_of(img_path.stem) / f"{img_path.stem}.png"
            _save_png(dest, x)
    return counts


def crop_like_lesion_folder(hu: np.ndarray, lung: np.ndarray, *, quality: int = 90) -> np.ndarray | None:
    """A real CT slice made to look like a lesion-folder image: lung window, 8-bit, cropped to the lungs,
    rotated 90 degrees, JPEG-compressed (``None`` when the slice shows no lung). Normal slices made this way
    give the lesion folders' look to both classes, so that look cannot stand for COVID-19."""
    import io

    from PIL import Image

    from covidct.preprocess import window_uint8

    rows, cols = np.flatnonzero(lung.any(axis=1)), np.flatnonzero(lung.any(axis=0))
    if rows.size < 16 or cols.size < 16:
        return None
    y0, y1 = max(rows[0] - 6, 0), min(rows[-1] + 7, lung.shape[0])
    x0, x1 = max(cols[0] - 6, 0), min(cols[-1] + 7, lung.shape[1])
    img = np.rot90(window_uint8(hu[y0:y1, x0:x1]), 1)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im.convert("L"), dtype=np.float32)


def export_normal_crops(
    hu: np.ndarray, lung: np.ndarray, out: str | Path, *, patient: str, n: int = 40, image_size: int = 256
) -> int:
    """Write up to ``n`` evenly spaced slices of a normal volume, made to look like lesion-folder images
    (:func:`crop_like_lesion_folder`), as ``OUT/normal/<patient>/<k>.png``; returns how many."""
    with_lung = np.flatnonzero((lung > 0).sum(axis=(1, 2)) > 2000)
    picks = (
        with_lung[np.unique(np.linspace(0, with_lung.size - 1, min(n, with_lung.size)).astype(int))]
        if with_lung.size
        else []
    )
    written = 0
    for z in picks:
        img = crop_like_lesion_folder(hu[z], lung[z] > 0)
        if img is None:
            continue
        x = classifier_inputs_from_image(img, np.zeros(img.shape, np.uint8), image_size)[0]
        dest = Path(out) / "normal" / patient / f"{patient}_{int(z):04d}.png"
        _save_png(dest, x)
        written += 1
    return written
