"""Which pipeline folder a command uses: the one given, ``$COVIDCT_MODEL``, or the pretrained pipeline shipped in
``models/`` of a source checkout; and whether a classifier's training masks match its pipeline's segmenter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covidct.errors import ConfigError

__all__ = ["MATCHING_MASKS", "mask_mismatch", "resolve_model_dir", "shipped_model_dir", "shipped_models_root"]


def shipped_models_root() -> Path:
    """Where shipped models are looked for: ``$COVIDCT_MODEL`` when set, else ``models/`` at the root of a
    source checkout (beside ``src/``), whether or not it exists."""
    import os

    from covidct.registry import MODEL_ENV, SHIPPED_MODEL_FOLDER

    env = os.environ.get(MODEL_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / SHIPPED_MODEL_FOLDER


def shipped_model_dir() -> Path | None:
    """The pretrained pipeline that comes with covidct: ``$COVIDCT_MODEL``, else ``models/`` at the root of a
    source checkout when it holds a ``model.json``; ``None`` when there is none."""
    import os

    from covidct.registry import MODEL_ENV

    root = shipped_models_root()
    if os.environ.get(MODEL_ENV):
        return root
    return root if (root / "model.json").is_file() else None


#: Training mask sources that match a pipeline's segmenter: the classical segmenter's own masks, or the ground
#: truth a U-Net segmenter was trained to reproduce.
MATCHING_MASKS: dict[str, str] = {"classical": "classical", "unet": "gt"}


def mask_mismatch(card: dict[str, Any]) -> str | None:
    """A sentence when most of the classifier's training studies were masked otherwise than this pipeline
    masks a study at diagnosis (its inputs then differ from what it learnt on), else ``None``."""
    used = dict(dict(card.get("training", {})).get("masks_used") or {})
    total = sum(int(v) for v in used.values())
    if total == 0:
        return None
    segmenter = "classical" if card.get("segmenter", "classical") == "classical" else "unet"
    want = MATCHING_MASKS[segmenter]
    if int(used.get(want, 0)) * 2 >= total:
        return None
    return (
        f"the classifier was trained on {', '.join(f'{k} masks ({v} studies)' for k, v in sorted(used.items()))} "
        f"but this pipeline masks studies with the {segmenter} segmenter: its inputs at diagnosis differ from "
        "training; retrain with --mask-source matching the segmenter"
    )


def resolve_model_dir(model: str | Path | None) -> Path:
    """``model`` as a path, or the shipped pipeline when ``None``; ConfigError naming the fix when neither."""
    if model is not None:
        return Path(model)
    shipped = shipped_model_dir()
    if shipped is None:
        raise ConfigError(
            "no --model given and no pretrained pipeline found (models/ of a source checkout, or the folder "
            "named by $COVIDCT_MODEL): pass --model MODEL_DIR"
        )
    return shipped
