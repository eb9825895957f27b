"""Weak supervision units: bags, packing, the multiple-instance loss, targets, settings; and one tiny run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.data.records import StudyRecord
from covidct.errors import ConfigError
from covidct.train.config import ClassifierConfig
from covidct.train.data import CachedStudy, classifier_targets
from covidct.train.weak import (
    BagDataset,
    as_patient_labelled,
    is_weak,
    mil_loss,
    pack_batches,
    resolve_supervision,
)


def _study(case: str, diagnosis: str, y: np.ndarray) -> CachedStudy:
    rec = StudyRecord(case=case, path=Path(case), diagnosis=diagnosis)
    x = np.random.default_rng(0).random((y.size, 8, 8)).astype(np.float16)
    return CachedStudy(rec, x, np.asarray(y, dtype=np.int64), np.arange(y.size))


def test_bags_span_the_kept_slices_and_labelled_slices_stay_single() -> None:
    weak = _study("w", "covid19", np.full(20, -3))
    normal = _study("n", "normal", np.zeros(5, int))
    ds = BagDataset([weak, normal], bag_size=8)
    # kept rows of 20 slices: [2, 18) -> 16 rows, two strided bags of 8
    assert len(ds) == 2 + 5
    assert ds.items[0][1].tolist() == list(range(2, 18, 2)) and ds.items[1][1].tolist() == list(
        range(3, 18, 2)
    )
    assert ds.item_sizes.tolist() == [8, 8, 1, 1, 1, 1, 1]
    assert ds.targets().tolist() == [2, 2, 0, 0, 0, 0, 0] and ds.study_of.tolist() == [0, 0, 1, 1, 1, 1, 1]
    x, y = BagDataset.collate([ds[0], ds[2], ds[3]])
    assert x.shape == (10, 1, 8, 8) and y.shape == (10, 2)
    assert y[:8, 0].tolist() == [-3] * 8 and y[:, 1].tolist() == [0] * 8 + [1, 2]


def test_pack_batches_fills_up_to_the_slice_budget() -> None:
    sizes = np.array([1, 8, 1, 1, 8, 20])
    assert pack_batches(np.arange(6), sizes, 9, None) == [[0, 1], [2, 3], [4], [5]]
    assert pack_batches(np.arange(6), sizes, 9, 2) == [[0, 1], [2, 3]]


def _logits(p: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(p, dtype=torch.float32))


def test_mil_loss_on_labelled_slices_is_cross_entropy() -> None:
    logits = _logits([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    target = torch.tensor([[0, 0], [2, 1]])
    want = torch.nn.functional.cross_entropy(logits, target[:, 0])
    assert torch.isclose(mil_loss(logits, target), want)


@pytest.mark.parametrize("pooling", ["topk", "noisy-or"])
def test_mil_loss_rewards_the_patients_class_on_some_slices_and_punishes_the_other_disease(
    pooling: str,
) -> None:
    bag = torch.tensor([[-3, 0]] * 4)  # a COVID-19 patient's bag, slice labels unknown
    found = _logits([[0.05, 0.05, 0.9], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])
    missed = _logits([[0.9, 0.05, 0.05]] * 4)
    other = _logits([[0.05, 0.9, 0.05], [0.05, 0.05, 0.9], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])
    lf = mil_loss(found, bag, pooling=pooling, top_k=1)
    assert lf < mil_loss(missed, bag, pooling=pooling, top_k=1)
    assert lf < mil_loss(other, bag, pooling=pooling, top_k=1)  # a CAP-looking slice in a COVID-19 bag
    w = missed.clone().requires_grad_(True)
    mil_loss(w, bag, pooling=pooling, top_k=1).backward()
    assert w.grad is not None and float(w.grad[:, 2].min()) < 0  # pushes p(covid19) up


def test_targets_patient_labels_and_auto_mode() -> None:
    rec = StudyRecord(case="c", path=Path("c"), diagnosis="cap")
    assert classifier_targets(rec, np.array([0, 3, 5])).tolist() == [-2, -2, -2]
    rec.slice_labels = np.array([0, 1, 1, 0, 0, 1])
    assert classifier_targets(rec, np.array([0, 1, 5])).tolist() == [0, 1, 1]
    labelled = _study("s", "cap", np.array([0, 1, 1, 0]))
    dropped = as_patient_labelled(labelled)
    assert dropped.y.tolist() == [-2] * 4 and is_weak(dropped) and not is_weak(labelled)
    assert as_patient_labelled(_study("n", "normal", np.zeros(3, int))).y.tolist() == [0, 0, 0]
    assert resolve_supervision("auto", [labelled]) == "slice"
    assert resolve_supervision("auto", [labelled, dropped]) == "mixed"


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"supervision": "bags"}, "--supervision"),
        ({"pooling": "max"}, "--pooling"),
        ({"top_k": 9, "bag_size": 8}, "--top-k"),
        ({"target_accuracy": 1.5}, "--target-accuracy"),
        ({"source_weights": [1.0, 2.0]}, "--source-weights"),
    ],
)
def test_bad_weak_settings_name_the_option(kw: dict[str, object], match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        ClassifierConfig(data=[tmp_path], out_dir=tmp_path / "m", **kw)  # type: ignore[arg-type]


@pytest.mark.slow
def test_patient_labels_alone_teach_the_slices(
    tmp_path: Path, phantom_train: Path, phantom_heldout: Path, predict_heldout: object
) -> None:
    from covidct.train import train_classifier

    rows = list(csv.DictReader(phantom_train.open()))
    for r in rows:
        if r["class"] != "normal":
            r["slice_labels"] = ""  # patient labels only
    weak = phantom_train.parent / "weak.csv"
    with weak.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "m" / "classifier"
    cfg = ClassifierConfig(
        data=[weak],
        out_dir=out,
        arch="resnet18",
        image_size=32,
        epochs=3,
        steps_per_epoch=5,
        batch_size=16,
        val_fraction=0.25,
        mask_source="gt",
        progress=False,
        seed=0,
        bag_size=4,
        top_k=1,
        source_weights=[2.0],
    )
    train_classifier(cfg)
    card = json.loads((out / "model.json").read_text())
    sup = card["training"]["supervision"]
    assert sup["mode"] == "mixed" and sup["patient_labelled_studies"] == {"normal": 0, "cap": 3, "covid19": 3}
    assert card["validation"]["measure"].startswith("val_patient_balanced_accuracy")
    src = card["training"]["per_source"][str(weak)]
    assert src["weight"] == 2.0 and src["patient_labelled"] == 6 and src["slice_labelled"] == 3
    val = card["validation_per_source"][str(weak)]
    assert val["patients"] == 3 and 0 <= val["patient_accuracy"] <= 1
    conf = card["confidence"]
    assert conf["patient_temperature"] > 0 and conf["fitted"]["patients"] == 3
    y, p = predict_heldout(out, phantom_heldout)  # type: ignore[operator]
    recall = [float(np.mean(p[y == c] == c)) for c in range(3)]
    assert float(np.mean(y == p)) > 0.6 and min(recall) > 0.4, recall  # chance: 1/3
