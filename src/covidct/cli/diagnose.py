"""``covidct diagnose``: one or many studies to a diagnosis, a JSON per study and pictures."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
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
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="DICOM folder, zip, multi-frame file, NIfTI, or a DICOMweb study/series: "
        "dicomweb+http://HOST:PORT/ROOT/studies/<StudyUID>[/series/<SeriesUID>] (fetched by WADO-RS)",
    )
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
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="also write the lung mask as DICOM SEG (and the lesion mask, when lesions are segmented)",
    )
    p.add_argument(
        "--dicomweb-store",
        action="store_true",
        help="for DICOMweb inputs: send the SR, lung SEG and PDF report back to the same server by STOW-RS",
    )
    p.add_argument(
        "--save-mask", action="store_true", help="also write the lung mask (and lesion mask) as NIfTI"
    )
    add_lesions_argument(p)
    cohort = p.add_argument_group(
        "cohorts",
        "many studies into OUT/<case>.json and one table, OUT/results.csv (and .parquet with pyarrow); "
        "a study that fails is a row with its error",
    )
    cohort.add_argument(
        "--manifest",
        metavar="CSV",
        help="studies to diagnose: a CSV with a path column, optional case and truth",
    )
    cohort.add_argument(
        "--engine",
        choices=("local", "ray"),
        default=None,
        help="local (this process) or ray (Ray Data; pip install 'covidct[ray]')",
    )
    cohort.add_argument(
        "--ray-address", metavar="ADDR", help="join this Ray cluster (default: start a local one)"
    )
    cohort.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs per model actor on Ray (0: CPU actors)"
    )
    cohort.add_argument(
        "--cpu-workers", type=int, default=None, help="CPU model actors on Ray (default CPUs/4)"
    )
    cohort.add_argument(
        "--resume", action="store_true", help="skip studies whose OUT/<case>.json was made by the same model"
    )
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
    from covidct.diagnose import Diagnoser, resolve_model_dir
    from covidct.io.dicomweb import DicomWebRef, is_dicomweb
    from covidct.io.dicomweb import fetch as fetch_dicomweb
    from covidct.io.dicomweb import parse as parse_dicomweb

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
    if args.manifest or args.engine or args.resume:
        return _run_cohort(args)
    if not args.inputs:
        raise ConfigError("give at least one study (or --manifest CSV)")
    web = {s: parse_dicomweb(s) for s in args.inputs if is_dicomweb(s)}  # bad URLs fail before any work
    if args.dicomweb_store and not web:
        raise ConfigError(
            "--dicomweb-store sends results back to a DICOMweb server: give a dicomweb+http:// input"
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
        lesion_gate=args.lesion_gate,
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    fetched: dict[str, tuple[str, DicomWebRef]] = {}  # local folder -> (URL, where it lives)
    inputs: list[str] = []
    for source in args.inputs:
        if source in web:
            folder = fetch_dicomweb(
                web[source], stack.enter_context(tempfile.TemporaryDirectory(prefix="covidct-wado-"))
            )
            fetched[str(folder)] = (source, web[source])
            source = str(folder)
        inputs.append(source)
    with stack:
        return _diagnose_all(diagnoser, inputs, fetched, args, out_dir, progress)


def _diagnose_all(
    diagnoser: Any,
    inputs: list[str],
    fetched: dict[str, tuple[str, Any]],
    args: argparse.Namespace,
    out_dir: Path | None,
    progress: bool,
) -> int:
    from tqdm import tqdm

    from covidct.diagnose import study_document

    failures = 0
    bar = tqdm(total=len(inputs), desc="studies", unit="study", disable=not progress or len(inputs) < 2)
    used_stems: set[str] = set()
    # several studies: the next one is read while the current one is computed
    if args.series is not None:  # read here with the series asked for, one study after the other
        outcomes: Any = (_one(diagnoser, source, progress, series=args.series) for source in inputs)
    elif len(inputs) > 1:
        outcomes = diagnoser.diagnose_many(inputs)
    else:
        outcomes = iter([_one(diagnoser, inputs[0], progress)])
    for local, result, error in outcomes:
        bar.update(1)
        url, ref = fetched.get(str(local), (None, None))
        source = url or local
        if error is not None:
            if not isinstance(error, CovidCTError):
                raise error
            failures += 1
            message = str(error).replace(str(local), "the retrieved study") if url else str(error)
            tqdm.write(f"{source}: FAILED: {message}", file=sys.stderr)
            if ref is not None and args.dicomweb_store:
                _store_back(ref, Path(local), None, message, diagnoser)
            continue
        assert result is not None  # an outcome holds a result or an error
        if url is not None:
            result.input = url
        doc = study_document(result)
        tqdm.write(summary_line(source, result), file=sys.stderr)
        if args.json:
            print(json.dumps(doc, allow_nan=False))
        if ref is not None and args.dicomweb_store:
            _store_back(ref, Path(local), result, None, diagnoser)
        if out_dir is None:
            continue
        stem = ref.name if ref is not None else study_stem(str(source))
        while stem in used_stems:
            stem += "_"
        used_stems.add(stem)
        _write_json(out_dir / f"{stem}.json", doc)
        _write_extras(result, out_dir, stem, args, diagnoser)
    bar.close()
    if failures:
        print(f"covidct diagnose: {failures} of {len(inputs)} studies failed", file=sys.stderr)
        return 1
    return 0


def summary_line(source: object, result: Any) -> str:
    """The line printed per diagnosed study: diagnosis, the rule in words, time, and, when the result has a
    confidence, ``confidence 0.87`` (``(not calibrated)`` for models without a fitted calibration) and
    ``REFER`` when it falls below the model's referral threshold."""
    d = result.decision
    line = f"{source}: {d.diagnosis}  ({d.explain()})  [{result.timing_s.get('total', 0.0):.1f} s]"
    confidence = getattr(result, "confidence", None)
    if confidence is not None:
        line += f"  confidence {confidence.value:.2f}"
        if not confidence.calibrated:
            line += " (not calibrated)"
        if confidence.refer:
            line += "  REFER"
    return line


def _run_cohort(args: argparse.Namespace) -> int:
    from covidct.cohort import diagnose_cohort, read_study_list, studies_from_inputs
    from covidct.diagnose import resolve_model_dir

    if args.output is None:
        raise ConfigError("a cohort run (--manifest, --engine, --resume) writes a folder: give it with -o")
    if args.manifest and args.inputs:
        raise ConfigError("give studies either as arguments or with --manifest, not both")
    per_study = (args.report, args.dicom_seg, args.save_mask, args.dicomweb_store, args.series, args.lesions)
    if any(per_study) or args.lesion_gate is not None:
        raise ConfigError(
            "--report, --dicom-seg, --save-mask, --dicomweb-store, --series, --lesions and --lesion-gate are "
            "per-study options; a cohort run writes the per-study JSON and the results table with the "
            "pipeline's own settings"
        )
    studies = read_study_list(args.manifest) if args.manifest else studies_from_inputs(args.inputs)
    if not studies:
        raise ConfigError("no studies given: pass them as arguments or with --manifest CSV")
    out = Path(args.output)
    check_output_folder(out, what="-o")
    summary = diagnose_cohort(
        studies,
        resolve_model_dir(args.model),
        out,
        engine=args.engine or "local",
        resume=args.resume,
        progress=show_progress(args.no_progress),
        ray_address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker,
        cpu_workers=args.cpu_workers,
        device=args.device,
        backend=args.backend,
        batch_size=args.batch_size,
    )
    print(
        f"covidct diagnose: {summary.done} diagnosed, {summary.skipped} kept from before, {summary.failed} failed "
        f"in {summary.seconds:.1f} s; table: {', '.join(str(t) for t in summary.tables)}",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0


def _store_back(ref: Any, folder: Path, result: Any, reason: str | None, diagnoser: Any) -> None:
    """Send the SR, SEG and PDF (or, for a study that failed, the SR saying why) back by STOW-RS."""
    from covidct.report.dicom_sr import write_failure, write_results
    from covidct.serve.dicom_send import stow_rs

    with tempfile.TemporaryDirectory(prefix="covidct-stow-") as tmp:
        if result is None:
            paths = [write_failure(sorted(folder.glob("*.dcm")), reason or "not diagnosed", Path(tmp))]
        else:
            paths = write_results(result, Path(tmp), explainer_source=diagnoser)
        stow_rs(paths, ref.root)
    print(f"{len(paths)} result objects stored back by STOW-RS", file=sys.stderr)


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
    p.add_argument(
        "--lesion-gate",
        type=float,
        default=None,
        metavar="FRACTION",
        help="count a slice as diseased only as far as the lesion model finds lesion in at least this "
        "fraction of its lung (e.g. 0.01; 0 turns it off; default: the pipeline card's lesion_gate)",
    )


def lesion_model_of(choice: str | None) -> str | Path | None:
    """``--lesions``' value as the Diagnoser's ``lesion_model`` (the shipped bundle's folder for a bare flag)."""
    if choice != "shipped":
        return choice
    from covidct.lesions.api import resolve_lesion_dir

    return resolve_lesion_dir(None)


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
        if result.lesions is not None:
            write_dicom_seg(
                result.volume, result.lesions, out_dir / f"{stem}_lesions_seg.dcm", kind="lesions"
            )
