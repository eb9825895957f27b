"""SliceClassifier: load a classifier bundle once, classify the slices of many volumes.

A classifier bundle may hold calibration slices for int8 backends: ``calibration.npy``, float16
``(n, 1, S, S)`` preprocessed slices, listed in the card as ``"calibration": {"file": "calibration.npy",
"n": n}`` (optionally with ``"sha256"``). They are loaded into :attr:`SliceClassifier.calibration`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct.errors import ModelError
from covidct.preprocess import classifier_inputs
from covidct.registry import LUNG_WINDOW, NUM_CLASSES, Window

if TYPE_CHECKING:
    import torch
    from torch import nn

    from covidct.io.volume import CTVolume

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class RunnerClassifier:
    """What diagnosis needs of a slice classifier, whatever runs it: ``runner`` maps preprocessed inputs to
    logits; ``image_size``, ``window`` and ``card`` come from the bundle. No torch here (the torch-free path
    subclasses it too: :class:`covidct.infer.onnx.OnnxSliceClassifier`)."""

    runner: Runner
    image_size: int
    window: Window
    card: dict[str, Any]

    def preprocess(
        self, volume: CTVolume, mask: np.ndarray, indices: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """The network input for the chosen slices: ``(n, 1, S, S)`` float32 (see ``classifier_inputs``)."""
        return classifier_inputs(
            volume, mask, indices=indices, image_size=self.image_size, window=self.window
        )

    def predict_inputs(self, x: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
        """Class probabilities ``(n, 3)`` float32 (registry order) for preprocessed inputs."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"inputs must be (n, 1, {self.image_size}, {self.image_size}), got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        out = [self.runner(x[i : i + batch_size]) for i in range(0, x.shape[0], max(1, batch_size))]
        return softmax(np.concatenate(out, axis=0).astype(np.float32))

    def predict_volume(
        self,
        volume: CTVolume,
        mask: np.ndarray,
        *,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Probabilities for every slice ``(n_slices, 3)``; rows of slices not in ``indices`` are NaN."""
        n = volume.n_slices
        idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        probs = np.full((n, NUM_CLASSES), np.nan, dtype=np.float32)
        step = max(1, batch_size)
        for i in range(0, idx.size, step):
            chunk = idx[i : i + step]
            probs[chunk] = self._chunk_probabilities(volume, mask, chunk, step)
        return probs

    def _chunk_probabilities(
        self, volume: CTVolume, mask: np.ndarray, chunk: np.ndarray, batch_size: int
    ) -> np.ndarray:
        return self.predict_inputs(self.preprocess(volume, mask, chunk), batch_size=batch_size)


class SliceClassifier(RunnerClassifier):
    """A slice classifier ready for inference.

    ``network`` is the torch module (eval mode; for Grad-CAM), ``image_size`` the square input side in pixels,
    ``window`` the HU window, ``card`` the bundle card, ``runner`` the callable that turns preprocessed inputs
    into logits (a faster backend may replace it; see :func:`covidct.classify.backends.make_runner`),
    ``calibration`` float32 ``(n, 1, S, S)`` preprocessed slices for int8 backends, or ``None``.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        image_size: int,
        window: Window = LUNG_WINDOW,
        card: dict[str, Any] | None = None,
        device: str = "cpu",
        backend: str = "torch",
        calibration: np.ndarray | None = None,
    ) -> None:
        self.network = network.to(device).eval()
        self.image_size = int(image_size)
        self.window = window
        self.card: dict[str, Any] = dict(card or {})
        self.device = device
        self.calibration: np.ndarray | None = (
            None if calibration is None else np.ascontiguousarray(calibration, dtype=np.float32)
        )
        self.runner: Runner = self.make_runner(backend)

    def make_runner(self, backend: str, *, calibration: np.ndarray | None = None, **kwargs: Any) -> Runner:
        """A runner for this network (``covidct.classify.backends.make_runner``); ``calibration`` defaults to
        the bundle's calibration slices."""
        from covidct.classify.backends import make_runner

        calib = self.calibration if calibration is None else calibration
        runner: Runner = make_runner(
            self.network,
            backend=backend,
            image_size=self.image_size,
            device=self.device,
            calibration=calib,
            **kwargs,
        )
        return runner

    @classmethod
    def from_bundle(
        cls, directory: str | Path, *, device: str = "cpu", backend: str = "torch"
    ) -> SliceClassifier:
        """Load a classifier bundle (``model.json`` + ``weights.safetensors``), checking compatibility."""
        from covidct.bundle import CARD_NAME, card_int, card_window, load_component, load_state_checked
        from covidct.classify.networks import ARCHITECTURES, build_classifier

        directory = Path(directory)
        where = directory / CARD_NAME
        card, state = load_component(directory, kind="classifier")
        arch = card.get("architecture")
        if not isinstance(arch, dict):
            raise ModelError(f"{where}: architecture must be an object with a name, got {arch!r}")
        name = str(arch.get("name", ""))
        if name not in ARCHITECTURES:
            raise ModelError(
                f"{where}: architecture {name!r} is not one this covidct builds ({', '.join(ARCHITECTURES)})"
            )
        a = "architecture."
        if card_int(arch, "conv1_t_stride", 2, where=where, prefix=a) != 2 or (
            card_int(arch, "conv1_t_size", 7, where=where, prefix=a) != 7
        ):
            raise ModelError(f"{where}: only conv1 size 7 / stride 2 ResNets are supported")
        if card_int(arch, "num_classes", NUM_CLASSES, where=where, prefix=a) != NUM_CLASSES:
            raise ModelError(f"{where}: num_classes must be {NUM_CLASSES}")
        in_channels = card_int(arch, "in_channels", 1, where=where, prefix=a)
        if in_channels != 1:
            raise ModelError(
                f"{where}: in_channels is {in_channels}, but covidct feeds the classifier one lung-window "
                "channel per slice; retrain with in_channels 1"
            )
        net = build_classifier(name, in_channels=1)
        load_state_checked(net, state, where=directory)
        pre = card.get("preprocessing") or {}
        if not isinstance(pre, dict):
            raise ModelError(f"{where}: preprocessing must be an object, got {pre!r}")
        size = card_int(pre, "image_size", 0, where=where, prefix="preprocessing.")
        if size < 32:
            raise ModelError(f"{where}: preprocessing.image_size missing or < 32")
        window = card_window(card, default=LUNG_WINDOW, where=where)
        calibration = load_calibration(directory, card, image_size=size)
        return cls(
            net,
            image_size=size,
            window=window,
            card=card,
            device=device,
            backend=backend,
            calibration=calibration,
        )

    def _chunk_probabilities(
        self, volume: CTVolume, mask: np.ndarray, chunk: np.ndarray, batch_size: int
    ) -> np.ndarray:
        """A plain torch runner gets the slices prepared where the network runs (no host round trip on a GPU)."""
        from covidct.classify.backends import TorchRunner

        runner = self.runner
        if isinstance(runner, TorchRunner) and not runner.fixed_batch:
            return softmax(runner(self._inputs_on(runner.device, volume, mask, chunk)))
        return super()._chunk_probabilities(volume, mask, chunk, batch_size)

    def _inputs_on(
        self, device: torch.device, volume: CTVolume, mask: np.ndarray, chunk: np.ndarray
    ) -> torch.Tensor:
        """:meth:`preprocess` of ``chunk`` computed on ``device`` from HU and mask sent there as they are."""
        import torch

        from covidct.preprocess import classifier_inputs_tensor

        m = np.asarray(mask)
        if m.shape != volume.hu.shape:
            raise ValueError(f"lung mask shape {m.shape} does not match the volume shape {volume.hu.shape}")
        with torch.inference_mode():
            hu = torch.from_numpy(np.ascontiguousarray(volume.hu[chunk])).to(device)
            lung = torch.from_numpy(np.ascontiguousarray(m[chunk])).to(device)
            return classifier_inputs_tensor(hu, lung, image_size=self.image_size, window=self.window)


def load_calibration(directory: Path, card: dict[str, Any], *, image_size: int) -> np.ndarray | None:
    """The bundle's calibration slices as float32 ``(n, 1, S, S)``, or ``None`` when the card lists none.

    A listed file that is missing, unreadable, misshaped or (when the card gives ``sha256``) altered raises
    :class:`ModelError` naming it.
    """
    from covidct.bundle import CARD_NAME, file_sha256

    entry = card.get("calibration")
    if entry is None:
        return None
    where = directory / CARD_NAME
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise ModelError(f"{where}: calibration must be {{'file': 'calibration.npy', 'n': n}}, got {entry!r}")
    path = directory / entry["file"]
    if path.name != entry["file"] or not path.is_file():
        raise ModelError(f"{path} is listed in {where} but missing: restore the bundle folder or retrain")
    expected = entry.get("sha256")
    if expected is not None and file_sha256(path) != expected:
        raise ModelError(f"{path}: content does not match the sha256 in {where}; restore it or retrain")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} cannot be read as a .npy array ({exc}); restore it or retrain") from None
    n = entry.get("n")
    if (
        arr.ndim != 4
        or arr.shape[1:] != (1, image_size, image_size)
        or len(arr) == 0
        or (n is not None and n != len(arr))
        or not np.issubdtype(arr.dtype, np.floating)
    ):
        raise ModelError(
            f"{path}: calibration slices must be float (n, 1, {image_size}, {image_size}) with n = {n}, got "
            f"{arr.dtype} {arr.shape}; restore it or retrain"
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ModelError(f"{path}: calibration slices hold NaN or infinite values; restore it or retrain")
    return out
