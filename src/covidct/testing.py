"""Pipelines with random weights, for tests, timing and load tests: their cost is real, their answers are not.

    >>> from covidct.testing import random_pipeline                       # doctest: +SKIP
    >>> model_dir = random_pipeline("/tmp/timing", arch="resnet50", image_size=224)   # doctest: +SKIP

Never use one to diagnose: the card's name says "random" and every diagnosis it gives is meaningless.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

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


def random_segmenter_bundle(
    directory: str | Path,
    *,
    features: tuple[int, ...] = (4, 8, 8, 16, 16, 4),
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a lung segmenter bundle (``covidct train segmenter``' format) with a random-weight U-Net, for
    tests and timing (its masks are arbitrary; use it with :func:`random_pipeline`'s ``segmenter_dir``)."""
    import torch

    from covidct.bundle import save_component
    from covidct.preprocess import SEGMENTER_WINDOW, window
    from covidct.registry import LUNG_LABEL_NAMES
    from covidct.segment.unet import build_segmenter, unet_architecture

    directory = Path(directory)
    torch.manual_seed(seed)
    net = build_segmenter(features=features).eval()
    # untrained, the logits are dominated by the last layer's bias (one label everywhere): centre them on a
    # chest-like phantom so the labels vary with the image and a study gets some "lung"
    yy, xx = np.mgrid[0:image_size, 0:image_size] / (image_size - 1) * 2 - 1
    hu = np.where(yy**2 / 0.8 + xx**2 / 0.9 < 1, 40.0, -1000.0)
    hu[((np.abs(xx) - 0.4) ** 2 / 0.05 + yy**2 / 0.4) < 1] = -850.0
    x = torch.from_numpy(window(hu.astype(np.float32), SEGMENTER_WINDOW)[None, None].astype(np.float32))
    final = net.get_submodule("final_conv")
    with torch.no_grad():
        final.bias -= net(x).mean(dim=(0, 2, 3))
    card = {
        "kind": "segmenter",
        "name": "random-lung-unet (timing and tests only)",
        "labels": {str(k): v for k, v in LUNG_LABEL_NAMES.items()},
        "architecture": unet_architecture(features),
        "preprocessing": {
            "window": {"level": SEGMENTER_WINDOW.level, "width": SEGMENTER_WINDOW.width},
            "image_size": int(image_size),
        },
    }
    save_component(directory, net.state_dict(), card)
    return directory
