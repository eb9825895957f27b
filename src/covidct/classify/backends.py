"""Inference backends for the slice classifier: one callable, several engines, chosen by measurement.

A *runner* maps a float32 batch ``(n, 1, S, S)`` (lung-window slices, see ``covidct.preprocess``) to float32
logits ``(n, num_classes)``. Backends:

- ``"torch"``: PyTorch eager, float32 (the baseline).
- ``"channels_last"``: PyTorch eager with the network and inputs in channels-last memory format.
- ``"compile"``: ``torch.compile(dynamic=False)`` (recompiles once per batch size; dynamic shapes crashed
  a U-Net here, see DESIGN.md).
- ``"onnx"``: ONNX Runtime, float32, all graph optimisations, intra-op threads = cores.
- ``"onnx-int8"``: ONNX Runtime with a static int8 QDQ model (per-channel weights, calibrated on real slices).
- ``"openvino"``: OpenVINO float32 (``INFERENCE_PRECISION_HINT`` set to ``f32`` explicitly: OpenVINO would
  otherwise run bfloat16 on CPUs that have it).
- ``"openvino-int8"``: OpenVINO running the same QDQ int8 model.
- ``"bf16"``: PyTorch autocast bfloat16 (only worthwhile on CPUs with AMX / AVX512-BF16, or on a GPU).

``"auto"`` picks the fastest float32-exact backend available (order measured by ``benchmarks/run.py``, see
BENCHMARKS.md). ``"auto-reduced"`` picks the reduced-precision backend (int8 on CPU, bfloat16 on CUDA) only if
it agrees with float32 on at least :data:`AGREEMENT_MIN` of the calibration slices it was not calibrated on
(every other slice calibrates, the rest judge), and falls back to ``"auto"`` otherwise. That gate is a
minimum: before relying on a reduced path for a model, run ``benchmarks/bench_agreement.py`` on a set of
studies (the issue's criterion: >= 99% of slices and every patient decision).

Exported and quantised models are cached on disk (built once) under a key made of the weights hash, the
image size and the settings; the folder is ``cache_dir``, else ``$COVIDCT_CACHE_DIR``, else
``~/.cache/covidct``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from covidct._files import atomic_write

# torch-free names and the ONNX Runtime runner live with the torch-free path; re-exported here
from covidct.classify.backend_names import (  # noqa: F401
    AGREEMENT_MIN,
    AGREEMENT_MIN_SLICES,
    AUTO_CPU_ORDER,
    AUTO_REDUCED_CPU_ORDER,
    BACKENDS,
    FP32_BACKENDS,
    ONNX_OPSET,
    REDUCED_BACKENDS,
    cpu_threads,
    has_fast_bf16,
    unavailable_reason,
)
from covidct.errors import ModelError
from covidct.infer.onnx import OnnxRunner

logger = logging.getLogger(__name__)


class Runner(Protocol):
    """A loaded model: ``runner(x)`` with ``x`` float32 ``(n, 1, S, S)`` returns float32 logits ``(n, C)``."""

    name: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def default_cache_dir() -> Path:
    """``$COVIDCT_CACHE_DIR`` if set, else ``~/.cache/covidct``."""
    env = os.environ.get("COVIDCT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "covidct"


def weights_hash(network: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over the network's class name and state dict (names, dtypes, values)."""
    h = hashlib.sha256(type(network).__qualname__.encode())
    for name, tensor in sorted(network.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def array_hash(x: np.ndarray) -> str:
    """SHA-256 (first 16 hex digits) of an array's shape, dtype and bytes."""
    a = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{a.dtype}|{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def export_onnx(network: nn.Module, *, image_size: int, cache_dir: Path) -> Path:
    """Export ``network`` (float32, CPU) to ONNX with a dynamic batch axis, once per weights hash."""
    in_ch = _in_channels(network)
    path = cache_dir / f"classifier-{weights_hash(network)}-s{image_size}-c{in_ch}-op{ONNX_OPSET}.onnx"
    if path.exists():
        return path
    from functools import partial

    from covidct.infer.export import write_onnx

    write = partial(write_onnx, network=_cpu_fp32_copy(network), image_size=image_size, in_channels=in_ch)
    logger.info("exporting the classifier to ONNX: %s", path)
    atomic_write(path, write)
    return path


def quantize_int8(
    onnx_path: Path, calibration: np.ndarray, *, cache_dir: Path, options: dict[str, Any] | None = None
) -> Path:
    """Static int8 QDQ model (per-channel int8 weights, uint8 activations) calibrated on ``calibration``.

    ``calibration``: float32 ``(n, 1, S, S)`` real preprocessed slices (lung window, lungs only). ``options``:
    more keyword arguments of ``onnxruntime.quantization.quantize_static`` (e.g. ``calibrate_method``,
    ``nodes_to_exclude``; for benchmarks of variants). Cached by the float model's name, the calibration
    data's hash and the options.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib = np.ascontiguousarray(calibration, dtype=np.float32)
    key = array_hash(calib)
    if options:
        key += "-" + hashlib.sha256(repr(sorted(options.items())).encode()).hexdigest()[:8]
    path = cache_dir / f"{onnx_path.stem}-int8qdq-{key}.onnx"
    if path.exists():
        return path

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib[i : i + 8] for i in range(0, len(calib), 8))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {"x": batch}

    def write(tmp: Path) -> None:
        pre = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(tmp),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                **{"calibrate_method": CalibrationMethod.MinMax, **(options or {})},
            )
        finally:
            pre.unlink(missing_ok=True)

    logger.info("quantising the classifier to int8 (%d calibration slices): %s", len(calib), path)
    atomic_write(path, write)
    return path


def _in_channels(network: nn.Module) -> int:
    for m in network.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | nn.Conv1d):
            return int(m.in_channels)
    raise ModelError(f"{type(network).__name__} has no convolution: make_runner expects a CNN classifier")


def _to_channels_last(network: nn.Module) -> nn.Module:
    return network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _cpu_fp32_copy(network: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(network).to("cpu", torch.float32).eval()


@dataclass
class TorchRunner:
    """PyTorch runner: eager, channels-last, compiled, or bfloat16 autocast.

    Takes numpy batches like every runner, or a float32 tensor (on any device; moved to ``device``).

    ``fixed_batch`` (used for ``torch.compile(dynamic=False)``): the first call's batch size is the only one
    the network ever sees; larger inputs are split and smaller ones zero-padded, so a study's short last
    batch never triggers a (minutes-long) recompilation.
    """

    name: str
    network: nn.Module
    device: torch.device
    channels_last: bool = False
    bf16: bool = False
    fixed_batch: bool = False
    _batch: int | None = field(default=None, init=False, repr=False)

    def _forward(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(x, torch.Tensor):  # already prepared on the device (SliceClassifier.predict_volume)
            t = x.to(self.device, torch.float32)
        else:
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.bf16:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    out = self.network(t)
            else:
                out = self.network(t)
        return out.float().cpu().numpy()

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        if not self.fixed_batch or len(x) == 0:
            return self._forward(x)
        if isinstance(x, torch.Tensor):
            x = x.cpu().numpy()
        if self._batch is None:
            self._batch = len(x)
        b = self._batch
        outs = []
        for i in range(0, len(x), b):
            chunk = x[i : i + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), dtype=chunk.dtype)])
            outs.append(self._forward(chunk)[:n])
        return np.concatenate(outs)


@dataclass
class OpenVinoRunner:
    """OpenVINO on CPU with an explicit precision hint; one compiled model per batch size (static shapes).

    Thread-safe: a compiled model's ``__call__`` reuses one infer request, so calls (and compilation) are
    serialised by a lock (several service workers may share one runner).
    """

    name: str
    path: Path
    threads: int
    precision: str = "f32"
    _compiled: dict[int, Any] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _model_for(self, n: int) -> Any:
        if n not in self._compiled:
            import openvino as ov

            core = ov.Core()
            model = core.read_model(str(self.path))
            ps = model.input(0).get_partial_shape()
            ps[0] = n
            model.reshape({model.input(0): ps})
            config = {
                "INFERENCE_PRECISION_HINT": self.precision,
                "INFERENCE_NUM_THREADS": str(self.threads),
                "PERFORMANCE_HINT": "LATENCY",
            }
            self._compiled[n] = core.compile_model(model, "CPU", config)
        return self._compiled[n]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        xx = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            compiled = self._model_for(len(xx))
            return np.array(compiled(xx)[0], dtype=np.float32, copy=True)


def _check_inputs(image_size: int, calibration: np.ndarray | None) -> None:
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8 (pixels), got {image_size!r}")
    if calibration is not None:
        c = np.asarray(calibration)
        if c.ndim != 4 or c.shape[2:] != (image_size, image_size) or len(c) == 0:
            raise ValueError(
                f"calibration must be float32 (n, channels, {image_size}, {image_size}) slices, got "
                f"shape {c.shape}: pass preprocessed slices (covidct.preprocess.classifier_inputs)"
            )


def _build(
    network: nn.Module,
    backend: str,
    *,
    image_size: int,
    device: str,
    calibration: np.ndarray | None,
    cache_dir: Path,
    threads: int | None,
) -> Runner:
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise ModelError(f"backend {backend!r} is not available: {reason}")
    dev = torch.device(device)
    if backend in ("torch", "channels_last", "compile", "bf16"):
        if dev.type == "cpu" and threads is not None:
            # process-wide: only when the caller asked for a thread count
            torch.set_num_threads(threads)
        net = _cpu_fp32_copy(network).to(dev)
        if backend == "channels_last":
            net = _to_channels_last(net)
            return TorchRunner(backend, net, dev, channels_last=True)
        if backend == "compile":
            compiled = torch.compile(net, dynamic=False)
            return TorchRunner(backend, compiled, dev, fixed_batch=True)  # type: ignore[arg-type]
        if backend == "bf16":
            net = _to_channels_last(net)
            return TorchRunner(backend, net, dev, channels_last=True, bf16=True)
        return TorchRunner(backend, net, dev)
    onnx_path = export_onnx(network, image_size=image_size, cache_dir=cache_dir)
    if backend in ("onnx-int8", "openvino-int8"):
        if calibration is None:
            raise ModelError(
                f"backend {backend!r} needs calibration slices: pass calibration=(n, 1, {image_size}, "
                f"{image_size}) float32 preprocessed real slices (a few dozen), or use an fp32 backend"
            )
        onnx_path = quantize_int8(onnx_path, calibration, cache_dir=cache_dir)
    nthreads = threads if threads is not None else cpu_threads()
    if backend.startswith("onnx"):
        return OnnxRunner(backend, onnx_path, nthreads)
    return OpenVinoRunner(backend, onnx_path, nthreads, precision="f32")


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of rows whose argmax agrees (NaN for zero rows)."""
    if len(reference) == 0:
        return float("nan")
    return float(np.mean(np.argmax(reference, axis=1) == np.argmax(candidate, axis=1)))


def make_runner(
    network: nn.Module,
    *,
    backend: str = "auto",
    image_size: int,
    device: str = "cpu",
    calibration: np.ndarray | None = None,
    cache_dir: Path | str | None = None,
    threads: int | None = None,
) -> Runner:
    """Build a runner for ``network`` (see the module docstring for the backends).

    ``image_size``: the square input side in pixels. ``calibration``: float32 ``(n, 1, S, S)`` real
    preprocessed slices, needed by int8 backends and by ``"auto-reduced"`` (which checks agreement on them).
    ``threads``: intra-op threads (default: the cores this process may use for ONNX Runtime / OpenVINO; for
    PyTorch backends the process-wide ``torch.set_num_threads`` is only called when ``threads`` is given).
    Raises ``ModelError`` when a named backend cannot run here (the message says why and what to install).
    ``"auto"`` tries the available float32 backends in the measured order and falls back to the next one
    (logged) when building one fails, ending with plain PyTorch.
    """
    _check_inputs(image_size, calibration)
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    kw: dict[str, Any] = dict(
        image_size=image_size, device=device, calibration=calibration, cache_dir=cdir, threads=threads
    )
    if backend == "auto":
        return _build_first(network, _auto_candidates(device), **kw)
    if backend == "auto-reduced":
        fp32 = _build_first(network, _auto_candidates(device), **kw)
        candidates = ("bf16",) if device.startswith("cuda") else AUTO_REDUCED_CPU_ORDER
        if calibration is None:
            logger.warning("auto-reduced: no calibration slices to check agreement on; using %s", fp32.name)
            return fp32
        # calibrate on half the slices and judge on the other half: agreement on the very slices a model
        # was calibrated on flatters it (measured: 100% there, 98.8% on held-out studies)
        fit, held_out = (
            (calibration[0::2], calibration[1::2]) if len(calibration) >= 2 else (calibration,) * 2
        )
        for name in candidates:
            if unavailable_reason(name, device) is not None:
                continue
            try:
                cand = _build(network, name, **{**kw, "calibration": fit})
                agree = agreement(fp32(held_out), cand(held_out))
            except Exception as exc:  # a failed export/quantisation/session: try the next candidate
                logger.warning(
                    "auto-reduced: %s failed (%s); trying the next backend", name, exc, exc_info=True
                )
                continue
            if agree >= AGREEMENT_MIN:
                logger.info(
                    "auto-reduced: %s agrees with float32 on %.4f of %d held-out calibration slices",
                    name,
                    agree,
                    len(held_out),
                )
                if len(held_out) < AGREEMENT_MIN_SLICES:
                    logger.warning(
                        "auto-reduced: %d slices cannot show %.0f%% agreement reliably; check this model with "
                        "benchmarks/bench_agreement.py on a set of studies before relying on %s",
                        len(held_out),
                        100 * AGREEMENT_MIN,
                        name,
                    )
                return cand
            logger.warning("auto-reduced: %s agrees on only %.4f of slices; using %s", name, agree, fp32.name)
            return fp32
        return fp32
    return _build(network, backend, **kw)


def _auto_candidates(device: str) -> list[str]:
    """The float32 backends "auto" tries on ``device``, fastest first, always ending with "torch"."""
    if device.startswith("cuda"):
        return ["torch"]
    names = [n for n in AUTO_CPU_ORDER if unavailable_reason(n, device) is None]
    return names if "torch" in names else [*names, "torch"]


def _build_first(network: nn.Module, candidates: list[str], **kw: Any) -> Runner:
    """Build the first candidate that builds; log each fallback. The last candidate's error propagates."""
    for i, name in enumerate(candidates):
        try:
            return _build(network, name, **kw)
        except Exception as exc:
            if i == len(candidates) - 1:
                raise
            logger.warning(
                "auto: backend %s failed (%s); falling back to %s",
                name,
                exc,
                candidates[i + 1],
                exc_info=True,
            )
    raise ModelError("no backend candidates")  # pragma: no cover - candidates is never empty


def auto_backend(device: str = "cpu") -> str:
    """The float32 backend "auto" picks on ``device``: the first available in the measured order."""
    if device.startswith("cuda"):
        return "torch"
    for name in AUTO_CPU_ORDER:
        if unavailable_reason(name, device) is None:
            return name
    return "torch"
