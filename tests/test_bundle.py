"""Model bundles: round trip, tampering, incompatibility, pipelines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from covidct.bundle import (
    card_hash,
    check_rule,
    json_safe,
    load_component,
    read_card,
    save_component,
    write_card,
    write_pipeline,
)
from covidct.classify import SliceClassifier
from covidct.classify.networks import build_classifier
from covidct.errors import ConfigError, ModelError
from covidct.io.volume import CTVolume
from covidct.pipeline import load_pipeline
from covidct.segment.unet import UNetSegmenter, build_segmenter

SIZE = 32


def _classifier_card(arch: str = "resnet18") -> dict[str, Any]:
    return {
        "kind": "classifier",
        "classes": ["normal", "cap", "covid19"],
        "architecture": {
            "name": arch,
            "conv1_t_size": 7,
            "conv1_t_stride": 2,
            "in_channels": 1,
            "num_classes": 3,
        },
        "preprocessing": {"window": {"level": -600.0, "width": 1200.0}, "image_size": SIZE},
        "validation": {"val_auc_cap": float("nan"), "val_accuracy": 0.5},
    }


@pytest.fixture()
def clf_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = build_classifier("resnet18")
    save_component(tmp_path / "model" / "classifier", net.state_dict(), _classifier_card())
    return tmp_path / "model" / "classifier"


def _seg_card() -> dict[str, Any]:
    return {
        "kind": "segmenter",
        "labels": {"0": "background", "1": "right_lung", "2": "left_lung"},
        "architecture": {"name": "basic_unet", "features": [4, 4, 8, 8, 16, 4]},
        "preprocessing": {"window": {"level": -200.0, "width": 1600.0}, "image_size": SIZE},
    }


def test_classifier_round_trip_gives_identical_outputs(clf_dir: Path) -> None:
    torch.manual_seed(0)
    ref = build_classifier("resnet18").eval()
    clf = SliceClassifier.from_bundle(clf_dir)
    x = np.random.default_rng(0).random((3, 1, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        want = torch.softmax(ref(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(clf.predict_inputs(x), want, rtol=1e-5, atol=1e-6)
    card = json.loads((clf_dir / "model.json").read_text())
    assert card["format"] == "covidct-model" and card["hash"] == card_hash(card)
    assert card["validation"]["val_auc_cap"] is None  # NaN written as null: plain JSON
    assert {"covidct", "torch", "monai", "python"} <= set(card["software"])
    assert len(card["weights"]["sha256"]) == 64


def test_predict_volume_nan_rows_and_replaceable_runner(clf_dir: Path) -> None:
    clf = SliceClassifier.from_bundle(clf_dir)
    vol = CTVolume(np.full((4, 40, 40), -800, np.int16), (2.0, 1.0, 1.0))
    mask = np.ones((4, 40, 40), np.uint8)
    probs = clf.predict_volume(vol, mask, indices=[1, 2])
    assert probs.shape == (4, 3) and np.isnan(probs[[0, 3]]).all()
    np.testing.assert_allclose(probs[[1, 2]].sum(1), 1.0, rtol=1e-5)
    calls: list[tuple[int, ...]] = []

    def runner(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return np.tile(np.array([[0.0, 0.0, 5.0]], np.float32), (x.shape[0], 1))

    clf.runner = runner
    p2 = clf.predict_volume(vol, mask, batch_size=3)
    assert calls == [(3, 1, SIZE, SIZE), (1, 1, SIZE, SIZE)] and (p2.argmax(1) == 2).all()


def test_edited_card_is_rejected_with_the_file_named(clf_dir: Path) -> None:
    path = clf_dir / "model.json"
    card = json.loads(path.read_text())
    card["preprocessing"]["image_size"] = 64
    path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"model\.json: content hash mismatch"):
        SliceClassifier.from_bundle(clf_dir)


def test_replaced_weights_are_rejected(clf_dir: Path) -> None:
    torch.manual_seed(1)
    from safetensors.torch import save_file

    other = {k: v.contiguous() for k, v in build_classifier("resnet18").state_dict().items()}
    save_file(other, str(clf_dir / "weights.safetensors"))
    with pytest.raises(ModelError, match="weights do not match the card"):
        load_component(clf_dir, kind="classifier")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"classes": ["normal", "covid19", "cap"]}, "order matters"),
        ({"format_version": "2.0"}, "bundle format 2.0"),
        ({"kind": "segmenter"}, "expected 'classifier'"),
        ({"architecture": {"name": "vit", "num_classes": 3}}, "architecture 'vit'"),
        ({"architecture": {"name": "resnet34", "num_classes": 3}}, "do not fit the architecture"),
    ],
)
def test_incompatible_cards_raise_model_error(clf_dir: Path, edit: dict[str, Any], message: str) -> None:
    card = read_card(clf_dir)
    card.update(edit)
    write_card(clf_dir, card)  # re-hashed: a consistent but incompatible card
    with pytest.raises(ModelError, match=message):
        SliceClassifier.from_bundle(clf_dir)


def test_missing_and_corrupt_bundles(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        read_card(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"model\.json is missing"):
        read_card(tmp_path / "empty")
    (tmp_path / "empty" / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_card(tmp_path / "empty")


def test_pipeline_with_unet_round_trip_and_stale_component(clf_dir: Path) -> None:
    model = clf_dir.parent
    torch.manual_seed(0)
    seg_net = build_segmenter(features=(4, 4, 8, 8, 16, 4))
    save_component(model / "segmenter", seg_net.state_dict(), _seg_card())
    top = write_pipeline(model, segmenter="segmenter", name="demo")
    assert top["kind"] == "pipeline" and top["rule"] == {"head": 0.1, "tail": 0.14, "threshold": 0.2}
    pipe = load_pipeline(model)
    assert isinstance(pipe.segmenter, UNetSegmenter) and pipe.classifier.image_size == SIZE
    assert pipe.identity.name == "demo" and pipe.identity.hash == top["hash"]
    vol = CTVolume(np.full((3, 50, 40), -800, np.int16), (2.0, 1.0, 1.0))
    mask = pipe.segmenter.apply(vol)
    assert mask.shape == (3, 50, 40) and mask.dtype == np.uint8 and mask.max() <= 2
    with pytest.raises(ModelError, match=r"expected .pipeline.*pipeline folder above it"):
        load_pipeline(clf_dir)
    # the classifier is retrained without refreshing the pipeline card
    save_component(clf_dir, build_classifier("resnet18").state_dict(), _classifier_card())
    with pytest.raises(ModelError, match="does not match the pipeline card"):
        load_pipeline(model)


def _restamp(directory: Path, **edit: Any) -> None:
    """Edit a card and re-stamp its hash: a consistent card with hand-edited content."""
    card = read_card(directory, verify=False)
    card.update(edit)
    write_card(directory, card)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"head": 0.6, "tail": 0.5, "threshold": 0.2}, "head \\+ tail must be < 1"),
        ({"head": 0.1, "tail": 0.14, "threshold": 1.5}, "threshold must be in"),
        ({"head": "ten percent"}, "head must be a number"),
        ({"head": 0.1, "cutoff": 0.3}, "unknown rule parameters"),
        ([0.1, 0.1, 0.2], "rule must be an object"),
    ],
)
def test_bad_rule_in_pipeline_card_is_a_model_error(clf_dir: Path, rule: Any, message: str) -> None:
    model = clf_dir.parent
    write_pipeline(model, segmenter="classical")
    _restamp(model, rule=rule)
    with pytest.raises(ModelError, match=rf"model\.json.*{message}"):
        load_pipeline(model)


def test_rule_defaults_and_explicit_rules(clf_dir: Path) -> None:
    model = clf_dir.parent
    top = write_pipeline(model, segmenter="classical", rule={"threshold": 0.3})
    assert top["rule"] == {"head": 0.1, "tail": 0.14, "threshold": 0.3}
    assert load_pipeline(model).rule == top["rule"]
    with pytest.raises(ConfigError, match="head \\+ tail"):
        write_pipeline(model, segmenter="classical", rule={"head": 0.5, "tail": 0.5})
    # a bad rule in the classifier card is the card's fault
    _restamp(clf_dir, rule={"threshold": -1})
    with pytest.raises(ModelError, match=r"classifier/model\.json.*threshold"):
        write_pipeline(model, segmenter="classical")
    assert check_rule({}, where="x") == {"head": 0.1, "tail": 0.14, "threshold": 0.2}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"preprocessing": {"window": {"level": "lung"}, "image_size": SIZE}}, "preprocessing.window"),
        ({"preprocessing": {"window": {"width": 1200}, "image_size": SIZE}}, "preprocessing.window"),
        ({"preprocessing": {"window": {"level": 0, "width": 0}, "image_size": SIZE}}, "width must be > 0"),
        ({"preprocessing": {"image_size": "big"}}, "image_size must be an integer"),
        ({"preprocessing": "lung"}, "preprocessing must be an object"),
        ({"architecture": "resnet18"}, "architecture must be an object"),
        (
            {"architecture": {"name": "resnet18", "num_classes": 3, "conv1_t_size": "seven"}},
            "conv1_t_size must be an integer",
        ),
        ({"architecture": {"name": "resnet18", "num_classes": 3, "in_channels": 3}}, "in_channels is 3"),
    ],
)
def test_hand_edited_classifier_card_is_a_model_error(
    clf_dir: Path, edit: dict[str, Any], message: str
) -> None:
    _restamp(clf_dir, **edit)
    with pytest.raises(ModelError, match=rf"model\.json.*{message}"):
        SliceClassifier.from_bundle(clf_dir)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"preprocessing": {"window": {"level": None, "width": 1}, "image_size": SIZE}},
            "preprocessing.window",
        ),
        ({"preprocessing": {"image_size": 4.5}}, "image_size must be an integer"),
        ({"preprocessing": {"image_size": 0}}, "not a positive multiple of 16"),
        ({"architecture": {"name": "basic_unet", "features": [4, "x", 8, 8, 16, 4]}}, "features must be 6"),
        ({"architecture": {"name": "basic_unet", "features": 4}}, "features must be 6"),
        ({"labels": {"zero": "background"}}, "labels must map"),
    ],
)
def test_hand_edited_segmenter_card_is_a_model_error(
    tmp_path: Path, edit: dict[str, Any], message: str
) -> None:
    torch.manual_seed(0)
    save_component(tmp_path / "seg", build_segmenter(features=(4, 4, 8, 8, 16, 4)).state_dict(), _seg_card())
    _restamp(tmp_path / "seg", **edit)
    with pytest.raises(ModelError, match=rf"model\.json.*{message}"):
        UNetSegmenter.from_bundle(tmp_path / "seg")


def _add_calibration(clf_dir: Path, arr: np.ndarray, **entry: Any) -> None:
    np.save(clf_dir / "calibration.npy", arr)
    _restamp(clf_dir, calibration={"file": "calibration.npy", "n": len(arr), **entry})


def test_calibration_slices_load_from_the_bundle(clf_dir: Path) -> None:
    assert SliceClassifier.from_bundle(clf_dir).calibration is None
    rng = np.random.default_rng(0)
    arr = rng.random((5, 1, SIZE, SIZE)).astype(np.float16)
    _add_calibration(clf_dir, arr)
    calib = SliceClassifier.from_bundle(clf_dir).calibration
    assert calib is not None and calib.dtype == np.float32 and calib.shape == (5, 1, SIZE, SIZE)
    np.testing.assert_array_equal(calib, arr.astype(np.float32))


@pytest.mark.parametrize(
    ("arr", "entry", "message"),
    [
        (np.zeros((4, 1, 16, 16), np.float16), {}, "calibration slices must be"),
        (np.zeros((4, 1, SIZE, SIZE), np.float16), {"n": 9}, "n = 9"),
        (np.zeros((4, 1, SIZE, SIZE), np.int16), {}, "calibration slices must be"),
        (np.full((4, 1, SIZE, SIZE), np.nan, np.float16), {}, "NaN"),
        (np.zeros((4, 1, SIZE, SIZE), np.float16), {"sha256": "0" * 64}, "does not match the sha256"),
    ],
)
def test_bad_calibration_is_a_model_error(
    clf_dir: Path, arr: np.ndarray, entry: dict[str, Any], message: str
) -> None:
    _add_calibration(clf_dir, arr, **entry)
    with pytest.raises(ModelError, match=message):
        SliceClassifier.from_bundle(clf_dir)


def test_missing_calibration_file_is_a_model_error(clf_dir: Path) -> None:
    _add_calibration(clf_dir, np.zeros((2, 1, SIZE, SIZE), np.float16))
    (clf_dir / "calibration.npy").unlink()
    with pytest.raises(ModelError, match=r"calibration\.npy is listed in .*model\.json but missing"):
        SliceClassifier.from_bundle(clf_dir)


def test_json_safe_is_public() -> None:
    assert json_safe({"a": float("nan"), 1: (1.0, float("inf"))}) == {"a": None, "1": [1.0, None]}


def test_random_pipeline_with_and_without_a_unet(tmp_path: Path) -> None:
    from covidct.segment.classical import ClassicalSegmenter
    from covidct.testing import random_pipeline

    plain = load_pipeline(random_pipeline(tmp_path / "plain", image_size=SIZE))
    assert isinstance(plain.segmenter, ClassicalSegmenter) and plain.classifier.image_size == SIZE
    assert "random" in plain.classifier.card["name"]
    save_component(tmp_path / "seg", build_segmenter(features=(4, 4, 8, 8, 16, 4)).state_dict(), _seg_card())
    with_unet = load_pipeline(
        random_pipeline(tmp_path / "unet", image_size=SIZE, segmenter_dir=tmp_path / "seg")
    )
    assert isinstance(with_unet.segmenter, UNetSegmenter)
    # seeded: the same weights twice
    again = load_pipeline(random_pipeline(tmp_path / "again", image_size=SIZE))
    assert plain.classifier.card["weights"]["sha256"] == again.classifier.card["weights"]["sha256"]


def test_same_weights_give_the_same_file_bytes(tmp_path: Path) -> None:
    """Deterministic given a seed: identical weights must hash alike (safetensors orders metadata at random)."""
    torch.manual_seed(0)
    state = build_classifier("resnet18").state_dict()
    hashes = set()
    for i in range(12):
        card = save_component(tmp_path / f"c{i}", state, _classifier_card())
        hashes.add(card["weights"]["sha256"])
    assert len(hashes) == 1


class _Clock:
    """Stands in for ``datetime`` in ``covidct.bundle``: ``now`` gives the next of the given times."""

    def __init__(self, *times: str) -> None:
        from datetime import datetime

        self._times = [datetime.fromisoformat(t) for t in times]

    def now(self, tz: object = None) -> Any:
        return self._times.pop(0)


def test_same_weights_saved_at_different_times_keep_one_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash names the model (weights, preprocessing, architecture, rule, classes), not when it was saved."""
    import covidct.bundle as bundle

    torch.manual_seed(0)
    state = build_classifier("resnet18").state_dict()
    monkeypatch.setattr(
        bundle,
        "datetime",
        _Clock("2026-01-01T00:00:00+00:00", "2026-01-01T00:00:01+00:00", "2026-06-30T12:00:00+00:00"),
    )
    a = save_component(tmp_path / "a" / "classifier", state, _classifier_card())
    top_a = write_pipeline(tmp_path / "a", segmenter="classical", name="m")
    b = save_component(tmp_path / "b" / "classifier", state, _classifier_card())
    assert a["created"] != b["created"]  # the time stays in the card, as a plain field
    assert a["hash"] == b["hash"] and a["hash"] == card_hash(a)
    monkeypatch.setattr(bundle, "datetime", _Clock("2027-03-03T03:03:03+00:00"))
    top_b = write_pipeline(tmp_path / "b", segmenter="classical", name="m")
    assert top_a["created"] != top_b["created"] and top_a["hash"] == top_b["hash"]
    # editing the time does not change what the model is; editing what decides answers does
    _restamp(tmp_path / "b" / "classifier", name="x")  # a re-stamped edit gives another hash
    assert read_card(tmp_path / "b" / "classifier")["hash"] != a["hash"]
    path = tmp_path / "a" / "classifier" / "model.json"
    card = json.loads(path.read_text())
    card["created"] = "1999-01-01T00:00:00Z"
    path.write_text(json.dumps(card))
    assert read_card(path.parent)["hash"] == a["hash"]
    card["rule"] = {"head": 0.2, "tail": 0.14, "threshold": 0.2}
    path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="content hash mismatch"):
        read_card(path.parent)


def test_cards_of_format_1_0_hashed_with_their_time_still_verify(clf_dir: Path) -> None:
    """Bundles written before the hash left out ``created`` load unchanged; editing them is still detected."""
    import hashlib

    path = clf_dir / "model.json"
    card = json.loads(path.read_text())
    card["format_version"] = "1.0"
    body = {k: v for k, v in card.items() if k != "hash"}
    legacy = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    card["hash"] = "sha256:" + hashlib.sha256(legacy).hexdigest()  # what covidct wrote for format 1.0
    path.write_text(json.dumps(card))
    assert read_card(clf_dir)["hash"] == card["hash"]
    SliceClassifier.from_bundle(clf_dir)
    card["created"] = "1999-01-01T00:00:00Z"  # in 1.0, the time was covered
    path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="content hash mismatch"):
        read_card(clf_dir)


def test_same_weights_trained_from_another_folder_keep_one_hash() -> None:
    """The data's folder is recorded but is not part of the identity (format 1.2); a card of format 1.1 is
    hashed as it was written, its sources covered."""
    card = {
        "format": "covidct-model",
        "format_version": "1.2",
        "kind": "classifier",
        "training": {"sources": ["/tmp/demoA/data/train"], "seed": 0},
        "weights": {"sha256": "ab"},
    }
    card["hash"] = card_hash(card)
    moved = dict(card, training={"sources": ["/tmp/demoB/data/train"], "seed": 0})
    assert card_hash(moved) == card["hash"]
    reseeded = dict(card, training={"sources": ["/tmp/demoA/data/train"], "seed": 1})
    assert card_hash(reseeded) != card["hash"]  # a training setting is part of the identity
    old, old_moved = dict(card, format_version="1.1"), dict(moved, format_version="1.1")
    assert card_hash(old) != card_hash(old_moved)
