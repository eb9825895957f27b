"""2-D lesion folders: slice images with lesion masks, read as lesion-network inputs and targets.

Layout (COVID-SemiSeg's, and the generic one): ``ROOT/Imgs/<name>.jpg|png`` with ``ROOT/GT/<name>.png``.
Images are 8-bit lung-window slices cropped to the lungs, in any orientation (the network is trained with
all eight quarter-turns and mirrorings, so it does not depend on it). Masks are read by their values:

- ``0/1/2`` only: background, ground glass, consolidation (COVID-SemiSeg ``multiclass``);
- anything else (``0/255`` or grey levels): infection of either kind where the value is at least 128
  (``doctor-label``, and the model-made ``pseudo-label`` masks). Such pixels get the target
  :data:`~covidct.registry.LESION_ANY`, "lesion, type not given": the loss then asks only that ground glass
  plus consolidation be likely there (see :func:`covidct.train.lesions.partial_label_loss`).

Which images a folder gives is chosen by ``split``: ``"train"`` / ``"val"`` by a fixed hash of the image name
(:func:`covidct.data.realistic.donors.is_validation_image`, the same fifth that realistic cohorts never use
as lesion donors), or ``"all"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidct.data.realistic.donors import image_pairs, is_validation_image
from covidct.errors import InputError
from covidct.registry import LESION_ANY, LESION_WINDOW

SPLITS = ("train", "val", "all")


@dataclass
class LesionSlices:
    """Network inputs ``x`` (n, S, S) float16 in [0, 1], targets ``y`` (n, S, S) uint8 (0/1/2/LESION_ANY)."""

    x: np.ndarray
    y: np.ndarray
    names: list[str]
    source: str
    multiclass: bool


def read_image(path: Path) -> np.ndarray:
    """A slice image as grey levels, float32 0..255 (InputError naming the file when it is not an image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{path}: not a readable image ({exc}); remove it or convert it to PNG") from None


def read_mask(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """Lesion targets of a mask file and whether they carry the lesion type (see the module text)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # palette masks hold their class indices: no colour conversion
            m = np.asarray(im if im.mode in ("L", "P", "I", "I;16") else im.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{path}: not a readable mask image ({exc}); replace it") from None
    m = m if m.ndim == 2 else m[..., 0]
    if m.shape != tuple(shape):
        raise InputError(f"{path}: mask size {m.shape} differs from its image {tuple(shape)}; fix the mask")
    if m.max() <= 2:
        return m.astype(np.uint8), True
    return np.where(m >= 128, LESION_ANY, 0).astype(np.uint8), False


def image_inputs(img: np.ndarray, image_size: int) -> np.ndarray:
    """A slice image (grey 0..255, cropped to the lungs) as a network input ``(S, S)`` in [0, 1].

    8-bit sets differ in the window they were exported with, so grey levels go back to HU by the image's own
    healthy-lung and soft-tissue levels (:func:`~covidct.data.realistic.donors.hu_anchors`), then through
    :data:`~covidct.registry.LESION_WINDOW` as a CT slice is (:func:`covidct.lesions.inputs.slice_inputs`).
    """
    from covidct.data.realistic.donors import LUNG_HU, SOFT_TISSUE_HU, hu_anchors
    from covidct.preprocess import resize_images, window

    img = np.asarray(img, np.float32)
    lung, soft = hu_anchors(img, np.zeros(img.shape, np.uint8))
    hu = LUNG_HU + (img - lung) * (SOFT_TISSUE_HU - LUNG_HU) / (soft - lung)
    hu = np.where(img <= 3, -1024.0, hu)  # black: air outside the window
    return resize_images(window(hu, LESION_WINDOW)[None], image_size)[0]


def resize_targets(y: np.ndarray, image_size: int) -> np.ndarray:
    """Targets resized with nearest neighbour to ``(S, S)``."""
    from covidct.preprocess import resize_labels

    return np.asarray(resize_labels(y[None], image_size)[0], dtype=np.uint8)


def read_lesion_folder(root: str | Path, *, image_size: int, split: str = "all") -> LesionSlices:
    """Every image of ``root`` in ``split`` as inputs and targets (InputError for a folder in no known layout)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    pairs = image_pairs(root)
    if split != "all":
        pairs = [p for p in pairs if is_validation_image(p[0].stem) == (split == "val")]
    xs, ys, names, typed = [], [], [], []
    for img_path, mask_path in pairs:
        img = read_image(img_path)
        y, has_type = read_mask(mask_path, img.shape)
        xs.append(image_inputs(img, image_size).astype(np.float16))
        ys.append(resize_targets(y, image_size))
        names.append(img_path.stem)
        typed.append(has_type)
    n = len(xs)
    x = np.stack(xs) if n else np.zeros((0, image_size, image_size), np.float16)
    y = np.stack(ys) if n else np.zeros((0, image_size, image_size), np.uint8)
    return LesionSlices(x=x, y=y, names=names, source=str(root), multiclass=bool(n) and all(typed))


def list_images(folder: str | Path) -> list[Path]:
    """The slice images of a folder to segment (``Imgs/`` inside it when there is one), sorted by name."""
    from covidct.data.realistic.donors import IMAGE_SUFFIXES

    folder = Path(folder)
    if (folder / "Imgs").is_dir():
        folder = folder / "Imgs"
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of slice images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            f"{folder}: no .png/.jpg slice image in it; give a folder of slice images or a study"
        )
    return files
