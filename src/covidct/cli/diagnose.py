"""``covidct diagnose``: one or many studies to a diagnosis, a JSON per study and pictures."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from covidct.cli._common import add_series_argument, check_output_folder, show_progress, study_stem
from covidct.errors import ConfigError, CovidCTError

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diagnose",
        help="diagnose chest CT studies (normal / CAP / COVID-19)",
        description="Segment the lungs, classify every kept slice and apply the patient rule. "
        "A research tool, not a medical device.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM folder, zip, multi-frame file or NIfTI")
    p.add_argument(
        "--model",
        metavar="MODEL_DIR",
        help="pipeline folder with model.json (default: the pretrained pipeline in models/ or $COVIDCT_MODEL)",
    )
    p.add_argument("-o", "--output", metavar="OUT_DIR", help="write <study>.json (and pictures) here")
    p.add_argument("--json", action="store_true", help="print each study's JSON document on stdout")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--backend",
        default="auto",
        help="classifier backend: auto, auto-reduced, torch, onnx, onnx-int8, openvino, openvino-int8, ... "
        "(int8 calibrates on the model's calibration.npy, else on the first study)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per classifier batch (default 16 on cpu, 128 on cuda)",
    )
    p.add_argument("--workers", type=int, default=None, help="DICOM decoding processes (default: cores)")
    p.add_argument("--classify-all", action="store_true", help="also classify the slices the rule drops")
    p.add_argument("--no-strip", action="store_true", help="do not draw the slice-strip figure")
    p.add_argument(
        "--report",
        choices=["html", "pdf"],
        action="append",
        default=[],
        help="also write a report per study (self-contained HTML, or PDF); may be repeated",
    )
    p.add_argument("--dicom-seg", action="store_true", help="also write the lung mask as DICOM SEG")
    p.add_argument(
        "--save-mask", action="store_true", help="also write the lung mask (and lesion mask) as NIfTI"
    )
    add_lesions_argument(p)
    p.add_argument("--show-phi", action="store_true", help="allow patient name/ID in reports")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_series_argument(p)
    p.set_defaults(func=run)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    from covidct._files import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False))


def _is_zip(source: str) -> bool:
    import zipfile

    path = Path(source)
    return source.lower().endswith(".zip") or (path.is_file() and zipfile.is_zipfile(path))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from covidct.diagnose import Diagnoser, resolve_model_dir

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    out_dir = Path(args.output) if args.output else None
    if out_dir is None and (args.report or args.dicom_seg or args.save_mask):
        raise ConfigError("--report, --dicom-seg and --save-mask write files: give an output folder with -o")
    if out_dir is not None:  # before loading models or reading studies: a bad -o fails in a second
        check_output_folder(out_dir, what="-o")
    if args.dicom_seg:
        zips = [s for s in args.inputs if _is_zip(s)]
        if zips:
            raise ConfigError(
                f"--dicom-seg needs the DICOM files on disk, but {zips[0]} is a zip: extract it and pass "
                "the folder, or leave out --dicom-seg"
            )
    progress = show_progress(args.no_progress)
    diagnoser = Diagnoser(
        resolve_model_dir(args.model),
        device=args.device,
        backend=args.backend,
        batch_size=args.batch_size,
        classify_all=args.classify_all,
        workers=args.workers,
        lesion_model=lesion_model_of(args.lesions),
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    bar = tqdm(
        total=len(args.inputs), desc="studies", unit="study", disable=not progress or len(args.inputs) < 2
    )
    used_stems: set[str] = set()
    # several studies: the next one is read while the current one is computed
    if args.series is not None:  # read here with the series asked for, one study after the other
        outcomes: Any = (_one(diagnoser, source, progress, series=args.series) for source in args.inputs)
    elif len(args.inputs) > 1:
        outcomes = diagnoser.diagnose_many(args.inputs)
    else:
        outcomes = iter([_one(diagnoser, args.inputs[0], progress)])
    for source, result, error in outcomes:
        bar.update(1)
        if error is not None:
            if not isinstance(error, CovidCTError):
                raise error
            failures += 1
            tqdm.write(f"{source}: FAILED: {error}", file=sys.stderr)
            continue
        assert result is not None  # an outcome holds a result or an error
        doc = study_document(result)
        d = result.decision
        tqdm.write(
            f"{source}: {d.diagnosis}  ({d.explain()})  [{result.timing_s.get('total', 0.0):.1f} s]",
            file=sys.stderr,
        )
        if args.json:
            print(json.dumps(doc, allow_nan=False))
        if out_dir is None:
            continue
        stem = study_stem(str(source))
        while stem in used_stems:
            stem += "_"
        used_stems.add(stem)
        _write_json(out_dir / f"{stem}.json", doc)
        _write_extras(result, out_dir, stem, args, diagnoser)
    bar.close()
    if failures:
        print(f"covidct diagnose: {failures} of {len(args.inputs)} studies failed", file=sys.stderr)
        return 1
    return 0


def add_lesions_argument(p: Any) -> None:
    """The ``--lesions [MODEL]`` option of ``diagnose`` and ``serve``."""
    p.add_argument(
        "--lesions",
        nargs="?",
        const="shipped",
        default=None,
        metavar="MODEL",
        help="also segment lesions and add 'involvement' to the JSON: the shipped lesion model, a lesion "
        "bundle, or 'classical' (default: only when the pipeline folder has a lesions/ bundle)",
    )


def lesion_model_of(choice: str | None) -> str | Path | None:
    """``--lesions``' value as the Diagnoser's ``lesion_model`` (the shipped bundle's folder for a bare flag)."""
    if choice != "shipped":
        return choice
    from covidct.lesions.api import resolve_lesion_dir

    return resolve_lesion_dir(None)


def study_document(result: Any) -> dict[str, Any]:
    """The per-study JSON: ``result.to_json()`` plus how the input was read (``series_choice``: the series
    chosen and those left out, when the input held several; no identifiers)."""
    doc: dict[str, Any] = result.to_json()
    extra = getattr(getattr(result.volume, "meta", None), "extra", None) or {}
    if extra.get("series_choice") is not None:
        doc["series_choice"] = extra["series_choice"]
    return doc


def _one(diagnoser: Any, source: str, progress: bool, *, series: str | None = None) -> Any:
    """One study as an Outcome (read with a decoding progress bar; with ``series``, that series is read)."""
    from covidct.diagnose import Outcome

    try:
        if series is None:
            return Outcome(source, diagnoser.diagnose(source, progress=progress), None)
        from covidct.io import load_study

        volume = load_study(source, workers=diagnoser.workers, progress=progress, series=series)
        result = diagnoser.diagnose(volume)
        result.input = str(source)
        return Outcome(source, result, None)
    except CovidCTError as exc:
        return Outcome(source, None, exc)


def _write_extras(result: Any, out_dir: Path, stem: str, args: argparse.Namespace, diagnoser: Any) -> None:
    if not args.no_strip:
        from covidct.report.strip import slice_strip

        slice_strip(result, out_dir / f"{stem}_strip.png")
    if args.save_mask:
        result.volume.save(out_dir / f"{stem}_lungmask.nii.gz", array=result.mask)
        if result.lesions is not None:
            result.volume.save(out_dir / f"{stem}_lesions.nii.gz", array=result.lesions)
    if "html" in args.report:
        from covidct.report.html import write_report

        write_report(result, out_dir / f"{stem}_report.html", diagnoser=diagnoser, show_phi=args.show_phi)
    if "pdf" in args.report:
        from covidct.report.pdf import write_pdf

        write_pdf(result, out_dir / f"{stem}_report.pdf", diagnoser=diagnoser, show_phi=args.show_phi)
    if args.dicom_seg:
        from covidct.report.dicom_seg import write_dicom_seg

        write_dicom_seg(result.volume, result.mask, out_dir / f"{stem}_seg.dcm")
