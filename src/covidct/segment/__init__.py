"""Lung segmentation: one :class:`Segmenter` interface (load once, apply to many volumes).

``get_segmenter("classical")`` needs no weights; ``get_segmenter("unet", model_dir=...)`` loads a U-Net bundle.
Masks are uint8 (z, y, x): 0 background, 1 the patient's right lung, 2 the patient's left lung.
"""

from __future__ import annotations

from pathlib import Path

from covidct._device import check_device
from covidct.errors import ConfigError
from covidct.segment.base import Segmenter
from covidct.segment.classical import ClassicalSegmenter

#: Names accepted by :func:`get_segmenter`.
METHODS: tuple[str, ...] = ("classical", "unet")


def get_segmenter(
    method: str = "classical", *, model_dir: str | Path | None = None, device: str = "cpu"
) -> Segmenter:
    """A ready segmenter: ``"classical"`` (no weights) or ``"unet"`` (a bundle folder in ``model_dir``).

    Raises :class:`covidct.errors.ConfigError` for an unknown method or a U-Net without ``model_dir``;
    loading the bundle raises :class:`covidct.errors.ModelError` when it is missing or incompatible.
    """
    name = method.strip().lower()
    if name == "classical":
        return ClassicalSegmenter()
    if name == "unet":
        if model_dir is None:
            raise ConfigError("the unet segmenter needs a model folder: pass --model DIR (model_dir=...)")
        check_device(
            device, what="the U-Net segmenter"
        )  # before loading: torch's own refusal is an AssertionError
        from covidct.segment.unet import UNetSegmenter

        segmenter: Segmenter = UNetSegmenter.from_bundle(model_dir, device=device)
        return segmenter
    raise ConfigError(f"unknown segmentation method {method!r}: use one of {', '.join(METHODS)}")


__all__ = ["METHODS", "ClassicalSegmenter", "Segmenter", "get_segmenter"]
