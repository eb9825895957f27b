"""Uploaded studies: saving them within the size limit, format sniffing, zip extraction and the gzip size limit.

Zips are extracted by :func:`covidct.io.safe_extract_zip` (traversal, link and bomb checks). Nothing here
logs file names or contents: uploads may carry patient data.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO, TYPE_CHECKING

from covidct.errors import InputError
from covidct.io import safe_extract_zip

if TYPE_CHECKING:
    from covidct.serve.jobs import Job
    from covidct.serve.settings import ServeSettings

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


class UploadTooLarge(Exception):
    """The upload went past ``max_upload_mb`` (HTTP 413)."""


def save_upload(src: IO[bytes], job: Job, *, settings: ServeSettings) -> Path:
    """Copy the uploaded file into the job's ``input`` folder, sniff it, extract zips; returns the source."""
    limit = int(settings.max_upload_mb * (1 << 20))
    folder = job.dir / "input"
    folder.mkdir(mode=0o700, exist_ok=True)
    tmp = folder / "upload.partial"
    size = 0
    with open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge
            out.write(chunk)
    if size == 0:
        raise InputError("the upload is empty; send the study file in the multipart field 'file'")
    with open(tmp, "rb") as fh:
        head = fh.read(512)
    kind = sniff(head)
    saved = folder / SAVED_NAMES[kind]
    tmp.replace(saved)
    job.upload_bytes, job.kind = size, kind
    max_unzipped = int(settings.max_unzipped_mb * (1 << 20))
    if kind == "zip":
        study = safe_extract_zip(
            saved,
            folder / "study",
            max_bytes=max_unzipped,
            max_files=settings.max_zip_files,
            max_member_bytes=int(settings.max_zip_member_mb * (1 << 20)),
            max_ratio=settings.max_zip_ratio,
        )
        saved.unlink()
        return Path(study)
    if kind == "nifti-gz":
        check_gzip_size(
            saved,
            max_bytes=min(max_unzipped, int(settings.max_zip_member_mb * (1 << 20))),
            max_ratio=settings.max_zip_ratio,
        )
    return saved
