"""Diagnoser, the per-study JSON, the diagnose command and the slice strip, on a tiny untrained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidct.cli.main import main
from covidct.decide import decide, kept_range
from covidct.diagnose import Diagnoser
from covidct.registry import CLASS_NAMES


def _study_dirs(cohort: Path) -> list[Path]:
    return sorted(p for p in cohort.rglob("*") if p.is_dir() and any(f.suffix == ".dcm" for f in p.iterdir()))


@pytest.fixture(scope="module")
def diagnoser(tiny_model_dir: Path) -> Diagnoser:
    return Diagnoser(tiny_model_dir, backend="torch")


def test_diagnose_result_is_consistent(diagnoser: Diagnoser, small_cohort: Path) -> None:
    study = _study_dirs(small_cohort)[0]
    result = diagnoser.diagnose(study)
    n = result.volume.n_slices
    assert result.probabilities.shape == (n, 3)
    assert result.mask.shape == result.volume.hu.shape and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) <= {0, 1, 2} and (result.mask == 1).any() and (result.mask == 2).any()
    start, stop = kept_range(n)
    kept = result.probabilities[start:stop]
    # only the kept slices are classified; their rows are probability vectors
    assert np.isfinite(kept).all() and np.allclose(kept.sum(axis=1), 1.0, atol=1e-4)
    assert np.isnan(result.probabilities[:start]).all() and np.isnan(result.probabilities[stop:]).all()
    again = decide(result.probabilities)
    assert again.diagnosis == result.diagnosis and again.counts == result.decision.counts
    for stage in ("load", "segment", "classify", "decide", "total"):
        assert result.timing_s[stage] >= 0.0
    assert result.timing_s["total"] >= result.timing_s["classify"]


def test_json_document_schema(diagnoser: Diagnoser, small_cohort: Path) -> None:
    study = _study_dirs(small_cohort)[1]
    doc = json.loads(json.dumps(diagnoser.diagnose(study).to_json(), allow_nan=False))
    assert doc["input"] == str(study)
    assert doc["diagnosis"] in CLASS_NAMES
    assert doc["classes"] == list(CLASS_NAMES)
    assert len(doc["slice_probabilities"]) == doc["n_slices"] == len(doc["slice_predictions"])
    assert doc["kept_slices"] == list(range(*doc["rule"]["kept_range"]))
    assert sum(doc["counts"].values()) == len(doc["kept_slices"])
    assert doc["rule"]["branch"] and doc["rule"]["explanation"]
    assert doc["model"]["hash"] and doc["software"]["covidct"]
    assert doc["lung_volume_ml"]["right"] > 0 and doc["lung_volume_ml"]["left"] > 0


def test_classify_all_fills_every_row(tiny_model_dir: Path, small_cohort: Path) -> None:
    result = Diagnoser(tiny_model_dir, backend="torch", classify_all=True).diagnose(
        _study_dirs(small_cohort)[2]
    )
    assert np.isfinite(result.probabilities).all()


def test_cli_diagnose_writes_outputs_and_skips_bad_studies(
    tiny_model_dir: Path, small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _study_dirs(small_cohort)[0]
    bad = tmp_path / "empty_study"
    bad.mkdir()
    out = tmp_path / "out"
    code = main(
        [
            "diagnose",
            str(good),
            str(bad),
            "--model",
            str(tiny_model_dir),
            "-o",
            str(out),
            "--backend",
            "torch",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1  # one study failed, the other finished
    assert "empty_study" in err and "FAILED" in err
    doc = json.loads((out / f"{good.name}.json").read_text())
    assert doc["diagnosis"] in CLASS_NAMES
    strip = out / f"{good.name}_strip.png"
    assert strip.is_file() and strip.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*partial*"))


def test_cli_diagnose_missing_model_is_one_clear_line(
    small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["diagnose", str(_study_dirs(small_cohort)[0]), "--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "nope" in err[0]


@pytest.mark.slow
def test_cli_diagnose_reports_seg_and_mask(tiny_model_dir: Path, small_cohort: Path, tmp_path: Path) -> None:
    import nibabel as nib
    import pydicom

    study = _study_dirs(small_cohort)[0]
    out = tmp_path / "out"
    args = ["diagnose", str(study), "--model", str(tiny_model_dir), "-o", str(out), "--backend", "torch"]
    assert (
        main([*args, "--report", "html", "--report", "pdf", "--dicom-seg", "--save-mask", "--no-strip"]) == 0
    )
    html = (out / f"{study.name}_report.html").read_text()
    assert "not a medical device" in html and str(study) not in html  # no input path without --show-phi
    assert (out / f"{study.name}_report.pdf").read_bytes()[:5] == b"%PDF-"
    seg = pydicom.dcmread(out / f"{study.name}_seg.dcm")
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 2
    mask = np.asarray(nib.load(out / f"{study.name}_lungmask.nii.gz").dataobj)
    assert set(np.unique(mask)) == {0, 1, 2}
    assert not (out / f"{study.name}_strip.png").exists()


def test_cli_diagnose_files_need_an_output_folder(
    tiny_model_dir: Path, small_cohort: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _study_dirs(small_cohort)[0]
    assert main(["diagnose", str(study), "--model", str(tiny_model_dir), "--report", "html"]) == 2
    assert "-o" in capsys.readouterr().err
