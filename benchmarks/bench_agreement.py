"""Do the reduced-precision backends give a trained model's answers? Slice and patient agreement with float32.

    python benchmarks/bench_agreement.py --model-dir runs/demo/model [--cohort runs/demo/data/test]
        [--backends onnx-int8,openvino-int8,bf16] [--out agreement.md]

For every study (the real COVID-CT-MD series in ../shared/data when present, plus every DICOM study folder
under ``--cohort``): read it, segment it with the pipeline's segmenter and prepare its kept slices once; then
classify those slices with the float32 reference (ONNX Runtime, equal to PyTorch within 1e-5) and with each
reduced-precision backend (int8 calibrated on the bundle's ``calibration.npy``, as ``covidct diagnose`` does),
and compare the slice classes (argmax) and the patient decisions of the paper's rule. This is the check the
issue asks for before a reduced-precision path may be used: at least 99% of slices and every patient decision.
Random weights make it vacuous (every slice one class), so it needs a trained model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table
from _data import real_series

REFERENCE = "onnx"


def study_folders(cohort: Path | None, *, real: bool = True) -> dict[str, Path]:
    """The real series (``real/<case>``) and the cohort's study folders (``<cohort>/<folder>``)."""
    out = {f"real/{k}": v for k, v in real_series().items()} if real else {}
    if cohort is not None:
        for d in sorted(p for p in cohort.rglob("*") if p.is_dir()):
            if any(f.suffix == ".dcm" for f in d.iterdir()):
                out[f"{cohort.name}/{d.name}"] = d
    return out


def kept_inputs(pipe: Any, folder: Path) -> tuple[int, int, np.ndarray]:
    """Read a study, segment it with the pipeline's segmenter and prepare its kept slices: (n, start, x)."""
    from covidct.decide import kept_range
    from covidct.io import load_study

    volume = load_study(folder)
    mask = pipe.segmenter.apply(volume)
    n = volume.n_slices
    start, stop = kept_range(n, head=pipe.rule["head"], tail=pipe.rule["tail"])
    return n, start, pipe.classifier.preprocess(volume, mask, np.arange(start, stop))


def decision(logits: np.ndarray, n: int, start: int, rule: dict[str, float]) -> str:
    """The patient decision of the rule from the kept slices' logits (the other rows NaN, as in diagnosis)."""
    from covidct.classify.inference import softmax
    from covidct.decide import decide

    probs = np.full((n, 3), np.nan, np.float32)
    probs[start : start + len(logits)] = softmax(logits)
    return decide(probs, **rule).diagnosis


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True, help="trained pipeline folder")
    ap.add_argument(
        "--cohort", type=Path, default=None, help="more DICOM studies (e.g. a synthetic test set)"
    )
    ap.add_argument("--backends", default="onnx-int8,openvino-int8,bf16")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    ap.add_argument("--device", default="cpu", help="where the reduced-precision backends run (bf16: cuda)")
    ap.add_argument("--no-real", action="store_true", help="leave out the real series of ../shared/data")
    args = ap.parse_args(argv)

    from covidct.classify.backends import make_runner, unavailable_reason
    from covidct.pipeline import load_pipeline

    pipe = load_pipeline(args.model_dir)
    clf = pipe.classifier
    rule = pipe.rule
    cache = Path(tempfile.mkdtemp(prefix="covidct-agree-"))
    names = [REFERENCE, *[b.strip() for b in args.backends.split(",") if b.strip()]]
    runners: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in names:
        device = "cpu" if name == REFERENCE else args.device
        why = unavailable_reason(name, device)
        if why:
            skipped[name] = why
            continue
        runners[name] = make_runner(
            clf.network,
            backend=name,
            image_size=clf.image_size,
            device=device,
            calibration=clf.calibration,
            cache_dir=cache,
        )
    studies = study_folders(args.cohort, real=not args.no_real)
    if not studies:
        print("no studies: give --cohort, or put the real series in ../shared/data", file=sys.stderr)
        return 1
    per: dict[str, dict[str, Any]] = {
        n: {"same": 0, "slices": 0, "studies": 0, "worst": 1.0, "s": 0.0} for n in runners
    }
    classes = np.zeros(3, np.int64)
    for case, folder in studies.items():
        n, start, x = kept_inputs(pipe, folder)
        decisions: dict[str, str] = {}
        preds: dict[str, np.ndarray] = {}
        for name, runner in runners.items():
            t0 = time.perf_counter()
            logits = np.concatenate([runner(x[i : i + 16]) for i in range(0, len(x), 16)])
            per[name]["s"] += time.perf_counter() - t0
            preds[name] = logits.argmax(axis=1)
            decisions[name] = decision(logits, n, start, rule)
        ref = preds[REFERENCE]
        classes += np.bincount(ref, minlength=3)
        for name in runners:
            agree = float(np.mean(preds[name] == ref))
            row = per[name]
            row["same"] += int(decisions[name] == decisions[REFERENCE])
            row["slices"] += int(np.sum(preds[name] == ref))
            row["studies"] += 1
            row["worst"] = min(row["worst"], agree)
        print(f"{case}: {len(x)} kept slices; " + ", ".join(f"{k} {v}" for k, v in decisions.items()))
    n_slices = int(classes.sum())
    rows = [
        [
            name,
            n_slices,
            100.0 * r["slices"] / n_slices,
            100.0 * r["worst"],
            f"{r['same']}/{r['studies']}",
            n_slices / r["s"] if r["s"] else float("nan"),
        ]
        for name, r in per.items()
        if name != REFERENCE
    ]
    header = [
        "backend",
        "kept slices",
        "% slices = float32",
        "worst study %",
        "same patient decision",
        "slices/s",
    ]
    text = "\n".join(
        [
            f"Model: {clf.card.get('name')} ({clf.card.get('architecture', {}).get('name')}, "
            f"{clf.image_size}x{clf.image_size}); reference {REFERENCE} (float32, CPU); others on {args.device}; "
            f"{len(studies)} studies; "
            f"float32 slice classes (normal, cap, covid19): {classes.tolist()}.",
            "",
            md_table(header, rows),
            *[f"- {k}: not measured: {v}" for k, v in skipped.items()],
            "",
        ]
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
