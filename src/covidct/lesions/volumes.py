"""CT volumes with lesion masks as lesion training data: synthetic cohorts and COVID-CT-MD-style folders.

Layout: a COVID-CT-MD-style root (class folders of studies, as ``covidct synth`` writes) with
``masks/<case>_lung.nii.gz`` (0/1/2) and ``masks/<case>_lesion.nii.gz`` beside it. Lesion masks with values
0/1/2 keep their types; any other non-zero value is "lesion, type not given"
(:data:`~covidct.registry.LESION_ANY`; the synthetic cohorts' masks are 0/1 of either type, so 1 is read as
untyped there unless 2 also occurs). Each slice with lung becomes one input as at inference: its lung box
through the lesion window, resized (:func:`covidct.lesions.model.slice_input`). Studies are split by a fixed
hash of the case name (the same rule as the image folders), so a patient's slices stay on one side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covidct.errors import InputError
from covidct.lesions.folders import LesionSlices, resize_targets
from covidct.registry import LESION_ANY, LESION_WINDOW


def has_lesion_volumes(root: str | Path) -> bool:
    """Whether ``root`` holds ``masks/*_lesion.nii.gz`` (a cohort usable for lesion training)."""
    masks = Path(root) / "masks"
    return masks.is_dir() and any(masks.glob("*_lesion.nii.gz"))


def _typed(lesion: np.ndarray) -> np.ndarray:
    """0/1/2 kept when consolidation occurs; otherwise every non-zero value is untyped lesion."""
    if lesion.max() <= 2 and np.any(lesion == 2):
        return lesion.astype(np.uint8)
    return np.where(lesion > 0, LESION_ANY, 0).astype(np.uint8)


def read_lesion_volumes(root: str | Path, *, image_size: int, split: str = "all") -> LesionSlices:
    """Every lung slice of the studies of ``root`` (in ``split``) as lesion inputs and targets."""
    import SimpleITK as sitk

    from covidct.data.covidctmd import read_covidctmd
    from covidct.data.realistic.donors import is_validation_image
    from covidct.io import load_study
    from covidct.lesions.model import lung_box, slice_input

    root = Path(root)
    xs, ys, names = [], [], []
    typed_all = True
    for rec in read_covidctmd(root):
        if split != "all" and is_validation_image(rec.case) != (split == "val"):
            continue
        lung_path = root / "masks" / f"{rec.case}_lung.nii.gz"
        lesion_path = root / "masks" / f"{rec.case}_lesion.nii.gz"
        if not lesion_path.is_file() or not lung_path.is_file():
            continue
        volume = load_study(rec.path, workers=1)
        lung = sitk.GetArrayFromImage(sitk.ReadImage(str(lung_path)))
        lesion = _typed(sitk.GetArrayFromImage(sitk.ReadImage(str(lesion_path))))
        if lung.shape != volume.shape or lesion.shape != volume.shape:
            raise InputError(
                f"{lesion_path}: mask shape {lesion.shape} / lung {lung.shape} differ from the study's "
                f"{volume.shape}; regenerate the masks for this study"
            )
        typed_all &= not np.any(lesion == LESION_ANY)
        lesion[lung == 0] = 0
        for z in range(volume.n_slices):
            box = lung_box(lung[z] > 0)
            if box is None:
                continue
            xs.append(slice_input(volume.hu[z], box, image_size, LESION_WINDOW).astype(np.float16))
            ys.append(resize_targets(lesion[z][box], image_size))
            names.append(f"{rec.case}:{z}")
    n = len(xs)
    x = np.stack(xs) if n else np.zeros((0, image_size, image_size), np.float16)
    y = np.stack(ys) if n else np.zeros((0, image_size, image_size), np.uint8)
    return LesionSlices(x=x, y=y, names=names, source=str(root), multiclass=bool(n) and typed_all)
