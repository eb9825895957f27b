"""The pretrained pipeline shipped in models/: small, fp16, honest card, and its real-CT figures reproduced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from covidct.registry import MODEL_ENV

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models"

pytestmark = pytest.mark.skipif(
    not (SHIPPED / "model.json").is_file(),
    reason="no pretrained pipeline in models/ (a source checkout has one)",
)


@pytest.fixture(scope="module")
def card() -> dict[str, Any]:
    return json.loads((SHIPPED / "model.json").read_text())


def test_found_without_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    from covidct.diagnose import resolve_model_dir

    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert resolve_model_dir(None) == SHIPPED


def test_small_fp16_and_its_card_names_data_terms_and_gate(card: dict[str, Any]) -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "models"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    files = [ROOT / f for f in tracked] or [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files if p.is_file()) < 60_000_000
    classifier = json.loads((SHIPPED / "classifier" / "model.json").read_text())
    assert classifier["weights_dtype"] == "float16" and "calibration" not in classifier
    assert card["segmenter"] == "classical"  # the masks the classifier trained on (masks_used)
    assert set(classifier["training"]["masks_used"]) == {"classical"}
    assert "non-commercial" in card["terms"] and "COVID-CT-MD" in card["terms"]
    assert card["data"]["phantoms"] == "none" and "P001" in card["data"]["real"]
    assert card["lesion_gate"] == pytest.approx(0.01)
    assert (SHIPPED / "lesions" / "model.json").is_file()
    text = (SHIPPED / "model.json").read_text() + (SHIPPED / "classifier" / "model.json").read_text()
    assert "/work/" not in text and "runs/" not in text  # no local paths shipped


def test_its_onnx_exports_are_shipped_current_and_half_size(card: dict[str, Any]) -> None:
    from covidct.infer.onnx import sidecar_for

    for part in ("classifier", "lesions"):
        folder = SHIPPED / part
        doc = sidecar_for(folder, json.loads((folder / "model.json").read_text()))
        assert doc is not None, f"{folder}: no current ONNX export (covidct export-onnx models --force)"
        assert doc["weights_storage"].startswith("float16") and doc["max_abs_diff_vs_torch"] < 1e-4
        assert (folder / "model.onnx").stat().st_size < 1.05 * (folder / "weights.safetensors").stat().st_size


def test_card_figures_are_reproduced_on_a_real_series_without_torch(
    shared_data: Path, card: dict[str, Any]
) -> None:
    """The card's real-CT figure for cap001 (a training series: a training-set figure, not a test) comes out
    again from the shipped files, on ONNX Runtime without importing torch, and nothing is written into models/."""
    from covidct.data.covidctmd import read_covidctmd

    rows = {
        r["case"]: r
        for r in card["figures"]["real_ct_training_series"]
        if r["lesion_gate"] == pytest.approx(card["lesion_gate"])
    }
    record = next(r for r in read_covidctmd(shared_data / "covid-ct-md") if r.case == "cap001")
    before = {p: p.stat().st_mtime_ns for p in SHIPPED.rglob("*")}
    code = (
        "import json, sys\n"
        "from covidct.diagnose import Diagnoser\n"
        f"d = Diagnoser({str(SHIPPED)!r})\n"
        f"r = d.diagnose({str(record.path)!r})\n"
        "print(json.dumps({'backend': d.backend, 'torch': 'torch' in sys.modules, 'diagnosis': r.diagnosis,"
        " 'counts': r.decision.counts, 'gated': r.decision.gated_slices}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["backend"] == "onnxruntime (torch-free)" and got["torch"] is False
    assert got["diagnosis"] == rows["cap001"]["diagnosis"] == "cap"
    assert got["counts"] == rows["cap001"]["counts"]
    assert {p: p.stat().st_mtime_ns for p in SHIPPED.rglob("*")} == before
