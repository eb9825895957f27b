"""Lesion segmentation at inference, without torch: the crop, window and resize of each slice, and what is
done with the labels. :class:`LesionInferer` needs only ``predict_inputs``: the PyTorch network
(:class:`covidct.lesions.model.LesionSegmenter`) or its ONNX export on ONNX Runtime (:class:`OnnxLesionSegmenter`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Final

import numpy as np

from covidct.infer.onnx import OnnxUNet
from covidct.io.volume import CTVolume
from covidct.registry import LESION_IMAGE_SIZE, LESION_WINDOW, Window

#: Pixels around the lung box of a CT slice (the lesion folders' crops keep a thin rim of chest wall).
BOX_MARGIN: Final[int] = 6
#: A CT slice with fewer lung pixels than this is not segmented (no lung to hold a lesion).
MIN_LUNG_PX: Final[int] = 400


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


class LesionInferer(ABC):
    """Apply a lesion network to studies or slice images; subclasses give ``predict_inputs``."""

    image_size: int
    window: Window
    batch_size: int
    card: dict[str, Any]

    @abstractmethod
    def predict_inputs(self, x: np.ndarray) -> np.ndarray:
        """Labels ``(n, S, S)`` uint8 for network inputs ``(n, S, S)`` or ``(n, 1, S, S)``."""

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


class OnnxLesionSegmenter(OnnxUNet, LesionInferer):
    """The lesion U-Net's ONNX export on ONNX Runtime (written by ``covidct export-onnx``)."""

    kind = "lesions"
    default_size = LESION_IMAGE_SIZE
    default_window = LESION_WINDOW
    default_batch = 8

    def predict_inputs(self, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float32)
        return self.labels(arr[:, None] if arr.ndim == 3 else arr)
