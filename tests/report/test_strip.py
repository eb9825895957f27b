"""The slice strip: no pyplot or global backend, a title without the input name, the one lung palette."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_study import fake_result, make_volume
from PIL import Image

from covidct.registry import DISPLAY_NAMES
from covidct.report.images import LUNG_COLOURS, MASK_COLOURS
from covidct.report.overlay import LABEL_COLOURS
from covidct.report.strip import _thumbnail, slice_strip


def _result() -> Any:
    volume, mask = make_volume(n=10, size=40)
    return fake_result(volume, mask, seed=2, input_name="/data/Doe_Jane/study.zip")


@pytest.fixture
def titles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from matplotlib.figure import Figure

    seen: list[str] = []
    real = Figure.suptitle

    def suptitle(self: Any, t: str, **kw: Any) -> Any:
        seen.append(t)
        return real(self, t, **kw)

    monkeypatch.setattr(Figure, "suptitle", suptitle)
    return seen


def test_strip_needs_no_pyplot_and_keeps_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, titles: list[str]
) -> None:
    import matplotlib

    def no_use(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("slice_strip must not switch the process-wide matplotlib backend")

    monkeypatch.setattr(matplotlib, "use", no_use)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # any pyplot import now fails
    out = slice_strip(_result(), tmp_path / "s" / "strip.png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 400 and img.height > 200
    assert sorted(p.name for p in out.parent.iterdir()) == ["strip.png"]


def test_default_title_is_the_diagnosis_without_the_input_name(tmp_path: Path, titles: list[str]) -> None:
    result = _result()
    slice_strip(result, tmp_path / "a.png")
    assert titles == [f"Diagnosis: {DISPLAY_NAMES[result.decision.label]}"]
    slice_strip(result, tmp_path / "b.png", title="case 7: COVID-19")
    assert titles[-1] == "case 7: COVID-19"


def test_a_failed_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    def boom(self: Any, *args: Any, **kwargs: Any) -> None:
        Path(args[0]).write_bytes(b"half a PNG")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        slice_strip(_result(), tmp_path / "strip.png")
    assert list(tmp_path.iterdir()) == []


def test_one_lung_palette_everywhere() -> None:
    assert LABEL_COLOURS == LUNG_COLOURS
    assert {k: v[:3] for k, v in MASK_COLOURS.items()} == LUNG_COLOURS
    hu = np.full((40, 40), -1000, dtype=np.int16)
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[10:30, 5:18] = 1
    mask[10:30, 22:35] = 2
    thumb = np.round(_thumbnail(hu, mask, 40) * 255).astype(int)
    for label, colour in LUNG_COLOURS.items():
        outline = (thumb == np.asarray(colour)).all(axis=2)
        assert outline.any(), label
        assert (mask[outline] == label).all()
