"""Folders of 2-D slice images per class (PNG/JPG), the paper's intermediate format.

Layout: ``ROOT/<class>/[<patient>/]<slice>.png``; the class folder names are registry names or
dataset spellings (``normal``, ``cap``, ``covid19``, ``COVID-19``...). Images are taken as already windowed
slices (the lung window, lung-only as the paper stored them) and scaled to [0, 1]. The patient of a slice is
its sub-folder, or the file name before the last ``_`` when the class folder is flat
(``P001_042.png`` -> ``P001``), so splits stay by patient. Optional split lists ``ROOT/train.txt``,
``val.txt``, ``test.txt`` name one patient per line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidct.errors import InputError
from covidct.registry import CLASS_NAMES, class_index

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ImageSlice:
    """One slice image with its class and patient."""

    path: Path
    label: int
    patient: str
    split: str | None = None


def _class_of(name: str) -> int | None:
    try:
        return class_index(name.replace("subjects", "").replace("Cases", "").strip())
    except ValueError:
        return None


def read_image_folder(root: str | Path) -> list[ImageSlice]:
    """Every slice image under ``root``; raises :class:`InputError` if no class folder holds images."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder of class sub-folders with slice images")
    splits: dict[str, str] = {}
    for split in ("train", "val", "test"):
        lst = root / f"{split}.txt"
        if lst.is_file():
            for line in lst.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    splits[line.strip()] = split
    out: list[ImageSlice] = []
    for cdir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = _class_of(cdir.name)
        if label is None:
            continue
        for img in sorted(cdir.rglob("*")):
            if img.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = img.relative_to(cdir)
            patient = rel.parts[0] if len(rel.parts) > 1 else img.stem.rsplit("_", 1)[0]
            out.append(ImageSlice(img, label, f"{CLASS_NAMES[label]}/{patient}", splits.get(patient)))
    if not out:
        raise InputError(f"{root}: no PNG/JPG slices in class folders ({', '.join(CLASS_NAMES)})")
    return out


def load_slice_image(path: Path) -> np.ndarray:
    """A slice image as float32 ``(h, w)`` in [0, 1] (colour images are converted to grey)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"), dtype=np.float32)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the image ({exc})") from None
    return arr / 255.0
