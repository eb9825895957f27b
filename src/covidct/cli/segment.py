"""``covidct segment INPUT -o OUT.nii.gz``: right/left lung mask with the input's geometry, preview, figures."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from covidct.cli._common import add_series_argument, check_output_file
from covidct.errors import ConfigError, NotChestCTError

log = logging.getLogger(__name__)

#: Output suffixes the mask can be written as (SimpleITK picks the format from the suffix).
MASK_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "segment",
        help="segment the right and left lung (mask as NIfTI, optional preview PNG)",
        description="Segment the lungs of a CT study: 0 background, 1 the patient's right lung, 2 the left. "
        "The mask is written with the input's geometry.",
    )
    p.add_argument("input", metavar="INPUT", help="DICOM folder, zip, DICOM file or NIfTI/NRRD/MHA volume")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="mask file: .nii.gz, .nii, .nrrd or .mha"
    )
    p.add_argument("--method", choices=("classical", "unet"), default="classical", help="default: classical")
    p.add_argument("--model", metavar="DIR", default=None, help="U-Net bundle folder (with --method unet)")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="for --method unet (default: cpu)"
    )
    p.add_argument("--json", action="store_true", help="print voxel counts and volumes as one JSON object")
    p.add_argument("--preview", metavar="PNG", default=None, help="write a mosaic of slices with the mask")
    p.add_argument("--workers", type=int, default=None, help="DICOM decoding processes (default: automatic)")
    add_series_argument(p)
    p.set_defaults(func=run)


def check_writable(path: str, *, what: str) -> None:
    """Raise :class:`ConfigError` when ``path`` cannot become a file (see :func:`check_output_file`)."""
    check_output_file(path, what=what)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from covidct.io import load_study
    from covidct.report.overlay import overlay_mosaic
    from covidct.segment import get_segmenter
    from covidct.segment.quality import mask_summary

    output = str(args.output)
    if not output.lower().endswith(MASK_SUFFIXES):
        raise ConfigError(f"output {output!r}: use one of the suffixes {', '.join(MASK_SUFFIXES)}")
    if args.method == "classical" and args.model is not None:
        raise ConfigError("--model is only used with --method unet: leave it out or add --method unet")
    preview = args.preview
    if preview is not None and not str(preview).lower().endswith(".png"):
        raise ConfigError(f"preview {preview!r}: the preview is a PNG image, name it *.png")
    check_writable(output, what="output")
    if preview is not None:
        check_writable(str(preview), what="preview")

    segmenter = get_segmenter(args.method, model_dir=args.model, device=args.device)
    volume = load_study(args.input, workers=args.workers, series=args.series)
    try:
        mask = np.asarray(segmenter.apply(volume), dtype=np.uint8)
    except NotChestCTError as exc:
        raise NotChestCTError(f"{args.input}: {exc}; no mask written") from exc
    if mask.shape != volume.shape:
        raise RuntimeError(f"segmenter {segmenter.name} returned shape {mask.shape} for {volume.shape}")
    if not mask.any():
        raise NotChestCTError(
            f"{args.input}: no lungs found by the {segmenter.name} segmenter; no mask written "
            "(is this a chest CT?)"
        )
    volume.save(output, array=mask)
    log.info("lung mask written to %s", output)
    if preview is not None:
        overlay_mosaic(volume, mask, path=preview)
        log.info("preview written to %s", preview)
    if args.json:
        print(json.dumps(mask_summary(mask, volume.spacing)))
    return 0
