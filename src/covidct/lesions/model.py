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

from covidct.io.volume import CTVolume
from covidct.registry import LESION_IMAGE_SIZE, LESION_LABEL_NAMES, LESION_WINDOW, Window

#: Channel widths of the shipped lesion U-Net (see the README's lesion section for the measurement).
DEFAULT_FEATURES: Final[tuple[int, ...]] = (16, 32, 64, 128, 256, 16)
#: Pixels around the lung box of a CT slice (the lesion folders' crops keep a thin rim of chest wall).
BOX_MARGIN: Final[int] = 6
#: A CT slice with fewer lung pixels than this is not segmented (no lung to hold a lesion).
MIN_LUNG_PX: Final[int] = 400


def build_lesion_net(*, features: Sequence[int] = DEFAULT_FEATURES) -> nn.Module:
    """A freshly initialised lesion U-Net (1 channel in, 3 classes out, logits)."""
    from covidct.segment.unet import build_segmenter

    return build_segmenter(features=features, in_channels=1, num_classes=len(LESION_LABEL_NAMES))


def lung_box(lung: np.ndarray, margin: int = BOX_MARGIN) -> tuple[slice, slice] | None:
    """The rows and columns of a 2-D lung mask's bounding box plus ``margin`` (None: too little lung)."""
    if int(np.count_nonzero(lung)) < MIN_LUNG_PX:
        return None
    rows, cols = np.flatnonzero(lung.any(axis=1)), np.flatnonzero(lung.any(axis=0))
    h, w = lung.shape
    return (
        slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, h)),
        slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, w)),
    )


def slice_input(hu: np.ndarray, box: tuple[slice, slice], image_size: int, win: Window) -> np.ndarray:
    """A CT slice (HU) cropped to ``box`` as a network input ``(S, S)`` in [0, 1]."""
    from covidct.preprocess import resize_images, window

    return resize_images(window(hu[box], win)[None], image_size)[0]


class LesionSegmenter:
    """A trained lesion U-Net: load once (:meth:`from_bundle`), apply to many studies or images."""

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

    def segment_image(self, img: np.ndarray) -> np.ndarray:
        """Lesion labels of one slice image (grey 0..255, cropped to the lungs), at the image's size."""
        from covidct.lesions.folders import image_inputs
        from covidct.preprocess import resize_labels

        labels = self.predict_inputs(image_inputs(img, self.image_size)[None])
        return np.asarray(resize_labels(labels, img.shape[:2])[0], np.uint8)

    def apply(self, volume: CTVolume, lung_mask: np.ndarray, *, progress: Any | None = None) -> np.ndarray:
        """The lesion mask of ``volume``: uint8 ``(z, y, x)``, values of :class:`LesionLabel`, inside the lungs.

        ``progress``: an object with ``update(n)`` told of each segmented slice (e.g. a tqdm bar).
        """
        from covidct.preprocess import resize_labels

        lung = np.asarray(lung_mask) > 0
        if lung.shape != volume.shape:
            raise ValueError(f"lung mask shape {lung.shape} differs from the volume's {volume.shape}")
        out = np.zeros(volume.shape, np.uint8)
        jobs = [(z, box) for z in range(volume.n_slices) if (box := lung_box(lung[z])) is not None]
        for i in range(0, len(jobs), self.batch_size):
            batch = jobs[i : i + self.batch_size]
            x = np.stack([slice_input(volume.hu[z], box, self.image_size, self.window) for z, box in batch])
            labels = self.predict_inputs(x)
            for (z, box), lab in zip(batch, labels, strict=True):
                h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
                out[z][box] = resize_labels(lab[None], (h, w))[0]
            if progress is not None:
                progress.update(len(batch))
        out[~lung] = 0
        return out
