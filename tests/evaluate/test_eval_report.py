"""Ablation (Table 2) and write_evaluation: the files and numbers written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidct.decide import decide
from covidct.evaluate.ablation import ablation_markdown, ablation_table
from covidct.evaluate.predictions import PredictionRecord
from covidct.evaluate.report import write_evaluation

N, C, V = 0, 1, 2
# 20 slices, kept [2, 18) with the defaults
HEAD_TAIL_COVID = (V, V) + (N,) * 15 + (V, V, V)  # 5/20 = 25% overall, 1/16 kept: full normal, no_trunc covid
MINORITY_COVID = (
    (N,) * 2 + (N,) * 11 + (V,) * 5 + (N,) * 2
)  # 5/16 = 31% covid: full -> covid, no_rule -> normal
CAP_MAJ = (N,) * 2 + (C,) * 10 + (N,) * 6 + (N,) * 2


def records() -> list[PredictionRecord]:
    return [
        PredictionRecord("n1", 0, 0, slice_predictions=HEAD_TAIL_COVID),
        PredictionRecord("v1", 2, 2, slice_predictions=MINORITY_COVID),
        PredictionRecord("c1", 1, 1, slice_predictions=CAP_MAJ),
        PredictionRecord("x1", 2, 0, slice_predictions=None),
    ]


def test_ablation_variants_hand_checked() -> None:
    t = ablation_table(records())
    assert (t["n"], t["n_missing"], t["n_incomplete"]) == (3, 1, 0)
    v = t["variants"]
    assert v["full"]["predictions"] == {"n1": "normal", "v1": "covid19", "c1": "cap"}
    assert v["no_truncation"]["predictions"]["n1"] == "covid19"
    assert v["no_rule"]["predictions"]["v1"] == "normal"
    assert v["full"]["accuracy"] == {"value": 1.0, "numerator": 3, "denominator": 3}
    assert v["no_truncation"]["accuracy"]["numerator"] == 2
    assert v["no_rule"]["accuracy"]["numerator"] == 2
    assert v["no_rule"]["sensitivity"]["covid19"] == {"value": 0.0, "numerator": 0, "denominator": 1}
    md = ablation_markdown(t)
    assert "| Full method (truncation + rule) | 100.00% (3/3) |" in md
    assert "1 without (left out)" in md


def test_ablation_without_slices() -> None:
    t = ablation_table([PredictionRecord("a", 0, 0)])
    assert t["variants"] == {} and "cannot be computed" in ablation_markdown(t)


def test_write_evaluation_files_and_numbers(tmp_path: Path) -> None:
    recs = [
        PredictionRecord("a", 0, 0, (0.8, 0.1, 0.1), (0, 0, 0), (0, 0, 0), 10.0),
        PredictionRecord("b", 2, 2, (0.1, 0.1, 0.8), (2, 2, 0), (2, 2, 2), 20.0),
        PredictionRecord("c", 1, 2, (0.2, 0.3, 0.5), (1, 2, 2), (1, 1, -1), 30.0),
        PredictionRecord("d", 2, 0, (0.5, 0.1, 0.4), (0, 0, 0), (2, 0, 0), 40.0),
    ]
    out = tmp_path / "eval"
    m = write_evaluation(recs, out, n_boot=100)
    assert {p.name for p in out.iterdir()} == {
        "metrics.json",
        "summary.md",
        "confusion_patient.png",
        "confusion_slice.png",
    }
    for png in ("confusion_patient.png", "confusion_slice.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == m
    assert "NaN" not in (out / "metrics.json").read_text()
    p = m["patient"]
    assert p["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [1, 0, 1]]
    assert p["overall_accuracy"]["value"] == 0.5
    assert p["per_class"]["cap"]["precision"]["value"] is None  # CAP never predicted
    assert p["roc_auc"]["normal"]["value"] == pytest.approx(1.0)
    # slices: -1 truth skipped -> 11 slice pairs
    s = m["slice"]
    assert s["n"] == 11
    assert s["confusion_matrix"] == [[5, 0, 0], [0, 1, 1], [2, 0, 2]]
    assert m["timing"] == {
        "n_timed": 4,
        "total_s": 100.0,
        "per_study_mean_s": 25.0,
        "per_study_median_s": 25.0,
        "per_study_max_s": 40.0,
    }
    assert m["cases"][3] == {"case": "d", "truth": "covid19", "prediction": "normal", "correct": False}
    md = (out / "summary.md").read_text()
    assert "Table 2" in md and "Table 3" in md and "### Slice level" in md
    assert "| CAP | 75.00% (3/4) | 0.00% (0/1) |" in md
    assert "Total diagnosis time 100.0 s" in md
    assert not list(out.glob(".*tmp"))


def test_write_evaluation_from_decisions_and_timing_override(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    recs = []
    for i, cls in enumerate([0, 1, 2] * 3):
        preds = np.where(rng.random(30) < 0.6, cls, 0)
        recs.append((f"s{i}", cls, decide(preds)))
    m = write_evaluation(recs, tmp_path, timing={"total_s": 9.0, "per_study_s": {"s0": 1.5}}, n_boot=20)
    assert m["slice"] is None and not (tmp_path / "confusion_slice.png").exists()
    assert m["timing"]["total_s"] == 9.0 and m["timing"]["n_timed"] == 1
    assert m["ablation"]["n"] == 9
    assert m["patient"]["n"] == 9


def test_write_evaluation_rejects_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no records"):
        write_evaluation([], tmp_path)


def test_ablation_uses_the_rule_the_diagnoses_were_made_with(tmp_path: Path) -> None:
    # 5/16 kept COVID-19 slices: above the default 20 % threshold, below a model's 40 %
    rule = {"head": 0.1, "tail": 0.14, "threshold": 0.4}
    recs = [PredictionRecord("v1", 2, 0, slice_predictions=MINORITY_COVID)]
    assert decide(list(MINORITY_COVID), **rule).diagnosis == "normal"
    metrics = write_evaluation(recs, tmp_path / "custom", rule=rule, n_boot=0)
    assert metrics["ablation"]["params"] == rule
    assert metrics["ablation"]["variants"]["full"]["predictions"] == {"v1": "normal"}  # = the diagnosis
    default = write_evaluation(recs, tmp_path / "default", n_boot=0)
    assert default["ablation"]["variants"]["full"]["predictions"] == {"v1": "covid19"}
    with pytest.raises(ValueError, match="head \\+ tail"):
        write_evaluation(recs, tmp_path / "bad", rule={"head": 0.5, "tail": 0.5}, n_boot=0)


def test_figures_leave_the_matplotlib_backend_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    from covidct.evaluate.plots import confusion_matrix_png, readers_chart_png

    def no_switch(*args: object, **kwargs: object) -> None:
        raise AssertionError("matplotlib.use() changes the backend of the whole process")

    monkeypatch.setattr(matplotlib, "use", no_switch)
    png = confusion_matrix_png(np.array([[2, 1, 0], [0, 1, 0], [0, 0, 3]]), tmp_path / "cm.png")
    chart = readers_chart_png({"AI": {"accuracy": 0.9, "covid19_sensitivity": None}}, tmp_path / "r.png")
    for path in (png, chart):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "r.png"]  # no temporary leftovers
