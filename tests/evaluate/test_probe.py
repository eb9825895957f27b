"""The synthetic-vs-real shortcut probe on a tiny random ResNet: a trivial difference is found, none not."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from covidct.classify.inference import SliceClassifier
from covidct.classify.networks import build_classifier, penultimate_features
from covidct.errors import ConfigError
from covidct.evaluate.probe import (
    ProbeResult,
    extract_features,
    probe_features,
    probe_verdict,
    shortcut_probe,
)

SIZE = 32


@pytest.fixture(scope="module")
def classifier() -> SliceClassifier:
    torch.manual_seed(0)
    return SliceClassifier(build_classifier("resnet18"), image_size=SIZE, backend="torch")


def _slices(n: int, seed: int, brightness: float = 0.0) -> np.ndarray:
    """Textured 'lungs': two bright blobs of noise on a black background, in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, SIZE, SIZE), np.float32)
    noise = rng.uniform(0.1, 0.5, size=(n, 1, 20, 10)).astype(np.float32)
    x[:, :, 6:26, 4:14] = noise
    x[:, :, 6:26, 18:28] = noise[..., ::-1]
    x[:, :, 6:26, 4:14] += brightness
    x[:, :, 6:26, 18:28] += brightness
    return np.clip(x, 0.0, 1.0)


def test_penultimate_features_are_the_fc_input(classifier: SliceClassifier) -> None:
    net = classifier.network
    x = torch.from_numpy(_slices(3, 0))
    with torch.inference_mode():
        feats = penultimate_features(net, x)
        logits = net(x)
        from_feats = net.fc(feats)
    assert feats.shape == (3, 512)
    torch.testing.assert_close(from_feats, logits)
    batched = extract_features(classifier, x.numpy(), batch_size=2)  # two batches: float sums may differ
    np.testing.assert_allclose(batched, feats.numpy(), rtol=1e-4, atol=1e-6)


def test_probe_finds_a_trivial_brightness_difference(classifier: SliceClassifier) -> None:
    real = _slices(40, seed=1)
    synthetic = _slices(30, seed=2, brightness=0.35)
    result = shortcut_probe(classifier, real, synthetic, seed=0)
    assert result.balanced_accuracy >= 0.95 and result.accuracy >= 0.95 and result.auc >= 0.98
    assert (result.n_real, result.n_synthetic, result.n_features) == (40, 30, 512)
    assert result.verdict == "the features separate synthetic from real: a shortcut is possible"
    assert "shortcut is possible" in result.line() and "40 real CT, 30 synthetic" in result.line()


def test_probe_is_near_chance_on_one_distribution(classifier: SliceClassifier) -> None:
    real = _slices(60, seed=3)
    synthetic = _slices(60, seed=4)
    result = shortcut_probe(classifier, real, synthetic, seed=0)
    assert 0.3 <= result.balanced_accuracy <= 0.7  # measured 0.45-0.50 over probe seeds 0-3
    assert 0.25 <= result.auc <= 0.75
    assert "near chance" in result.verdict or "partly" in result.verdict


def test_probe_is_deterministic_and_subsamples(classifier: SliceClassifier) -> None:
    real, synthetic = _slices(30, seed=5), _slices(25, seed=6, brightness=0.1)
    a = shortcut_probe(classifier, real, synthetic, seed=3, max_per_group=12, n_splits=3)
    b = shortcut_probe(classifier, real, synthetic, seed=3, max_per_group=12, n_splits=3)
    assert a == b
    assert (a.n_real, a.n_synthetic, a.n_real_available, a.n_synthetic_available) == (12, 12, 30, 25)
    doc = a.to_json()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc


def test_balanced_groups_of_unequal_size_on_features() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    synthetic = rng.normal(size=(20, 8))
    synthetic[:, 0] += 4.0  # separable on one feature; 10x fewer synthetic slices
    result = probe_features(real, synthetic)
    assert result.balanced_accuracy >= 0.9 and result.auc >= 0.95
    same = probe_features(rng.normal(size=(200, 8)), rng.normal(size=(20, 8)))
    assert same.balanced_accuracy < 0.75


def test_constant_features_give_chance_not_nan() -> None:
    result = probe_features(np.ones((10, 4)), np.ones((10, 4)))
    assert result.auc == 0.5 and not math.isnan(result.balanced_accuracy)


@pytest.mark.parametrize(
    ("n_real", "n_synthetic", "match"),
    [
        (10, 0, "the synthetic group is empty"),
        (0, 10, "the real group is empty"),
        (0, 0, "both groups are empty"),
        (3, 10, r"a group is too small \(3 real, 10 synthetic"),
    ],
)
def test_empty_or_small_groups_are_config_errors(n_real: int, n_synthetic: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        probe_features(np.zeros((n_real, 4)), np.zeros((n_synthetic, 4)))


def test_bad_arguments_are_config_errors(classifier: SliceClassifier) -> None:
    with pytest.raises(ConfigError, match="n_splits >= 2"):
        probe_features(np.zeros((5, 2)), np.zeros((5, 2)), n_splits=1)
    with pytest.raises(ConfigError, match="differ in width"):
        probe_features(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ConfigError, match=r"\(n, 1, S, S\)"):
        shortcut_probe(classifier, np.zeros((5, SIZE, SIZE)), np.zeros((5, 1, SIZE, SIZE)))
    with pytest.raises(ConfigError, match="synthetic group is empty"):  # before any network work
        shortcut_probe(classifier, np.zeros((5, 1, SIZE, SIZE)), np.zeros((0, 1, SIZE, SIZE)))
    with pytest.raises(ConfigError, match="classifier takes 32"):
        extract_features(classifier, np.zeros((2, 1, 16, 16), np.float32))


def test_verdicts() -> None:
    assert "undefined" in probe_verdict(math.nan)
    assert "a shortcut is possible" in probe_verdict(0.9)
    assert "partly" in probe_verdict(0.75)
    assert "near chance" in probe_verdict(0.55)
    assert "below chance" in probe_verdict(0.1)
    nan = ProbeResult(math.nan, math.nan, math.nan, 5, 5, 5, 5, 2, 5, 0, probe_verdict(math.nan))
    assert nan.to_json()["auc"] is None and "n/a" in nan.line()


def test_study_folds_stop_the_probe_recognising_patients() -> None:
    """Each study has its own look and the origins none: slice folds score by recognising the studies,
    study folds (every study's slices in one fold) are at chance."""
    rng = np.random.default_rng(0)

    def studies(n: int, prefix: str) -> tuple[np.ndarray, list[str]]:
        centres = rng.normal(scale=3.0, size=(n, 16))
        x = np.concatenate([c + rng.normal(scale=0.3, size=(12, 16)) for c in centres])
        return x, [f"{prefix}{i}" for i in range(n) for _ in range(12)]

    real, real_ids = studies(10, "r")
    synthetic, synthetic_ids = studies(10, "s")
    by_slice = probe_features(real, synthetic)
    by_study = probe_features(real, synthetic, real_studies=real_ids, synthetic_studies=synthetic_ids)
    assert by_slice.folds_by == "slice" and by_slice.balanced_accuracy >= 0.9
    assert by_study.folds_by == "study" and by_study.balanced_accuracy <= 0.75
    assert "5-fold by study" in by_study.line()
    # fewer studies than folds in a group: slice folds, said so
    few = probe_features(real[:48], synthetic, real_studies=real_ids[:48], synthetic_studies=synthetic_ids)
    assert few.folds_by == "slice"
    with pytest.raises(ConfigError, match="study of each"):
        probe_features(real, synthetic, real_studies=real_ids[:5], synthetic_studies=synthetic_ids)
