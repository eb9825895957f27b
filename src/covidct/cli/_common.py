"""Helpers shared by the sub-commands (kept free of heavy imports: ``covidct --help`` loads this)."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["STUDY_SUFFIXES", "show_progress", "study_stem"]

#: Suffixes removed from an input's name to name its outputs (double suffixes first).
STUDY_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".zip", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def study_stem(path: str | Path) -> str:
    """A file-name-safe name for a study's outputs, from its path (``scans/p1.nii.gz`` -> ``p1``)."""
    name = Path(str(path).rstrip("/")).name or "study"
    for suffix in STUDY_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "study"


def show_progress(no_progress: bool) -> bool:
    """Progress bars on stderr only when it is a terminal and ``--no-progress`` was not given."""
    stream = sys.stderr
    return not no_progress and stream is not None and stream.isatty()
