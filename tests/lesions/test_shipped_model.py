"""The lesion bundle shipped in models/lesions: found without arguments, its card honest, its figures real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from covidct.lesions.api import load_lesion_segmenter, resolve_lesion_dir, shipped_lesion_dir
from covidct.registry import MODEL_ENV

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "lesions"


@pytest.fixture(scope="module")
def card() -> dict[str, Any]:
    return json.loads((SHIPPED / "model.json").read_text())


def test_shipped_bundle_is_small_fp16_and_found_without_arguments(
    monkeypatch: pytest.MonkeyPatch, card: dict[str, Any]
) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert shipped_lesion_dir() == SHIPPED == resolve_lesion_dir(None)
    # model.onnx / onnx.json: the run-time ONNX export the first CPU diagnosis may write (git-ignored)
    shipped = sorted(p.name for p in SHIPPED.iterdir() if p.name not in ("model.onnx", "onnx.json"))
    assert shipped == ["model.json", "weights.safetensors"]
    assert (SHIPPED / "weights.safetensors").stat().st_size < 8_000_000
    assert card["weights_dtype"].startswith("float16")
    terms = card["data_terms"]
    assert "non-commercial" in terms["terms"]
    assert any("Fan" in c for c in terms["cite"]) and any("MedSeg" in c for c in terms["cite"])
    for source in card["training"]["sources"]:
        assert "/" not in source["path"]  # no local paths shipped


def test_shipped_model_beats_the_threshold_baseline_on_held_out_real_slices(
    shared_data: Path, card: dict[str, Any]
) -> None:
    """The validation fifth of COVID-SemiSeg (never trained on) scored again: the card's figure is reproduced."""
    from covidct.evaluate.lesions import score_lesion_folder

    root = shared_data / "covid-semiseg" / "train" / "multiclass"
    ours = score_lesion_folder(load_lesion_segmenter(None), root, split="val")
    base = score_lesion_folder(load_lesion_segmenter("classical"), root, split="val")
    measured = card["measured"]["covid_semiseg_val"]["network"]
    assert ours["images"] == 8
    assert ours["dice"] == pytest.approx(measured["dice"], abs=0.01)  # fp16 weights, same figure
    assert ours["dice"] > base["dice"] + 0.1
