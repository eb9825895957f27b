"""One Grad-CAM explainer per diagnoser (review item 27), and atomic report writes (item 1)."""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fake_study import FakeDiagnoser, TinyClassifier, fake_result, make_volume

from covidct.report import gradcam
from covidct.report.gradcam import SliceExplainer, explainer_for
from covidct.report.html import write_report


def test_reports_of_one_diagnoser_share_one_explainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []
    real = SliceExplainer.from_classifier.__func__  # type: ignore[attr-defined]

    def counting(cls: type[SliceExplainer], classifier: Any, **kw: Any) -> SliceExplainer:
        built.append(classifier)
        return real(cls, classifier, **kw)

    monkeypatch.setattr(SliceExplainer, "from_classifier", classmethod(counting))
    diagnoser = FakeDiagnoser(seed=1)
    volume, mask = make_volume(n=8, size=32)
    result = fake_result(volume, mask, seed=1)
    for name in ("a.html", "b.html"):
        text = write_report(result, tmp_path / name, diagnoser=diagnoser).read_text(encoding="utf-8")
        assert "Grad-CAM" in text
    assert len(built) == 1
    first = explainer_for(diagnoser)
    assert explainer_for(diagnoser) is first and len(built) == 1
    diagnoser.pipeline.classifier = TinyClassifier(seed=2)  # a new classifier gets a new explainer
    assert explainer_for(diagnoser) is not first and len(built) == 2
    key = id(diagnoser)
    assert key in gradcam._CACHE
    del diagnoser, first
    gc.collect()
    assert key not in gradcam._CACHE  # released with the diagnoser


def test_concurrent_writers_of_one_pdf_path_all_succeed(tmp_path: Path) -> None:
    from covidct.report.pdf import write_pdf

    volume, mask = make_volume(n=8, size=32)
    result = fake_result(volume, mask, seed=1)
    out = tmp_path / "r.pdf"
    with ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(pool.map(lambda _: write_pdf(result, out), range(3)))
    assert paths == [out] * 3
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert [p.name for p in tmp_path.iterdir()] == ["r.pdf"]
