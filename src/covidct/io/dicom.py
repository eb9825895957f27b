"""DICOM series discovery, selection, geometric sorting and HU decoding.

Conventions: slices are ordered by their position along the slice normal (ImagePositionPatient projected on
the normal from ImageOrientationPatient; SliceLocation only as a fallback; never by file name), the normal
oriented toward the patient's head, so index 0 is the most superior slice. Positions are in mm, larger = more
superior. Headers are read with ``stop_before_pixels``; pixels are decoded only for the slices asked for.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import InputError
from covidct.io.dicom_headers import (
    Series,
    SliceRef,
    _Header,
    read_headers,
)
from covidct.registry import AIR_HU

log = logging.getLogger(__name__)


def _normal(iop: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row = np.asarray(iop[:3], dtype=np.float64)
    col = np.asarray(iop[3:], dtype=np.float64)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise ValueError("degenerate ImageOrientationPatient")
    n = n / norm
    if n[2] < 0 or (abs(n[2]) < 1e-6 and n.sum() < 0):
        n = -n  # point toward the head (LPS +z)
    return row, col, n


def _skip_reason(hdr: _Header) -> tuple[str | None, bool]:
    """(reason to leave the series out, or None; whether it is only a fallback candidate)."""
    if hdr.modality is not None and hdr.modality.upper() != "CT":
        return f"modality {hdr.modality}, not CT", False
    if any(t in ("LOCALIZER", "SCOUT", "TOPOGRAM") for t in hdr.image_type):
        return "localizer / scout image", False
    if hdr.iop is not None:
        try:
            _, _, n = _normal(hdr.iop)
        except ValueError:
            return "degenerate ImageOrientationPatient", False
        if abs(n[2]) < 0.8:
            plane = "coronal" if abs(n[1]) >= abs(n[0]) else "sagittal"
            return f"not axial ({plane} reformat)", False
    derived = [t for t in hdr.image_type[:2] if t in ("DERIVED", "SECONDARY")]
    if derived or "REFORMATTED" in hdr.image_type or "MPR" in hdr.image_type:
        return "derived / secondary image (" + "\\".join(hdr.image_type) + ")", True
    return None, False


def _group_key(hdr: _Header) -> tuple[Any, ...]:
    iop = tuple(round(v, 3) for v in hdr.iop) if hdr.iop is not None else None
    return (hdr.series_uid, hdr.rows, hdr.cols, iop)


def discover(
    root: Path,
    files: list[str],
    *,
    display: Any = None,
    header_reader: Any = None,
    ignored: list[str] | None = None,
    series: str | None = None,
) -> Series:
    """Read the headers of ``files``, choose the axial CT series with the most slices and sort it.

    ``display`` maps a real path to the name shown to the user (for extracted archives); ``ignored`` are
    files left out by name (reported in ``skipped``). ``series`` (a SeriesInstanceUID or a SeriesNumber)
    picks the series instead. Several axial CT series of different patients or studies are refused unless
    ``series`` picks one. The choice (chosen and left-out series, no identifiers) is ``meta["series_choice"]``.
    """
    name = display or (lambda p: p)
    if not files and ignored:
        raise InputError(
            f"{root}: no DICOM files, only {len(ignored)} file(s) such as {Path(ignored[0]).name}; "
            "give a DICOM folder, or the volume file itself"
        )
    if not files:
        raise InputError(
            f"{root}: no files found (empty folder); give a folder of DICOM files of one CT study"
        )
    reader = header_reader or read_headers
    results = reader(files)
    skipped: list[dict[str, str]] = [
        {"path": name(p), "reason": "not DICOM (by its file name suffix)"} for p in ignored or ()
    ]
    warnings: list[str] = []
    headers: list[_Header] = []
    for res in results:
        if isinstance(res, tuple):
            skipped.append({"path": name(res[0]), "reason": res[1]})
        else:
            headers.append(res)
    bad = [s for s in skipped if s["reason"].startswith(("truncated", "unreadable"))]
    if not headers:
        reasons = sorted({s["reason"] for s in skipped if not s["reason"].startswith("not DICOM (by")})
        if reasons == ["not a DICOM file"]:
            raise InputError(f"{root}: no DICOM files found among {len(files)} file(s); give a DICOM folder")
        if all(r in ("no pixel data",) or r.startswith("no image data") for r in reasons):
            raise InputError(f"{root}: the DICOM files hold no image data (no pixel data); give CT images")
        raise InputError(f"{root}: no readable CT image among {len(files)} file(s) ({'; '.join(reasons)})")

    groups: dict[tuple[Any, ...], list[_Header]] = {}
    for h in headers:
        groups.setdefault(_group_key(h), []).append(h)
    if series is not None:
        groups = _select_series(root, groups, series, skipped, name)
    primary: list[list[_Header]] = []
    fallback: list[tuple[list[_Header], str]] = []
    modalities: set[str] = set()
    for members in groups.values():
        reason, is_fallback = _skip_reason(members[0])
        if members[0].modality:
            modalities.add(members[0].modality)
        if reason is None:
            primary.append(members)
        elif is_fallback:
            fallback.append((members, reason))
        else:
            _skip_series(members, reason, skipped, name)

    def n_of(ms: list[_Header]) -> int:
        return sum(m.n_frames for m in ms)

    def rank(ms: list[_Header]) -> tuple[int, int, str]:
        return (n_of(ms), -(ms[0].series_number or 0), ms[0].series_uid)

    if primary:
        chosen = max(primary, key=rank)
        ties = [m for m in primary if m is not chosen and n_of(m) == n_of(chosen)]
        if ties:
            warnings.append(
                f"{len(ties) + 1} axial CT series have {n_of(chosen)} slices each; chose series "
                f"{chosen[0].series_number} {chosen[0].series_description!r} (the lowest series number)"
            )
        for members, reason in fallback:
            _skip_series(members, reason, skipped, name)
    elif fallback:
        chosen = max((m for m, _ in fallback), key=rank)
        warnings.append("no original axial CT series; using a derived / secondary series")
        for members, reason in fallback:
            if members is not chosen:
                _skip_series(members, reason, skipped, name)
    else:
        if modalities and "CT" not in {m.upper() for m in modalities}:
            raise InputError(
                f"{root}: not CT (modality {', '.join(sorted(modalities))}); covidct needs a CT series"
            )
        reasons = sorted({s["reason"] for s in skipped})
        raise InputError(f"{root}: no axial CT series found (left out: {'; '.join(reasons)})")
    others = [m for m in (primary or [m for m, _ in fallback]) if m is not chosen]
    if others and series is None:
        _refuse_mixed_patients(root, [chosen, *others])
    for other in primary:
        if other is not chosen:
            _skip_series(
                other, f"another series ({n_of(other)} slices); the largest was chosen", skipped, name
            )
    choice = {
        "chosen": _series_summary(chosen),
        "left_out": [_series_summary(m) for m in others],
        "rule": f"series {series!r} as asked"
        if series is not None
        else "the axial CT series with most slices",
    }
    if others:
        warnings.append(
            f"{len(others) + 1} axial CT series; chose {_series_label(chosen)} ({choice['rule']}); left out "
            + ", ".join(_series_label(m) for m in others)
            + " (pick another with --series NUMBER)"
        )
    for s in bad:
        warnings.append(f"skipped {s['path']}: {s['reason']}")
    result = _sort_series(chosen, skipped, warnings, name)
    result.meta["series_choice"] = choice
    return result


def _n_slices(members: list[_Header]) -> int:
    return sum(m.n_frames for m in members)


def _series_label(members: list[_Header]) -> str:
    """``series 3 'CHEST 1.25mm' (148 slices)``: no identifiers."""
    first = members[0]
    number = f"series {first.series_number}" if first.series_number is not None else "a series without number"
    desc = f" {first.series_description!r}" if first.series_description else ""
    return f"{number}{desc} ({_n_slices(members)} slices)"


def _series_summary(members: list[_Header]) -> dict[str, Any]:
    first = members[0]
    return {
        "series_number": first.series_number,
        "series_description": first.series_description,
        "n_slices": _n_slices(members),
    }


def _refuse_mixed_patients(root: Path, candidates: list[list[_Header]]) -> None:
    """Refuse candidate series that belong to different patients or studies (never names the patients)."""
    patients = {m[0].phi.get("PatientID", "") for m in candidates} - {""}
    studies = {m[0].study_uid for m in candidates} - {""}
    if len(patients) <= 1 and len(studies) <= 1:
        return
    what = f"{len(patients)} different patients" if len(patients) > 1 else f"{len(studies)} different studies"
    raise InputError(
        f"{root}: the CT series here belong to {what}: "
        + ", ".join(_series_label(m) for m in candidates)
        + "; choosing one by size could mix up patients. Pick one with --series NUMBER (or its "
        "SeriesInstanceUID, see covidct info --show-phi), or give each study its own folder"
    )


def _select_series(
    root: Path,
    groups: dict[tuple[Any, ...], list[_Header]],
    wanted: str,
    skipped: list[dict[str, str]],
    name: Any,
) -> dict[tuple[Any, ...], list[_Header]]:
    """The groups of the series ``wanted`` (SeriesInstanceUID or SeriesNumber); the others are skipped."""
    wanted = wanted.strip()

    def matches(members: list[_Header]) -> bool:
        first = members[0]
        return first.series_uid == wanted or (
            first.series_number is not None and str(first.series_number) == wanted
        )

    chosen = {k: m for k, m in groups.items() if matches(m)}
    if not chosen:
        available = ", ".join(sorted({_series_label(m) for m in groups.values()}))
        raise InputError(f"{root}: no series {wanted!r} here (there are: {available}); check --series")
    if len({m[0].series_uid for m in chosen.values()}) > 1:
        try:
            _refuse_mixed_patients(root, list(chosen.values()))
        except InputError:
            raise InputError(
                f"{root}: series number {wanted} names series of different patients or studies here: "
                + ", ".join(_series_label(m) for m in chosen.values())
                + "; give its SeriesInstanceUID instead (see covidct info --show-phi)"
            ) from None
    for k, members in groups.items():
        if k not in chosen:
            own, _ = _skip_reason(members[0])  # a reformat or localizer says so, whatever was asked
            _skip_series(members, own or f"not the series asked for (--series {wanted})", skipped, name)
    return chosen


def _skip_series(members: list[_Header], reason: str, skipped: list[dict[str, str]], name: Any) -> None:
    desc = members[0].series_description
    label = f"series {members[0].series_number}" if members[0].series_number is not None else "series"
    for m in members:
        skipped.append({"path": name(m.path), "reason": reason, "series": f"{label} {desc}".strip()})


def _sort_series(
    members: list[_Header], skipped: list[dict[str, str]], warnings: list[str], name: Any
) -> Series:
    first = members[0]
    iop = first.iop
    if iop is None:
        warnings.append("no ImageOrientationPatient; assumed standard axial orientation")
        iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    row, col, normal = _normal(iop)
    if first.modality is None:
        warnings.append("no Modality in the header; assumed CT with stored values in HU after rescale")
    refs: list[SliceRef] = []
    no_position = 0
    for h in members:
        units: list[tuple[int | None, Any, float, float, int | None]] = []
        if h.n_frames > 1:
            for i, fr in enumerate(h.frames):
                units.append((i, fr["ipp"], fr["slope"], fr["intercept"], fr["instance"]))
        else:
            units.append((None, h.ipp, h.slope, h.intercept, h.instance_number))
        for frame, ipp, slope, intercept, inst in units:
            if ipp is not None:
                pos = float(np.dot(np.asarray(ipp, dtype=np.float64), normal))
            elif h.slice_location is not None and frame is None:
                pos = h.slice_location
                no_position += 1
            else:
                pos = float("nan")
                no_position += 1
            src = name(h.path) if frame is None else f"{name(h.path)}#{frame}"
            refs.append(SliceRef(h.path, src, frame, pos, inst, slope, intercept, h.padding, h.force, ipp))
    if any(np.isnan(r.position_mm) for r in refs):
        if all(r.instance_number is not None for r in refs):
            warnings.append("no slice positions; ordered by InstanceNumber (1 = most superior assumed)")
            for r in refs:
                r.position_mm = -float(r.instance_number or 0) * (first.slice_thickness or 1.0)
        else:
            raise InputError(f"{name(first.path)}: slices carry neither a position nor an instance number")
    elif no_position:
        warnings.append(f"{no_position} slice(s) without ImagePositionPatient; SliceLocation used")
    refs.sort(key=lambda r: (-r.position_mm, r.instance_number or 0, r.source))
    kept: list[SliceRef] = []
    for r in refs:
        if kept and abs(kept[-1].position_mm - r.position_mm) < 1e-3:
            skipped.append({"path": r.source, "reason": f"duplicate slice position {r.position_mm:+.2f} mm"})
            continue
        kept.append(r)
    if len(kept) < len(refs):
        warnings.append(f"{len(refs) - len(kept)} slice(s) with a duplicated position left out")
    dz = _z_spacing(kept, first, warnings)
    _refuse_gaps(kept, dz, skipped)
    ps = first.pixel_spacing
    if ps is None:
        warnings.append("no PixelSpacing; 1 mm assumed")
        ps = (1.0, 1.0)
    meta = {
        "modality": first.modality or "CT",
        "manufacturer": first.manufacturer,
        "transfer_syntax": first.transfer_syntax,
        "series_description": first.series_description,
        "series_uid": first.series_uid,
        "study_uid": first.study_uid,
        "slice_thickness_mm": first.slice_thickness,
    }
    return Series(
        slices=kept,
        spacing=(dz, float(ps[0]), float(ps[1])),
        row_cosine=row,
        col_cosine=col,
        normal=normal,
        rows=first.rows,
        cols=first.cols,
        meta=meta,
        skipped=skipped,
        warnings=warnings,
        phi=dict(first.phi),
    )


def _z_spacing(refs: list[SliceRef], first: _Header, warnings: list[str]) -> float:
    if len(refs) < 2:
        return float(first.slice_thickness or 1.0)
    gaps = -np.diff([r.position_mm for r in refs])
    med = float(np.median(gaps))
    if np.any(np.abs(gaps - med) > 0.1 * med + 0.01):
        warnings.append(
            f"uneven slice gaps: {gaps.min():.2f}-{gaps.max():.2f} mm (median {med:.2f} mm used as spacing);"
            " slices may be missing"
        )
    return med


#: A step between neighbouring slices longer than this many times the series' spacing is a missing slice.
GAP_FACTOR = 1.5


def _refuse_gaps(refs: list[SliceRef], dz: float, skipped: list[dict[str, str]]) -> None:
    """Refuse a series with a slice missing inside it (a file absent, truncated or unreadable): stacking the
    rest would shift every slice past the hole, as for a slice that fails to decode (see ``Study.read``).

    A slice missing at either end only shortens the volume and is not refused.
    """
    if len(refs) < 3 or dz <= 0:
        return
    for a, b in itertools.pairwise(refs):
        step = a.position_mm - b.position_mm
        if step <= GAP_FACTOR * dz:
            continue
        damaged = [s for s in skipped if s["reason"].startswith(("truncated", "unreadable", "not a usable"))]
        cause = (
            f"; {damaged[0]['path']} was left out ({damaged[0]['reason']})"
            if damaged
            else " (a file is missing from the folder)"
        )
        n_missing = max(1, round(step / dz) - 1)
        raise InputError(
            f"about {n_missing} slice(s) missing inside the series between {a.source} ({a.position_mm:+.2f} mm) and "
            f"{b.source} ({b.position_mm:+.2f} mm), a {step:.2f} mm step where the spacing is {dz:.2f} mm"
            f"{cause}; the volume would have a gap. Replace the missing or damaged file with an intact copy, "
            "or export the series again"
        )


def to_hu(
    stored: np.ndarray, slope: float, intercept: float, padding: tuple[float, float] | None
) -> np.ndarray:
    """Stored values -> HU (int16 when slope/intercept are whole numbers); padding and out-of-field -> air."""
    pad = None
    if padding is not None:
        pad = (stored >= padding[0]) & (stored <= padding[1])
    if (
        np.issubdtype(stored.dtype, np.integer)
        and float(slope).is_integer()
        and float(intercept).is_integer()
    ):
        hu = stored.astype(np.int32)  # the integer path: exact, and 3-4x faster than float arithmetic
        if slope != 1:
            hu *= int(slope)
        hu += int(intercept)
        if pad is not None:
            hu[pad] = AIR_HU
        np.clip(hu, AIR_HU, 32767, out=hu)  # out-of-field values (e.g. -2048, -3024) become air
        return hu.astype(np.int16)
    arr = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if pad is not None:
        arr[pad] = AIR_HU
    np.maximum(arr, AIR_HU, out=arr)
    if float(slope).is_integer() and float(intercept).is_integer():
        return np.clip(np.rint(arr), -32768, 32767).astype(np.int16)
    return arr


def decode_group(
    path: str, force: bool, items: list[tuple[int | None, float, float, Any]]
) -> list[np.ndarray | str]:
    """Decode one file: ``items`` are ``(frame, slope, intercept, padding)``.

    Returns one HU array per item, or the error message (a string) for every item when the file cannot be
    decoded, so that one bad file never loses the rest of a series.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=force)
        data = ds.pixel_array
    except Exception as exc:
        return [f"cannot decode the pixel data ({type(exc).__name__}: {exc})"] * len(items)
    out: list[np.ndarray | str] = []
    for frame, slope, intercept, padding in items:
        stored = data if frame is None else data[frame]
        if stored.ndim != 2:
            out.append(f"expected a grey-scale image, got pixel array shape {stored.shape}")
        else:
            out.append(to_hu(stored, slope, intercept, padding))
    return out


def decode_chunk(
    jobs: list[tuple[str, bool, list[tuple[int | None, float, float, Any]]]],
) -> list[np.ndarray | str]:
    """Decode several files (a unit of work for a process pool)."""
    out: list[np.ndarray | str] = []
    for path, force, items in jobs:
        out.extend(decode_group(path, force, items))
    return out


def group_by_file(
    refs: Iterable[SliceRef],
) -> list[tuple[str, bool, list[tuple[int | None, float, float, Any]]]]:
    """Consecutive slices of one file become one decoding job (a multi-frame file is decoded once)."""
    jobs: list[tuple[str, bool, list[tuple[int | None, float, float, Any]]]] = []
    for r in refs:
        item = (r.frame, r.slope, r.intercept, r.padding)
        if jobs and jobs[-1][0] == r.path:
            jobs[-1][2].append(item)
        else:
            jobs.append((r.path, r.force, [item]))
    return jobs
