"""Report tests: one torch thread (the CI machine's two cores are shared; threads only contend)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# helper modules beside the tests (fake_study) are imported by name; pytest runs in importlib mode
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test here runs with one torch thread (``one_torch_thread`` in tests/conftest.py)."""
