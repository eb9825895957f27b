"""Helpers shared by the sub-commands (kept free of heavy imports: ``covidct --help`` loads this)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from covidct._files import STUDY_SUFFIXES, study_stem  # re-exported for the commands
from covidct.errors import ConfigError

__all__ = [
    "STUDY_SUFFIXES",
    "add_series_argument",
    "check_output_file",
    "check_output_folder",
    "show_progress",
    "study_stem",
]


def add_series_argument(p: Any) -> None:
    """The ``--series`` option of every command that reads a study."""
    p.add_argument(
        "--series",
        metavar="NUMBER_OR_UID",
        default=None,
        help="the series to read when a DICOM folder holds several (SeriesNumber or SeriesInstanceUID; "
        "default: the axial CT series with the most slices, refused when the series are of different "
        "patients or studies)",
    )


def show_progress(no_progress: bool) -> bool:
    """Progress bars on stderr only when it is a terminal and ``--no-progress`` was not given."""
    stream = sys.stderr
    return not no_progress and stream is not None and stream.isatty()


def _probe_folder(folder: Path, *, shown: str, what: str) -> None:
    """Raise :class:`ConfigError` unless a file can be created in ``folder`` or its nearest existing ancestor.

    Creates and removes one empty hidden file: permission bits alone do not tell (root ignores them; a
    read-only mount, an immutable folder or /proc refuse whatever the bits say). Creates no folder.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {shown}: {existing} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".covidct-write-test-", dir=existing)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"{what} {shown}: cannot write in {existing} ({reason}); choose a folder you can write to"
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | Path, *, what: str = "output") -> None:
    """Raise :class:`ConfigError` when ``path`` cannot become a file: it is a folder, a parent is a file, or
    its folder cannot be written (read-only, immutable, /proc...).

    Called before any work, so a bad ``-o`` fails in a second instead of after loading and computing.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{what} {path}: is a folder; give a file name")
    _probe_folder(target.absolute().parent, shown=str(path), what=what)


def check_output_folder(path: str | Path, *, what: str = "-o") -> None:
    """Raise :class:`ConfigError` when ``path`` cannot be (or become) a folder the outputs are written in."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{what} {path}: this is a file, not a folder; give a folder for the outputs")
    _probe_folder(target.absolute(), shown=str(path), what=what)
