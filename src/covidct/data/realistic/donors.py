"""Real lesion textures for transplanting: ground glass and consolidation patches from COVID-SemiSeg.

The COVID-SemiSeg slices (Fan et al., IEEE TMI 2020; non-commercial research use) are 8-bit lung-window
images without HU. A patch keeps what a lesion looks like *relative to the healthy lung around it*: each
image's grey levels are mapped to HU by two anchors measured on that image (the healthy-lung level and the
soft-tissue level, mapped to :data:`LUNG_HU` and :data:`SOFT_TISSUE_HU`), and a patch stores the lesion's
contrast above the healthy lung (``delta``, HU). Placed into a real lung, ``delta`` is added to the
recipient's own lung level, so the lesion matches the recipient's intensity statistics.

Layouts read: ``ROOT/Imgs/*.jpg|png`` with ``ROOT/GT/*.png`` of the same stem, where the masks hold 0
background and either 1 ground glass / 2 consolidation (the ``multiclass`` folder) or grey levels (the
radiologists' ``doctor-label`` 0/255 and the model-made ``pseudo-label`` masks, thresholded at 128).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from covidct.errors import InputError

log = logging.getLogger(__name__)

#: HU given to an image's healthy-lung grey level and to its soft-tissue grey level.
LUNG_HU = -860.0
SOFT_TISSUE_HU = 40.0
#: A patch whose median contrast exceeds this (HU above healthy lung) counts as consolidation.
CONSOLIDATION_DELTA = 600.0
#: Smallest lesion component kept as a donor patch (pixels of the donor image).
MIN_COMPONENT_PX = 120
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class LesionPatch:
    """One real lesion: contrast above healthy lung (HU) and a soft mask (0..1), same 2-D shape."""

    delta: np.ndarray  # float32 (h, w)
    alpha: np.ndarray  # float32 (h, w)
    kind: str  # "ggo" or "consolidation"
    source: str  # donor image stem


@dataclass
class LesionBank:
    """Donor lesion patches by kind; sampled with a caller's generator (deterministic given its seed)."""

    patches: list[LesionPatch] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.patches)

    def of_kind(self, kind: str) -> list[LesionPatch]:
        return [p for p in self.patches if p.kind == kind]

    def sample(self, rng: np.random.Generator, kind: str | None = None) -> LesionPatch | None:
        pool = self.of_kind(kind) if kind is not None else self.patches
        pool = pool or self.patches
        if not pool:
            return None
        return pool[int(rng.integers(len(pool)))]

    def counts(self) -> dict[str, int]:
        return {k: len(self.of_kind(k)) for k in ("ggo", "consolidation")}


def is_validation_image(stem: str, fraction: float = 0.2) -> bool:
    """Whether a donor image is held out for validation (a fixed hash of its name: same split every run)."""
    h = int(hashlib.sha256(stem.encode("utf-8")).hexdigest()[:8], 16)
    return (h % 1000) < round(fraction * 1000)


def image_pairs(root: Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs of an ``Imgs/`` + ``GT/`` folder, sorted by name; InputError if none."""
    imgs, gts = root / "Imgs", root / "GT"
    if not imgs.is_dir() or not gts.is_dir():
        raise InputError(f"{root}: expected Imgs/ and GT/ folders (a COVID-SemiSeg-style lesion folder)")
    masks = {p.stem: p for p in gts.iterdir() if p.suffix.lower() == ".png"}
    pairs = [
        (p, masks[p.stem])
        for p in sorted(imgs.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in masks
    ]
    if not pairs:
        raise InputError(f"{root}: no image in Imgs/ has a mask of the same name in GT/")
    return pairs


def read_pair(image: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    """Grey image (float32 0..255) and lesion labels (uint8: 0, 1 ground glass, 2 consolidation or 1 any).

    Multiclass masks (values 0/1/2 only) keep their classes; grey-level masks are thresholded at 128 to 1.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as im:
            img = np.asarray(im.convert("L"), dtype=np.float32)
        with Image.open(mask) as im:  # palette masks hold their class indices: no colour conversion
            m = np.asarray(im if im.mode in ("L", "P", "I", "I;16") else im.convert("L"))
        m = m if m.ndim == 2 else m[..., 0]
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{image}: cannot read the image or its mask ({exc})") from None
    if img.shape != m.shape:
        raise InputError(f"{mask}: mask size {m.shape} differs from its image {img.shape}")
    labels = m.astype(np.uint8) if m.max() <= 2 else (m >= 128).astype(np.uint8)
    return img, labels


def hu_anchors(img: np.ndarray, lesion: np.ndarray) -> tuple[float, float]:
    """Healthy-lung and soft-tissue grey levels of one image: the medians under and over Otsu's cut of the
    non-black pixels outside the lesions (the sets differ in their windows, so no fixed grey level works)."""
    from skimage.filters import threshold_otsu

    free = img[(lesion == 0) & (img > 3)]
    if free.size < 1000:
        return 50.0, 200.0
    cut = float(threshold_otsu(free))
    dark, bright = free[free < cut], free[free >= cut]
    lung = float(np.median(dark)) if dark.size > 500 else 50.0
    soft = float(np.median(bright)) if bright.size > 500 else 200.0
    if soft - lung < 40:  # too little contrast to trust: a typical lung-window image
        lung, soft = 50.0, 200.0
    return lung, soft


def patches_from_image(
    img: np.ndarray, labels: np.ndarray, *, source: str, margin: int = 4
) -> list[LesionPatch]:
    """Every lesion component of one image (merged across 2 px gaps) as a :class:`LesionPatch`."""
    lung, soft = hu_anchors(img, labels)
    scale = (SOFT_TISSUE_HU - LUNG_HU) / (soft - lung)
    delta_img = ((img - lung) * scale).astype(np.float32)
    any_lesion = labels > 0
    multiclass = bool(np.any(labels == 2))
    merged = ndimage.binary_dilation(any_lesion, iterations=2)
    comp, _n = ndimage.label(merged)
    out: list[LesionPatch] = []
    for k, box in enumerate(ndimage.find_objects(comp), start=1):
        if box is None:
            continue
        sel = (comp[box] == k) & any_lesion[box]
        if int(sel.sum()) < MIN_COMPONENT_PX:
            continue
        y0 = max(box[0].start - margin, 0)
        y1 = min(box[0].stop + margin, img.shape[0])
        x0 = max(box[1].start - margin, 0)
        x1 = min(box[1].stop + margin, img.shape[1])
        region = (comp[y0:y1, x0:x1] == k) & any_lesion[y0:y1, x0:x1]
        alpha = ndimage.gaussian_filter(region.astype(np.float32), 1.2)
        delta = np.clip(delta_img[y0:y1, x0:x1], -150.0, 1100.0)
        lab = labels[y0:y1, x0:x1][region]
        if multiclass:
            kind = "consolidation" if np.mean(lab == 2) >= 0.5 else "ggo"
        else:
            kind = "consolidation" if float(np.median(delta[region])) > CONSOLIDATION_DELTA else "ggo"
        out.append(LesionPatch(delta.astype(np.float32), alpha, kind, source))
    return out


def load_bank(
    roots: Iterable[str | Path], *, split: str = "train", max_images: int | None = None, seed: int = 0
) -> LesionBank:
    """Donor patches from lesion folders (``Imgs/`` + ``GT/``).

    ``split`` "train" keeps the images that :func:`is_validation_image` does not hold out, "val" only those,
    "all" every image. ``max_images`` per folder (evenly spread, seeded) bounds the reading time.
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be train, val or all, got {split!r}")
    bank = LesionBank()
    rng = np.random.default_rng(seed)
    for root in roots:
        root = Path(root)
        pairs = image_pairs(root)
        if split != "all":
            pairs = [p for p in pairs if is_validation_image(p[0].stem) == (split == "val")]
        if max_images is not None and len(pairs) > max_images:
            pick = np.sort(rng.choice(len(pairs), size=max_images, replace=False))
            pairs = [pairs[int(i)] for i in pick]
        for img_path, mask_path in pairs:
            img, labels = read_pair(img_path, mask_path)
            if not labels.any():
                continue
            bank.patches.extend(patches_from_image(img, labels, source=img_path.stem))
        bank.sources.append(str(root))
        log.info("lesion donors: %s -> %d patches so far", root.name, len(bank))
    return bank
