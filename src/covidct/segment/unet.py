"""The U-Net lung segmenter: a 2-D MONAI BasicUNet with batch norm after every convolution, 3 classes.

Input: slices in :data:`covidct.preprocess.SEGMENTER_WINDOW`, resized to the net's size (256 by default);
output: 0 background, 1 right lung, 2 left lung (the patient's sides), resized back with nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from covidct.errors import ModelError
from covidct.io.volume import CTVolume
from covidct.preprocess import SEGMENTER_WINDOW, resize_labels_tensor, segmenter_inputs_tensor
from covidct.registry import SEGMENTER_IMAGE_SIZE, Window

#: Default channel widths of BasicUNet (5 encoder levels + the last decoder level).
DEFAULT_FEATURES: Final[tuple[int, ...]] = (16, 32, 64, 128, 256, 16)
#: Slices per forward pass when none is given, by device type.
DEFAULT_BATCH_SIZE: Final[dict[str, int]] = {"cpu": 4, "cuda": 64}


def build_segmenter(
    *, features: Sequence[int] = DEFAULT_FEATURES, in_channels: int = 1, num_classes: int = 3
) -> nn.Module:
    """A freshly initialised 2-D U-Net (conv -> batch norm -> LeakyReLU, twice per level); logits out.

    Input sides must be multiples of 16 (four poolings).
    """
    from monai.networks.nets import BasicUNet

    feats = tuple(int(f) for f in features)
    if len(feats) != 6:
        raise ValueError(f"features needs 6 channel counts, got {feats}")
    return BasicUNet(
        spatial_dims=2, in_channels=in_channels, out_channels=num_classes, features=feats, norm="batch"
    )


def load_unet_bundle(
    directory: str | Path, *, kind: str, window: Window, image_size: int
) -> tuple[nn.Module, dict[str, Any], int, Window]:
    """A BasicUNet bundle of ``kind`` (the lung segmenter or the lesion model): its network with the weights
    loaded, its card, input size and window (``window`` and ``image_size`` where the card gives none).

    ModelError naming ``model.json`` for an architecture other than a 6-level basic_unet, weights that do not
    fit it, or an input size that is not a positive multiple of 16.
    """
    from covidct.bundle import CARD_NAME, card_int, card_window, load_component, load_state_checked

    directory = Path(directory)
    where = directory / CARD_NAME
    card, state = load_component(directory, kind=kind)
    arch = card.get("architecture")
    if not isinstance(arch, dict) or arch.get("name") != "basic_unet":
        name = arch.get("name") if isinstance(arch, dict) else arch
        raise ModelError(f"{where}: architecture {name!r} is not 'basic_unet'")
    features = arch.get("features", DEFAULT_FEATURES)
    try:
        feats = tuple(int(f) for f in features)
    except (TypeError, ValueError):
        feats = ()
    if len(feats) != 6 or min(feats) < 1:
        raise ModelError(f"{where}: architecture.features must be 6 positive integers, got {features!r}")
    net = build_segmenter(features=feats, num_classes=3)
    load_state_checked(net, state, where=directory)
    pre = card.get("preprocessing") or {}
    if not isinstance(pre, dict):
        raise ModelError(f"{where}: preprocessing must be an object, got {pre!r}")
    win = card_window(card, default=window, where=where)
    size = card_int(pre, "image_size", image_size, where=where, prefix="preprocessing.")
    if size < 16 or size % 16:
        raise ModelError(f"{where}: image_size {size} is not a positive multiple of 16")
    return net, card, size, win


def unet_architecture(features: Sequence[int]) -> dict[str, Any]:
    """The card's ``architecture`` entry of a network :func:`build_segmenter` builds (1 channel in, 3 out)."""
    return {
        "name": "basic_unet",
        "library": "monai.networks.nets.BasicUNet",
        "spatial_dims": 2,
        "in_channels": 1,
        "num_classes": 3,
        "features": [int(f) for f in features],
        "norm": "batch",
    }


def labels_in_batches(network: nn.Module, x: torch.Tensor, *, batch_size: int, device: str) -> torch.Tensor:
    """uint8 argmax labels ``(n, S, S)`` on ``device`` of a segmentation network for inputs ``(n, 1, S, S)``,
    ``batch_size`` at a time (call under ``torch.inference_mode()``)."""
    if x.shape[0] == 0:
        return torch.zeros((0, *x.shape[2:]), dtype=torch.uint8, device=device)
    return torch.cat(
        [
            network(x[i : i + batch_size].to(device)).argmax(dim=1).to(torch.uint8)
            for i in range(0, x.shape[0], batch_size)
        ]
    )


class UNetSegmenter:
    """Segmenter protocol implementation around a trained U-Net bundle (load once, apply many)."""

    name = "unet"

    def __init__(
        self,
        network: nn.Module,
        *,
        image_size: int = SEGMENTER_IMAGE_SIZE,
        window: Window = SEGMENTER_WINDOW,
        card: dict[str, Any] | None = None,
        device: str = "cpu",
        batch_size: int | None = None,
    ) -> None:
        self.network = network.to(device).eval()
        self.image_size = int(image_size)
        self.window = window
        self.card: dict[str, Any] = dict(card or {})
        self.device = device
        if batch_size is None:
            batch_size = DEFAULT_BATCH_SIZE["cuda" if device.startswith("cuda") else "cpu"]
        self.batch_size = max(1, int(batch_size))

    @classmethod
    def from_bundle(
        cls, directory: str | Path, *, device: str = "cpu", batch_size: int | None = None
    ) -> UNetSegmenter:
        """Load a segmenter bundle written by ``covidct train segmenter``."""
        net, card, size, window = load_unet_bundle(
            directory, kind="segmenter", window=SEGMENTER_WINDOW, image_size=SEGMENTER_IMAGE_SIZE
        )
        return cls(net, image_size=size, window=window, card=card, device=device, batch_size=batch_size)

    def predict_inputs(self, x: np.ndarray) -> np.ndarray:
        """Labels ``(n, S, S)`` uint8 for preprocessed inputs ``(n, 1, S, S)``."""
        import torch

        with torch.inference_mode():
            return self._labels(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).cpu().numpy()

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 labels ``(n, S, S)`` on the network's device for inputs ``(n, 1, S, S)``, in batches."""
        return labels_in_batches(self.network, x, batch_size=self.batch_size, device=self.device)

    def apply(self, volume: CTVolume) -> np.ndarray:
        """The lung mask of ``volume``: uint8 ``(z, y, x)``, 0 background, 1 right, 2 left.

        Slices travel to the network's device as HU (int16 where the volume is) and are windowed, resized,
        segmented and resized back there; only the uint8 mask comes back.
        """
        import torch

        z, h, w = volume.shape
        mask = np.zeros((z, h, w), np.uint8)
        hu = torch.from_numpy(np.ascontiguousarray(volume.hu))
        step = max(self.batch_size * 4, 1)
        with torch.inference_mode():
            for i in range(0, z, step):
                x = segmenter_inputs_tensor(
                    hu[i : i + step].to(self.device), image_size=self.image_size, window=self.window
                )
                labels = resize_labels_tensor(self._labels(x), (h, w))
                mask[i : i + step] = labels.cpu().numpy()
        return mask
