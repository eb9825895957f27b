"""covidct benchmark: prints the figures and writes BENCHMARKS.md at the repository root.

    python benchmarks/run.py [--quick] [--repeats N] [--threads T] [--model-dir DIR] [--out PATH]
        [--summary FILE] [--include FILE ...]

Measures, in one run: the machine's float32 GEMM ceiling (torch, T threads, 2048^3, before and after the
rest, as a noise check), the slice classifier per backend and batch size (slices/s, GFLOP/s, ratio to the
ceiling, agreement with float32 and patient decisions), segmentation (project U-Net, lungmask's U-Net
architecture, classical) and decoding (pylibjpeg vs GDCM, serial vs parallel), and end to end. Uses the real series in ../shared/data/covid-ct-md when present and synthetic slices otherwise.
Every figure is a median; any component that is absent is reported as "not available: why".
``--summary`` puts a hand-written reading under the title; ``--include`` appends sections measured elsewhere
(the GPU figures of ``bench_gpu.py``, the agreement table of ``bench_agreement.py``, kept in
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, gemm_ceiling, machine, time_call
from _report import E2E_STAGES

logger = logging.getLogger("benchmarks")


class NotAvailable(Exception):
    """A stage cannot be measured here; the message says why."""


def make_timing_bundle(
    directory: Path, *, arch: str = "resnet50", image_size: int = 224, segmenter_dir: Path | None = None
) -> Path:
    """A pipeline folder with a random-weights classifier (timing only): :func:`covidct.testing.random_pipeline`
    with the default model's architecture and input size."""
    from covidct.testing import random_pipeline

    return random_pipeline(directory, arch=arch, image_size=image_size, segmenter_dir=segmenter_dir)


def bench_end_to_end(
    model_dir: Path | None,
    series: dict[str, Path],
    *,
    repeats: int = 2,
    backends: tuple[str, ...] = ("torch", "auto", "auto-reduced"),
) -> list[list[Any]]:
    """Seconds per study from files to JSON diagnosis, per backend, with the Diagnoser's per-stage times.

    The hook for the end-to-end target (3 s per 150-slice study on 2 cores). ``model_dir``: a trained
    pipeline folder; when ``None``, a random-weights ResNet-50 224x224 pipeline with the classical segmenter is
    written to a temporary folder (the default model's cost, not its answers). Raises :class:`NotAvailable`
    without real series.
    """
    from covidct.diagnose import Diagnoser

    if not series:
        raise NotAvailable("no real series in ../shared/data")
    label = str(model_dir)
    if model_dir is None:
        model_dir = make_timing_bundle(Path(tempfile.mkdtemp(prefix="covidct-e2e-")))
        label = "random ResNet-50 224 + classical (timing only)"
    rows: list[list[Any]] = []
    for backend in backends:
        try:
            dx = Diagnoser(model_dir, backend=backend)
        except Exception as exc:
            rows.append(["-", label, backend, float("nan"), *[""] * len(E2E_STAGES), f"not available: {exc}"])
            continue
        for name, folder in series.items():
            runs: list[dict[str, Any]] = []

            def once(dx: Any = dx, folder: Path = folder, runs: list[dict[str, Any]] = runs) -> None:
                runs.append(dx.diagnose(folder).to_json())

            t = time_call(once, repeats=repeats, warmup=1)
            stages = {
                k: float(np.median([r["timing_s"].get(k, np.nan) for r in runs[1:]])) for k in E2E_STAGES
            }
            rows.append(
                [
                    name,
                    label,
                    getattr(dx, "backend", backend),
                    t.median,
                    *stages.values(),
                    runs[-1].get("diagnosis"),
                ]
            )
            logger.info("end to end %s %s: %.1f s", name, backend, t.median)
    return rows


def _stage(title: str, sections: list[str], fn: Any) -> Any:
    """Run one benchmark stage; on failure record 'not available: why' instead of stopping."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except NotAvailable as exc:
        msg = f"not available: {exc}"
        print(f"[{title}] {msg}")
        sections.append(f"## {title}\n\n{msg}\n")
        return None
    except Exception as exc:
        logger.debug(traceback.format_exc())
        msg = f"not available: {type(exc).__name__}: {exc}"
        print(f"[{title}] {msg}")
        sections.append(f"## {title}\n\n{msg}\n")
        return None
    logger.info("[%s] done in %.0f s", title, time.perf_counter() - t0)
    return out


def load_real(quick: bool) -> tuple[dict[str, tuple[np.ndarray, int, int]], np.ndarray, Any, list[str]]:
    """Classifier inputs of the kept slices of each real series, calibration slices, P001's volume, notes."""
    from _data import real_classifier_inputs, real_series
    from covidct.decide import kept_range
    from covidct.io import load_study

    series = real_series()
    if quick:
        series = {k: v for k, v in series.items() if k == "P001"}
    studies: dict[str, tuple[np.ndarray, int, int]] = {}
    notes = []
    volume = None
    for name, folder in series.items():
        vol = load_study(folder)
        if name == "P001":
            volume = vol
        x, how = real_classifier_inputs(vol)
        n = len(x)
        start, stop = kept_range(n)
        studies[name] = (x[start:stop], n, start)
        notes.append(f"{name}: {n} slices, kept [{start}, {stop}); {how}")
    calib = np.concatenate([v[0][::5] for v in studies.values()]) if studies else np.empty((0,))
    return studies, calib, volume, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 16 only, P001 only, fewer stages repeated")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for every backend")
    ap.add_argument("--model-dir", type=Path, default=None, help="trained pipeline folder (end to end)")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument(
        "--skip", default="", help="comma-separated stages to skip: classify,segment,decode,decide,e2e"
    )
    ap.add_argument(
        "--summary",
        type=Path,
        default=None,
        help="Markdown placed under the title (the hand-written reading)",
    )
    ap.add_argument(
        "--include",
        type=Path,
        action="append",
        default=[],
        help="Markdown appended as it is (e.g. benchmarks/results/*.md from a GPU run); may be repeated",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    for extra in [args.summary, *args.include]:
        if extra is not None and not extra.is_file():
            ap.error(f"{extra}: no such file")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    cache = Path(tempfile.mkdtemp(prefix="covidct-bench-"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cmd = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)

    m = machine()
    print(f"machine: {m}")
    g0 = gemm_ceiling(threads=args.threads, repeats=max(5, args.repeats))
    print(f"GEMM ceiling (start): median {g0[0]:.1f} GFLOP/s, best {g0[1]:.1f}")
    sections: list[str] = []

    studies, calib, volume, data_notes = _stage("Data", sections, lambda: load_real(args.quick)) or (
        {},
        np.empty((0,)),
        None,
        ["real data not loaded"],
    )
    from _data import synthetic_inputs

    if studies:
        timing_inputs = next(iter(studies.values()))[0][:32]
    else:
        timing_inputs = synthetic_inputs(32)
        calib = timing_inputs[:16]
        data_notes.append("no real series: synthetic slices for timing and calibration; no agreement figures")

    cls = None
    if "classify" not in skip:
        from bench_classifier import ALL_BACKENDS, QUICK_BACKENDS, bench_classifier

        cls = _stage(
            "Slice classifier",
            sections,
            lambda: bench_classifier(
                inputs=timing_inputs,
                calibration=calib,
                studies=studies or None,
                backends=QUICK_BACKENDS if args.quick else ALL_BACKENDS,
                batch_sizes=(16,) if args.quick else (1, 4, 8, 16, 32),
                compile_batches=(16,),
                repeats=args.repeats,
                threads=args.threads,
                model_dir=args.model_dir,
                cache_dir=cache,
                thread_scan=not args.quick,
            ),
        )
    seg = None
    if "segment" not in skip:
        from bench_stages import bench_segment

        seg = _stage(
            "Segmentation",
            sections,
            lambda: bench_segment(
                volume=volume,
                repeats=max(2, args.repeats - 1) if args.quick else args.repeats,
                threads=args.threads,
                backends=("torch", "onnx") if args.quick else ("torch", "channels_last", "onnx", "openvino"),
                cache_dir=cache,
            ),
        )
    dec = None
    if "decode" not in skip:
        from _data import real_series
        from bench_stages import bench_decode

        def run_decode() -> dict[str, Any]:
            series = real_series()
            if "P001" not in series:
                raise NotAvailable("P001 is not in ../shared/data")
            return bench_decode(series["P001"], repeats=min(args.repeats, 2), workers=args.threads)

        dec = _stage("Decoding", sections, run_decode)
    if "decide" not in skip:

        def run_decide() -> list[str]:
            from covidct.decide import decide

            probs = np.random.default_rng(0).dirichlet(np.ones(3), size=150).astype(np.float32)
            t = time_call(lambda: decide(probs).to_json(), repeats=max(5, args.repeats), warmup=1)
            return [
                f"## Patient rule\n\n`decide()` + `to_json()` on 150 slices: {t.median * 1e3:.2f} ms (median).\n"
            ]

        sections.extend(_stage("Patient rule", sections, run_decide) or [])
    e2e = None
    if "e2e" not in skip:
        from _data import real_series

        def run_e2e() -> list[list[Any]]:
            series = real_series()
            if args.quick:
                series = {k: v for k, v in series.items() if k == "P001"}
            return bench_end_to_end(args.model_dir, series, repeats=min(args.repeats, 2))

        e2e = _stage("End to end", sections, run_e2e)

    g1 = gemm_ceiling(threads=args.threads, repeats=max(5, args.repeats))
    print(f"GEMM ceiling (end): median {g1[0]:.1f} GFLOP/s, best {g1[1]:.1f}")
    from _report import render

    text = render(
        machine=m,
        started=started,
        command=cmd,
        g0=g0,
        g1=g1,
        data_notes=data_notes,
        cls=cls,
        seg=seg,
        dec=dec,
        e2e=e2e,
        sections=sections,
        threads=args.threads,
    )
    if args.summary is not None:
        head, sep, rest = text.partition("\n## Machine")
        text = head + "\n" + args.summary.read_text().strip() + "\n" + sep + rest
    for extra in args.include:
        text = text.rstrip("\n") + "\n\n" + extra.read_text().strip() + "\n"
    print(text)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
