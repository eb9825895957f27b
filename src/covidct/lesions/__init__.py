"""Lesion segmentation (ground glass, consolidation) and quantified lung involvement.

- :mod:`~covidct.lesions.model`: the 2-D U-Net segmenter (:class:`LesionSegmenter`, load once, apply many);
- :mod:`~covidct.lesions.classical`: the HU-threshold baseline with the same interface;
- :mod:`~covidct.lesions.folders`: slice-image folders with masks (COVID-SemiSeg layout) as training data;
- :mod:`~covidct.lesions.quantify`: volumes, percentages and Pan-style scores per lung and zone;
- :mod:`~covidct.lesions.api`: what ``covidct lesions`` does (find the model, segment folders or studies).

Imports here are lazy: importing :mod:`covidct.lesions` loads neither torch nor MONAI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from covidct.lesions.api import LesionResult, load_lesion_segmenter, segment_image_folder, segment_study
    from covidct.lesions.model import LesionSegmenter
    from covidct.lesions.quantify import involvement

__all__ = [
    "LesionResult",
    "LesionSegmenter",
    "involvement",
    "load_lesion_segmenter",
    "segment_image_folder",
    "segment_study",
]

_HOMES = {
    "LesionResult": "covidct.lesions.api",
    "load_lesion_segmenter": "covidct.lesions.api",
    "segment_image_folder": "covidct.lesions.api",
    "segment_study": "covidct.lesions.api",
    "LesionSegmenter": "covidct.lesions.model",
    "involvement": "covidct.lesions.quantify",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'covidct.lesions' has no attribute {name!r}")
