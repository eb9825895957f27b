"""Manifest CSV reader: one row per study.

Columns (header required, case-insensitive): ``path`` (study folder/file, relative to the CSV's folder
or absolute), ``class`` (normal / cap / covid19, display names accepted), optional ``split``
(train / val / test), optional ``slice_labels`` (a ``.npy`` vector or a text file of 0/1 values, one per
slice, superior first), optional ``mask`` (a ground-truth lung mask volume), optional ``case`` (defaults
to the study's name).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from covidct.data.records import StudyRecord
from covidct.errors import InputError
from covidct.registry import CLASS_NAMES, class_index

SPLITS = ("train", "val", "test")


def _read_flags(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.asarray(np.load(path)).reshape(-1).astype(np.uint8)
    text = path.read_text(encoding="utf-8").replace(",", " ").split()
    return np.asarray([int(float(t)) for t in text], dtype=np.uint8)


def read_manifest(path: str | Path) -> list[StudyRecord]:
    """The studies of a manifest CSV; raises :class:`InputError` naming the row that is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    base = path.parent
    records: list[StudyRecord] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = {(k or "").strip().lower(): k for k in reader.fieldnames or []}
        for need in ("path", "class"):
            if need not in fields:
                raise InputError(
                    f"{path}: column {need!r} missing (need path,class[,split,slice_labels,mask])"
                )
        for line, row in enumerate(reader, start=2):
            get = {k: (row.get(orig) or "").strip() for k, orig in fields.items()}
            try:
                cls = CLASS_NAMES[class_index(get["class"])]
            except ValueError as exc:
                raise InputError(f"{path}:{line}: {exc}") from None
            study = Path(get["path"])
            study = study if study.is_absolute() else base / study
            if not study.exists():
                raise InputError(f"{path}:{line}: study {study} does not exist")
            split = get.get("split") or None
            if split is not None and split.lower() not in SPLITS:
                raise InputError(f"{path}:{line}: split {split!r} is not one of {', '.join(SPLITS)}")
            flags = None
            if get.get("slice_labels"):
                lp = Path(get["slice_labels"])
                lp = lp if lp.is_absolute() else base / lp
                try:
                    flags = _read_flags(lp)
                except (OSError, ValueError) as exc:
                    raise InputError(f"{path}:{line}: cannot read slice labels {lp} ({exc})") from None
            mask = None
            if get.get("mask"):
                mask = Path(get["mask"])
                mask = mask if mask.is_absolute() else base / mask
            case = get.get("case") or study.name.split(".")[0]
            records.append(
                StudyRecord(
                    case=case,
                    path=study,
                    diagnosis=cls,
                    slice_labels=flags,
                    mask_path=mask,
                    split=split.lower() if split else None,
                )
            )
    if not records:
        raise InputError(f"{path}: the manifest lists no studies")
    return records
