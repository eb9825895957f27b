"""Atomic file writing: a file appears whole under its final name, or not at all.

Every writer in covidct goes through :func:`atomic_write`: the content is written to a unique temporary name
in the destination folder (keeping the suffix, so libraries that pick a format from it still work), then
renamed over the destination. Concurrent writers of the same path never share a temporary file; a failed
write leaves nothing behind.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "full_suffix"]


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.png`` for ``a.png``: the part that tells a format."""
    name = path.name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if name.endswith(double):
            return path.name[-len(double) :]
    return path.suffix


@functools.cache
def _umask() -> int:
    """The process umask, read once (from /proc where it exists: setting it briefly would race threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` to write the content, then rename ``tmp_path`` to ``path``.

    The parent folder is created. On any exception the temporary file is removed and the exception re-raised;
    an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".partial{full_suffix(path)}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


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
