"""The tensor preprocessing (used where the networks run, a GPU included) equals the numpy one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidct.classify.inference import SliceClassifier
from covidct.classify.networks import build_classifier
from covidct.io.volume import CTVolume
from covidct.preprocess import (
    classifier_inputs,
    classifier_inputs_tensor,
    resize_labels,
    resize_labels_tensor,
    segmenter_inputs,
    segmenter_inputs_tensor,
)
from covidct.segment.unet import UNetSegmenter, build_segmenter


def _volume(n: int = 6, size: int = 64, seed: int = 0) -> tuple[CTVolume, np.ndarray]:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 400, size=(n, size, size)).astype(np.int16)
    mask = np.zeros(hu.shape, np.uint8)
    mask[:, 10:30, 8:28] = 1
    mask[:, 12:34, 36:56] = 2
    return CTVolume(hu, (2.0, 0.7, 0.7)), mask


@pytest.mark.parametrize("size", [32, 96])  # shrinking (anti-aliased) and enlarging
def test_classifier_and_segmenter_inputs_match_numpy(size: int) -> None:
    vol, mask = _volume()
    idx = np.array([1, 3, 4])
    ref = classifier_inputs(vol, mask, indices=idx, image_size=size)
    got = classifier_inputs_tensor(
        torch.from_numpy(vol.hu[idx]), torch.from_numpy(mask[idx]), image_size=size
    )
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape
    # the NumPy resize evaluates PyTorch's interpolation in another order: equal to a few float32 ulps of 1.0
    # (2e-7 when shrinking, 1.5e-6 when enlarging)
    tol = 1e-6 if size < 64 else 2e-6
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=tol)
    seg_ref = segmenter_inputs(vol, indices=idx, image_size=size)
    seg = segmenter_inputs_tensor(torch.from_numpy(vol.hu[idx]), image_size=size)
    np.testing.assert_allclose(seg.numpy(), seg_ref, rtol=0, atol=tol)


def test_label_resize_matches_numpy_exactly() -> None:
    _, mask = _volume()
    for shape in [(32, 32), (100, 80)]:
        ref = resize_labels(mask, shape)
        got = resize_labels_tensor(torch.from_numpy(mask), shape).numpy()
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match=r"\(n, h, w\)"):
        resize_labels_tensor(torch.zeros(4, 4, dtype=torch.uint8), 2)


def test_mask_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match="does not match"):
        classifier_inputs_tensor(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9), image_size=8)


def test_classifier_on_device_path_equals_numpy_path() -> None:
    """predict_volume prepares slices as tensors for torch runners; other runners get numpy inputs."""
    torch.manual_seed(0)
    vol, mask = _volume(n=5, size=48)
    clf = SliceClassifier(build_classifier("resnet18").eval(), image_size=32, backend="torch")
    got = clf.predict_volume(vol, mask, indices=[0, 2, 4], batch_size=2)
    ref = clf.predict_inputs(clf.preprocess(vol, mask, [0, 2, 4]), batch_size=2)
    np.testing.assert_allclose(got[[0, 2, 4]], ref, rtol=1e-4, atol=1e-5)
    assert np.isnan(got[[1, 3]]).all()


def test_unet_apply_equals_the_numpy_preprocessing() -> None:
    torch.manual_seed(0)
    vol, _ = _volume(n=5, size=48)
    seg = UNetSegmenter(build_segmenter(features=(4, 4, 8, 8, 16, 4)), image_size=32, batch_size=2)
    mask = seg.apply(vol)
    assert mask.shape == vol.hu.shape and mask.dtype == np.uint8
    ref = resize_labels(seg.predict_inputs(segmenter_inputs(vol, image_size=32)), (48, 48))
    np.testing.assert_array_equal(mask, ref)
