"""Same seed, same model: two trainings with one seed give identical weights, card hash and metrics.

Tiny phantoms and networks (seconds). The work is fixed in epochs and steps; every random draw (split,
initialisation, sampling, augmentation, BatchNorm recalibration) comes from the seeds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from covidct.errors import ConfigError
from covidct.train import ClassifierConfig, SegmenterConfig, train_classifier, train_segmenter


def _card(out: Path) -> dict[str, Any]:
    return json.loads((out / "model.json").read_text())  # type: ignore[no-any-return]


def _log(out: Path) -> list[dict[str, str]]:
    with (out / "training" / "training_log.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _classifier(out: Path, data: Path, seed: int, **kw: Any) -> Path:
    base: dict[str, Any] = dict(
        data=[data],
        out_dir=out,
        arch="resnet18",
        image_size=32,
        batch_size=8,
        epochs=2,
        steps_per_epoch=3,
        val_fraction=0.25,
        mask_source="gt",
        progress=False,
        seed=seed,
        bn_recalibration_batches=2,
    )
    return train_classifier(ClassifierConfig(**(base | kw)))


@pytest.mark.slow  # two ResNet trainings, ~15 s each on 2 busy cores
def test_classifier_same_seed_same_weights_card_and_metrics(tmp_path: Path, phantom_train: Path) -> None:
    a = _card(_classifier(tmp_path / "a", phantom_train, seed=3))
    b = _card(_classifier(tmp_path / "b", phantom_train, seed=3))
    assert a["weights"]["sha256"] == b["weights"]["sha256"]
    assert a["validation"] == b["validation"] and a["validation"]["status"] == "ok"
    assert _log(tmp_path / "a") == _log(tmp_path / "b")
    assert a["calibration"]["sha256"] == b["calibration"]["sha256"]
    assert a["hash"] == b["hash"]  # same data, same settings: one model identity (the time is not hashed)
    t = a["training"]
    assert t["seed"] == 3 and t["split_seed"] == 3 and t["steps_per_epoch"] == 3 and t["max_minutes"] is None
    assert (
        t["epochs_run"] == 2
        and t["stopped_by"] == "epochs"
        and t["model_selection"] == "best validation score"
    )
    assert t["stopped"].startswith("trained the full budget of 2 epochs; kept epoch ")


def test_segmenter_same_seed_same_weights_other_seed_other_weights(
    tmp_path: Path, phantom_train: Path
) -> None:
    def run(out: Path, seed: int = 5) -> dict[str, Any]:
        cfg = SegmenterConfig(
            data=[phantom_train],
            out_dir=out,
            image_size=32,
            epochs=2,
            steps_per_epoch=2,
            batch_size=4,
            features=(4, 4, 8, 8, 16, 4),
            pseudo_labels=False,
            progress=False,
            seed=seed,
            bn_recalibration_batches=2,
        )
        return _card(train_segmenter(cfg))

    a, b, c = run(tmp_path / "a"), run(tmp_path / "b"), run(tmp_path / "c", seed=6)
    assert a["weights"]["sha256"] == b["weights"]["sha256"] and a["validation"] == b["validation"]
    assert _log(tmp_path / "a") == _log(tmp_path / "b") and a["hash"] == b["hash"]
    assert c["weights"]["sha256"] != a["weights"]["sha256"]
    assert c["training"]["seed"] == 6 and c["training"]["split_seed"] == 6


@pytest.mark.slow
def test_no_validation_is_refused_unless_asked_and_then_recorded(tmp_path: Path, write_phantoms: Any) -> None:
    """One patient per class leaves validation empty: refused with the fixes; with the flag, last epoch."""
    data = write_phantoms(tmp_path / "one", per_class=1, seed=2)
    with pytest.raises(ConfigError, match=r"validation set is empty.*--val-fraction.*--no-validation"):
        _classifier(tmp_path / "refused", data, seed=0)
    assert not (tmp_path / "refused" / "model.json").exists()
    card = _card(_classifier(tmp_path / "m", data, seed=0, allow_no_validation=True, patience=1, epochs=3))
    assert card["validation"]["status"] == "none" and card["validation"]["kept_epoch"] == 3
    t = card["training"]
    assert (
        t["epochs_run"] == 3 and t["best_epoch"] == 3 and t["model_selection"] == "last epoch (no validation)"
    )
    assert t["stopped"] == "no validation: last epoch kept; trained the full budget of 3 epochs"
