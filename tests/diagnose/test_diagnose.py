"""Diagnoser, the per-study JSON, the diagnose command and the slice strip, on a tiny untrained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidct.cli._common import show_progress, study_stem
from covidct.cli.main import main
from covidct.decide import decide, kept_range
from covidct.diagnose import Diagnoser, check_device
from covidct.errors import ConfigError, InputError, ModelError, NotChestCTError
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


@pytest.mark.parametrize("prefetch", [0, 2])
def test_diagnose_many_matches_diagnose_in_order(
    diagnoser: Diagnoser, small_cohort: Path, tmp_path: Path, prefetch: int
) -> None:
    studies = _study_dirs(small_cohort)[:3]
    bad = tmp_path / "not_a_study"
    bad.mkdir()
    sources = [studies[0], bad, studies[1], studies[2]]
    outcomes = list(diagnoser.diagnose_many(sources, prefetch=prefetch))
    assert [o.source for o in outcomes] == sources
    assert outcomes[1].result is None and isinstance(outcomes[1].error, InputError)
    assert "not_a_study" in str(outcomes[1].error)
    for o in (outcomes[0], outcomes[2], outcomes[3]):
        assert o.error is None and o.result is not None
        one = diagnoser.diagnose(o.source)
        assert o.result.input == one.input == str(o.source)
        assert o.result.diagnosis == one.diagnosis
        np.testing.assert_array_equal(o.result.mask, one.mask)
        np.testing.assert_allclose(o.result.probabilities, one.probabilities, rtol=1e-5, atol=1e-6)
        assert o.result.timing_s["load"] > 0.0


def test_chest_check_beside_the_networks_gives_the_same_answers(
    tiny_model_dir: Path, small_cohort: Path
) -> None:
    """On CUDA the chest check runs in a thread beside segmentation and classification (forced here)."""
    from concurrent.futures import ThreadPoolExecutor

    from covidct.io.volume import CTVolume

    dx = Diagnoser(tiny_model_dir, backend="torch")
    study = _study_dirs(small_cohort)[0]
    ref = dx.diagnose(study)
    dx._checker = ThreadPoolExecutor(max_workers=1)
    got = dx.diagnose(study)
    assert got.diagnosis == ref.diagnosis and got.timing_s["check"] > 0.0
    np.testing.assert_allclose(got.probabilities, ref.probabilities, rtol=1e-5, atol=1e-6)
    water = CTVolume(np.zeros((12, 64, 64), np.int16), (2.0, 0.7, 0.7))  # no air inside a body: no lungs
    with pytest.raises(NotChestCTError, match="chest CT"):
        dx.diagnose(water)
    dx._checker.shutdown()


def test_diagnose_many_rejects_negative_prefetch(diagnoser: Diagnoser) -> None:
    with pytest.raises(ConfigError, match="prefetch"):
        next(diagnoser.diagnose_many([], prefetch=-1))


def test_default_batch_size_by_device() -> None:
    from covidct.diagnose import default_batch_size

    assert default_batch_size("cpu") == 16
    assert default_batch_size("cuda:0") == default_batch_size("cuda") > default_batch_size("cpu")


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


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps"])
def test_bad_device_is_a_config_error(tiny_model_dir: Path, device: str) -> None:
    with pytest.raises(ConfigError, match="--device"):
        Diagnoser(tiny_model_dir, device=device, backend="torch")


def test_cuda_without_cuda_is_a_config_error(tiny_model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        check_device("cuda")
    assert check_device("cpu") == "cpu"


def test_cli_bad_device_backend_and_output_are_one_line(
    tiny_model_dir: Path, small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = str(_study_dirs(small_cohort)[0])
    base = ["diagnose", study, "--model", str(tiny_model_dir)]
    a_file = tmp_path / "taken.json"
    a_file.write_text("{}")
    for extra, needle in (
        (["--device", "gpu"], "--device 'gpu'"),
        (["--backend", "tensorrt"], "unknown backend 'tensorrt'"),
        (["-o", str(a_file)], "is a file, not a folder"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (extra, err)
    assert a_file.read_text() == "{}"


def test_cli_dicom_seg_refuses_zip_input_up_front(
    tiny_model_dir: Path, small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import zipfile

    study = _study_dirs(small_cohort)[0]
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(study.iterdir()):
            zf.write(f, f.name)
    out = tmp_path / "out"
    code = main(["diagnose", str(archive), "--model", str(tiny_model_dir), "-o", str(out), "--dicom-seg"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--dicom-seg" in err[0] and "zip" in err[0]
    assert not out.exists()  # refused before any work


def test_study_stem_and_progress_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert study_stem("scans/p 1.nii.gz") == "p_1"
    assert study_stem("a/b/vol.nhdr") == "vol" and study_stem("x.mhd") == "x" and study_stem("/") == "study"

    class FakeTTY:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", FakeTTY())
    assert show_progress(False) is True and show_progress(True) is False
    monkeypatch.undo()
    assert show_progress(False) is False  # pytest's captured stderr is not a terminal


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a).all(axis=1)
    return float(np.mean(a[ok].argmax(1) == b[ok].argmax(1)))


@pytest.mark.slow
def test_cli_onnx_int8_calibrates_on_the_first_study(
    tiny_model_dir: Path,
    small_cohort: Path,
    diagnoser: Diagnoser,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from covidct.classify.backends import unavailable_reason

    if (why := unavailable_reason("onnx-int8")) is not None:
        pytest.skip(why)
    monkeypatch.setenv("COVIDCT_CACHE_DIR", str(tmp_path / "cache"))
    study = _study_dirs(small_cohort)[0]
    caplog.set_level("INFO", logger="covidct.diagnose")
    code = main(["diagnose", str(study), "--model", str(tiny_model_dir), "--backend", "onnx-int8", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["model"]["backend"] == "onnx-int8"
    assert "calibrating on" in caplog.text and "first study" in caplog.text
    int8 = np.array([[np.nan if v is None else v for v in row] for row in doc["slice_probabilities"]])
    fp32 = diagnoser.diagnose(study).probabilities
    assert np.isfinite(int8).sum() == np.isfinite(fp32).sum() > 0
    assert _agreement(fp32, int8) >= 0.8


@pytest.mark.slow
def test_int8_from_bundle_calibration(
    tiny_model_dir: Path, small_cohort: Path, diagnoser: Diagnoser, tmp_path: Path
) -> None:
    import shutil

    from covidct.bundle import read_card, write_card, write_pipeline
    from covidct.classify.backends import unavailable_reason

    if (why := unavailable_reason("onnx-int8")) is not None:
        pytest.skip(why)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns(".cache"))
    study = _study_dirs(small_cohort)[1]
    first = diagnoser.diagnose(study)
    start, stop = kept_range(first.volume.n_slices)
    calib = diagnoser.pipeline.classifier.preprocess(first.volume, first.mask, range(start, stop))
    np.save(model / "classifier" / "calibration.npy", calib.astype(np.float16))
    card = read_card(model / "classifier")
    card["calibration"] = {"file": "calibration.npy", "n": len(calib)}
    write_card(model / "classifier", card)
    write_pipeline(model, segmenter="classical")
    int8 = Diagnoser(model, backend="onnx-int8")
    assert int8.backend == "onnx-int8" and int8._pending is None  # built at once, from the bundle
    other = _study_dirs(small_cohort)[2]
    got, ref = int8.diagnose(other), diagnoser.diagnose(other)
    assert got.model["backend"] == "onnx-int8"
    assert _agreement(ref.probabilities, got.probabilities) >= 0.8


def test_lesion_gate_decides_on_gated_probabilities(tiny_model_dir: Path, small_cohort: Path) -> None:
    """With a gate, the rule counts the classifier's disease probabilities scaled by each slice's lesion
    fraction; the JSON keeps the classifier's own probabilities and the fractions beside them."""
    from covidct.decide import gate_by_lesions
    from covidct.diagnose import slice_lesion_fraction

    study = _study_dirs(small_cohort)[0]
    gated = Diagnoser(tiny_model_dir, backend="torch", lesion_model="classical", lesion_gate=0.5).diagnose(
        study
    )
    assert gated.classifier_probabilities is not None and gated.lesion_fraction is not None
    assert gated.lesions is not None
    np.testing.assert_allclose(gated.lesion_fraction, slice_lesion_fraction(gated.lesions, gated.mask))
    expected = gate_by_lesions(gated.classifier_probabilities, gated.lesion_fraction, min_fraction=0.5)
    np.testing.assert_allclose(gated.probabilities, expected, rtol=1e-5, atol=1e-6)
    rows = ~np.isnan(gated.classifier_probabilities).any(axis=1)
    assert np.abs(gated.probabilities[rows] - gated.classifier_probabilities[rows]).max() > 1e-3  # it gated
    again = decide(gated.classifier_probabilities, lesion_fraction=gated.lesion_fraction, lesion_gate=0.5)
    assert gated.decision == again
    doc = gated.to_json()
    assert doc["lesion_gate"]["min_fraction"] == 0.5
    assert len(doc["lesion_gate"]["slice_lesion_fraction"]) == gated.volume.n_slices
    assert doc["rule"]["gated_slices"] == gated.decision.gated_slices
    plain = Diagnoser(tiny_model_dir, backend="torch", lesion_model="classical").diagnose(study)
    assert "lesion_gate" not in plain.to_json() and plain.classifier_probabilities is None
    np.testing.assert_allclose(plain.probabilities, gated.classifier_probabilities, rtol=1e-5, atol=1e-6)


def test_lesion_gate_without_a_lesion_model_names_the_fix(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="needs a lesion model"):
        Diagnoser(tiny_model_dir, backend="torch", lesion_gate=0.01)
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        Diagnoser(tiny_model_dir, backend="torch", lesion_model="classical", lesion_gate=2.0)


def test_card_lesion_gate_is_checked(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from covidct.bundle import read_card, write_card
    from covidct.pipeline import load_pipeline

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    card = read_card(model, kind="pipeline")
    card["lesion_gate"] = "much"
    write_card(model, card)
    with pytest.raises(ModelError, match="lesion_gate must be a lung fraction"):
        load_pipeline(model).lesion_gate  # noqa: B018


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--lesion-gate", "0.01"], "needs a lesion model"),
        (["--lesion-gate", "0.01", "--manifest", "x.csv"], "per-study options"),
    ],
)
def test_cli_lesion_gate_errors_are_one_line(
    tiny_model_dir: Path,
    small_cohort: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    match: str,
) -> None:
    args = ["diagnose", "--model", str(tiny_model_dir), "-o", str(tmp_path / "o"), *extra]
    if "--manifest" not in extra:
        args.insert(1, str(_study_dirs(small_cohort)[0]))
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_every_diagnosis_carries_its_confidence_and_a_fitted_card_refers(
    tiny_model_dir: Path, small_cohort: Path, tmp_path: Path
) -> None:
    import shutil

    from covidct.bundle import read_card, write_card

    study = _study_dirs(small_cohort)[0]
    plain = Diagnoser(tiny_model_dir, backend="torch").diagnose(study)
    assert plain.confidence is not None and not plain.confidence.calibrated and plain.confidence.refer is None
    doc = json.loads(json.dumps(plain.to_json(), allow_nan=False))
    assert 0 < doc["confidence"]["value"] <= 1 and doc["confidence"]["refer"] is None
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    card = read_card(model, kind="pipeline")
    card["confidence"] = {"slice_temperature": 1.0, "patient_temperature": 1.0, "refer_below": 1.01}
    write_card(model, card)
    fitted = Diagnoser(model, backend="torch").diagnose(study)
    assert fitted.confidence is not None and fitted.confidence.calibrated and fitted.confidence.refer is True
    assert fitted.diagnosis == plain.diagnosis  # the confidence never changes the answer
    card["confidence"] = {"patient_temperature": "warm"}
    write_card(model, card)
    with pytest.raises(ModelError, match="unreadable confidence entry"):
        Diagnoser(model, backend="torch")
