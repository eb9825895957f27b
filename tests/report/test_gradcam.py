from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_study import TINY_SIZE, TinyClassifier, make_volume

from covidct.report.gradcam import SliceExplainer


def test_slice_maps_shape_range_and_determinism() -> None:
    volume, mask = make_volume(n=6, size=40)
    clf = TinyClassifier(seed=1)
    explainer = SliceExplainer.from_classifier(clf)
    maps = explainer.slice_maps(volume, mask, [2, 4], class_idx=[2, 2])
    assert maps.shape == (2, 40, 40) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps.max() > 0.5  # normalised per map: something lights up
    again = explainer.slice_maps(volume, mask, [2, 4], class_idx=[2, 2])
    np.testing.assert_allclose(maps, again, atol=1e-6)
    assert not maps[:, mask[2] == 0].any()  # lung only by default
    everywhere = explainer.slice_maps(volume, mask, [2, 4], class_idx=[2, 2], lung_only=False)
    assert everywhere[:, mask[2] == 0].any()
    np.testing.assert_allclose(everywhere[:, mask[2] > 0], maps[:, mask[2] > 0], atol=1e-6)


def test_maps_depend_on_class_and_leave_the_network_untouched() -> None:
    clf = TinyClassifier(seed=1)  # a seed whose random weights give non-zero maps for classes 0 and 2
    before = {k: v.clone() for k, v in clf.network.state_dict().items()}
    explainer = SliceExplainer.from_classifier(clf)
    x = np.random.default_rng(0).random((1, 1, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    m0 = explainer.maps_for_inputs(x, class_idx=[0])
    m2 = explainer.maps_for_inputs(x, class_idx=[2])
    assert not np.allclose(m0, m2)
    # the original network carries no hooks: it still runs under no_grad (as the diagnoser runs it)
    with torch.no_grad():
        out = clf.network(torch.from_numpy(x))
    assert out.shape == (1, 3)
    for k, v in clf.network.state_dict().items():
        assert torch.equal(v, before[k])


def test_bad_arguments_raise() -> None:
    clf = TinyClassifier()
    with pytest.raises(ValueError, match="no layer"):
        SliceExplainer(clf.network, clf.preprocess, target_layer="layer9")
    explainer = SliceExplainer.from_classifier(clf)
    volume, mask = make_volume(n=4, size=32)
    with pytest.raises(IndexError, match="outside"):
        explainer.slice_maps(volume, mask, [4])
    with pytest.raises(ValueError, match=r"\(n, 1, S, S\)"):
        explainer.maps_for_inputs(np.zeros((2, 64, 64), np.float32))
