"""``covidct lesions INPUT... -o OUT``: ground glass and consolidation masks, and lung involvement figures."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from covidct.cli._common import add_series_argument, check_output_folder, show_progress, study_stem
from covidct.errors import CovidCTError

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "lesions",
        help="segment ground glass and consolidation; lung involvement per lung and zone",
        description="Segment COVID-19 lesions (1 ground glass, 2 consolidation) inside the lungs. INPUT is a "
        "study (anything `covidct diagnose` reads: OUT/<study>_lesions.nii.gz and OUT/<study>_lesions.json "
        "with volumes, percentages and scores per lung and zone) or a folder of 2-D slice images cropped "
        "to the lungs (ROOT/Imgs/*.png|jpg or the images themselves: OUT/<image>.png, same size, values "
        "0/1/2; with ROOT/GT/<image>.png masks, scores against them). Research use only.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="study, or folder of slice images")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for the outputs")
    p.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="lesion bundle, or pipeline folder with lesions/ (default: the shipped models/lesions); "
        "'classical' for the HU-threshold baseline",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--split",
        choices=("all", "train", "val"),
        default="all",
        help="image folders: only the fifth held out from training ('val', by image name), the rest, or all",
    )
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="studies read from DICOM: also write OUT/<study>_lesions_seg.dcm, a DICOM SEG with one segment "
        "per lesion type (ground glass DCM 112120, consolidation SNOMED CT 95436008)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document with every input's figures")
    p.add_argument("--workers", type=int, default=None, help="DICOM decoding processes (default: automatic)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_series_argument(p)
    p.set_defaults(func=run)


def is_image_folder(path: Path) -> bool:
    """A folder of 2-D slice images (with ``Imgs/``, or PNG/JPEG files and no DICOM beside them)."""
    from covidct.data.realistic.donors import IMAGE_SUFFIXES

    if not path.is_dir():
        return False
    if (path / "Imgs").is_dir():
        return True
    files = [f for f in path.iterdir() if f.is_file()]
    return any(f.suffix.lower() in IMAGE_SUFFIXES for f in files) and not any(
        f.suffix.lower() in ("", ".dcm", ".dicom", ".ima") for f in files
    )


def _mean_scores(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """The folder's mean scores (rounded) over its images that had a mask, None when none had one."""
    from covidct.evaluate.lesions import mean_scores

    scored = [r["scores"] for r in rows if "scores" in r]
    if not scored:
        return None
    return {k: round(v, 4) if k != "images" else v for k, v in mean_scores(scored).items()}


def run(args: argparse.Namespace) -> int:
    from covidct._files import atomic_write_text
    from covidct.bundle import json_safe
    from covidct.lesions.api import load_lesion_segmenter, segment_image_folder, segment_study

    out = Path(args.output)
    check_output_folder(out)
    progress = show_progress(args.no_progress)
    segmenter = load_lesion_segmenter(args.model, device=args.device)
    docs: list[dict[str, Any]] = []
    failed = 0
    for source in args.inputs:
        path = Path(source)
        try:
            if is_image_folder(path):
                rows = segment_image_folder(segmenter, path, out, split=args.split, progress=progress)
                doc: dict[str, Any] = {"input": source, "kind": "images", "images": rows}
                mean = _mean_scores(rows)
                if mean is not None:
                    doc["scores"] = mean
                    log.info(
                        "%s: %d images, mean infection Dice %.3f against %s",
                        source,
                        len(rows),
                        mean["dice"],
                        "its GT masks",
                    )
                else:
                    log.info("%s: %d lesion masks written to %s", source, len(rows), out)
            else:
                result = segment_study(
                    segmenter, source, series=args.series, workers=args.workers, progress=progress
                )
                out.mkdir(parents=True, exist_ok=True)
                stem = study_stem(source)
                nifti = out / f"{stem}_lesions.nii.gz"
                result.volume.save(nifti, array=result.lesions)
                doc = {"kind": "study", "mask": str(nifti), **result.to_json()}
                if args.dicom_seg:
                    from covidct.report.dicom_seg import write_dicom_seg

                    seg = write_dicom_seg(
                        result.volume, result.lesions, out / f"{stem}_lesions_seg.dcm", kind="lesions"
                    )
                    doc["dicom_seg"] = str(seg)
                atomic_write_text(
                    out / f"{stem}_lesions.json", json.dumps(json_safe(doc), indent=1, allow_nan=False)
                )
                total = result.involvement["total"]
                log.info(
                    "%s: lesions %.1f ml (%.1f%% of lung), score %d/%d; written to %s",
                    source,
                    total["lesion_ml"],
                    total["percent"],
                    total["score"],
                    total["score_max"],
                    nifti,
                )
        except CovidCTError as exc:
            if len(args.inputs) == 1:
                raise
            log.error("%s: %s", source, exc)
            failed += 1
            docs.append({"input": source, "error": str(exc)})
            continue
        docs.append(doc)
    if args.json:
        print(json.dumps(json_safe({"model": segmenter.card.get("name"), "results": docs}), allow_nan=False))
    if failed:
        log.error("%d of %d inputs failed (see above)", failed, len(args.inputs))
        return 1
    return 0
