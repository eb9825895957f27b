"""The pretrained pipeline used when no --model is given, and the synth-real command's user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidct.cli.main import main
from covidct.diagnose import resolve_model_dir, shipped_model_dir
from covidct.errors import ConfigError
from covidct.registry import MODEL_ENV


def test_explicit_model_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "env"))
    assert resolve_model_dir(tmp_path / "given") == tmp_path / "given"
    assert resolve_model_dir(None) == tmp_path / "env"


def test_no_model_anywhere_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import covidct.model_dirs as model_dirs

    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setattr(model_dirs, "shipped_model_dir", lambda: None)
    with pytest.raises(ConfigError, match="pass --model MODEL_DIR"):
        model_dirs.resolve_model_dir(None)


def test_shipped_pipeline_is_found_in_a_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    root = Path(__file__).resolve().parents[1] / "models"
    found = shipped_model_dir()
    if (root / "model.json").is_file():
        assert found == root
    else:
        assert found is None


def test_synth_real_bad_background_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_folder"
    code = main(["synth-real", str(missing), "-o", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and str(missing) in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()


def test_mask_mismatch_is_said() -> None:
    from covidct.diagnose import mask_mismatch

    card = {"segmenter": "classical", "training": {"masks_used": {"classical": 40, "gt": 2}}}
    assert mask_mismatch(card) is None
    card["training"]["masks_used"] = {"gt": 30}
    msg = mask_mismatch(card)
    assert msg is not None and "gt masks (30 studies)" in msg and "classical segmenter" in msg
    assert mask_mismatch({"segmenter": "segmenter", "training": {"masks_used": {"gt": 30}}}) is None
    assert mask_mismatch({"segmenter": "segmenter", "training": {"masks_used": {"classical": 9}}})
    assert mask_mismatch({"segmenter": "classical"}) is None  # an old card without the record
