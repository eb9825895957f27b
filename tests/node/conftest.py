"""DICOM node tests against a real Orthanc (Debian's package) on loopback, started and stopped here."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))  # fake_study

from node_helpers import Orthanc, available, running_orthanc


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test here runs with one torch thread (the CI machine's two cores are shared)."""


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    reason = available()
    if reason is not None:
        if os.environ.get("COVIDCT_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"{reason}; CI must run the PACS tests (make test installs it)")
        pytest.skip(reason)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as o:
        yield o


@pytest.fixture(scope="module")
def diagnoser(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from covidct.diagnose import Diagnoser

    return Diagnoser(tiny_model_dir, workers=1)
