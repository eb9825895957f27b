"""The service and `covidct serve` with the real Diagnoser on a tiny untrained pipeline and a synthetic study."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_helpers import free_port, wait_done

from covidct.cli.main import build_parser
from covidct.errors import ConfigError

pytestmark = pytest.mark.slow


def _study_zip(cohort: Path) -> bytes:
    study = sorted(
        p for p in cohort.rglob("*") if p.is_dir() and any(f.suffix == ".dcm" for f in p.iterdir())
    )[0]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(study.iterdir()):
            zf.write(f, f"study/{f.name}")
    return buf.getvalue()


def test_service_with_the_real_diagnoser(tiny_model_dir: Path, small_cohort: Path, tmp_path: Path) -> None:
    import highdicom as hd
    from fastapi.testclient import TestClient
    from PIL import Image

    from covidct.diagnose import Diagnoser
    from covidct.serve.app import ServeSettings, create_app

    app = create_app(Diagnoser(tiny_model_dir, backend="torch"), settings=ServeSettings(work_dir=tmp_path))
    with TestClient(app) as client:
        job = client.post("/v1/studies", files={"file": ("s.zip", _study_zip(small_cohort))}).json()["id"]
        body = wait_done(client, job, timeout=120).json()
        assert body["status"] == "done", body
        result = body["result"]
        kept = result["kept_slices"]
        i = kept[len(kept) // 2]
        heat = np.asarray(Image.open(io.BytesIO(client.get(f"/v1/studies/{job}/heatmap/{i}.png").content)))
        grey = np.asarray(Image.open(io.BytesIO(client.get(f"/v1/studies/{job}/slices/{i}.png").content)))
        assert heat.shape[:2] == grey.shape and heat.shape[2] == 4
        report = client.get(f"/v1/studies/{job}/report.html").text
        assert "Grad-CAM heat maps" in report and "not a medical device" in report
        seg = hd.seg.segread(io.BytesIO(client.get(f"/v1/studies/{job}/seg.dcm").content))
        assert int(seg.NumberOfFrames) == 2 * result["n_slices"]
        assert client.get("/healthz").json()["model"]


def test_serve_parser_and_settings_errors(tmp_path: Path) -> None:
    from covidct.cli.serve import read_token, run

    args = build_parser().parse_args(["serve", "--model", str(tmp_path)])
    assert (args.host, args.port, args.workers, args.retention_minutes) == ("127.0.0.1", 8000, 1, 60.0)
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 8"):
        read_token(short)
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(tmp_path / "missing")
    good = tmp_path / "token"
    good.write_text("  0123456789abcdef \nignored\n")
    assert read_token(good) == "0123456789abcdef"
    bad = build_parser().parse_args(["serve", "--model", str(tmp_path), "--port", "70000"])
    with pytest.raises(ConfigError, match="not a TCP port"):
        run(bad)
    bad = build_parser().parse_args(["serve", "--model", str(tmp_path), "--workers", "0"])
    with pytest.raises(ConfigError, match="bad service setting"):
        run(bad)


def test_covidct_serve_command(tiny_model_dir: Path, tmp_path: Path) -> None:
    import httpx

    token = tmp_path / "token"
    token.write_text("a-long-enough-token\n")
    port = free_port()
    cmd = [sys.executable, "-m", "covidct", "serve", "--model", str(tiny_model_dir), "--port", str(port)]
    cmd += ["--token-file", str(token), "--work-dir", str(tmp_path / "work"), "--retention-minutes", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        health: Any = None
        while time.time() < deadline:
            try:
                health = httpx.get(url + "/healthz", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
        assert health is not None and health.status_code == 200, proc.stdout.read() if proc.stdout else ""
        assert httpx.post(url + "/v1/studies", files={"file": ("x", b"x")}).status_code == 401
        assert httpx.get(url + "/").status_code in (200, 307)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not any((tmp_path / "work").iterdir())  # the service removed its job folder on shutdown
