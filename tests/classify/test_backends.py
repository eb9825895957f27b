"""Inference backends give the same answers as PyTorch float32 (tiny ResNet-18, 32x32, random weights)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.classify import backends as B
from covidct.errors import ModelError

SIZE = 32


def _net(seed: int = 0) -> torch.nn.Module:
    from monai.networks.nets import resnet18

    torch.manual_seed(seed)
    return resnet18(
        spatial_dims=2, n_input_channels=1, num_classes=3, conv1_t_stride=2, conv1_t_size=7
    ).eval()


def _slices(n: int, seed: int) -> np.ndarray:
    """Smooth random 'slices' in [0, 1] with empty (0) corners, like masked lung-window inputs."""
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.random((n, 1, 6, 6), dtype=np.float32))
    x = F.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False).numpy()
    x[:, :, :6, :6] = 0.0
    return np.ascontiguousarray(x)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return _net()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backend-cache")


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return _slices(24, seed=1)


@pytest.fixture(scope="module")
def reference(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


FP32_FAST = [b for b in B.FP32_BACKENDS if b != "compile"]


@pytest.mark.parametrize("backend", FP32_FAST)
def test_fp32_backends_match_torch(
    backend: str, net: torch.nn.Module, cache: Path, x: np.ndarray, reference: np.ndarray
) -> None:
    if (why := B.unavailable_reason(backend)) is not None:
        pytest.skip(why)
    runner = B.make_runner(net, backend=backend, image_size=SIZE, cache_dir=cache)
    assert runner.name == backend
    out = runner(x)
    assert out.shape == (len(x), 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4)
    # other batch sizes (OpenVINO compiles per size; ONNX has a dynamic batch axis)
    np.testing.assert_allclose(runner(x[:1]), reference[:1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(runner(x[3:8]), reference[3:8], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compile_matches_torch(
    net: torch.nn.Module, cache: Path, x: np.ndarray, reference: np.ndarray
) -> None:
    runner = B.make_runner(net, backend="compile", image_size=SIZE, cache_dir=cache)
    np.testing.assert_allclose(runner(x[:4]), reference[:4], rtol=1e-4, atol=1e-4)
    # other sizes are split / padded to the compiled batch of 4 (no recompilation), same answers
    np.testing.assert_allclose(runner(x[:10]), reference[:10], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(runner(x[:1]), reference[:1], rtol=1e-4, atol=1e-4)


def test_fixed_batch_splits_and_pads(net: torch.nn.Module, x: np.ndarray, reference: np.ndarray) -> None:
    seen: list[int] = []

    class Spy(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(len(t))
            return net(t)

    runner = B.TorchRunner("spy", Spy(), torch.device("cpu"), fixed_batch=True)
    np.testing.assert_allclose(runner(x[:4]), reference[:4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runner(x[:10]), reference[:10], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runner(x[:1]), reference[:1], rtol=1e-5, atol=1e-5)
    assert set(seen) == {4}  # one batch size only


@pytest.mark.parametrize("backend", ["onnx-int8", "openvino-int8"])
def test_int8_agrees_with_fp32(
    backend: str, net: torch.nn.Module, cache: Path, x: np.ndarray, reference: np.ndarray
) -> None:
    if (why := B.unavailable_reason(backend)) is not None:
        pytest.skip(why)
    calib = _slices(16, seed=2)  # calibration slices are not the test slices
    runner = B.make_runner(net, backend=backend, image_size=SIZE, calibration=calib, cache_dir=cache)
    out = runner(x)
    assert out.shape == reference.shape
    # int8 is not allclose, but it must stay near float32: small error relative to the logit scale ...
    scale = float(np.abs(reference).max())
    assert float(np.abs(out - reference).max()) < 0.1 * scale
    # ... and the same class on (nearly) every slice
    assert B.agreement(reference, out) >= 0.9


def test_int8_needs_calibration(net: torch.nn.Module, cache: Path) -> None:
    if B.unavailable_reason("onnx-int8") is not None:
        pytest.skip("onnxruntime missing")
    with pytest.raises(ModelError, match="calibration"):
        B.make_runner(net, backend="onnx-int8", image_size=SIZE, cache_dir=cache)


def test_bad_arguments(net: torch.nn.Module, cache: Path) -> None:
    with pytest.raises(ModelError, match="unknown backend"):
        B.make_runner(net, backend="tensorrt-magic", image_size=SIZE, cache_dir=cache)
    with pytest.raises(ValueError, match="calibration must be"):
        B.make_runner(net, backend="torch", image_size=SIZE, calibration=np.zeros((4, 1, 16, 16)))
    with pytest.raises(ValueError, match="image_size"):
        B.make_runner(net, backend="torch", image_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA"):
            B.make_runner(net, backend="torch", image_size=SIZE, device="cuda")


def test_export_is_cached_and_keyed_by_weights(
    net: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = B.export_onnx(net, image_size=SIZE, cache_dir=tmp_path)
    assert first.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]  # no half-written leftovers

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported twice")

    monkeypatch.setattr(torch.onnx, "export", boom)
    assert B.export_onnx(net, image_size=SIZE, cache_dir=tmp_path) == first  # cache hit: no export
    monkeypatch.undo()
    other = _net(seed=1)
    assert B.weights_hash(other) != B.weights_hash(net)
    assert B.weights_hash(_net(seed=0)) == B.weights_hash(net)
    second = B.export_onnx(other, image_size=SIZE, cache_dir=tmp_path)
    assert second != first and second.exists()
    assert B.export_onnx(net, image_size=48, cache_dir=tmp_path) not in (first, second)


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COVIDCT_CACHE_DIR", str(tmp_path / "c"))
    assert B.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("COVIDCT_CACHE_DIR")
    assert B.default_cache_dir() == Path.home() / ".cache" / "covidct"


def test_auto_picks_an_fp32_backend(
    net: torch.nn.Module, cache: Path, x: np.ndarray, reference: np.ndarray
) -> None:
    runner = B.make_runner(net, backend="auto", image_size=SIZE, cache_dir=cache)
    assert runner.name == B.auto_backend() and runner.name in B.FP32_BACKENDS
    np.testing.assert_allclose(runner(x), reference, rtol=1e-4, atol=1e-4)


def test_auto_reduced_checks_agreement(
    net: torch.nn.Module, cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calib = _slices(16, seed=2)
    # no calibration slices: nothing to check agreement on, so float32
    assert (
        B.make_runner(net, backend="auto-reduced", image_size=SIZE, cache_dir=cache).name in B.FP32_BACKENDS
    )
    if B.unavailable_reason("onnx-int8") is not None:
        pytest.skip("onnxruntime missing")
    with caplog.at_level(logging.INFO, logger="covidct.classify.backends"):
        got = B.make_runner(net, backend="auto-reduced", image_size=SIZE, calibration=calib, cache_dir=cache)
    # judged on the slices it was not calibrated on (every other one)
    held_out = calib[1::2]
    agree = B.agreement(B.make_runner(net, backend="torch", image_size=SIZE)(held_out), got(held_out))
    assert (got.name in B.REDUCED_BACKENDS) == (agree >= B.AGREEMENT_MIN)
    if got.name in B.REDUCED_BACKENDS:  # 8 slices cannot show 99% agreement: the user is told so
        assert "8 held-out calibration slices" in caplog.text and "bench_agreement.py" in caplog.text
    # an impossible bar forces the float32 fall-back
    monkeypatch.setattr(B, "AGREEMENT_MIN", 1.01)
    fallback = B.make_runner(net, backend="auto-reduced", image_size=SIZE, calibration=calib, cache_dir=cache)
    assert fallback.name in B.FP32_BACKENDS


def test_agreement() -> None:
    a = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert B.agreement(a, a) == 1.0
    assert B.agreement(a, a[::-1]) == 0.0
    assert np.isnan(B.agreement(a[:0], a[:0]))


def test_onnx_without_spinning_matches(
    net: torch.nn.Module, cache: Path, x: np.ndarray, reference: np.ndarray
) -> None:
    if B.unavailable_reason("onnx") is not None:
        pytest.skip("onnxruntime missing")
    path = B.export_onnx(net, image_size=SIZE, cache_dir=cache)
    runner = B.OnnxRunner("onnx", path, threads=1, spin=False)
    np.testing.assert_allclose(runner(x), reference, rtol=1e-4, atol=1e-4)


def test_auto_falls_back_when_export_fails(
    net: torch.nn.Module, cache: Path, x: np.ndarray, reference: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_export(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(B, "export_onnx", broken_export)
    monkeypatch.setattr(B, "AUTO_CPU_ORDER", ("onnx", "openvino", "channels_last", "torch"))
    runner = B.make_runner(net, backend="auto", image_size=SIZE, cache_dir=cache)
    assert runner.name == "channels_last"
    np.testing.assert_allclose(runner(x), reference, rtol=1e-4, atol=1e-4)
    # a named backend still fails loudly
    with pytest.raises(RuntimeError, match="exporter crashed"):
        B.make_runner(net, backend="onnx", image_size=SIZE, cache_dir=cache)


def test_torch_threads_only_set_when_asked(net: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    B.make_runner(net, backend="torch", image_size=SIZE)
    assert calls == []  # the process-wide setting is left alone by default
    B.make_runner(net, backend="torch", image_size=SIZE, threads=1)
    assert calls == [1]


def test_openvino_runner_is_thread_safe(net: torch.nn.Module, cache: Path) -> None:
    if B.unavailable_reason("openvino") is not None:
        pytest.skip("openvino missing")
    from concurrent.futures import ThreadPoolExecutor

    runner = B.make_runner(net, backend="openvino", image_size=SIZE, cache_dir=cache, threads=1)
    inputs = [_slices(4, seed=10 + i) for i in range(4)]
    with torch.inference_mode():
        expected = [net(torch.from_numpy(a)).numpy() for a in inputs]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: runner(inputs[i % 4]), range(32)))
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out, expected[i % 4], rtol=1e-4, atol=1e-4)
