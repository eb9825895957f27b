"""evaluate_cohort on the tiny model: one broken study does not stop the cohort; the diagnoser is restored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from covidct.diagnose import Diagnoser
from covidct.evaluate.cohort import evaluate_cohort


@pytest.mark.slow
def test_cohort_survives_an_unexpected_error_and_restores_the_diagnoser(
    tiny_model_dir: Path, small_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    diagnoser = Diagnoser(tiny_model_dir, backend="torch")
    diagnoser.threshold = 0.35  # a model whose rule is not the registry default
    real = diagnoser._diagnose_volume
    calls: list[str] = []

    def flaky(volume: Any, name: str, t_load: float) -> Any:
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError("decoder blew up")
        assert diagnoser.classify_all  # every slice is classified for the ablation
        return real(volume, name, t_load)

    monkeypatch.setattr(diagnoser, "_diagnose_volume", flaky)
    out = tmp_path / "eval"
    metrics = evaluate_cohort(small_cohort, None, out, diagnoser=diagnoser, progress=False, n_boot=0)
    assert len(calls) == 3
    assert [f["error"] for f in metrics["failures"]] == ["RuntimeError: decoder blew up"]
    assert metrics["patient"]["n"] == 2 and len(list((out / "studies").glob("*.json"))) == 2
    assert metrics["ablation"]["params"]["threshold"] == 0.35
    assert diagnoser.classify_all is False  # restored
    written = json.loads((out / "metrics.json").read_text())
    assert written["ablation"]["params"]["threshold"] == 0.35
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
