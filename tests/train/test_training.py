"""Training on tiny phantoms: the loss falls, held-out phantoms are classified above chance, resume, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from covidct.classify import SliceClassifier
from covidct.data.manifest import read_manifest
from covidct.io import load_study
from covidct.pipeline import load_pipeline
from covidct.segment.quality import dice
from covidct.train import ClassifierConfig, SegmenterConfig, train_classifier, train_segmenter

pytestmark = pytest.mark.slow


def _log(path: Path) -> list[dict[str, str]]:
    with (path / "training" / "training_log.csv").open() as f:
        return list(csv.DictReader(f))


def test_classifier_learns_and_beats_chance_on_heldout(
    tmp_path: Path, phantom_train: Path, phantom_heldout: Path, predict_heldout: object
) -> None:
    out = tmp_path / "model" / "classifier"
    cfg = ClassifierConfig(
        data=[phantom_train],
        out_dir=out,
        arch="resnet18",
        image_size=32,
        epochs=3,
        steps_per_epoch=5,
        batch_size=16,
        lr=1e-3,
        val_fraction=0.25,
        patience=5,
        mask_source="gt",
        progress=False,
        seed=0,
    )
    assert train_classifier(cfg) == out
    rows = _log(out)
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) >= 2 and min(losses[1:]) < losses[0]
    assert (out / "training" / "learning_curve.png").stat().st_size > 1000
    card = json.loads((out / "model.json").read_text())
    assert card["architecture"]["name"] == "resnet18" and card["preprocessing"]["image_size"] == 32
    assert card["training"]["studies"]["train"] == {"normal": 3, "cap": 3, "covid19": 3}
    assert card["training"]["split_seed"] == 0 and card["rule"]["threshold"] == 0.2
    # int8 calibration slices saved with the bundle, listed in the (hashed) card
    calib = np.load(out / "calibration.npy")
    assert card["calibration"]["file"] == "calibration.npy" and card["calibration"]["n"] == calib.shape[0]
    assert calib.dtype == np.float16 and calib.shape[1:] == (1, 32, 32) and 0 < calib.shape[0] <= 64
    assert float(calib.min()) >= 0.0 and float(calib.max()) <= 1.0
    assert sum(card["calibration"]["classes"].values()) == calib.shape[0]
    # held-out phantoms (another seed), preprocessed exactly as at inference
    clf = SliceClassifier.from_bundle(out)
    assert clf.calibration is not None and clf.calibration.shape == calib.shape  # read back for int8
    y, p = predict_heldout(out, phantom_heldout)  # type: ignore[operator]
    acc = float(np.mean(y == p))
    recall = [float(np.mean(p[y == c] == c)) for c in range(3)]
    assert acc > 0.5, (acc, recall)  # chance: 1/3 (balanced), majority-class guess: 0.47
    assert np.mean(recall) > 0.45, recall
    # the pipeline card above .../classifier was written and loads
    pipe = load_pipeline(out.parent)
    assert pipe.classifier.image_size == 32 and pipe.card["segmenter"] == "classical"


def _tiny(cfg_dir: Path, data: Path, cache: Path, **kw: object) -> ClassifierConfig:
    base: dict[str, object] = dict(
        data=[data],
        out_dir=cfg_dir,
        arch="resnet18",
        image_size=32,
        batch_size=8,
        steps_per_epoch=3,
        mask_source="gt",
        progress=False,
        cache_dir=cache,
        seed=1,
    )
    base.update(kw)
    return ClassifierConfig(**base)  # type: ignore[arg-type]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path, phantom_train: Path) -> None:
    cache = tmp_path / "cache"
    full = train_classifier(_tiny(tmp_path / "a", phantom_train, cache, epochs=2))
    # "interrupted" after epoch 1, then resumed to epoch 2
    train_classifier(_tiny(tmp_path / "b", phantom_train, cache, epochs=1))
    part = train_classifier(_tiny(tmp_path / "b", phantom_train, cache, epochs=2, resume=True))
    assert [r["epoch"] for r in _log(part)] == ["1", "2"]
    la = torch.load(full / "training/checkpoints/last.pt", weights_only=True)["model"]
    lb = torch.load(part / "training/checkpoints/last.pt", weights_only=True)["model"]
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-5, msg=k)
    wa, wb = load_file(str(full / "weights.safetensors")), load_file(str(part / "weights.safetensors"))
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)
    assert _log(full)[1]["train_loss"][:6] == _log(part)[1]["train_loss"][:6]


def test_ddp_two_cpu_processes_on_gloo(tmp_path: Path, phantom_train: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "covidct",
        "train",
        "classifier",
        "--data",
        str(phantom_train),
        "-o",
        str(out),
        "--arch",
        "resnet18",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--mask-source",
        "gt",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["world_size"] == 2 and card["training"]["epochs_run"] == 2
    SliceClassifier.from_bundle(out)  # loads: weights written once, by rank 0, unwrapped from DDP


def test_segmenter_learns_lungs(tmp_path: Path, phantom_train: Path, phantom_heldout: Path) -> None:
    from covidct.segment.unet import UNetSegmenter

    out = tmp_path / "model" / "segmenter"
    cfg = SegmenterConfig(
        data=[phantom_train],
        out_dir=out,
        image_size=48,
        epochs=4,
        batch_size=8,
        lr=3e-3,
        features=(8, 8, 16, 32, 64, 8),
        pseudo_labels=False,
        progress=False,
        seed=0,
    )
    train_segmenter(cfg)
    rows = _log(out)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    seg = UNetSegmenter.from_bundle(out)
    rec = read_manifest(phantom_heldout)[0]
    vol = load_study(rec.path)
    truth = np.asarray(load_study(rec.mask_path).hu).astype(np.uint8)  # type: ignore[arg-type]
    mask = seg.apply(vol)
    assert mask.dtype == np.uint8 and mask.shape == vol.shape
    assert dice(mask, truth, 1) > 0.7 and dice(mask, truth, 2) > 0.7, (
        dice(mask, truth, 1),
        dice(mask, truth, 2),
    )
    assert not (out.parent / "model.json").exists()  # no classifier yet: no pipeline card
