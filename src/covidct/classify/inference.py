"""SliceClassifier: load a classifier bundle once, classify the slices of many volumes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct.errors import ConfigError, ModelError
from covidct.preprocess import classifier_inputs
from covidct.registry import LUNG_WINDOW, NUM_CLASSES, Window

if TYPE_CHECKING:
    from torch import nn

    from covidct.io.volume import CTVolume

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]


class TorchRunner:
    """Plain PyTorch inference: ``(n, 1, S, S)`` float32 -> logits ``(n, classes)`` float32."""

    name = "torch"

    def __init__(self, network: nn.Module, *, device: str = "cpu") -> None:
        self.network = network
        self.device = device

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        self.network.eval()
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            return self.network(t).float().cpu().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def parse_card_window(card: dict[str, Any]) -> Window:
    pre = dict(card.get("preprocessing", {}))
    w = dict(pre.get("window", {}))
    if not w:
        return LUNG_WINDOW
    return Window(float(w["level"]), float(w["width"]))


class SliceClassifier:
    """A slice classifier ready for inference.

    ``network`` is the torch module (eval mode; for Grad-CAM), ``image_size`` the square input side in pixels,
    ``window`` the HU window, ``card`` the bundle card, ``runner`` the callable that turns preprocessed inputs
    into logits (a faster backend may replace it).
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
    ) -> None:
        self.network = network.to(device).eval()
        self.image_size = int(image_size)
        self.window = window
        self.card: dict[str, Any] = dict(card or {})
        self.device = device
        self.runner: Runner = self._make_runner(backend)

    def _make_runner(self, backend: str) -> Runner:
        if backend == "torch":
            return TorchRunner(self.network, device=self.device)
        try:
            from covidct.classify.backends import make_runner
        except ImportError:
            if backend == "auto":
                return TorchRunner(self.network, device=self.device)
            raise ConfigError(
                f"backend {backend!r} needs covidct.classify.backends; use backend='torch'"
            ) from None
        runner: Runner = make_runner(
            self.network, backend=backend, image_size=self.image_size, device=self.device
        )
        return runner

    @classmethod
    def from_bundle(
        cls, directory: str | Path, *, device: str = "cpu", backend: str = "torch"
    ) -> SliceClassifier:
        """Load a classifier bundle (``model.json`` + ``weights.safetensors``), checking compatibility."""
        from covidct.bundle import load_component, load_state_checked
        from covidct.classify.networks import ARCHITECTURES, build_classifier

        directory = Path(directory)
        card, state = load_component(directory, kind="classifier")
        arch = dict(card.get("architecture", {}))
        name = str(arch.get("name", ""))
        if name not in ARCHITECTURES:
            raise ModelError(
                f"{directory / 'model.json'}: architecture {name!r} is not one this covidct builds "
                f"({', '.join(ARCHITECTURES)})"
            )
        if int(arch.get("conv1_t_stride", 2)) != 2 or int(arch.get("conv1_t_size", 7)) != 7:
            raise ModelError(
                f"{directory / 'model.json'}: only conv1 size 7 / stride 2 ResNets are supported"
            )
        if int(arch.get("num_classes", NUM_CLASSES)) != NUM_CLASSES:
            raise ModelError(f"{directory / 'model.json'}: num_classes must be {NUM_CLASSES}")
        net = build_classifier(name, in_channels=int(arch.get("in_channels", 1)))
        load_state_checked(net, state, where=directory)
        pre = dict(card.get("preprocessing", {}))
        size = int(pre.get("image_size", 0))
        if size < 32:
            raise ModelError(f"{directory / 'model.json'}: preprocessing.image_size missing or < 32")
        return cls(
            net, image_size=size, window=parse_card_window(card), card=card, device=device, backend=backend
        )

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
            probs[chunk] = self.predict_inputs(self.preprocess(volume, mask, chunk), batch_size=step)
        return probs
