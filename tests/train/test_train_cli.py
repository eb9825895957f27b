"""End to end on a synthetic cohort (DICOM, COVID-CT-MD layout): both `covidct train` commands into one
pipeline folder, which then loads with the trained U-Net."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covidct.cli.main import main
from covidct.pipeline import load_pipeline

pytestmark = pytest.mark.slow


def test_train_both_into_a_pipeline_folder(tmp_path: Path) -> None:
    synth = pytest.importorskip("covidct.data.synth.cohort")
    cohort = synth.generate_cohort(tmp_path / "cohort", patients=3, seed=5)
    model = tmp_path / "model"
    common = [
        "--data",
        str(cohort),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "4",
        "--max-slices",
        "6",
        "--image-size",
        "32",
        "--no-progress",
        "--device",
        "cpu",
        "--no-validation",  # one patient per class: all three train, none validate
    ]
    assert main(["train", "segmenter", *common, "--pipeline", str(model)]) == 0
    assert (model / "segmenter" / "model.json").is_file() and not (model / "model.json").exists()
    assert main(["train", "classifier", *common, "--arch", "resnet18", "-o", str(model / "classifier")]) == 0
    top = json.loads((model / "model.json").read_text())
    assert top["kind"] == "pipeline" and top["segmenter"] == "segmenter"
    seg_card = json.loads((model / "segmenter" / "model.json").read_text())
    assert seg_card["training"]["masks_used"] == {"gt": 3}  # the cohort's ground-truth masks (all 3 in train)
    assert seg_card["training"]["studies"]["train"] == {"normal": 1, "cap": 1, "covid19": 1}
    assert seg_card["validation"]["status"] == "none"
    assert (
        seg_card["training"]["stopped"]
        == "no validation: last epoch kept; trained the full budget of 1 epoch"
    )
    assert top["validation"]["status"] == "none"  # the pipeline card carries the classifier's
    pipe = load_pipeline(model)
    assert pipe.segmenter.name == "unet" and pipe.classifier.image_size == 32


def test_classifier_trains_from_a_folder_of_slice_images(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("normal", "cap", "covid19"):
        for patient in range(2):
            for k in range(3):
                p = tmp_path / "slices" / cls / f"{cls}{patient}_{k:03d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(p)
    out = tmp_path / "clf"
    args = [
        "train",
        "classifier",
        "--data",
        str(tmp_path / "slices"),
        "-o",
        str(out),
        "--arch",
        "resnet18",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--batch-size",
        "4",
        "--no-progress",
        "--val-fraction",
        "0.5",
    ]
    assert main(args) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["studies"]["train"] == {"normal": 1, "cap": 1, "covid19": 1}  # split by patient
    assert card["training"]["train_slices"] == {"normal": 3, "cap": 3, "covid19": 3}
    splits = (out / "training" / "splits.csv").read_text()
    assert "normal/normal0" in splits and "normal/normal1" in splits
