"""Service tests: the fake diagnoser from tests/report, synthetic uploads, a live loopback server."""

from __future__ import annotations

import io
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_study import FakeDiagnoser, make_volume, phantom, write_dicom_series
from serve_helpers import LiveServer

from covidct.serve.app import ServeSettings, create_app


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test here runs with one torch thread (``one_torch_thread`` in tests/conftest.py)."""


@pytest.fixture
def nifti_bytes(tmp_path: Path) -> bytes:
    volume, _ = make_volume(n=12, size=48)
    return volume.save(tmp_path / "study.nii.gz").read_bytes()


@pytest.fixture
def dicom_zip_bytes(tmp_path: Path) -> bytes:
    hu, _ = phantom(8, 32)
    paths = write_dicom_series(tmp_path / "dicom", hu)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths:
            zf.write(p, f"Doe_Jane/series1/{p.name}")
    return buf.getvalue()


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., Any]:
    def factory(*, diagnoser: Any = None, **settings: Any) -> Any:
        settings.setdefault("work_dir", tmp_path / "work")
        return create_app(diagnoser or FakeDiagnoser(seed=0), settings=ServeSettings(**settings))

    return factory


@pytest.fixture
def live_server(make_app: Callable[..., Any]) -> Callable[..., LiveServer]:
    def start(**kwargs: Any) -> LiveServer:
        return LiveServer(make_app(**kwargs))

    return start
