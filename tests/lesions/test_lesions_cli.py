"""``covidct lesions``, the lesion bundle, ``covidct train lesions`` and ``involvement`` in diagnose."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from covidct.cli.main import main
from covidct.lesions.api import load_lesion_segmenter, resolve_lesion_dir
from covidct.lesions.model import LesionSegmenter

from .conftest import Chest, make_chest, write_lesion_folder


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_image_folder_gives_same_size_label_pngs_and_scores(
    lesion_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = main(["lesions", str(lesion_folder), "--model", "classical", "-o", str(out), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    result = doc["results"][0]
    assert result["kind"] == "images" and len(result["images"]) == 12
    for i in range(12):
        labels = np.asarray(Image.open(out / f"{i}.png"))
        assert labels.shape == np.asarray(Image.open(lesion_folder / "Imgs" / f"{i}.png")).shape
        assert set(np.unique(labels)) <= {0, 1, 2}
    # the synthetic ground glass (grey 120 on lungs of 50) is what a threshold finds
    assert result["scores"]["images"] == 12
    assert result["scores"]["dice"] > 0.5
    assert result["scores"]["sensitivity"] > 0.5


def test_split_val_keeps_only_the_held_out_fifth(lesion_folder: Path, tmp_path: Path) -> None:
    from covidct.data.realistic.donors import is_validation_image

    out = tmp_path / "val"
    assert (
        main(
            ["lesions", str(lesion_folder / "Imgs"), "--model", "classical", "--split", "val", "-o", str(out)]
        )
        == 0
    )
    expected = {f"{i}.png" for i in range(12) if is_validation_image(str(i))}
    assert {p.name for p in out.iterdir()} == expected


def test_bad_image_folder_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_lesion_folder(tmp_path / "bad", 3)
    (root / "Imgs" / "2.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    assert main(["lesions", str(root), "--model", "classical", "-o", str(out)]) != 0
    _one_line_error(capsys, "2.png", "not a readable image")
    assert not out.exists() or not any(out.iterdir())
    root2 = write_lesion_folder(tmp_path / "size", 2)
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(root2 / "GT" / "1.png")
    assert main(["lesions", str(root2), "--model", "classical", "-o", str(out)]) != 0
    _one_line_error(capsys, "1.png", "mask size")
    assert not out.exists() or not any(out.iterdir())


def test_study_gives_nifti_and_involvement(
    chest: Chest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "chest.nii.gz"
    chest.volume.save(src)
    out = tmp_path / "out"
    assert main(["lesions", str(src), "--model", "classical", "-o", str(out), "--no-progress"]) == 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "chest_lesions.nii.gz")))
    assert mask.shape == chest.volume.shape and set(np.unique(mask)) <= {0, 1, 2}
    doc = json.loads((out / "chest_lesions.json").read_text())
    inv = doc["involvement"]
    truth_ml = float((chest.lesions > 0).sum()) * float(np.prod(chest.volume.spacing)) / 1000
    # the lesions lie in the right lung's lower part; the threshold finds them within a third of their volume
    assert inv["lungs"]["right"]["lesion_ml"] == pytest.approx(truth_ml, rel=0.35)
    assert inv["lungs"]["left"]["lesion_ml"] < 0.1 * truth_ml
    assert inv["lungs"]["right"]["zones"]["lower"]["score"] >= 1
    assert inv["lungs"]["right"]["zones"]["upper"]["score"] == 0
    assert inv["total"]["score_max"] == 30


def test_study_without_lungs_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "nolung.nii.gz"
    make_chest(lungs=False).volume.save(src)
    out = tmp_path / "out"
    assert main(["lesions", str(src), "--model", "classical", "-o", str(out), "--no-progress"]) != 0
    _one_line_error(capsys, "nolung.nii.gz")
    assert not out.exists() or not any(out.iterdir())


def test_missing_model_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lesion_folder: Path
) -> None:
    assert (
        main(["lesions", str(lesion_folder), "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
        != 0
    )
    _one_line_error(capsys, "nope")


def test_bundle_loads_once_and_applies_to_images_and_volumes(lesion_bundle: Path, chest: Chest) -> None:
    seg = load_lesion_segmenter(lesion_bundle)
    assert isinstance(seg, LesionSegmenter) and seg.image_size == 32
    img = np.full((70, 90), 60, np.uint8)
    labels = seg.segment_image(img)
    assert labels.shape == (70, 90) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    mask = seg.apply(chest.volume, chest.lung)
    assert mask.shape == chest.volume.shape
    assert not mask[chest.lung == 0].any()  # nothing outside the lungs


def test_pipeline_with_lesions_is_resolved_and_adds_involvement(
    tiny_model_dir: Path, lesion_bundle: Path, chest: Chest, tmp_path: Path
) -> None:
    from covidct.diagnose import Diagnoser

    pipeline = tmp_path / "pipeline"
    shutil.copytree(tiny_model_dir, pipeline)
    assert Diagnoser(pipeline, backend="torch").lesion_segmenter is None
    shutil.copytree(lesion_bundle, pipeline / "lesions")
    assert resolve_lesion_dir(pipeline) == pipeline / "lesions"
    result = Diagnoser(pipeline, backend="torch").diagnose(chest.volume)
    doc = result.to_json()
    assert result.lesions is not None and result.lesions.shape == chest.volume.shape
    assert set(doc["involvement"]["lungs"]) == {"right", "left"}
    assert doc["timing_s"]["lesions"] >= 0
    classical = Diagnoser(tiny_model_dir, backend="torch", lesion_model="classical").diagnose(chest.volume)
    assert classical.involvement is not None and classical.involvement["lungs"]["right"]["lesion_ml"] > 0


def test_train_lesions_writes_a_bundle_that_loads(lesion_folder: Path, tmp_path: Path) -> None:
    pseudo = write_lesion_folder(tmp_path / "pseudo", 4, binary=True)
    out = tmp_path / "lesions"
    rc = main(
        [
            "train", "lesions", "--data", str(lesion_folder), "--pseudo", str(pseudo), "-o", str(out),
            "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "4", "--image-size", "32",
            "--no-progress", "--seed", "1",
        ]
    )  # fmt: skip
    assert rc == 0
    card = json.loads((out / "model.json").read_text())
    from covidct.data.realistic.donors import is_validation_image

    n_val = sum(is_validation_image(str(i)) for i in range(12))
    assert card["kind"] == "lesions" and card["training"]["val_images"] == n_val
    assert card["training"]["train_images"] == 12 - n_val + 4  # every pseudo-labelled image trains
    assert card["training"]["sources"][1]["masks"].startswith("model-made")
    assert "val_dice" in card["validation"]
    seg = LesionSegmenter.from_bundle(out)
    assert seg.image_size == 32


def test_html_report_shows_zone_table_and_worst_slice(
    tiny_model_dir: Path, chest: Chest, tmp_path: Path
) -> None:
    from covidct.diagnose import Diagnoser
    from covidct.report.html import render_report

    plain = Diagnoser(tiny_model_dir, backend="torch").diagnose(chest.volume)
    assert "Lung involvement" not in render_report(plain)
    result = Diagnoser(tiny_model_dir, backend="torch", lesion_model="classical").diagnose(chest.volume)
    page = render_report(result)
    assert "<table id='involvement'>" in page and "id='worst-slice'" in page
    assert f"{result.involvement['total']['score']} / 30" in page  # type: ignore[index]
    worst = result.involvement["worst_slice"]["index"]  # type: ignore[index]
    assert f"slice {worst} (most involved" in page


def test_diagnose_lesions_flag_adds_involvement_and_mask(
    tiny_model_dir: Path, chest: Chest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "chest.nii.gz"
    chest.volume.save(src)
    out = tmp_path / "out"
    args = ["diagnose", str(src), "--model", str(tiny_model_dir), "--backend", "torch", "-o", str(out)]
    rc = main([*args, "--lesions", "classical", "--save-mask", "--no-strip", "--json", "--no-progress"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["involvement"]["total"]["score_max"] == 30
    assert json.loads((out / "chest.json").read_text())["involvement"] == doc["involvement"]
    lesions = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "chest_lesions.nii.gz")))
    assert lesions.shape == chest.volume.shape and (lesions > 0).any()
    assert main([*args, "--no-strip", "--json", "--no-progress"]) == 0
    assert "involvement" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_train_lesions_on_two_ddp_processes(lesion_folder: Path, tmp_path: Path) -> None:
    """Lesion training through the same DDP path as the classifier's: two CPU processes on gloo, one bundle
    written by rank 0, and only rank 0 reports its epochs."""
    import os
    import subprocess
    import sys

    pseudo = write_lesion_folder(tmp_path / "pseudo", 4, binary=True)
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "covidct", "train", "lesions", "--data", str(lesion_folder), "--pseudo", str(pseudo),
        "-o", str(out), "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "4", "--image-size", "32",
        "--device", "cpu", "--no-progress", "--seed", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["world_size"] == 2 and card["training"]["epochs_run"] == 2
    assert proc.stderr.count("epoch 2:") == 1  # rank 1 logs warnings only
    assert LesionSegmenter.from_bundle(out).image_size == 32
