"""Real CT vs synthetic in evaluations: the origin rule, the per-origin figures, the summary and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from covidct.data.covidctmd import read_covidctmd
from covidct.data.records import StudyRecord
from covidct.evaluate.cohort import probe_indices, read_cohorts
from covidct.evaluate.origin import (
    StudySlices,
    clean_shift_line,
    clean_slice_shift,
    is_synthetic,
    origin_markdown,
    origin_of,
    origin_summary,
    study_slices,
    synthetic_kind,
    synthetic_label,
)
from covidct.evaluate.predictions import PredictionRecord
from covidct.evaluate.report import write_evaluation


@pytest.fixture(scope="module")
def real_copy(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small synthetic cohort copied without its cohort.csv: what a real COVID-CT-MD folder looks like."""
    out = tmp_path_factory.mktemp("real") / "real-like"
    shutil.copytree(small_cohort, out, ignore=shutil.ignore_patterns("cohort.csv", "masks"))
    return out


def test_synthetic_cohorts_are_synthetic_and_others_real(
    small_cohort: Path, real_copy: Path, tmp_path: Path
) -> None:
    assert all(is_synthetic(r) for r in read_covidctmd(small_cohort))
    assert {synthetic_kind(r) for r in read_covidctmd(small_cohort)} == {"phantom"}
    assert not any(is_synthetic(r) for r in read_covidctmd(real_copy))
    assert {origin_of(r) for r in read_covidctmd(real_copy)} == {"real"}
    # a manifest pointing into a synthetic cohort: still synthetic, whatever the case is called
    study = next(p for p in (small_cohort / "Normal subjects").iterdir())
    assert is_synthetic(StudyRecord(case="renamed", path=study, diagnosis="normal"))
    # a cohort.csv that lists other patients, or has no site column, does not make a study synthetic
    other = tmp_path / "other" / "Normal subjects" / "x1"
    other.mkdir(parents=True)
    (tmp_path / "other" / "cohort.csv").write_text("patient,class,site\nnormal009,normal,default\n")
    assert not is_synthetic(StudyRecord(case="x1", path=other, diagnosis="normal"))
    (tmp_path / "other" / "cohort.csv").write_text("patient,class\nx1,normal\n")
    assert not is_synthetic(StudyRecord(case="x1", path=other, diagnosis="normal"))


def test_realistic_cohorts_are_synthetic(tmp_path: Path) -> None:
    """Real lungs with drawn lesions (covidct.data.realistic): a cohort.json card of kind realistic-cohort."""
    root = tmp_path / "rs"
    (root / "volumes").mkdir(parents=True)
    card = {"kind": "realistic-cohort", "studies": [{"case": "rs-P001-covid19-0", "background": "P001"}]}
    (root / "cohort.json").write_text(json.dumps(card))
    listed = StudyRecord("rs-P001-covid19-0", root / "volumes" / "rs-P001-covid19-0.nii.gz", "covid19")
    other = StudyRecord("P001", root / "volumes" / "P001.nii.gz", "covid19")
    assert synthetic_kind(listed) == "realistic" and is_synthetic(listed)
    assert synthetic_kind(other) is None
    (root / "cohort.json").write_text(json.dumps({"kind": "something-else", "studies": card["studies"]}))
    assert synthetic_kind(StudyRecord("rs-P001-covid19-0", listed.path, "covid19")) is None
    assert synthetic_label(["phantom"]) == "synthetic (phantom)"
    assert synthetic_label(["realistic"]) == "synthetic (real lungs, drawn lesions)"
    assert "phantoms, and real lungs" in synthetic_label(["realistic", "phantom"])


@pytest.mark.shared_data
def test_the_real_covid_ct_md_series_are_real(covid_ct_md: Path) -> None:
    records = read_covidctmd(covid_ct_md)
    assert len(records) == 3 and not any(is_synthetic(r) for r in records)


def test_study_slices_scores_classified_slices_only() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [np.nan] * 3, [0.2, 0.1, 0.7], [0.4, 0.1, 0.5]], np.float32)
    rec = StudyRecord("v", Path("v"), "covid19", slice_labels=np.array([0, 1, 1, 0, 0, 0]))
    s = study_slices(rec, probs, "covid19")
    assert s.infected is not None and s.score is not None
    assert s.infected.tolist() == [False, True, False]  # the NaN row (not classified) is left out
    np.testing.assert_allclose(s.score, [0.1, 0.8, 0.6], rtol=1e-6)
    normal = study_slices(StudyRecord("n", Path("n"), "normal"), probs, "covid19")
    assert normal.infected is not None and not normal.infected.any()
    unlabelled = study_slices(StudyRecord("c", Path("c"), "cap"), probs, "cap")
    assert unlabelled.infected is None and unlabelled.score is None


def test_origin_summary_pools_slices_and_keeps_counts() -> None:
    studies = [
        StudySlices("n1", "normal", "covid19", np.zeros(4, bool), np.array([0.1, 0.2, 0.3, 0.9])),
        StudySlices("v1", "covid19", "covid19", np.array([0, 1, 1, 0], bool), np.array([0.2, 0.8, 0.4, 0.5])),
        StudySlices("c1", "cap", "normal"),  # no slice labels: patient figures only
    ]
    s = origin_summary(studies, origin="real", n_boot=0)
    assert s["label"] == "real CT" and s["n_studies"] == 3
    assert s["patient_accuracy"] == {"value": 1 / 3, "numerator": 1, "denominator": 3}
    a = s["slice_auc"]
    # positives 0.8, 0.4 vs negatives 0.1 0.2 0.3 0.9 0.2 0.5: 0.8 beats 5 of 6, 0.4 beats 4 -> 9/12
    assert a["value"] == pytest.approx(0.75)
    assert (a["n_slices"], a["n_infected"], a["n_not_infected"], a["n_studies"]) == (8, 2, 6, 2)
    assert a["ci95"] is None and a["n_boot_valid"] == 0
    rows = {r["case"]: r for r in s["studies"]}
    assert rows["n1"]["slice_auc"] is None and rows["v1"]["slice_auc"] == pytest.approx(0.75)
    assert rows["c1"]["n_slices"] is None
    with_ci = origin_summary(studies, origin="synthetic", n_boot=200, seed=1)
    assert with_ci["label"] == "synthetic (phantom)"
    lo, hi = with_ci["slice_auc"]["ci95"]
    assert lo <= 0.75 <= hi
    assert origin_summary(studies, origin="synthetic", n_boot=200, seed=1) == with_ci
    md = origin_markdown(s)
    assert (
        md.startswith("## Real CT (3 studies)") and "real CT slice AUC, infected vs not infected: 0.750" in md
    )
    assert json.loads(json.dumps(s, allow_nan=False)) == s
    with pytest.raises(ValueError, match="origin"):
        origin_summary(studies, origin="phantom")


def test_clean_slice_shift_shows_real_lungs_called_infected() -> None:
    """The failure the issue saw: every clean real slice scored infected, clean phantoms normal."""
    real = [
        StudySlices("n1", "normal", "covid19", np.zeros(4, bool), np.array([0.9, 0.8, 0.95, 0.7])),
        StudySlices("v1", "covid19", "covid19", np.array([1, 0, 1], bool), np.array([0.1, 0.85, 0.2])),
        StudySlices("c1", "cap", "cap"),
    ]
    phantom = [StudySlices("s1", "normal", "normal", np.zeros(3, bool), np.array([0.1, 0.2, 0.05]))]
    shift = clean_slice_shift(real, phantom)
    assert shift is not None
    assert (shift["n_real"], shift["n_synthetic"]) == (5, 3)  # the infected slices of v1 are left out
    assert shift["real_mean"] == pytest.approx(0.84) and shift["auc"] == 1.0
    assert "a shortcut in use" in shift["reading"] and "a shortcut in use" in clean_shift_line(shift)
    same = clean_slice_shift(phantom, phantom)
    assert same is not None and same["auc"] == 0.5 and "about the same" in same["reading"]
    assert clean_slice_shift(real, [StudySlices("c2", "cap", "cap")]) is None


def test_read_cohorts_makes_shared_case_names_unique(small_cohort: Path, real_copy: Path) -> None:
    records = read_cohorts([real_copy, small_cohort])
    cases = [r.case for r in records]
    assert len(cases) == 6 and len(set(cases)) == 6
    assert {c.split("-")[0] for c in cases} == {"real", "c"}
    assert all(r.extra["source_case"] in r.case for r in records)
    assert [r.case for r in read_cohorts(small_cohort)] == [r.case for r in read_covidctmd(small_cohort)]


def test_probe_indices_take_lung_slices_of_the_kept_range() -> None:
    mask = np.zeros((20, 4, 4), np.uint8)
    mask[2:18, 1, 1] = 1
    mask[10] = 0
    idx = probe_indices(mask, range(1, 19), 100)
    assert idx.tolist() == [i for i in range(2, 18) if i != 10]
    few = probe_indices(mask, range(1, 19), 3)
    assert few.tolist() == [2, 9, 17]


def test_write_evaluation_keeps_real_and_phantom_figures_apart(tmp_path: Path) -> None:
    recs = [
        PredictionRecord("r1", 0, 2, (0.2, 0.1, 0.7), (0, 0, 0), (2, 2, 0)),
        PredictionRecord("s1", 2, 2, (0.1, 0.1, 0.8), (2, 2, 0), (2, 2, 0)),
    ]
    real = origin_summary(
        [StudySlices("r1", "normal", "covid19", np.zeros(3, bool), np.array([0.8, 0.9, 0.1]))], origin="real"
    )
    synthetic = origin_summary(
        [StudySlices("s1", "covid19", "covid19", np.array([1, 1, 0], bool), np.array([0.9, 0.8, 0.1]))],
        origin="synthetic",
    )
    probe = {
        "accuracy": 0.97,
        "balanced_accuracy": 0.96,
        "auc": 0.99,
        "n_real": 40,
        "n_synthetic": 40,
        "n_splits": 5,
        "verdict": "the features separate synthetic from real: a shortcut is possible",
    }
    shift = {
        "real_mean": 0.6,
        "synthetic_mean": 0.1,
        "auc": 1.0,
        "n_real": 3,
        "n_synthetic": 1,
        "reading": "clean real lungs get higher infected scores than clean synthetic ones: a shortcut in use",
    }
    m = write_evaluation(
        recs,
        tmp_path,
        n_boot=0,
        origins={"r1": "real", "s1": "synthetic"},
        real=real,
        synthetic=synthetic,
        probe=probe,
        clean_shift=shift,
    )
    assert m["real"]["slice_auc"]["value"] is None  # one normal study: no infected slice
    assert m["synthetic"]["slice_auc"]["value"] == 1.0 and m["probe"]["auc"] == 0.99
    assert [c["origin"] for c in m["cases"]] == ["real", "synthetic"]
    md = (tmp_path / "summary.md").read_text()
    assert "2 studies: 1 real CT, 1 synthetic (phantom)" in md
    assert "## Real CT (1 studies)" in md and "## Synthetic (phantom) (1 studies)" in md
    assert "synthetic (phantom) slice AUC, infected vs not infected: 1.000" in md
    assert "real CT slice AUC, infected vs not infected: n/a" in md
    assert "balanced accuracy 0.960" in md and "a shortcut is possible" in md
    assert "real CT 0.600 (3 slices) vs synthetic 0.100 (1), AUC real vs synthetic 1.000" in md
    assert m["clean_shift"] == shift
    assert "## Table 3 - per-class performance - all studies, real CT and synthetic (phantom) pooled" in md
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    with pytest.raises(ValueError, match="every case"):
        write_evaluation(recs, tmp_path / "x", n_boot=0, origins={"r1": "real"})
    plain = write_evaluation(recs, tmp_path / "plain", n_boot=0)
    assert plain["real"] is None and plain["probe"] is None and plain["clean_shift"] is None
    assert (
        "origin" not in plain["cases"][0] and "real CT" not in (tmp_path / "plain" / "summary.md").read_text()
    )


@pytest.mark.slow
def test_evaluate_real_and_synthetic_together(
    tiny_model_dir: Path,
    small_cohort: Path,
    real_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    one_torch_thread: None,
) -> None:
    from covidct.cli.main import main

    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(real_copy), str(small_cohort), "--model", str(tiny_model_dir)]
    assert main([*args, "-o", str(out), "--bootstrap", "20", "--probe-slices", "30", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["patient"]["n"] == 6
    real, synthetic = m["real"], m["synthetic"]
    assert real["n_studies"] == 3 and synthetic["n_studies"] == 3
    studies = {s["case"]: s for s in json.loads(json.dumps(m["cases"]))}
    assert {s["origin"] for s in studies.values()} == {"real", "synthetic"}
    # every slice of the real-like studies is classified (classify_all) and scored
    n_real_slices = sum(
        json.loads((out / "studies" / f"{c}.json").read_text())["n_slices"]
        for c, s in studies.items()
        if s["origin"] == "real"
    )
    assert real["slice_auc"]["n_slices"] == n_real_slices
    # the same pixels in both groups: the probe cannot tell them apart
    probe = m["probe"]
    assert probe is not None and probe["n_real"] == probe["n_synthetic"] == 30
    assert probe["balanced_accuracy"] <= 0.75
    # identical data, identical scores: the two origins' slice AUCs agree
    assert real["slice_auc"]["value"] == pytest.approx(synthetic["slice_auc"]["value"])
    assert "real CT: 3 studies" in printed and "real CT slice AUC" in printed
    assert "synthetic-vs-real probe: balanced accuracy" in printed
    # identical pixels, identical scores: no shift between clean real and synthetic slices
    assert m["clean_shift"]["auc"] == pytest.approx(0.5) and "not-infected slices" in printed
    md = (out / "summary.md").read_text()
    assert "## Real CT (3 studies)" in md and "## Synthetic-vs-real shortcut checks" in md
    doc = json.loads(next((out / "studies").glob("real-like-*.json")).read_text())
    assert doc["origin"] == "real"


@pytest.mark.slow
def test_a_failing_probe_does_not_stop_the_evaluation(
    tiny_model_dir: Path,
    small_cohort: Path,
    real_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_torch_thread: None,
) -> None:
    import covidct.evaluate.probe as probe
    from covidct.evaluate.cohort import evaluate_cohort

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(probe, "extract_features", broken)
    m = evaluate_cohort([real_copy, small_cohort], tiny_model_dir, tmp_path, progress=False, n_boot=0)
    assert m["probe"] is None and m["failures"] == [] and m["patient"]["n"] == 6
    assert m["real"]["n_studies"] == 3 and m["synthetic"]["n_studies"] == 3
