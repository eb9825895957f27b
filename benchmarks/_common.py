"""Timing helpers shared by the benchmarks: medians of several runs, the GEMM ceiling, machine facts.

All timings are wall-clock seconds from ``time.perf_counter``. The machine is shared, so every figure is a
median of several runs, and comparisons should be made between rows of the same run (ratios), not across runs.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median, the best and every run."""

    median: float
    best: float
    runs: tuple[float, ...]

    @property
    def spread(self) -> float:
        """(max - min) / median: a noise indicator (0 = perfectly steady)."""
        return (max(self.runs) - min(self.runs)) / self.median if self.median > 0 else float("nan")


def time_call(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; return the median and best."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return Timing(statistics.median(runs), min(runs), tuple(runs))


def gemm_ceiling(*, n: int = 2048, threads: int | None = None, repeats: int = 7) -> tuple[float, float]:
    """Float32 matrix-multiply rate of torch on ``threads`` threads: (median, best) GFLOP/s for n^3 GEMMs."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    c = torch.empty(n, n)
    t = time_call(lambda: torch.mm(a, b, out=c), repeats=repeats, warmup=2)
    flop = 2.0 * n**3
    return flop / t.median / 1e9, flop / t.best / 1e9


class GemmProbe:
    """One n^3 float32 GEMM timed on demand: the machine's matrix-multiply rate *right now*.

    Timed next to each benchmarked call so that a figure can be divided by the ceiling measured under the
    same load from other users (a paired ratio), not by a ceiling from minutes earlier.
    """

    def __init__(self, n: int = 2048) -> None:
        import torch

        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=gen)
        self.b = torch.randn(n, n, generator=gen)
        self.c = torch.empty(n, n)
        self.flop = 2.0 * n**3
        torch.mm(self.a, self.b, out=self.c)

    def __call__(self) -> float:
        """GFLOP/s of one GEMM."""
        import torch

        t0 = time.perf_counter()
        torch.mm(self.a, self.b, out=self.c)
        return self.flop / (time.perf_counter() - t0) / 1e9


def count_flops(module: Any, example: Any) -> float:
    """FLOPs of one forward pass (multiply and add counted separately) by torch's FLOP counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(example)
    return float(counter.get_total_flops())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD flags that matter here (AVX2, AVX-512, VNNI, bf16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    keep = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [f for f in keep if f in flags]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def versions() -> dict[str, str]:
    """Versions of the inference libraries (absent ones omitted)."""
    out: dict[str, str] = {"python": platform.python_version()}
    for name in ("torch", "onnxruntime", "openvino", "monai", "numpy", "pydicom", "gdcm"):
        try:
            mod = __import__(name)
        except Exception:
            continue
        ver = getattr(mod, "__version__", None)
        if ver is None and name == "gdcm":
            try:
                ver = mod.Version.GetVersion()
            except Exception:
                ver = "?"
        out[name] = str(ver)
    return out


def machine() -> dict[str, Any]:
    """CPU model, cores usable, flags, load average and library versions."""
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "flags": cpu_flags(),
        "loadavg": tuple(round(x, 2) for x in load),
        "versions": versions(),
    }


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats printed with 3 significant digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
