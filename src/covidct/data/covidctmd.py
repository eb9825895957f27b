"""Reader of the COVID-CT-MD layout (and synthetic cohorts written in it).

Layout: class folders (any release's spelling, see ``registry.DATASET_FOLDERS``) at any depth up to three
below the root, one sub-folder per patient; ``Index.csv`` and ``Slice-level-labels*.npy`` at the root.

``Index.csv`` (``Label Index,Diagnosis,Relative Path,Folder/ID``) maps a patient to a row of the label arrays.
Label Index runs 0-42 then 44-79: an older release had 80 rows and one case (old row 43) was removed from the
arrays without renumbering the index, so with the 79-row arrays **row = Label Index below 43, Label Index - 1
above it** (cap001: Label Index 55 -> row 54). With 80-row arrays (old release) row = Label Index; in general
the shift is the number of indices missing from Index.csv below the row's index (see :func:`label_row`).
Synthetic cohorts (same layout) also carry ``masks/<case>_lung.nii.gz`` ground-truth lung masks. The
``-updated-1`` label files (corrected labels for P001 and P006) are preferred when present. Label columns run
superior to inferior and are zero-padded to 200.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np

from covidct.data.records import StudyRecord
from covidct.errors import InputError
from covidct.registry import DATASET_FOLDERS, class_index

log = logging.getLogger(__name__)

#: Label Index missing from the current release's Index.csv (removed row of the older 80-row arrays).
INDEX_GAP: Final[int] = 43
_MAX_DEPTH: Final[int] = 3


def label_row(label_index: int, n_rows: int, known: Sequence[int] | None = None) -> int:
    """Array row of a ``Label Index``.

    ``known``: all Label Index values of ``Index.csv``. When the arrays have a row for every index up to the
    largest (the old 80-row release, synthetic cohorts), row = Label Index. When they have one row per listed
    index (the current 79-row release), row = Label Index minus the number of unlisted indices below it, i.e.
    minus 1 above the gap at 43. Without ``known``, the current release's gap at 43 is assumed when
    ``n_rows < 80``.
    """
    if label_index < 0:
        raise ValueError(f"Label Index must be >= 0, got {label_index}")
    if known is None:
        known = [i for i in range(max(n_rows + 1, 80)) if i != INDEX_GAP]
    listed = sorted(set(int(k) for k in known))
    top = max(listed) if listed else -1
    missing = sorted(set(range(top + 1)) - set(listed))
    if n_rows >= top + 1 or not missing:
        return label_index
    if label_index in missing:
        raise ValueError(f"Label Index {label_index} is not listed in Index.csv")
    return label_index - sum(1 for m in missing if m < label_index)


def _folder_class(name: str) -> str | None:
    key = name.strip().lower()
    for cls, spellings in DATASET_FOLDERS.items():
        if key in (s.lower() for s in spellings):
            return cls
    return None


def find_class_folders(root: Path) -> list[tuple[str, Path]]:
    """``(class, folder)`` for every class folder within three levels below ``root`` (sorted by path)."""
    found: list[tuple[str, Path]] = []

    def walk(d: Path, depth: int) -> None:
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            cls = _folder_class(child.name)
            if cls is not None:
                found.append((cls, child))
            elif depth < _MAX_DEPTH:
                walk(child, depth + 1)

    walk(root, 1)
    return found


def pick_label_file(root: Path, stem: str = "Slice-level-labels") -> Path | None:
    """The slice-label file to use: ``<stem>-updated-N.npy`` (highest N) over ``<stem>.npy``."""
    candidates = sorted(root.glob(f"{stem}*.npy"))
    if not candidates:
        return None
    updated = [p for p in candidates if "-updated" in p.name]
    return updated[-1] if updated else candidates[0]


def read_index(path: Path) -> dict[str, tuple[int, str]]:
    """``Index.csv`` as ``{case id (lower case): (Label Index, class name)}``."""
    out: dict[str, tuple[int, str]] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                case = (row.get("Folder/ID") or "").strip()
                if not case:
                    continue
                cls = ("normal", "cap", "covid19")[class_index(row.get("Diagnosis") or "")]
                out[case.lower()] = (int(str(row.get("Label Index", "")).strip()), cls)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"{path}: cannot read the label index ({exc}); expected columns "
            "'Label Index,Diagnosis,Relative Path,Folder/ID'"
        ) from None
    return out


def read_covidctmd(root: str | Path) -> list[StudyRecord]:
    """Every patient folder under ``root`` with its class and (where labelled) its slice labels.

    Patients without a row in ``Index.csv`` (all normal patients; abnormal ones when the labels are absent)
    get ``slice_labels=None``. Raises :class:`InputError` when no class folder is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder: give the COVID-CT-MD root (the folder with Index.csv)")
    folders = find_class_folders(root)
    if not folders:
        spellings = ", ".join(s for v in DATASET_FOLDERS.values() for s in v[:2])
        raise InputError(f"{root}: no class folders found (expected e.g. {spellings})")
    index_path = root / "Index.csv"
    index = read_index(index_path) if index_path.is_file() else {}
    label_file = pick_label_file(root)
    labels = np.load(label_file) if label_file is not None else None
    if labels is not None:
        log.info("slice labels from %s (%d rows)", label_file.name if label_file else "", labels.shape[0])
    known = [v[0] for v in index.values()]
    records: list[StudyRecord] = []
    for cls, folder in folders:
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir() or p.suffix.lower() == ".zip"):
            case = case_dir.name if case_dir.is_dir() else case_dir.stem
            slice_labels = None
            entry = index.get(case.lower())
            if entry is not None:
                label_index, index_cls = entry
                if index_cls != cls:
                    log.warning(
                        "case %s in %s: Index.csv says %s; using the folder's class (%s)",
                        case,
                        folder.name,
                        index_cls,
                        cls,
                    )
                if labels is not None:
                    row = label_row(label_index, labels.shape[0], known)
                    if row < labels.shape[0]:
                        slice_labels = np.asarray(labels[row]).astype(np.uint8)
            mask = root / "masks" / f"{case}_lung.nii.gz"  # synthetic cohorts: ground-truth lung mask
            records.append(
                StudyRecord(
                    case=case,
                    path=case_dir,
                    diagnosis=cls,
                    slice_labels=slice_labels,
                    mask_path=mask if mask.is_file() else None,
                )
            )
    return records
