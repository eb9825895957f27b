"""What every dataset reader returns: one :class:`StudyRecord` per study, plus the slice-class rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidct.registry import CLASS_NAMES, Diagnosis


@dataclass(eq=False)
class StudyRecord:
    """One study of a training/evaluation data set.

    ``case`` is the dataset's case name (e.g. ``P001``), ``path`` the study (DICOM folder, zip, NIfTI...),
    ``diagnosis`` a class name from the registry, ``slice_labels`` the per-slice infection flags (1 =
    the slice shows infection) ordered superior to inferior, or ``None`` when the dataset has none.
    ``mask_path`` is a ground-truth lung mask (0/1/2, same geometry) where one exists (synthetic cohorts);
    ``split`` a split name the dataset prescribes ("train"/"val"/"test") or ``None``.
    """

    case: str
    path: Path
    diagnosis: str
    slice_labels: np.ndarray | None = None
    mask_path: Path | None = None
    split: str | None = None
    site: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.diagnosis not in CLASS_NAMES:
            raise ValueError(
                f"unknown diagnosis {self.diagnosis!r} for {self.case}: use one of {CLASS_NAMES}"
            )

    @property
    def label(self) -> int:
        return CLASS_NAMES.index(self.diagnosis)

    @property
    def has_slice_classes(self) -> bool:
        """Whether :func:`slice_classes` can give this study's slice classes."""
        return self.diagnosis == "normal" or self.slice_labels is not None


def slice_classes(record: StudyRecord, n_slices: int) -> np.ndarray | None:
    """Slice classes as in the paper, ``(n_slices,)`` int64, superior to inferior.

    An infected slice takes its patient's class (CAP or COVID-19); every other slice, and every slice of a
    normal patient, is normal. Returns ``None`` for an abnormal patient without slice labels: such studies
    are **left out of slice-level training** (their patient label still counts in patient-level evaluation).
    Label arrays padded beyond ``n_slices`` (COVID-CT-MD pads to 200 columns) are cut to ``n_slices``.
    """
    if record.diagnosis == "normal":
        return np.zeros(n_slices, dtype=np.int64)
    if record.slice_labels is None:
        return None
    flags = np.asarray(record.slice_labels).reshape(-1)[:n_slices]
    out = np.full(n_slices, int(Diagnosis.NORMAL), dtype=np.int64)
    out[: flags.size][flags > 0] = record.label
    return out


def class_counts(records: list[StudyRecord]) -> dict[str, int]:
    """Studies per class name (registry order, zeros included)."""
    return {name: sum(r.diagnosis == name for r in records) for name in CLASS_NAMES}
