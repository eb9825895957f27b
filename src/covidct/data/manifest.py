"""Manifest CSV reader: one row per study.

Columns (header required, case-insensitive): ``path`` (study folder/file, relative to the CSV's folder
or absolute), ``class`` (normal / cap / covid19, display names accepted), optional ``split``
(train / val / test), optional ``slice_labels`` (a ``.npy`` vector or a text file of 0/1 values, one per
slice, superior first), optional ``mask`` (a ground-truth lung mask volume), optional ``case`` (defaults
to the study's name), optional ``weight`` (a positive number: how much more often the classifier's training
draws this study's slices than its class balance alone would; default 1).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covidct._files import atomic_write
from covidct.data.records import StudyRecord
from covidct.errors import InputError
from covidct.registry import CLASS_NAMES, class_index

SPLITS = ("train", "val", "test")


def _read_flags(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.asarray(np.load(path)).reshape(-1).astype(np.uint8)
    text = path.read_text(encoding="utf-8").replace(",", " ").split()
    return np.asarray([int(float(t)) for t in text], dtype=np.uint8)


def _weight(value: str | float, *, where: str) -> float:
    """A study weight: a finite positive number, else InputError (``where`` prefixes the message)."""
    try:
        weight = float(value)
    except ValueError:
        weight = float("nan")
    if not (weight > 0 and np.isfinite(weight)):
        raise InputError(f"{where}weight {value!r} must be a positive number")
    return weight


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
            extra = {}
            if get.get("weight"):
                extra["weight"] = _weight(get["weight"], where=f"{path}:{line}: ")
            records.append(
                StudyRecord(
                    case=case,
                    path=study,
                    diagnosis=cls,
                    slice_labels=flags,
                    mask_path=mask,
                    split=split.lower() if split else None,
                    extra=extra,
                )
            )
    if not records:
        raise InputError(f"{path}: the manifest lists no studies")
    return records


def write_manifest(
    records: Sequence[StudyRecord], path: str | Path, *, split: str | None = None, weight: float | None = None
) -> Path:
    """Write ``records`` as a manifest :func:`read_manifest` reads back (atomic).

    Slice labels are saved as ``<case>.npy`` beside the CSV; ``split`` (train / val / test) prescribes one
    split for every study (e.g. real series that must stay in training), else each record's own; ``weight``
    gives every study that sampling weight (see the module docstring), else each record's own.
    """
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise InputError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if weight is not None:
        _weight(weight, where="")
    if len({r.case for r in records}) != len(records):
        raise InputError(f"{path}: case names repeat; a manifest needs one name per study")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in records:
        labels = ""
        if r.slice_labels is not None:
            labels = f"{r.case}.npy"
            np.save(path.parent / labels, np.asarray(r.slice_labels, dtype=np.uint8))
        mask = str(Path(r.mask_path).resolve()) if r.mask_path is not None else ""
        w = weight if weight is not None else r.extra.get("weight")
        rows.append(
            [
                r.case,
                str(Path(r.path).resolve()),
                r.diagnosis,
                split or r.split or "",
                labels,
                mask,
                "" if w is None else f"{float(w):g}",
            ]
        )

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case", "path", "class", "split", "slice_labels", "mask", "weight"])
            w.writerows(rows)

    return atomic_write(path, write)
