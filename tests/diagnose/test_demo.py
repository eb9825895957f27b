"""The demo end to end, in its quick variant (a few minutes on 2 cores): every promised output exists."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from covidct.cli.main import main
from covidct.demo import DemoSettings, run_demo
from covidct.errors import ConfigError


@pytest.mark.slow
def test_quick_demo_writes_model_evaluation_and_strips(tmp_path: Path) -> None:
    # 9 training patients: the fewest that leave every class a validation patient (6 gave CAP only 1)
    settings = replace(DemoSettings.quick(), train_patients=9, test_patients=3)
    out = tmp_path / "demo"
    summary = run_demo(out, settings=settings, progress=False)
    model = out / "model"
    assert (model / "model.json").is_file()
    assert (model / "classifier" / "weights.safetensors").is_file()
    assert (model / "segmenter" / "weights.safetensors").is_file()
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert metrics["patient"]["overall_accuracy"]["denominator"] == 3
    assert set(metrics["ablation"]["variants"]) == {"no_truncation", "no_rule", "full"}
    assert metrics["ablation"]["n_incomplete"] == 0  # every slice classified, so truncation can be dropped
    summary_md = (out / "evaluation" / "summary.md").read_text()
    assert "Table 2" in summary_md and "Table 3" in summary_md
    assert (out / "evaluation" / "confusion_patient.png").is_file()
    strips = sorted((out / "evaluation" / "strips").glob("*.png"))
    assert len(strips) == 3  # one per class
    demo = json.loads((out / "demo.json").read_text())
    assert demo["timing_s"]["total"] == summary["timing_s"]["total"]
    # the run is told apart by its work and seeds, printed and recorded (demo.json and the cards)
    assert demo["seeds"] == {"train_data": 0, "test_data": 1000, "split": 0, "training": 0}
    assert demo["budgets"]["classifier"]["steps_per_epoch"] == settings.classifier_steps_per_epoch
    assert demo["budgets"]["classifier"]["max_minutes"] is None
    card = json.loads((model / "classifier" / "model.json").read_text())
    assert card["training"]["steps_per_epoch"] == settings.classifier_steps_per_epoch
    assert card["training"]["seed"] == 0 and card["training"]["split_seed"] == 0
    assert card["training"]["data_provenance"]["seed"] == 0
    assert demo["training"]["classifier"]["weights_sha256"] == card["weights"]["sha256"]
    # it ends on real CT where the development series are beside the project: every series with each model
    from covidct.demo import _real_dir
    from covidct.diagnose import shipped_model_dir

    if _real_dir("auto") is not None:
        models = {"demo"} | ({"pretrained"} if shipped_model_dir() is not None else set())
        assert {r["model"] for r in demo["real"]} == models
        assert len(demo["real"]) == 3 * len(models)
        for row in demo["real"]:
            assert "error" not in row, row
            assert row["seen_in_training"] == (row["model"] == "pretrained")
            assert (row["slice_auc"] is None) == (row["truth"] == "normal")
            assert (out / "real" / row["model"] / f"{row['case']}.json").is_file()
    # the model folder the demo wrote is the one `covidct diagnose --model` takes
    study = next(p for p in (out / "data" / "test").rglob("*") if p.is_dir() and any(p.glob("*.dcm")))
    assert (
        main(["diagnose", str(study), "--model", str(model), "-o", str(tmp_path / "dx"), "--no-strip"]) == 0
    )


def test_demo_refuses_too_few_patients_for_validation_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        run_demo(tmp_path / "d", settings=replace(DemoSettings.quick(), train_patients=6))
    assert not (tmp_path / "d").exists()


def test_demo_refuses_a_missing_real_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a folder"):
        run_demo(tmp_path / "d", real=tmp_path / "missing", settings=DemoSettings.quick())
