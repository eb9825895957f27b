"""`covidct evaluate` and `covidct readers` on small CSVs: exit codes, files and the numbers written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covidct.cli.main import main
from covidct.errors import InputError
from covidct.evaluate.readers import Reads, compare_readers

PREDS = (
    "case,truth,prediction,p_normal,p_cap,p_covid19,slice_predictions,time_s\n"
    "a,normal,normal,0.8,0.1,0.1,0 0 0 0 0 0 0 0 0 0,10\n"
    "b,covid19,covid19,0.1,0.1,0.8,2 2 2 0 0 0 2 2 0 0,12\n"
    "c,cap,covid19,0.1,0.4,0.5,1 1 2 2 2 0 0 0 0 0,11\n"
    "d,covid19,normal,0.6,0.1,0.3,0 0 0 0 0 2 2 0 0 0,9\n"
)


def test_evaluate_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "preds.csv"
    csv_path.write_text(PREDS)
    out = tmp_path / "out"
    assert main(["evaluate", "--predictions", str(csv_path), "-o", str(out), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy 50.00% (2/4)" in printed and "calibration (patients): ECE 0.375" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["patient"]["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [1, 0, 1]]
    # Table 2 recomputed from the slices: d has 2 COVID-19 of 7 kept slices (28.6% > 20%) -> covid19
    assert m["ablation"]["variants"]["full"]["predictions"]["d"] == "covid19"
    assert m["ablation"]["variants"]["full"]["accuracy"]["numerator"] == 3
    assert m["ablation"]["variants"]["no_rule"]["accuracy"]["numerator"] == 2
    assert m["timing"]["total_s"] == 42.0
    # calibration of the patient scores as given: Brier and ECE by hand (confidence = score of the prediction)
    cal = m["calibration"]
    assert cal["patient"]["n"] == 4 and cal["patient"]["before"]["brier"] == pytest.approx(0.4)
    assert cal["patient"]["before"]["ece"] == pytest.approx((0.2 * 2 + 0.5 + 0.6) / 4)
    assert (out / "reliability_patient.png").stat().st_size > 1000 and (out / "risk_coverage.png").is_file()
    assert "## Calibration and referral" in (out / "summary.md").read_text()
    assert (out / "confusion_patient.png").stat().st_size > 1000
    assert "Full method (truncation + rule) | 75.00% (3/4)" in (out / "summary.md").read_text()


def test_evaluate_bad_csv_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "preds.csv"
    csv_path.write_text("case,truth,prediction\na,cap,flu\n")
    assert main(["evaluate", "--predictions", str(csv_path), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "line 2" in err and "flu" in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_evaluate_data_needs_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--data", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "--model" in capsys.readouterr().err


def test_evaluate_data_passes_progress_bootstrap_and_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import covidct.evaluate.cohort as cohort

    seen: dict[str, object] = {}

    def fake(data: str, model: str, out: Path, **kw: object) -> dict[str, object]:
        seen.update(kw)
        rate = {"value": 1.0, "numerator": 1, "denominator": 1}
        return {"patient": {"n": 1, "overall_accuracy": rate}, "ablation": {"variants": {}}}

    monkeypatch.setattr(cohort, "evaluate_cohort", fake)
    args = ["evaluate", "--data", str(tmp_path), "--model", str(tmp_path), "-o", str(tmp_path / "o")]
    assert main([*args, "--no-progress", "--bootstrap", "7", "--seed", "3"]) == 0
    assert seen["progress"] is False and seen["n_boot"] == 7 and seen["seed"] == 3
    assert main(args) == 0
    assert seen["progress"] is False  # stderr is not a terminal under pytest
    assert "accuracy 100.00%" in capsys.readouterr().out


def write_reader_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "truth": "case,truth\n1,covid19\n2,covid19\n3,cap\n4,normal\n5,covid19\n6,normal\n",
        # R1: 4/6 right, COVID-19 2/3; R2: 6/6 right
        "r1": "case,prediction,time_s\n1,covid19,100\n2,normal,200\n3,cap,300\n"
        "4,normal,100\n5,covid19,100\n6,cap,400\n",
        "r2": "case,prediction,time\n1,covid19,60\n2,covid19,60\n3,cap,60\n4,normal,60\n5,covid19,60\n"
        "6,normal,60\n",
        # AI: 5/6 right (misses 3), 20 s per case
        "ai": "case,prediction,time_s\n1,covid19,20\n2,covid19,20\n3,covid19,20\n4,normal,20\n"
        "5,covid19,20\n6,normal,20\n",
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text)
    return paths


def test_readers_cli_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_reader_files(tmp_path)
    out = tmp_path / "readers"
    argv = ["readers", "--truth", str(p["truth"]), "--reader", f"R1={p['r1']}", "--reader", f"R2={p['r2']}"]
    assert main([*argv, "--ai", str(p["ai"]), "-o", str(out)]) == 0
    assert "R1" in capsys.readouterr().out
    assert {f.name for f in out.iterdir()} == {"readers.json", "readers.md", "readers.png"}
    r = json.loads((out / "readers.json").read_text())["raters"]
    assert list(r) == ["R1", "R2", "AI"]
    assert r["R1"]["accuracy"] == {"value": 4 / 6, "numerator": 4, "denominator": 6}
    assert r["R1"]["covid19_sensitivity"]["numerator"] == 2
    assert r["R1"]["mean_time_s"] == pytest.approx(200.0) and r["R1"]["total_time_s"] == 1200.0
    assert r["R2"]["kappa_vs_truth"] == pytest.approx(1.0)
    assert r["AI"]["accuracy"]["numerator"] == 5 and r["AI"]["mcnemar_vs_ai"] is None
    # R1 vs AI: R1 right & AI wrong on case 3 (b=1); R1 wrong & AI right on 2 and 6 (c=2); exact p = 1
    assert r["R1"]["mcnemar_vs_ai"]["b"] == 1 and r["R1"]["mcnemar_vs_ai"]["c"] == 2
    assert r["R1"]["mcnemar_vs_ai"]["p_value"] == pytest.approx(1.0)
    assert (out / "readers.png").read_bytes()[:4] == b"\x89PNG"
    assert "| AI | 83.3% (5/6) |" in (out / "readers.md").read_text()


def test_readers_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_reader_files(tmp_path)
    base = ["readers", "--truth", str(p["truth"]), "--ai", str(p["ai"]), "-o", str(tmp_path / "o")]
    assert main([*base, "--reader", "R1"]) == 2
    assert "NAME=reads.csv" in capsys.readouterr().err
    assert main(base) == 2
    no_time = tmp_path / "nt.csv"
    no_time.write_text("case,prediction\n1,covid19\n")
    assert main([*base, "--reader", f"R={no_time}"]) == 2
    assert "missing column(s) time_s" in capsys.readouterr().err
    with pytest.raises(InputError, match="no answer for 1 of 2 cases"):
        compare_readers({"a": 0, "b": 1}, {"R": Reads({"a": 0}, {})}, Reads({"a": 0, "b": 1}, {}))
    with pytest.raises(InputError, match="reserved"):
        compare_readers({"a": 0}, {"AI": Reads({"a": 0}, {})}, Reads({"a": 0}, {}))
