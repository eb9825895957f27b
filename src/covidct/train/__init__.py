"""covidct.train: training of the slice classifier and the U-Net segmenter.

Python API::

    from covidct.train import ClassifierConfig, SegmenterConfig, train_classifier, train_segmenter
    train_segmenter(SegmenterConfig(data=[cohort], out_dir=model / "segmenter", image_size=128, epochs=5))
    train_classifier(ClassifierConfig(data=[cohort], out_dir=model / "classifier", arch="resnet18",
                                      image_size=128, max_slices_per_study=24, max_minutes=8))

Both return the bundle folder; writing into ``MODEL/classifier`` (or ``MODEL/segmenter``) also refreshes
``MODEL/model.json``, the pipeline card that ``covidct diagnose --model MODEL`` loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covidct.train.config import ClassifierConfig, SegmenterConfig, TrainConfig

if TYPE_CHECKING:
    from covidct.train.classifier import train_classifier
    from covidct.train.segmenter import train_segmenter

__all__ = ["ClassifierConfig", "SegmenterConfig", "TrainConfig", "train_classifier", "train_segmenter"]


def __getattr__(name: str) -> Any:
    if name == "train_classifier":
        from covidct.train.classifier import train_classifier

        return train_classifier
    if name == "train_segmenter":
        from covidct.train.segmenter import train_segmenter

        return train_segmenter
    raise AttributeError(f"module 'covidct.train' has no attribute {name!r}")
