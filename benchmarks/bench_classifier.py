"""Slice-classifier inference speed per backend and batch size, against the GEMM ceiling, plus agreement.

Run on its own: ``python benchmarks/bench_classifier.py [--quick]`` (``benchmarks/run.py`` calls it too).
Backends are timed round-robin (repeat 1 of every backend, then repeat 2, ...) so that load from other users
of the machine falls on all of them alike; compare rows of one run, not across runs.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from _common import GemmProbe, Timing, count_flops, time_call

logger = logging.getLogger("benchmarks")

ALL_BACKENDS = ("torch", "channels_last", "compile", "onnx", "onnx-int8", "openvino", "openvino-int8", "bf16")
#: --quick leaves out torch.compile (minutes of compiling) and bf16 (emulated on CPUs without AMX/AVX512-BF16).
QUICK_BACKENDS = ("torch", "channels_last", "onnx", "onnx-int8", "openvino", "openvino-int8")


def build_network(arch: str = "resnet50", *, model_dir: Path | None = None) -> tuple[nn.Module, str]:
    """The classifier network (trained weights from a bundle when given) and where it came from."""
    if model_dir is not None:
        from covidct.pipeline import load_pipeline

        pipe = load_pipeline(model_dir)
        return pipe.classifier.network.eval(), f"trained bundle {model_dir}"
    from covidct.classify.networks import build_classifier

    torch.manual_seed(0)
    return build_classifier(arch).eval(), f"covidct build_classifier({arch!r}), random weights"


@dataclass
class ClassifierResult:
    network: str
    gflop_per_slice: float
    threads: int
    setup_s: dict[str, float] = field(default_factory=dict)
    # (backend, batch) -> Timing of one call
    timings: dict[tuple[str, int], Timing] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)
    thread_scan: dict[tuple[str, int], Timing] = field(default_factory=dict)
    # (backend, batch) -> per repeat: achieved GFLOP/s / GEMM GFLOP/s measured just before and after
    paired_ceiling: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    # (backend, batch) -> per repeat: slices/s / torch slices/s in the same round
    paired_torch: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def slices_per_s(self, backend: str, batch: int) -> float:
        t = self.timings.get((backend, batch))
        return batch / t.median if t else float("nan")


def _tile(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


def _pad(probs: np.ndarray, n: int, start: int) -> np.ndarray:
    """Logits of the kept slices placed in an (n, C) array of NaN rows (slices not classified)."""
    full = np.full((n, probs.shape[1]), np.nan, dtype=np.float32)
    full[start : start + len(probs)] = probs
    return full


def run_in_batches(runner: Any, x: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([runner(x[i : i + batch]) for i in range(0, len(x), batch)])


def bench_classifier(
    *,
    inputs: np.ndarray,
    calibration: np.ndarray,
    studies: dict[str, tuple[np.ndarray, int, int]] | None = None,
    backends: tuple[str, ...] = ALL_BACKENDS,
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32),
    compile_batches: tuple[int, ...] = (16,),
    repeats: int = 3,
    threads: int = 2,
    arch: str = "resnet50",
    model_dir: Path | None = None,
    cache_dir: Path | None = None,
    thread_scan: bool = False,
) -> ClassifierResult:
    """Time every available backend; ``inputs``/``calibration`` are float32 (n, 1, S, S) slices.

    ``studies``: name -> (classifier inputs of the kept slices, slices in the study, first kept index); used
    for slice agreement and patient decisions of each backend against torch float32 (slices outside the kept
    range are NaN rows, as the diagnosis passes them).
    """
    from covidct.classify.backends import agreement, has_fast_bf16, make_runner, unavailable_reason

    size = inputs.shape[-1]
    net, how = build_network(arch, model_dir=model_dir)
    torch.set_num_threads(threads)
    flops = count_flops(net, torch.from_numpy(inputs[:1]))
    res = ClassifierResult(network=how, gflop_per_slice=flops / 1e9, threads=threads)
    cdir = cache_dir or Path(tempfile.mkdtemp(prefix="covidct-bench-"))
    probe = GemmProbe()

    runners: dict[str, Any] = {}
    for name in backends:
        why = unavailable_reason(name)
        if why is None and name == "bf16" and not has_fast_bf16():
            res.notes.append(
                "bf16: this CPU has no AMX/AVX512-BF16, so bf16 is emulated; timed at batch 16 only"
            )
        if why is not None:
            res.unavailable[name] = why
            continue
        t0 = time.perf_counter()
        try:
            runners[name] = make_runner(
                net, backend=name, image_size=size, calibration=calibration, cache_dir=cdir, threads=threads
            )
        except Exception as exc:  # a backend failing must not stop the benchmark
            res.unavailable[name] = f"{type(exc).__name__}: {exc}"
            continue
        res.setup_s[name] = time.perf_counter() - t0
        logger.info("built %s in %.1f s", name, res.setup_s[name])

    for bs in batch_sizes:
        x = _tile(inputs, bs)
        active = [
            n
            for n in runners
            if (n != "compile" or bs in compile_batches) and (n != "bf16" or has_fast_bf16() or bs == 16)
        ]
        for n in active:  # warm-up (compiles torch.compile / OpenVINO for this batch size)
            t0 = time.perf_counter()
            runners[n](x)
            if n == "compile":
                res.setup_s[f"compile@{bs}"] = time.perf_counter() - t0
        runs: dict[str, list[float]] = {n: [] for n in active}
        for _ in range(repeats):
            before = probe()
            for n in active:
                t = time_call(lambda n=n, x=x: runners[n](x), repeats=1, warmup=0)
                after = probe()
                runs[n].append(t.median)
                achieved = bs * res.gflop_per_slice / t.median
                res.paired_ceiling.setdefault((n, bs), []).append(achieved / ((before + after) / 2))
                before = after
            if "torch" in active:
                for n in active:
                    res.paired_torch.setdefault((n, bs), []).append(runs["torch"][-1] / runs[n][-1])
        for n in active:
            r = sorted(runs[n])
            res.timings[(n, bs)] = Timing(float(np.median(r)), r[0], tuple(runs[n]))
        logger.info(
            "batch %d: %s",
            bs,
            ", ".join(f"{n} {bs / res.timings[(n, bs)].median:.2f}/s" for n in active),
        )

    if thread_scan:
        x = _tile(inputs, 16)
        for name in ("torch", "onnx"):
            if name not in runners:
                continue
            for th in sorted({1, threads}):
                r = make_runner(net, backend=name, image_size=size, cache_dir=cdir, threads=th)
                res.thread_scan[(name, th)] = time_call(lambda r=r: r(x), repeats=repeats, warmup=1)
                if name == "onnx":
                    from covidct.classify.backends import OnnxRunner

                    ns = OnnxRunner("onnx", runners["onnx"].path, th, spin=False)
                    res.thread_scan[("onnx (no spinning)", th)] = time_call(
                        lambda r=ns: r(x), repeats=repeats, warmup=1
                    )
        torch.set_num_threads(threads)

    # agreement with torch float32
    ref_runner = runners.get("torch")
    if ref_runner is not None and studies:
        ref = {s: run_in_batches(ref_runner, v[0]) for s, v in studies.items()}
        from covidct.decide import decide

        ref_all = np.concatenate(list(ref.values()))
        classes = np.bincount(ref_all.argmax(1), minlength=3).tolist()
        res.notes.append(f"torch fp32 slice classes (normal, cap, covid19) over agreement slices: {classes}")
        for name, runner in runners.items():
            if name in ("torch", "compile", "channels_last", "bf16"):
                continue  # eager variants of torch itself (exact), or too slow here to run on every slice
            out = {s: run_in_batches(runner, v[0]) for s, v in studies.items()}
            got = np.concatenate(list(out.values()))
            entry: dict[str, Any] = {
                "slices": len(got),
                "agreement": agreement(ref_all, got),
                "max_abs_logit_diff": float(np.abs(got - ref_all).max()),
            }
            same = [
                decide(_pad(ref[s], *studies[s][1:])).diagnosis
                == decide(_pad(out[s], *studies[s][1:])).diagnosis
                for s in studies
            ]
            entry["decisions_same"] = f"{sum(same)}/{len(same)}"
            res.agreement[name] = entry
    return res


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arch", default="resnet50")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from _data import synthetic_inputs

    x = synthetic_inputs(32)
    res = bench_classifier(
        inputs=x,
        calibration=x[:16],
        batch_sizes=(16,) if args.quick else (1, 4, 8, 16, 32),
        repeats=args.repeats,
        arch=args.arch,
    )
    for (n, bs), t in sorted(res.timings.items()):
        sps = bs / t.median
        print(f"{n:14s} batch {bs:3d}: {sps:7.2f} slices/s  {sps * res.gflop_per_slice:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
