"""The lesion bundle shipped in models/lesions: found without arguments, its card honest, its figures real."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidct.lesions.api import load_lesion_segmenter, resolve_lesion_dir, shipped_lesion_dir
from covidct.registry import MODEL_ENV

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "lesions"


@pytest.fixture(scope="module")
def card() -> dict:  # type: ignore[type-arg]
    return json.loads((SHIPPED / "model.json").read_text())


def test_shipped_bundle_is_small_fp16_and_found_without_arguments(
    monkeypatch: pytest.MonkeyPatch, card: dict
) -> None:  # type: ignore[type-arg]
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert shipped_lesion_dir() == SHIPPED == resolve_lesion_dir(None)
    assert sorted(p.name for p in SHIPPED.iterdir()) == ["model.json", "weights.safetensors"]
    assert (SHIPPED / "weights.safetensors").stat().st_size < 8_000_000
    assert card["weights_dtype"].startswith("float16")
    terms = card["data_terms"]
    assert "non-commercial" in terms["terms"]
    assert any("Fan" in c for c in terms["cite"]) and any("MedSeg" in c for c in terms["cite"])
    for source in card["training"]["sources"]:
        assert "/" not in source["path"]  # no local paths shipped


def test_shipped_model_beats_the_threshold_baseline_on_held_out_real_slices(
    shared_data: Path, card: dict
) -> None:  # type: ignore[type-arg]
    """The validation fifth of COVID-SemiSeg (never trained on) scored again: the card's figure is reproduced."""
    from covidct.data.realistic.donors import image_pairs, is_validation_image
    from covidct.evaluate.lesions import lesion_scores
    from covidct.lesions.folders import read_image, read_mask

    root = shared_data / "covid-semiseg" / "train" / "multiclass"
    net, classical = load_lesion_segmenter(None), load_lesion_segmenter("classical")
    preds: dict[str, list[np.ndarray]] = {"net": [], "classical": []}
    truths = []
    for img_path, mask_path in image_pairs(root):
        if not is_validation_image(img_path.stem):
            continue
        img = read_image(img_path)
        truths.append(read_mask(mask_path, img.shape)[0])
        preds["net"].append(net.segment_image(img))
        preds["classical"].append(classical.segment_image(img))
    ours = lesion_scores(preds["net"], truths)
    base = lesion_scores(preds["classical"], truths)
    measured = card["measured"]["covid_semiseg_val"]["network"]
    assert ours["images"] == 8
    assert ours["dice"] == pytest.approx(measured["dice"], abs=0.01)  # fp16 weights, same figure
    assert ours["dice"] > base["dice"] + 0.1
