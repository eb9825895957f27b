"""``covidct info INPUT [--json] [--show-phi]``: what a study holds, how it was read, is it a chest CT."""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING, Any

from covidct.cli._common import add_series_argument

if TYPE_CHECKING:  # numpy and the readers load only when the command runs (``covidct --help`` stays fast)
    from covidct.io.volume import CTVolume


def register(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="describe a CT study (slices, spacing, HU range, chest check)",
        description="Read a DICOM folder, zip, multi-frame file or NIfTI/NRRD/MHA volume and describe it. "
        "Patient name/ID and dates are left out unless --show-phi is given.",
    )
    p.add_argument("input", metavar="INPUT", help="DICOM folder, zip, DICOM file or NIfTI/NRRD/MHA volume")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--show-phi", action="store_true", help="include patient name/ID and dates")
    p.add_argument("--workers", type=int, default=None, help="DICOM decoding processes (default: automatic)")
    add_series_argument(p)
    p.set_defaults(func=run)


def describe(volume: CTVolume, *, source: str, show_phi: bool = False) -> dict[str, Any]:
    """The ``info`` document of a loaded volume (JSON-ready; PHI only when ``show_phi``)."""
    from covidct.io.checks import check_chest_ct

    meta = volume.meta
    check = check_chest_ct(volume)
    hu_min = float(volume.hu.min())
    hu_max = float(volume.hu.max())
    doc: dict[str, Any] = {
        "input": source,
        "input_format": meta.input_format,
        "n_slices": volume.n_slices,
        "shape": list(volume.shape),
        "spacing_mm": [round(float(s), 4) for s in volume.spacing],
        "slice_positions_mm": [round(float(p), 3) for p in volume.slice_positions_mm],
        "hu_min": int(hu_min) if math.isfinite(hu_min) and hu_min.is_integer() else hu_min,
        "hu_max": int(hu_max) if math.isfinite(hu_max) and hu_max.is_integer() else hu_max,
        "modality": meta.modality,
        "manufacturer": meta.manufacturer,
        "transfer_syntax": meta.transfer_syntax,
        "transfer_syntax_name": meta.extra.get("transfer_syntax_name", ""),
        "series_description": meta.series_description,
        "origin_mm": [round(float(v), 3) for v in volume.origin],
        "direction": [[round(float(v), 6) for v in row] for row in volume.direction.tolist()],
        "is_chest_ct": check.is_chest_ct,
        "chest_check": check.to_json(),
        "skipped": list(meta.skipped),
        "warnings": list(meta.warnings),
    }
    if meta.extra.get("series_choice") is not None:
        doc["series_choice"] = meta.extra["series_choice"]
    if show_phi:
        doc["phi"] = dict(meta.phi)
        doc["series_uid"] = meta.series_uid
        doc["study_uid"] = meta.study_uid
    return doc


def run(args: argparse.Namespace) -> int:
    from covidct.io.loader import open_study

    study = open_study(args.input, workers=args.workers, min_slices=1, series=args.series)
    try:
        volume = study.read()
    finally:
        study.close()
    doc = describe(volume, source=str(args.input), show_phi=args.show_phi)
    if args.json:
        print(json.dumps(doc, allow_nan=False))
        return 0
    pos = doc["slice_positions_mm"]
    lines = [
        f"input:          {doc['input']} ({doc['input_format']})",
        f"slices:         {doc['n_slices']}  shape (z,y,x) {tuple(doc['shape'])}",
        f"spacing (mm):   {tuple(doc['spacing_mm'])}",
        f"positions (mm): {pos[0]:+.2f} (superior) .. {pos[-1]:+.2f} (inferior)",
        f"HU range:       {doc['hu_min']} .. {doc['hu_max']}",
        f"modality:       {doc['modality']}  manufacturer: {doc['manufacturer'] or '-'}",
        f"transfer syntax: {doc['transfer_syntax'] or '-'} {doc['transfer_syntax_name']}".rstrip(),
        f"chest CT:       {'yes' if doc['is_chest_ct'] else 'NO'} - {doc['chest_check']['reason']}",
    ]
    if doc["skipped"]:
        lines.append(f"skipped:        {len(doc['skipped'])} file(s)")
        lines += [f"  {s['path']}: {s['reason']}" for s in doc["skipped"][:20]]
        if len(doc["skipped"]) > 20:
            lines.append(f"  ... and {len(doc['skipped']) - 20} more (see --json)")
    lines += [f"warning:        {w}" for w in doc["warnings"]]
    if args.show_phi:
        lines += [f"{k}: {v}" for k, v in doc["phi"].items()]
    print("\n".join(lines))
    return 0
