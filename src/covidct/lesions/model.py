"""The lesion segmenter: a 2-D MONAI BasicUNet (batch norm) giving background / ground glass / consolidation.

Input: one slice cropped to the lungs (a CT slice's lung-mask box plus a margin, or a lesion-folder image,
which is already such a crop), through :data:`~covidct.registry.LESION_WINDOW`, resized to the net's size.
Output labels (:class:`~covidct.registry.LesionLabel`) are resized back with nearest neighbour; on a CT
study they are kept only inside the lung mask. :class:`LesionSegmenter` loads a bundle once and is applied
to many studies or images (as lungmask's ``LMInferer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from covidct.lesions.inference import BOX_MARGIN, MIN_LUNG_PX, LesionInferer, lung_box, slice_input
from covidct.registry import LESION_IMAGE_SIZE, LESION_LABEL_NAMES, LESION_WINDOW, Window

__all__ = ["BOX_MARGIN", "MIN_LUNG_PX", "LesionSegmenter", "build_lesion_net", "lung_box", "slice_input"]

#: Channel widths of the shipped lesion U-Net (see the README's lesion section for the measurement).
DEFAULT_FEATURES: Final[tuple[int, ...]] = (16, 32, 64, 128, 256, 16)


def build_lesion_net(*, features: Sequence[int] = DEFAULT_FEATURES) -> nn.Module:
    """A freshly initialised lesion U-Net (1 channel in, 3 classes out, logits)."""
    from covidct.segment.unet import build_segmenter

    return build_segmenter(features=features, in_channels=1, num_classes=len(LESION_LABEL_NAMES))


class LesionSegmenter(LesionInferer):
    """A trained lesion U-Net in PyTorch: load once (:meth:`from_bundle`), apply to many studies or images
    (:class:`~covidct.lesions.inference.LesionInferer`)."""

    def __init__(
        self,
        network: nn.Module,
        *,
        image_size: int = LESION_IMAGE_SIZE,
        window: Window = LESION_WINDOW,
        card: dict[str, Any] | None = None,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        self.network = network.to(device).eval()
        self.image_size = int(image_size)
        self.window = window
        self.card: dict[str, Any] = dict(card or {})
        self.device = device
        self.batch_size = max(1, int(batch_size))

    @classmethod
    def from_bundle(cls, directory: str | Path, *, device: str = "cpu") -> LesionSegmenter:
        """Load a lesion bundle written by ``covidct train lesions``."""
        from covidct.segment.unet import load_unet_bundle

        net, card, size, window = load_unet_bundle(
            directory, kind="lesions", window=LESION_WINDOW, image_size=LESION_IMAGE_SIZE
        )
        return cls(net, image_size=size, window=window, card=card, device=device)

    def predict_inputs(self, x: np.ndarray) -> np.ndarray:
        """Labels ``(n, S, S)`` uint8 for network inputs ``(n, S, S)`` or ``(n, 1, S, S)``."""
        from covidct.segment.unet import labels_in_batches

        arr = np.asarray(x, dtype=np.float32)
        arr = arr[:, None] if arr.ndim == 3 else arr
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(arr))
            labels = labels_in_batches(self.network, t, batch_size=self.batch_size, device=self.device)
            return np.asarray(labels.cpu().numpy(), np.uint8)
