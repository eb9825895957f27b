"""``covidct convert INPUT -o DIR [--window L,W] [--format png|nifti]``: the paper's format conversion.

PNG: one lung-window image a slice (default WL -600 / WW 1200), named ``slice_<index>_pos<mm>.png`` so that
the file order is the slice order (index 0 most superior), plus ``slices.csv`` mapping index, position and
source file. NIfTI: the HU volume, ``<name>.nii.gz``. Files appear only when complete: they are written in a
staging folder inside DIR and renamed into place.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidct.cli._common import add_series_argument, check_output_folder, show_progress, study_stem
from covidct.errors import ConfigError
from covidct.registry import LUNG_WINDOW, Window

if TYPE_CHECKING:  # numpy and the readers load only when the command runs (``covidct --help`` stays fast)
    from covidct.io.volume import CTVolume

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a CT study to lung-window PNGs (or a NIfTI volume)",
        description="Write one lung-window PNG a slice, named by slice index and position (superior first), "
        "or the HU volume as NIfTI.",
    )
    p.add_argument("input", metavar="INPUT", help="DICOM folder, zip, DICOM file or NIfTI/NRRD/MHA volume")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument(
        "--window", metavar="LEVEL,WIDTH", help="display window in HU (default -600,1200; PNG only)"
    )
    p.add_argument("--format", choices=["png", "nifti"], default="png", help="png (default) or nifti")
    p.add_argument("--workers", type=int, default=None, help="DICOM decoding processes (default: automatic)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_series_argument(p)
    p.set_defaults(func=run)


def png_name(index: int, position_mm: float) -> str:
    """``slice_0000_pos+123.50.png``: sorting the names keeps the slice order for up to 10,000 slices."""
    return f"slice_{index:04d}_pos{position_mm:+.2f}.png"


def write_pngs(volume: CTVolume, out_dir: Path, *, win: Window = LUNG_WINDOW) -> list[Path]:
    """Write the lung-window PNGs and ``slices.csv`` into ``out_dir`` atomically (staging folder, rename)."""
    from PIL import Image

    from covidct.preprocess import window_uint8

    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".covidct-convert-", dir=out_dir))
    written: list[Path] = []
    try:
        rows = []
        for i, info in enumerate(volume.slices):
            name = png_name(i, info.position_mm)
            Image.fromarray(window_uint8(volume.hu[i], win)).save(stage / name, format="PNG")
            src = Path(info.source.split("#")[0]).name if info.source else ""
            rows.append([i, f"{info.position_mm:.3f}", name, src, info.instance_number or ""])
        with open(stage / "slices.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "position_mm", "png", "source_file", "instance_number"])
            w.writerows(rows)
        for f in sorted(stage.iterdir()):
            target = out_dir / f.name
            os.replace(f, target)
            written.append(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return written


def run(args: argparse.Namespace) -> int:
    from covidct.io.loader import load_study
    from covidct.preprocess import parse_window

    if args.window is not None and args.format != "png":
        raise ConfigError("--window applies to PNG output only; NIfTI output keeps the HU values")
    try:
        win = parse_window(args.window) if args.window else LUNG_WINDOW
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    out = Path(args.output)
    check_output_folder(out, what="-o")  # before reading the study
    volume = load_study(
        args.input, workers=args.workers, progress=show_progress(args.no_progress), series=args.series
    )
    if not volume.slices:
        raise ConfigError(f"{args.input}: the volume carries no slice list")
    if args.format == "nifti":
        target = volume.save(out / f"{study_stem(args.input)}.nii.gz")
        print(target)
        return 0
    files = write_pngs(volume, out, win=win)
    print(f"wrote {len(files) - 1} PNG slices (window L{win.level:g}/W{win.width:g}) and slices.csv to {out}")
    return 0
