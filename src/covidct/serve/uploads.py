"""Checks on uploaded studies: format sniffing and the gzip size limit.

Zips are extracted by :func:`covidct.io.safe_extract_zip` (traversal, link and bomb checks). Nothing here
logs file names or contents: uploads may carry patient data.
"""

from __future__ import annotations

import gzip
from pathlib import Path

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


def check_gzip_size(path: Path, *, max_bytes: int, max_ratio: float | None = None) -> None:
    """Refuse a gzip file that expands past ``max_bytes``, or (past 16 MiB) more than ``max_ratio`` times its
    compressed size: a gzip bomb. Reads the stream only as far as needed to tell (never past a limit) rather
    than trusting the 32-bit trailer.
    """
    from covidct.io.formats import RATIO_MIN_BYTES

    packed = max(path.stat().st_size, 1)
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise InputError(
                        f"the gzip upload expands past {max_bytes // (1 << 20)} MiB; refused (gzip bomb?)"
                    )
                if max_ratio is not None and total > RATIO_MIN_BYTES and total > max_ratio * packed:
                    raise InputError(
                        f"the gzip upload expands more than {max_ratio:g}x its size; refused (gzip bomb?)"
                    )
    except (OSError, EOFError) as exc:
        raise InputError(f"the gzip upload is corrupt ({exc.__class__.__name__})") from exc
