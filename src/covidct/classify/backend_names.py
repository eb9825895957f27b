"""Names and availability of the slice classifier's inference backends (no torch import: the torch-free
diagnosis path checks them too). The backends themselves are in :mod:`covidct.classify.backends`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: Every backend name :func:`make_runner` accepts (besides "auto" and "auto-reduced").
BACKENDS: tuple[str, ...] = (
    "torch",
    "channels_last",
    "compile",
    "onnx",
    "onnx-int8",
    "openvino",
    "openvino-int8",
    "bf16",
)
#: Backends whose answers equal float32 PyTorch within float rounding.
FP32_BACKENDS: tuple[str, ...] = ("torch", "channels_last", "compile", "onnx", "openvino")
#: Reduced-precision backends (answers agree by argmax, not allclose).
REDUCED_BACKENDS: tuple[str, ...] = ("onnx-int8", "openvino-int8", "bf16")
#: "auto" on CPU: fastest first, as measured by benchmarks/run.py on the 2-core AMD EPYC (AVX2) dev machine:
#: ONNX Runtime and OpenVINO tie within noise (2.5x torch eager); ONNX Runtime comes first because it is the
#: project's declared optional dependency (``covidct[onnx]``); torch.compile reached only 1.5x and compiles
#: for over a minute per process.
AUTO_CPU_ORDER: tuple[str, ...] = ("onnx", "openvino", "compile", "channels_last", "torch")
#: "auto-reduced" on CPU: fastest first (int8; this CPU has no fast bfloat16). OpenVINO ran the same QDQ
#: model 1.1-2x faster than ONNX Runtime at every batch size here (BENCHMARKS.md).
AUTO_REDUCED_CPU_ORDER: tuple[str, ...] = ("openvino-int8", "onnx-int8")
#: Minimum slice agreement (argmax) with float32 before a reduced-precision backend is used automatically.
AGREEMENT_MIN: float = 0.99
#: Fewer held-out slices than this cannot establish AGREEMENT_MIN (one disagreement in a hundred).
AGREEMENT_MIN_SLICES: int = 300
#: ONNX opset of the exported models.
ONNX_OPSET: int = 17


def cpu_threads() -> int:
    """Cores this process may use (affinity-aware): the project's one core count."""
    from covidct.io.loader import available_cpus

    return available_cpus()


def has_fast_bf16() -> bool:
    """True when the CPU has AMX or AVX512-BF16 (where bfloat16 matmuls beat float32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # pragma: no cover - non-Linux
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def unavailable_reason(backend: str, device: str = "cpu") -> str | None:
    """Why ``backend`` cannot run here (``None`` when it can)."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}: use one of auto, auto-reduced, {', '.join(BACKENDS)}"
    on_cuda = device.startswith("cuda")
    if backend in ("onnx", "onnx-int8") and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'covidct[onnx]')"
    if (
        backend in ("onnx", "onnx-int8", "openvino", "openvino-int8")
        and importlib.util.find_spec("onnx") is None
    ):
        return "onnx is not installed (pip install 'covidct[onnx]')"
    if backend.startswith("openvino"):
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed (pip install openvino)"
        if on_cuda:
            return "openvino runs on CPU only here"
    if backend in ("onnx-int8", "openvino-int8") and on_cuda:
        return "int8 backends are CPU-only here; use bf16 on CUDA"
    if on_cuda:
        import torch

        if not torch.cuda.is_available():
            return f"device {device!r} requested but CUDA is not available"
    return None
