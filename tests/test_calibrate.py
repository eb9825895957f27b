"""covidct calibrate: fit the confidence on labelled studies into a pipeline card (or a copy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covidct.bundle import read_card
from covidct.calibrate import calibrate_pipeline
from covidct.cli.main import main
from covidct.diagnose import Diagnoser
from covidct.errors import ConfigError


def test_calibrated_copy_is_used_by_the_diagnoser(
    tiny_model_dir: Path, small_cohort: Path, tmp_path: Path
) -> None:
    before = (tiny_model_dir / "model.json").read_bytes()
    out = tmp_path / "calibrated"
    entry = calibrate_pipeline(tiny_model_dir, small_cohort, out_dir=out, target_accuracy=0.9, min_patients=3)
    assert (tiny_model_dir / "model.json").read_bytes() == before  # the original is untouched
    card = read_card(out, kind="pipeline")
    assert card["confidence"]["fitted"]["patients"] == 3 and card["confidence"]["target_accuracy"] == 0.9
    assert entry["refer_below"] == card["confidence"]["refer_below"]
    dx = Diagnoser(out, backend="torch")
    assert dx.confidence_model is not None
    assert dx.confidence_model.patient_temperature == pytest.approx(card["confidence"]["patient_temperature"])
    result = dx.diagnose(next(p for p in small_cohort.rglob("*") if p.is_dir() and any(p.glob("*.dcm"))))
    assert (
        result.confidence is not None and result.confidence.calibrated and result.confidence.refer is not None
    )


def test_cli_refuses_too_few_studies_and_a_used_folder(
    tiny_model_dir: Path, small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["calibrate", "--model", str(tiny_model_dir), "--data", str(small_cohort)])
    err = capsys.readouterr().err
    assert code == 2 and "calibration needs at least 6" in err and "Traceback" not in err
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        calibrate_pipeline(tiny_model_dir, small_cohort, out_dir=used, min_patients=3)
    assert json.loads((tiny_model_dir / "model.json").read_text()).get("confidence") is None
