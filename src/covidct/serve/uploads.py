"""Checks on uploaded studies: format sniffing, size limits and safe zip extraction.

Nothing here logs file names or contents: uploads may carry patient data.
"""

from __future__ import annotations

import gzip
import stat
import zipfile
from pathlib import Path, PurePosixPath

from covidct.errors import InputError

#: Upload formats the service accepts, by sniffed kind -> file name the upload is saved under.
SAVED_NAMES: dict[str, str] = {
    "zip": "upload.zip",
    "dicom": "upload.dcm",
    "nifti": "upload.nii",
    "nifti-gz": "upload.nii.gz",
    "nrrd": "upload.nrrd",
    "mha": "upload.mha",
}


class UnsupportedUpload(InputError):
    """The upload is none of the accepted formats (HTTP 415)."""


def sniff(head: bytes) -> str:
    """The kind of an upload from its first bytes (at least 352 of them when available).

    Raises :class:`UnsupportedUpload` with the accepted formats when nothing matches.
    """
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:2] == b"\x1f\x8b":
        return "nifti-gz"
    if len(head) >= 348:
        for order in ("little", "big"):
            if int.from_bytes(head[:4], order) in (348, 540) and head[344:347] in (b"n+1", b"ni1"):
                return "nifti"
            if int.from_bytes(head[:4], order) == 540 and head[4:7] == b"n+2":
                return "nifti"
    if head[:4] == b"NRRD":
        return "nrrd"
    if head.lstrip()[:10] == b"ObjectType":
        return "mha"
    raise UnsupportedUpload(
        "the upload is not a zip of DICOM files, a DICOM file (with the DICM preamble) or a "
        "NIfTI/NRRD/MHA volume; send one of those in the multipart field 'file'"
    )


def check_gzip_size(path: Path, *, max_bytes: int) -> None:
    """Refuse a gzip file whose decompressed size exceeds ``max_bytes`` (a gzip bomb).

    Reads the stream through once (cheap compared with diagnosis) rather than trusting the 32-bit trailer.
    """
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise InputError(
                        f"the gzip upload expands past {max_bytes // (1 << 20)} MiB; refused (gzip bomb?)"
                    )
    except (OSError, EOFError) as exc:
        raise InputError(f"the gzip upload is corrupt ({exc.__class__.__name__})") from exc


def extract_zip(zip_path: Path, dest: Path, *, max_bytes: int, max_files: int) -> Path:
    """Extract safely: ``covidct.io.safe_extract_zip`` where it exists, else :func:`fallback_extract_zip`."""
    try:
        from covidct.io import safe_extract_zip
    except ImportError:
        try:
            from covidct.io.formats import safe_extract_zip
        except ImportError:
            return fallback_extract_zip(zip_path, dest, max_bytes=max_bytes, max_files=max_files)
    return Path(safe_extract_zip(zip_path, dest, max_bytes=max_bytes, max_files=max_files))


def fallback_extract_zip(zip_path: Path, dest: Path, *, max_bytes: int, max_files: int) -> Path:
    """Extract ``zip_path`` into ``dest`` refusing traversal, links, too many members and bombs.

    Bytes are counted while writing, so a header that lies about sizes does not help.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"the upload is not a readable zip archive ({exc.__class__.__name__})") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > max_files:
            raise InputError(f"the zip has {len(infos)} members, more than the limit of {max_files}")
        root = dest.resolve()
        root.mkdir(parents=True, exist_ok=True)
        written = 0
        for info in infos:
            name = PurePosixPath(info.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
                raise InputError("the zip contains an unsafe member name (path traversal); refused")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InputError("the zip contains a symbolic link; refused")
            target = (root / Path(*name.parts)).resolve() if name.parts else root
            if target != root and root not in target.parents:
                raise InputError("the zip contains a member that escapes the extraction folder; refused")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        raise InputError(
                            f"the zip expands past {max_bytes // (1 << 20)} MiB; refused (zip bomb?)"
                        )
                    out.write(chunk)
    return dest
