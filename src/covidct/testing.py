"""Pipelines with random weights, for tests, timing and load tests: their cost is real, their answers are not.

    >>> from covidct.testing import random_pipeline                       # doctest: +SKIP
    >>> model_dir = random_pipeline("/tmp/timing", arch="resnet50", image_size=224)   # doctest: +SKIP

Never use one to diagnose: the card's name says "random" and every diagnosis it gives is meaningless.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from covidct.registry import CLASS_NAMES, LUNG_WINDOW


def random_pipeline(
    directory: str | Path,
    *,
    arch: str = "resnet18",
    image_size: int = 64,
    segmenter_dir: str | Path | None = None,
    name: str | None = None,
    seed: int = 0,
) -> Path:
    """Write a pipeline folder: a ``arch`` classifier with random weights (seeded) at ``image_size`` pixels,
    and the classical segmenter, or a copy of the U-Net bundle ``segmenter_dir`` when given."""
    import torch

    from covidct.bundle import save_component, write_pipeline
    from covidct.classify.networks import build_classifier

    directory = Path(directory)
    torch.manual_seed(seed)
    net = build_classifier(arch)
    card = {
        "kind": "classifier",
        "name": name or f"random-{arch}-{image_size} (timing and tests only)",
        "classes": list(CLASS_NAMES),
        "architecture": {
            "name": arch,
            "library": "monai.networks.nets.ResNet",
            "spatial_dims": 2,
            "in_channels": 1,
            "num_classes": 3,
            "conv1_t_size": 7,
            "conv1_t_stride": 2,
            "norm": "batch",
        },
        "preprocessing": {
            "window": {"level": LUNG_WINDOW.level, "width": LUNG_WINDOW.width},
            "image_size": int(image_size),
            "function": "covidct.preprocess.classifier_inputs",
        },
    }
    save_component(directory / "classifier", net.state_dict(), card)
    segmenter = "classical"
    if segmenter_dir is not None:
        segmenter = "segmenter"
        shutil.copytree(segmenter_dir, directory / segmenter, ignore=shutil.ignore_patterns("training"))
    write_pipeline(directory, segmenter=segmenter, classifier="classifier", name=directory.name)
    return directory


def random_lesion_bundle(
    directory: str | Path,
    *,
    features: tuple[int, ...] = (4, 8, 8, 16, 16, 4),
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a lesion bundle (``covidct train lesions``' format) with a random-weight U-Net, for tests."""
    import torch

    from covidct.bundle import save_component
    from covidct.lesions.model import build_lesion_net
    from covidct.registry import LESION_LABEL_NAMES, LESION_WINDOW

    directory = Path(directory)
    torch.manual_seed(seed)
    net = build_lesion_net(features=features)
    card = {
        "kind": "lesions",
        "name": "random-lesion-unet (timing and tests only)",
        "labels": {str(k): v for k, v in LESION_LABEL_NAMES.items()},
        "architecture": {"name": "basic_unet", "features": list(features), "num_classes": 3},
        "preprocessing": {
            "window": {"level": LESION_WINDOW.level, "width": LESION_WINDOW.width},
            "image_size": int(image_size),
        },
    }
    save_component(directory, net.state_dict(), card)
    return directory
