"""DICOM headers: finding candidate files and reading each one's header (bounded, without pixels).

Used by :mod:`covidct.io.dicom`, which groups the headers into series, sorts and decodes them. Headers are read
with ``stop_before_pixels`` and a size bound (a file whose header runs past :data:`MAX_DICOM_HEADER_BYTES` is
refused, not read); patient identifiers go to ``meta.phi`` only (:data:`PHI_KEYWORDS`), never to logs.
Worker set-up for the decoding processes (:func:`init_worker`) lives here too, with what the workers import.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Header keywords treated as PHI: kept in ``meta.phi`` only, never logged.
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "AccessionNumber",
)
_SKIP_SUFFIXES = {
    ".txt",
    ".csv",
    ".json",
    ".md",
    ".npy",
    ".npz",
    ".png",
    ".jpg",
    ".jpeg",
    ".xml",
    ".py",
    ".pdf",
}
_SKIP_SUFFIXES |= {".nii", ".gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip", ".html"}


@dataclass
class SliceRef:
    """One slice (a file, or one frame of a multi-frame file) before decoding."""

    path: str  # real path on disk
    source: str  # what the user sees (file path, "path#frame", or "archive.zip!member")
    frame: int | None
    position_mm: float
    instance_number: int | None
    slope: float
    intercept: float
    padding: tuple[float, float] | None  # stored-value range set to air
    force: bool
    ipp: tuple[float, ...] | None = None  # ImagePositionPatient (LPS mm) when known


@dataclass
class _Header:
    path: str
    force: bool
    modality: str | None
    image_type: tuple[str, ...]
    series_uid: str
    study_uid: str
    series_number: int | None
    series_description: str
    manufacturer: str
    transfer_syntax: str
    rows: int
    cols: int
    n_frames: int
    iop: tuple[float, ...] | None
    ipp: tuple[float, float, float] | None
    slice_location: float | None
    instance_number: int | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    slope: float
    intercept: float
    padding: tuple[float, float] | None
    phi: dict[str, str]
    frames: list[dict[str, Any]] = field(default_factory=list)  # per-frame ipp/slope/intercept


@dataclass
class Series:
    """A chosen, sorted series: what :class:`covidct.io.loader.Study` reads pixels from."""

    slices: list[SliceRef]
    spacing: tuple[float, float, float]  # z, y, x mm
    row_cosine: np.ndarray  # direction of increasing column index (x)
    col_cosine: np.ndarray  # direction of increasing row index (y)
    normal: np.ndarray  # unit normal pointing superior
    rows: int
    cols: int
    meta: dict[str, Any]
    skipped: list[dict[str, str]]
    warnings: list[str]
    phi: dict[str, str]


def _f(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _pixel_data_state(fp: Any, size: int) -> str:
    """Pixel data state after ``stop_before_pixels`` left ``fp`` on its tag: ok, missing or truncated."""
    pos = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return "missing"
    group, elem = struct.unpack("<HH", head[:4])
    if (group, elem) not in ((0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)):
        return "missing"
    if head[4:6] not in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN"):  # implicit VR: tag, 4-byte length
        (length,) = struct.unpack("<I", head[4:8])
        start = pos + 8
    else:
        (length,) = struct.unpack("<I", head[8:12])
        start = pos + 12
    if length == 0xFFFFFFFF:  # encapsulated: the fragments end with a sequence delimiter (maybe + padding)
        fp.seek(max(size - 65536, start))
        return "ok" if b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" in fp.read(65536) else "truncated"
    if length == 0:
        return "missing"
    return "ok" if start + length <= size else "truncated"


def ignore_sigint() -> None:
    """Ctrl-C reaches the whole process group, and only the parent should act on it (it stops the run and
    says so in one line); a worker's KeyboardInterrupt would print a traceback per process."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exit_when_gone(parent: int) -> None:
    """Block until process ``parent`` has ended, then end this process at once."""
    import select

    try:
        fd = os.pidfd_open(parent)  # readable once the process has ended, zombie or reaped
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (not Linux, old kernel): look every second
        import time

        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
    select.select([fd], [], [])
    os._exit(1)


def init_worker(parent: int) -> None:
    """Initializer of decoding worker processes: ignore Ctrl-C (:func:`ignore_sigint`) and end when the
    process that started the pool ends, however it ended. A killed parent (SIGKILL, out of memory) cannot
    stop its workers, and they would wait on their queue forever, keeping the forkserver and the resource
    tracker alive with them, adopted by PID 1."""
    import threading

    ignore_sigint()
    threading.Thread(target=_exit_when_gone, args=(parent,), name="covidct-parent-watch", daemon=True).start()


#: Largest file read as DICOM (a bound on the bytes one file can make covidct read; an Enhanced CT of 1,500
#: 512x512 frames is 750 MiB). Larger files are left out as "too large".
MAX_DICOM_FILE_BYTES = 2 * 1024**3
#: Groups a DICOM file without the 128-byte preamble and "DICM" may start with (file meta, directory,
#: identifying, patient, acquisition, relationship, image). Anything else is not read by force: a file of
#: zeros would otherwise be parsed as millions of empty elements (minutes for a gigabyte).
_RAW_START_GROUPS = frozenset({0x0002, 0x0004, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028})


#: Most header bytes read from one file (values past ``_DEFER_BYTES`` are skipped, not read): a header of
#: many thousand frames fits; a crafted file (a preamble followed by a gigabyte of zeros, which pydicom would
#: parse as empty elements for minutes) is refused within a second or two.
MAX_DICOM_HEADER_BYTES = 4 * 1024**2
_DEFER_BYTES = 256 * 1024


class _HeaderTooLong(Exception):
    pass


class _BoundedFile(io.FileIO):
    """A raw file that refuses to read more than ``limit`` bytes in all (None: no limit)."""

    def __init__(self, path: str, limit: int | None) -> None:
        super().__init__(path, "rb")
        self.limit = limit
        self.bytes_read = 0

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        self.bytes_read += n or 0
        if self.limit is not None and self.bytes_read > self.limit:
            raise _HeaderTooLong
        return n


def _may_be_raw_dicom(path: str) -> bool:
    """Does ``path`` start like a DICOM data set without a preamble (little or big endian)?"""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    if len(head) < 8:
        return False
    little, big = struct.unpack("<H", head[:2])[0], struct.unpack(">H", head[:2])[0]
    return little in _RAW_START_GROUPS or big in _RAW_START_GROUPS


def read_headers(paths: list[str]) -> list[_Header | tuple[str, str]]:
    """:func:`read_header` of each path (a unit of work for a process pool)."""
    return [read_header(p) for p in paths]


def read_header(path: str) -> _Header | tuple[str, str]:
    """Read one file's header. Returns the header, or ``(path, reason)`` when the file cannot be used."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        size = os.path.getsize(path)
    except OSError as exc:  # a broken symbolic link, a file removed meanwhile, no permission
        return path, f"unreadable file ({exc.strerror or type(exc).__name__})"
    if size > MAX_DICOM_FILE_BYTES:
        return (
            path,
            f"too large for a DICOM image ({size / 1024**3:.1f} GiB; at most {MAX_DICOM_FILE_BYTES >> 30} GiB)",
        )
    ds = None
    force = False
    state = "missing"
    for force in (False, True):
        if force and not _may_be_raw_dicom(path):
            return path, "not a DICOM file"
        try:
            raw = _BoundedFile(path, MAX_DICOM_HEADER_BYTES)
            with io.BufferedReader(raw) as fp:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force, defer_size=_DEFER_BYTES)
                raw.limit = None
                meta = getattr(ds, "file_meta", None)
                tsyn = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
                if tsyn in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
                    state = "ok"  # big endian / deflated: not checked here, decoding will tell
                else:
                    state = _pixel_data_state(fp, size)
            break
        except InvalidDicomError:
            continue
        except _HeaderTooLong:
            return (
                path,
                f"not a usable DICOM file (no image header within its first {MAX_DICOM_HEADER_BYTES >> 20} MiB)",
            )
        except Exception as exc:  # a corrupt header (or, read by force, no DICOM at all)
            if force:
                return path, "not a DICOM file"
            return path, f"unreadable DICOM header ({type(exc).__name__}: {exc})"
    if ds is None:
        return path, "not a DICOM file"
    if force and "Rows" not in ds:
        return path, "not a DICOM file"
    if "Rows" not in ds or "Columns" not in ds:
        return path, "no image data (no Rows/Columns: not an image object)"
    if state == "missing":
        return path, "no pixel data"
    if state == "truncated":
        return path, "truncated file (pixel data shorter than declared)"
    meta = getattr(ds, "file_meta", None)
    tsyn = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    padding = None
    pad = _f(ds.get("PixelPaddingValue"))
    if pad is not None:
        limit = _f(ds.get("PixelPaddingRangeLimit"))
        padding = (min(pad, limit), max(pad, limit)) if limit is not None else (pad, pad)
    phi = {k: str(ds.get(k)) for k in PHI_KEYWORDS if ds.get(k) not in (None, "")}
    hdr = _Header(
        path=path,
        force=force,
        modality=str(ds.Modality) if ds.get("Modality") else None,
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_number=_int(ds.get("SeriesNumber")),
        series_description=str(ds.get("SeriesDescription", "")).strip(),
        manufacturer=str(ds.get("Manufacturer", "")).strip(),
        transfer_syntax=tsyn,
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        n_frames=_int(ds.get("NumberOfFrames")) or 1,
        iop=_floats(ds.get("ImageOrientationPatient"), 6),
        ipp=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        slice_location=_f(ds.get("SliceLocation")),
        instance_number=_int(ds.get("InstanceNumber")),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        slice_thickness=_f(ds.get("SliceThickness")),
        slope=_f(ds.get("RescaleSlope")) or 1.0,
        intercept=_f(ds.get("RescaleIntercept")) or 0.0,
        padding=padding,
        phi=phi,
    )
    if hdr.n_frames > 1:
        _read_functional_groups(ds, hdr)
    return hdr


def _read_functional_groups(ds: Any, hdr: _Header) -> None:
    """Enhanced (multi-frame) CT: per-frame position, orientation, spacing and rescale."""

    def first(seq: Any, name: str) -> Any:
        s = seq.get(name) if seq is not None else None
        return s[0] if s else None

    shared = first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []

    def lookup(frame: Any, seq: str, attr: str) -> Any:
        for group in (frame, shared):
            item = first(group, seq)
            if item is not None and attr in item:
                return item.get(attr)
        return None

    for i in range(hdr.n_frames):
        frame = per_frame[i] if i < len(per_frame) else None
        iop = _floats(lookup(frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        if iop is not None and hdr.iop is None:
            hdr.iop = iop
        ps = _floats(lookup(frame, "PixelMeasuresSequence", "PixelSpacing"), 2)
        if ps is not None and hdr.pixel_spacing is None:
            hdr.pixel_spacing = ps  # type: ignore[assignment]
        st = _f(lookup(frame, "PixelMeasuresSequence", "SliceThickness"))
        if st is not None and hdr.slice_thickness is None:
            hdr.slice_thickness = st
        slope = _f(lookup(frame, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _f(lookup(frame, "PixelValueTransformationSequence", "RescaleIntercept"))
        hdr.frames.append(
            {
                "ipp": _floats(lookup(frame, "PlanePositionSequence", "ImagePositionPatient"), 3),
                "slope": slope if slope is not None else hdr.slope,
                "intercept": intercept if intercept is not None else hdr.intercept,
                "instance": i + 1,
            }
        )


def find_files(root: Path, ignored: list[str] | None = None) -> list[str]:
    """Candidate files under ``root`` (recursive); hidden files and obvious non-DICOM suffixes left out.

    Files left out for their suffix are appended to ``ignored`` when given (hidden files are not).
    """
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in _SKIP_SUFFIXES:
                if ignored is not None:
                    ignored.append(os.path.join(dirpath, name))
                continue
            out.append(os.path.join(dirpath, name))
    return out
