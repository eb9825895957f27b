"""Shared fixtures. Real data lives in ../shared/data beside the project and is never copied in."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("COVIDCT_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
).resolve()
COVID_CT_MD = SHARED_DATA / "covid-ct-md"
MORE_CT = SHARED_DATA / "more-ct"


def _require(path: Path) -> Path:
    if path.exists():
        return path
    if os.environ.get("COVIDCT_REQUIRE_SHARED_DATA") == "1":
        pytest.fail(f"{path} is missing but COVIDCT_REQUIRE_SHARED_DATA=1 (CI must not pass by skipping)")
    pytest.skip(f"real data not present at {path} (a clone without ../shared/data)")
    raise AssertionError  # unreachable, for type checkers


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def covid_ct_md() -> Path:
    return _require(COVID_CT_MD)


@pytest.fixture(scope="session")
def more_ct() -> Path:
    return _require(MORE_CT)


@pytest.fixture(scope="session")
def p001_dir(covid_ct_md: Path) -> Path:
    return _require(covid_ct_md / "Sample data" / "COVID-19 subjects" / "P001")


@pytest.fixture(scope="session")
def cap001_dir(covid_ct_md: Path) -> Path:
    return _require(covid_ct_md / "Sample data" / "Cap subjects" / "cap001")


@pytest.fixture(scope="session")
def normal001_dir(covid_ct_md: Path) -> Path:
    return _require(covid_ct_md / "Sample data" / "Normal subjects" / "normal001")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline folder with a random-weight ResNet-18 at 64x64 and the classical segmenter (fast, untrained)."""
    from covidct.testing import random_pipeline

    return random_pipeline(tmp_path_factory.mktemp("tiny_model"), name="tiny-random-resnet18")


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-patient synthetic cohort (one per class), small size, COVID-CT-MD layout."""
    from covidct.data.synth import generate_cohort

    out = tmp_path_factory.mktemp("cohort") / "c"
    return generate_cohort(out, patients=3, mix=(1 / 3, 1 / 3, 1 / 3), seed=7, size="small")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch limited to one thread for the test (the CI machine's cores are shared; threads only contend)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
