"""Classifier networks and the shared slice preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidct.classify.networks import build_classifier
from covidct.errors import ConfigError
from covidct.io.volume import CTVolume
from covidct.preprocess import classifier_inputs, resize_labels, segmenter_inputs
from covidct.registry import LUNG_WINDOW


@pytest.mark.parametrize(
    ("arch", "params"), [("resnet18", 11.17e6), ("resnet34", 21.28e6), ("resnet50", 23.51e6)]
)
def test_standard_resnets(arch: str, params: float) -> None:
    net = build_classifier(arch).eval()
    conv1 = net.conv1
    assert conv1.stride == (2, 2) and conv1.kernel_size == (7, 7) and conv1.in_channels == 1
    assert abs(sum(p.numel() for p in net.parameters()) - params) / params < 0.01
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 64, 64))
    assert out.shape == (2, 3)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_unknown_arch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="resnet18, resnet34, resnet50"):
        build_classifier("resnet101")


def _volume() -> tuple[CTVolume, np.ndarray]:
    hu = np.full((3, 64, 64), -1000, np.int16)
    hu[:, 16:48, 8:28] = -600  # right lung (image left)
    hu[:, 16:48, 36:56] = -600
    hu[:, 0:8, :] = 400  # bone outside the lung
    hu[1] += 100
    mask = np.zeros(hu.shape, np.uint8)
    mask[:, 16:48, 8:28] = 1
    mask[:, 16:48, 36:56] = 2
    return CTVolume(hu, (2.0, 0.7, 0.7)), mask


def test_classifier_inputs_window_mask_resize_and_order() -> None:
    vol, mask = _volume()
    x = classifier_inputs(vol, mask, image_size=32)
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.float32
    assert float(x[:, :, 0:4].max()) == 0.0  # outside the lung: background, even the bright bone
    centre = (-600 - LUNG_WINDOW.low) / LUNG_WINDOW.width
    assert abs(float(x[0, 0, 16, 8]) - centre) < 1e-5  # inside the right lung
    sub = classifier_inputs(vol, mask, indices=[2, 1], image_size=32)
    np.testing.assert_array_equal(sub[0], x[2])
    np.testing.assert_array_equal(sub[1], x[1])
    with pytest.raises(ValueError, match="does not match"):
        classifier_inputs(vol, mask[:, :10], image_size=32)
    with pytest.raises(ValueError, match="slice indices"):
        classifier_inputs(vol, mask, indices=[3], image_size=32)


def test_segmenter_inputs_and_nearest_label_resize() -> None:
    vol, mask = _volume()
    x = segmenter_inputs(vol, image_size=32)
    assert x.shape == (3, 1, 32, 32) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    small = resize_labels(mask, 32)
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 1, 2}
    back = resize_labels(small, (64, 64))
    assert back.shape == mask.shape and float(np.mean(back == mask)) > 0.97
