"""``covidct diagnose --engine ray`` on a real local Ray cluster (a head and a second worker node on loopback)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow]

# a loopback-only test cluster: no token authentication (Ray 2.5x enables it for clusters it starts), no usage stats
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1", "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """``ray start --head`` on 127.0.0.1 (no dashboard) plus a second worker node; ``ray stop`` afterwards."""
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists():
        if os.environ.get("COVIDCT_REQUIRE_SHARED_DATA") == "1":
            pytest.fail("ray is not installed; CI must run the Ray tests (make install adds covidct[ray])")
        pytest.skip("ray not installed (pip install 'covidct[ray]')")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="/tmp/rc")  # short: Ray's socket paths live under it
    env = {**os.environ, **RAY_ENV}
    common = ["--disable-usage-stats", "--node-ip-address", "127.0.0.1", f"--temp-dir={temp}"]
    head = [str(ray_bin), "start", "--head", f"--port={port}", "--include-dashboard=false", "--num-cpus=2",
            "--object-store-memory=1500000000", *common]  # fmt: skip
    subprocess.run(head, check=True, env=env, capture_output=True, timeout=180)
    address = f"127.0.0.1:{port}"
    worker = [str(ray_bin), "start", f"--address={address}", "--num-cpus=1", "--object-store-memory=1000000000",
              "--node-ip-address", "127.0.0.1"]  # fmt: skip
    try:
        subprocess.run(worker, check=True, env=env, capture_output=True, timeout=180)
        yield address
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=180)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cohort(small_cohort: Path, covid_ct_md: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest: 3 synthetic studies, an unreadable one in the middle, the 3 real series."""
    from covidct.data.covidctmd import read_covidctmd

    bad = tmp_path_factory.mktemp("bad") / "broken"
    bad.mkdir()
    (bad / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 100)
    synth = read_covidctmd(small_cohort)
    real = read_covidctmd(covid_ct_md)
    rows = [(f"synth-{r.case}", r.path, r.diagnosis) for r in synth[:2]]
    rows.append(("broken", bad, "normal"))
    rows += [(f"synth-{r.case}", r.path, r.diagnosis) for r in synth[2:]]
    rows += [(r.case, r.path, r.diagnosis) for r in real]
    manifest = tmp_path_factory.mktemp("manifest") / "studies.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "path", "truth"])
        w.writerows([(c, str(p), t) for c, p, t in rows])
    return manifest


def test_ray_gives_the_single_process_results_and_an_error_row(
    ray_cluster: str, cohort: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covidct.cohort import diagnose_cohort, read_study_list
    from covidct.diagnose import Diagnoser

    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    studies = read_study_list(cohort)
    summary = diagnose_cohort(
        studies, tiny_model_dir, tmp_path / "ray", engine="ray", ray_address=ray_cluster
    )
    assert (summary.done, summary.failed) == (len(studies) - 1, 1)
    assert "broken" in summary.errors
    diagnoser = Diagnoser(tiny_model_dir, workers=1)
    outcomes = list(diagnoser.diagnose_many([s.path for s in studies]))
    for study, outcome in zip(studies, outcomes, strict=True):
        if study.case == "broken":
            assert outcome.error is not None
            continue
        assert outcome.result is not None
        doc = json.loads((tmp_path / "ray" / f"{study.case}.json").read_text())
        assert doc["diagnosis"] == outcome.result.diagnosis, study.case
        got = np.array(
            [[np.nan if v is None else v for v in row] for row in doc["slice_probabilities"]], float
        )
        want = outcome.result.probabilities.astype(float)
        np.testing.assert_allclose(got, want, atol=1e-6, equal_nan=True, err_msg=study.case)
    rows = list(csv.DictReader((tmp_path / "ray" / "results.csv").open()))
    assert [r["case"] for r in rows] == [s.case for s in studies]
    (broken,) = [r for r in rows if r["case"] == "broken"]
    assert broken["error"] and not broken["prediction"]
    assert all(r["model_hash"].startswith("sha256:") for r in rows if not r["error"])
    assert (tmp_path / "ray" / "results.parquet").is_file()
    # covidct evaluate reads the table as it is (the error row left out)
    from covidct.evaluate.predictions import read_predictions

    records = read_predictions(tmp_path / "ray" / "results.csv")
    assert len(records) == len(studies) - 1


def finished_docs(out: Path) -> list[Path]:
    """Per-study JSON files written whole (atomic writes use hidden temporary names)."""
    return [p for p in out.glob("*.json") if not p.name.startswith(".")] if out.is_dir() else []


def test_a_run_killed_halfway_resumes_without_redoing_finished_studies(
    ray_cluster: str, cohort: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "covidct", "diagnose", "--manifest", str(cohort), "--engine", "ray",
           "--ray-address", ray_cluster, "--model", str(tiny_model_dir), "-o", str(out), "--no-progress"]  # fmt: skip
    env = {**os.environ, **RAY_ENV}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 600
    while len(finished_docs(out)) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.monotonic() < end, "no study finished in 10 minutes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    finished = {p.name: p.stat().st_mtime_ns for p in finished_docs(out)}
    assert 2 <= len(finished) < 7 and not (out / "results.csv").exists()
    run = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 1, run.stderr[-2000:]  # the broken study fails again, as a row
    assert f"{len(finished)} kept from before" in run.stderr
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was diagnosed again"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 7 and sum(1 for r in rows if r["error"]) == 1


def test_without_ray_the_engine_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from covidct.cohort.ray_engine import INSTALL_HINT, require_ray
    from covidct.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError) as info:
        require_ray()
    assert str(info.value) == INSTALL_HINT and "pip install 'covidct[ray]'" in str(info.value)
