"""A training cohort of real lungs with synthetic disease: ``build_realistic_cohort(...) -> manifest.csv``.

For every real labelled series (the backgrounds), its normal slices (every slice of a normal patient, the
non-infected slices of an abnormal one) form a background volume; the pipeline's own lung segmenter masks it,
and each variant draws one class into it: nothing (normal, with the same non-pneumonia look-alikes every class
gets), COVID-19 or CAP (:mod:`covidct.data.realistic.lesions`). Each background thus appears in all three
classes, so the patient (scanner, anatomy, noise) never tells the class; only the lesions do. A slice is
labelled infected when its drawn lesion covers at least ``min_infected_mm2`` of it.

Written: ``OUT/volumes/<case>.nii.gz`` (int16 HU), ``OUT/labels/<case>.npy`` (0/1 per slice, superior
first), ``OUT/manifest.csv`` (``case,path,class,split,slice_labels``; the last variant of each background is
"val", the rest "train") and ``OUT/cohort.json`` (sources, settings, counts, terms). Case names start with
``rs-`` so they never collide with a real or phantom case in one splits file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct._files import atomic_write, atomic_write_text
from covidct.data.realistic import lesions
from covidct.data.realistic.donors import LesionBank, load_bank
from covidct.errors import ConfigError, InputError
from covidct.registry import CLASS_NAMES

log = logging.getLogger(__name__)

#: Terms of the lesion donors (COVID-SemiSeg) that a cohort built with them inherits.
DONOR_TERMS = (
    "lesion textures from COVID-SemiSeg (Fan et al., Inf-Net, IEEE TMI 39(8), 2020; source: COVID-19 CT "
    "segmentation dataset, medicalsegmentation.com, 2020): non-commercial research use only"
)
CASE_PREFIX = "rs-"


@dataclass(frozen=True)
class RealisticSettings:
    """``variants``: lesion variants per class per background; ``burden``: (a, b) of the Beta law of the
    disease extent; ``donor_p``: chance that a lesion's texture is a real donor's (else procedural)."""

    variants: int = 3
    min_infected_mm2: float = 30.0
    donor_p: float = 0.5
    burden: tuple[float, float] = (1.6, 2.4)
    min_background_slices: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variants < 1:
            raise ConfigError(f"variants must be >= 1, got {self.variants}")
        if not 0.0 <= self.donor_p <= 1.0:
            raise ConfigError(f"donor probability must lie in [0, 1], got {self.donor_p}")


def background(record: Any, segmenter: Any) -> tuple[Any, np.ndarray] | None:
    """The normal slices of a labelled real study as a volume, and its lung mask (``None`` if unusable)."""
    from covidct.data.records import slice_classes
    from covidct.io import load_study
    from covidct.io.volume import CTVolume

    volume = load_study(record.path)
    classes = slice_classes(record, volume.n_slices)
    if classes is None:
        return None
    keep = np.flatnonzero(classes == 0)
    if keep.size == 0:
        return None
    sub = CTVolume(
        np.ascontiguousarray(volume.hu[keep]), volume.spacing, volume.origin, volume.direction.copy()
    )
    mask = np.asarray(segmenter.apply(sub), dtype=np.uint8)
    return sub, mask


def draw_variant(
    hu: np.ndarray,
    lung: np.ndarray,
    spacing: tuple[float, float, float],
    cls: str,
    rng: np.random.Generator,
    bank: LesionBank | None,
    settings: RealisticSettings,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One variant: HU (int16), per-slice infection flags (uint8) and what was drawn."""
    for _attempt in range(4):
        canvas = lesions.Canvas.of(hu.copy(), lung, spacing)
        found = lesions.look_alikes(canvas, rng)
        burden = float(rng.beta(*settings.burden))
        pattern = "normal"
        if cls == "covid19":
            pattern = lesions.covid19(canvas, rng, bank, burden=burden, donor_p=settings.donor_p)
        elif cls == "cap":
            pattern = lesions.cap(canvas, rng, bank, burden=burden, donor_p=settings.donor_p)
        area = ((canvas.lesion > 0.5) & (lung > 0)).sum(axis=(1, 2)) * spacing[1] * spacing[2]
        flags = (area >= settings.min_infected_mm2).astype(np.uint8)
        if cls == "normal" or flags.any():
            break
    info = {
        "pattern": pattern,
        "burden": round(burden, 3),
        "look_alikes": found,
        "infected": int(flags.sum()),
    }
    out = np.clip(np.rint(canvas.hu), -1024, 3071).astype(np.int16)
    return out, flags, info


def build_realistic_cohort(
    backgrounds: Sequence[str | Path],
    out: str | Path,
    *,
    donors: Sequence[str | Path] = (),
    exclude: Sequence[str] = (),
    settings: RealisticSettings | None = None,
    slices: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a realistic cohort into ``out`` (see the module docstring); returns its ``manifest.csv``.

    ``backgrounds``: COVID-CT-MD-layout folders or manifests of real labelled series; ``exclude``: case names
    left out (e.g. a held-out series); ``donors``: lesion folders (``Imgs/`` + ``GT/``, e.g. COVID-SemiSeg's
    ``train/multiclass`` and ``train/pseudo-label``), whose held-out validation images are never used.
    With ``slices`` (and donors), the donors' own training images are also written as real COVID-19 and
    normal slices to ``OUT/slices`` (a class image folder: train with ``--data OUT/manifest.csv OUT/slices``),
    so real lesion texture is taught directly and not only through the drawn lesions.
    """
    from tqdm import tqdm

    from covidct.segment import get_segmenter
    from covidct.train.data import read_sources

    s = settings or RealisticSettings()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty: choose a new folder or pass overwrite")
    records = [r for r in read_sources([Path(p) for p in backgrounds]) if r.case not in set(exclude)]
    records = [r for r in records if r.has_slice_classes]
    if not records:
        raise InputError(
            "no labelled real series to use as backgrounds (need normal studies or slice labels)"
        )
    bank = load_bank(donors, split="train", seed=s.seed) if donors else None
    segmenter = get_segmenter("classical")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        slices_dir = tmp / "slices" if slices and donors else None
        rows, made = _write_variants(
            records, tmp, bank, segmenter, s, progress=progress, tqdm=tqdm, slices_dir=slices_dir
        )
        slice_counts = {}
        if slices_dir is not None:
            from covidct.data.lesionfolder import export_slice_folder

            slice_counts = export_slice_folder([Path(p) for p in donors], slices_dir, split="train")
            slice_counts["normal_crops"] = sum(1 for _ in (slices_dir / "normal").rglob("*.png"))
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(["case", "path", "class", "split", "slice_labels"])
        w.writerows(rows)
        atomic_write(tmp / "manifest.csv", lambda t: t.write_bytes(buf.getvalue().encode("utf-8")))
        card = {
            "kind": "realistic-cohort",
            "backgrounds": [r.case for r in records],
            "excluded": sorted(exclude),
            "donors": [str(p) for p in donors],
            "donor_patches": bank.counts() if bank is not None else {},
            "settings": asdict(s),
            "studies": made,
            "real_slices": slice_counts,
            "train_with": ["manifest.csv", "slices"] if slice_counts else ["manifest.csv"],
            "terms": DONOR_TERMS if donors else "as the background series' own terms",
        }
        atomic_write_text(tmp / "cohort.json", json.dumps(card, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out / "manifest.csv"


def _write_variants(
    records: Sequence[Any],
    root: Path,
    bank: LesionBank | None,
    segmenter: Any,
    s: RealisticSettings,
    *,
    progress: bool,
    tqdm: Any,
    slices_dir: Path | None = None,
) -> tuple[list[list[str]], list[dict[str, Any]]]:
    (root / "volumes").mkdir()
    (root / "labels").mkdir()
    rows: list[list[str]] = []
    made: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(records) * s.variants * len(CLASS_NAMES),
        disable=not progress,
        desc="realistic cohort",
        unit="study",
    )
    for b, rec in enumerate(records):
        bg = background(rec, segmenter)
        if bg is None or bg[0].n_slices < s.min_background_slices:
            log.warning(
                "background %s: fewer than %d normal slices; left out", rec.case, s.min_background_slices
            )
            bar.update(s.variants * len(CLASS_NAMES))
            continue
        vol, lung = bg
        if slices_dir is not None:
            from covidct.data.lesionfolder import export_normal_crops

            export_normal_crops(vol.hu, lung, slices_dir, patient=f"{CASE_PREFIX}{rec.case}")
        for v in range(s.variants):
            for c, cls in enumerate(CLASS_NAMES):
                rng = np.random.default_rng([s.seed, b, v, c])
                hu, flags, info = draw_variant(vol.hu, lung, vol.spacing, cls, rng, bank, s)
                case = f"{CASE_PREFIX}{rec.case}-{cls}-{v}"
                vol.save(root / "volumes" / f"{case}.nii.gz", hu)
                np.save(root / "labels" / f"{case}.npy", flags)
                split = "val" if v == s.variants - 1 and s.variants > 1 else "train"
                rows.append([case, f"volumes/{case}.nii.gz", cls, split, f"labels/{case}.npy"])
                made.append({"case": case, "background": rec.case, "class": cls, "split": split, **info})
                bar.update(1)
    bar.close()
    if not rows:
        raise InputError("no background had enough normal slices to build a realistic cohort")
    return rows, made
