"""Fault tests (issue 12): hostile or broken input must give a clear refusal, never a traceback or a 500.

Reuses the service tests' fake diagnoser (tests/report/fake_study.py) and helpers (tests/serve/serve_helpers.py)
and the ingestion tests' DICOM writer (tests/io/conftest.py, loaded here as a plain module).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "report"))
sys.path.insert(0, str(TESTS / "serve"))


def _conftest(folder: str) -> ModuleType:
    """Another test folder's conftest.py, loaded as a plain module (fixtures of sibling folders are not shared)."""
    spec = importlib.util.spec_from_file_location(
        f"covidct_tests_{folder}_helpers", TESTS / folder / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_IO = _conftest("io")
_SERVE = _conftest("serve")
#: The service tests' app factory (a fresh app on a work folder in tmp_path), the same fixture here.
make_app = _SERVE.make_app
#: The service tests' 8-slice DICOM series (with patient identifiers) zipped in a patient/series layout.
dicom_zip_bytes = _SERVE.dicom_zip_bytes


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test here runs with one torch thread (``one_torch_thread`` in tests/conftest.py)."""


@pytest.fixture
def dicom_writer() -> SimpleNamespace:
    """``phantom(n, rows, cols)`` and ``write_slice(path, hu, ...)`` of tests/io/conftest.py."""
    return SimpleNamespace(phantom=_IO.phantom, write_slice=_IO.write_slice)


@pytest.fixture
def nifti_bytes(tmp_path: Path) -> bytes:
    from fake_study import make_volume

    volume, _ = make_volume(n=12, size=48)
    return bytes(volume.save(tmp_path / "study.nii.gz").read_bytes())
