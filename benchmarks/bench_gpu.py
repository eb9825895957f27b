"""GPU benchmark: the one prepared script for a lent GPU machine (a few minutes of device time).

    python benchmarks/bench_gpu.py --series DIR [--segmenter DIR] [--out DIR] [--budget-s 420] [--device cuda]

Measures on one device, in one run:

- the matrix-multiply ceilings (bf16, and float32 with TF32 allowed, 8192^3) as the hardware reference;
- the slice classifier (ResNet-50 224x224, random weights: cost, not answers) per backend (torch float32,
  channels-last, bf16 autocast, and compiled when time is left) and batch size, both through the runner
  (numpy in, numpy out: what the Diagnoser sees) and with the inputs already on the device;
- bf16 agreement with float32 on the series' kept slices;
- end to end per study with :class:`covidct.diagnose.Diagnoser` (U-Net segmenter from ``--segmenter``, else
  the classical one) for each backend and number of decoding processes, with the per-stage seconds;
- many studies with :meth:`Diagnoser.diagnose_many`: reading the next study while the current one is
  computed (``prefetch=1``) against one after the other (``prefetch=0``).

Writes ``gpu.md`` (a BENCHMARKS.md section) and ``gpu.json`` to ``--out`` after every stage, so a run cut
short still leaves what it measured. ``--device cpu --quick`` is a dry run for machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timing, count_flops, md_table, time_call

STAGES = ("load", "check", "segment", "classify", "decide", "total")


class Budget:
    """Wall-clock seconds left for the run; stages ask before starting."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, *, repeats: int, warmup: int) -> Timing:
    def call() -> None:
        fn()
        _sync(device)

    return time_call(call, repeats=repeats, warmup=warmup)


def machine(device: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        out.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return out


def gemm_ceilings(device: str, *, n: int) -> dict[str, float]:
    """TFLOP/s of n^3 matrix products: bf16, and float32 with TF32 allowed (PyTorch's cuDNN default)."""
    import torch

    out: dict[str, float] = {}
    gen = torch.Generator(device=device).manual_seed(0)
    kinds: list[tuple[str, torch.dtype, bool]] = [("bf16", torch.bfloat16, False)]
    if device.startswith("cuda"):
        kinds += [("tf32", torch.float32, True), ("fp32", torch.float32, False)]
    else:
        kinds = [("fp32", torch.float32, False)]
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in kinds:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
            b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
            t = _timed(lambda a=a, b=b: a @ b, device, repeats=10, warmup=3)
            out[name] = 2 * n**3 / t.median / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return out


def bench_classifier(
    *, arch: str, device: str, batches: tuple[int, ...], repeats: int, budget: Budget
) -> dict[str, Any]:
    """Slices/s of ResNet-50 224 per backend and batch size, through the runner and device-resident."""
    import torch

    from covidct.classify.backends import make_runner
    from covidct.classify.networks import build_classifier

    torch.manual_seed(0)
    net = build_classifier(arch).eval()
    gflop = count_flops(net, torch.zeros(1, 1, 224, 224)) / 1e9
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    cache = Path(tempfile.mkdtemp(prefix="covidct-gpu-"))
    rng = np.random.default_rng(0)
    for backend in ("torch", "channels_last", "bf16"):
        runner: Any = make_runner(net, backend=backend, image_size=224, device=device, cache_dir=cache)
        for b in batches:
            if budget.left() < 60:
                notes.append(f"{backend} batch {b}: skipped, out of time")
                continue
            x = rng.random((b, 1, 224, 224), dtype=np.float32)
            th = time_call(lambda runner=runner, x=x: runner(x), repeats=repeats, warmup=2)
            xd = torch.from_numpy(x).to(device)
            if runner.channels_last:
                xd = xd.contiguous(memory_format=torch.channels_last)

            def on_device(runner: Any = runner, xd: torch.Tensor = xd) -> None:
                with torch.inference_mode():
                    if runner.bf16:
                        with torch.autocast(xd.device.type, dtype=torch.bfloat16):
                            runner.network(xd)
                    else:
                        runner.network(xd)

            td = _timed(on_device, device, repeats=repeats, warmup=2)
            rows.append(
                {
                    "backend": backend,
                    "batch": b,
                    "runner_slices_s": b / th.median,
                    "device_slices_s": b / td.median,
                    "device_tflops": gflop * b / td.median / 1e3,
                    "spread": td.spread,
                }
            )
            print(
                f"classifier {backend} b={b}: runner {b / th.median:.0f}/s, on device {b / td.median:.0f}/s"
            )
        del runner
    return {"gflop_per_slice": gflop, "rows": rows, "notes": notes}


def bench_compile(*, arch: str, device: str, batch: int, repeats: int, budget: Budget) -> dict[str, Any]:
    """torch.compile'd ResNet-50 (channels-last), float32 and bf16, device-resident; compile time too."""
    import torch

    from covidct.classify.networks import build_classifier

    torch.manual_seed(0)
    net = build_classifier(arch).eval().to(device).to(memory_format=torch.channels_last)
    gflop = count_flops(net, torch.zeros(1, 1, 224, 224, device=device)) / 1e9
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    x = torch.rand(batch, 1, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    for backend, bf16 in (("compile", False), ("compile+bf16", True)):
        if budget.left() < 120:
            notes.append(f"{backend}: skipped, out of time")
            continue
        netd = torch.compile(net, dynamic=False)

        def compiled(netd: Any = netd, bf16: bool = bf16) -> None:
            with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
                netd(x)

        t0 = time.perf_counter()
        compiled()
        _sync(device)
        compile_s = time.perf_counter() - t0
        td = _timed(compiled, device, repeats=repeats, warmup=2)
        rows.append(
            {
                "backend": backend,
                "batch": batch,
                "runner_slices_s": float("nan"),
                "device_slices_s": batch / td.median,
                "device_tflops": gflop * batch / td.median / 1e3,
                "spread": td.spread,
            }
        )
        notes.append(f"{backend}: first call (compilation) {compile_s:.0f} s")
        print(f"{backend} b={batch}: on device {batch / td.median:.0f}/s (compiled in {compile_s:.0f} s)")
    return {"gflop_per_slice": gflop, "rows": rows, "notes": notes}


def bench_e2e(
    *,
    arch: str,
    series: Path,
    segmenter: Path | None,
    device: str,
    workers: tuple[int, ...],
    repeats: int,
    many: int,
    budget: Budget,
) -> dict[str, Any]:
    """Per-study seconds with the Diagnoser (stage medians), bf16 agreement, and many-study throughput."""
    from covidct.classify.backends import agreement
    from covidct.decide import kept_range
    from covidct.diagnose import Diagnoser
    from run import make_timing_bundle

    model = make_timing_bundle(
        Path(tempfile.mkdtemp(prefix="covidct-gpu-e2e-")), arch=arch, segmenter_dir=segmenter
    )
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    out: dict[str, Any] = {"rows": rows, "notes": notes, "series": series.name}
    last: dict[str, Any] = {}
    for backend in ("torch", "bf16"):
        for w in workers:
            if budget.left() < 45:
                notes.append(f"{backend}, {w} decoding processes: skipped, out of time")
                continue
            dx = Diagnoser(model, device=device, backend=backend, workers=w)
            runs: list[dict[str, float]] = []
            walls: list[float] = []
            for i in range(repeats + 1):  # the first run warms caches and cuDNN: not counted
                t0 = time.perf_counter()
                result = dx.diagnose(series)
                wall = time.perf_counter() - t0
                if i:
                    runs.append(result.timing_s)
                    walls.append(wall)
            med = {k: statistics.median(r.get(k, float("nan")) for r in runs) for k in STAGES}
            rows.append(
                {"backend": dx.backend, "workers": w, "wall_s": statistics.median(walls), **med,
                 "diagnosis": result.diagnosis, "n_slices": result.volume.n_slices}
            )  # fmt: skip
            print(f"e2e {backend} workers={w}: {statistics.median(walls):.3f} s  {med}")
            last[backend] = (dx, result)
    if "torch" in last and "bf16" in last:
        dx32, res = last["torch"]
        dx16, _ = last["bf16"]
        start, stop = kept_range(res.volume.n_slices)
        x = dx32.pipeline.classifier.preprocess(res.volume, res.mask, np.arange(start, stop))
        p32 = dx32.pipeline.classifier.predict_inputs(x, batch_size=128)
        p16 = dx16.pipeline.classifier.predict_inputs(x, batch_size=128)
        out["agreement"] = {
            "slices": len(x),
            "argmax_agreement": agreement(p32, p16),
            "max_abs_prob_diff": float(np.abs(p32 - p16).max()),
            "fp32_classes": np.bincount(p32.argmax(1), minlength=3).tolist(),
        }
        print(f"bf16 vs fp32: {out['agreement']}")
    if many > 1 and "bf16" in last and budget.left() > 60:
        dx, _ = last["bf16"]
        for prefetch in (0, 1):
            t0 = time.perf_counter()
            outcomes = list(dx.diagnose_many([series] * many, prefetch=prefetch))
            wall = time.perf_counter() - t0
            errors = [o.error for o in outcomes if o.error is not None]
            out[f"many_prefetch{prefetch}"] = {"studies": many, "wall_s": wall, "errors": len(errors)}
            print(
                f"diagnose_many prefetch={prefetch}: {many} studies in {wall:.2f} s ({wall / many:.3f} s each)"
            )
    return out


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    g = res.get("gemm", {})
    lines = [
        f"## GPU ({m.get('gpu', m['device'])})",
        "",
        f"Written by `python benchmarks/bench_gpu.py {res['argv']}` on {res['started']}. Machine: {m}.",
        "",
        "Matrix-multiply ceiling (8192^3, median of 10): "
        + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in g.items()),
        "",
    ]
    cls = dict(res.get("classifier") or {})
    if res.get("compile") and cls:
        cls["rows"] = cls["rows"] + res["compile"]["rows"]
        cls["notes"] = cls["notes"] + res["compile"]["notes"]
    if cls:
        lines += [
            f"### Slice classifier ({res['arch']} 224x224, random weights, {cls['gflop_per_slice']:.2f} GFLOP/slice)",
            "",
            "'runner' = numpy batch in, numpy logits out (host-device copies included: what the Diagnoser "
            "sees); 'on device' = input already on the GPU. '% bf16 GEMM' = achieved FLOP rate on device over "
            "the bf16 matrix-multiply ceiling above.",
            "",
        ]
        bf16 = g.get("bf16", float("nan"))
        rows = [
            [r["backend"], r["batch"], r["runner_slices_s"], r["device_slices_s"], r["device_tflops"],
             100 * r["device_tflops"] / bf16 if bf16 == bf16 else float("nan"), r["spread"]]
            for r in cls["rows"]
        ]  # fmt: skip
        header = ["backend", "batch", "slices/s (runner)", "slices/s (on device)", "TFLOP/s", "% bf16 GEMM"]
        lines += [md_table([*header, "spread"], rows), ""]
        lines += [f"- {n}" for n in cls["notes"]]
        lines.append("")
    e2e = res.get("e2e")
    if e2e:
        lines += [
            f"### End to end ({e2e['series']}, files to JSON diagnosis, median of the timed runs)",
            "",
            f"Random-weight {res['arch']} 224 classifier (cost only) with the segmenter named in the notes; "
            "'workers' = DICOM decoding processes; stage columns are the Diagnoser's own seconds.",
            "",
        ]
        header = ["backend", "workers", "wall s", *STAGES, "diagnosis"]
        rows = [
            [r["backend"], r["workers"], r["wall_s"], *[r[k] for k in STAGES], r["diagnosis"]]
            for r in e2e["rows"]
        ]
        lines += [md_table(header, rows), ""]
        if "agreement" in e2e:
            a = e2e["agreement"]
            lines.append(
                f"- bf16 vs float32 on {a['slices']} kept slices: argmax agreement {a['argmax_agreement']:.4f}, "
                f"largest probability difference {a['max_abs_prob_diff']:.4f} (float32 classes "
                f"{a['fp32_classes']}; random weights, so the agreement says little about a trained model)"
            )
        for p in (0, 1):
            r = e2e.get(f"many_prefetch{p}")
            if r:
                lines.append(
                    f"- diagnose_many, prefetch={p}: {r['studies']} studies in {r['wall_s']:.2f} s = "
                    f"{r['wall_s'] / r['studies']:.3f} s per study ({r['errors']} errors)"
                )
        lines += [f"- {n}" for n in e2e["notes"]]
        lines.append("")
    for stage, err in res.get("errors", {}).items():
        lines.append(f"- {stage}: not measured: {err}")
    return "\n".join(lines) + "\n"


def _save(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "gpu.md").write_text(render(res))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=Path, required=True, help="DICOM folder of one study (e.g. P001)")
    ap.add_argument("--segmenter", type=Path, default=None, help="U-Net segmenter bundle (else classical)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=Path("gpu-bench"))
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new stages after this")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a dry run on CPU")
    ap.add_argument(
        "--arch", default="resnet50", help="classifier architecture (resnet50: the default model)"
    )
    ap.add_argument("--skip", default="", help="comma-separated stages to skip: gemm,classifier,e2e,compile")
    ap.add_argument(
        "--workers", default="1,4,16", help="decoding processes to try end to end (comma-separated)"
    )
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    quick = args.quick
    res: dict[str, Any] = {
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(args.device),
        "arch": args.arch,
        "errors": {},
    }
    print(res["machine"])
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("gemm", lambda: gemm_ceilings(args.device, n=512 if quick else 8192)),
        (
            "classifier",
            lambda: bench_classifier(
                arch=args.arch,
                device=args.device,
                batches=(2,) if quick else (32, 128, 512),
                repeats=1 if quick else args.repeats,
                budget=budget,
            ),
        ),
        (
            "e2e",
            lambda: bench_e2e(
                arch=args.arch,
                series=args.series,
                segmenter=args.segmenter,
                device=args.device,
                workers=(1, 2) if quick else tuple(int(w) for w in args.workers.split(",")),
                repeats=1 if quick else args.repeats,
                many=2 if quick else 8,
                budget=budget,
            ),
        ),
    ]
    if not quick:  # compiling ResNet-50 takes minutes on a CPU
        stages.append(
            (
                "compile",
                lambda: bench_compile(
                    arch=args.arch, device=args.device, batch=128, repeats=args.repeats, budget=budget
                ),
            )
        )
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    for name, fn in stages:
        if name in skip:
            continue
        try:
            res[name] = fn()
        except Exception as exc:  # record and go on: a partial run is still worth its figures
            import traceback

            traceback.print_exc()
            res["errors"][name] = f"{type(exc).__name__}: {exc}"
        _save(res, args.out)
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
