"""The DICOM node against a real Orthanc, beside the HTTP upload path, in one run (issue 14).

1. Latency: a 148-slice real series (P001) pushed from Orthanc to ``covidct listen`` (C-STORE); time from the
   last instance acknowledged (Orthanc's synchronous store returns) to the SR stored in Orthanc, and the
   node's own diagnosis time. ``--repeats`` times, each with fresh UIDs.
2. Ten studies at once: ``--studies`` copies of the three real series (new UIDs) pushed by as many concurrent
   Orthanc store jobs; every study answered, none twice (one SR per study), wall time, peak resident memory
   of the node (with its decoding workers).
3. The same studies as zips uploaded at once to ``covidct serve`` (HTTP), each polled until done: wall time and
   peak memory of the service.

    .venv/bin/python benchmarks/bench_node.py --out benchmarks/results/node.json

Without ``--model`` a tiny untrained pipeline (random ResNet-18 at 64 px, classical segmenter) is used: the
figures measure the node and the service, not a classifier. Needs Debian's orthanc and orthanc-dicomweb.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.uid import generate_uid

from bench_service_faults import tree_rss_mb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "node"))
from node_helpers import Orthanc, free_port, running_orthanc  # noqa: E402

MD = ROOT.parent / "shared/data/covid-ct-md/Sample data"
SERIES = [MD / "COVID-19 subjects/P001", MD / "Cap subjects/cap001", MD / "Normal subjects/normal001"]


def copies(n: int, dest: Path) -> list[list[bytes]]:
    """``n`` studies: the real series in turn, each with new study, series and instance UIDs (pixels untouched)."""
    originals = [sorted(p.rglob("*.dcm")) for p in SERIES]
    out = []
    for i in range(n):
        study, series, files = generate_uid(), generate_uid(), []
        for f in originals[i % len(originals)]:
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            files.append(buf.getvalue())
        out.append(files)
    return out


class Sampler:
    """Peak resident memory of a process tree, sampled every 0.25 s."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            with contextlib.suppress(subprocess.SubprocessError, ValueError):
                self.peak = max(self.peak, tree_rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return round(self.peak, 1)


def upload_to_orthanc(o: Orthanc, files: list[bytes]) -> tuple[str, str]:
    last: dict[str, Any] = {}
    for data in files:
        last = o.rest("POST", "/instances", content=data)
    return last["ParentStudy"], last["ParentSeries"]


def srs(o: Orthanc, study: str) -> int:
    return sum(1 for s in o.series_of_study(study) if s["MainDicomTags"].get("Modality") == "SR")


def wait_sr(o: Orthanc, study: str, limit_s: float) -> float:
    end = time.monotonic() + limit_s
    while srs(o, study) == 0:
        if time.monotonic() > end:
            raise TimeoutError("no SR")
        time.sleep(0.1)
    return time.perf_counter()


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def node_part(
    o: Orthanc, model: Path, studies: list[list[bytes]], repeats: int, tmp: Path, quiet: float
) -> dict[str, Any]:
    port = free_port()
    log = tmp / "listen.log"
    proc = start(
        [sys.executable, "-m", "covidct", "listen", "--model", str(model), "--port", str(port), "--store",
         str(tmp / "node"), "--quiet-seconds", str(quiet), "--send-to", f"{o.aet}@127.0.0.1:{o.dicom_port}"],
        log,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        end = time.monotonic() + 120
        while True:
            try:
                o.register("bench", "COVIDCT", port)
                o.rest("POST", "/modalities/bench/echo", json={})
                break
            except httpx.HTTPError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise RuntimeError(log.read_text()[-2000:]) from None
                time.sleep(0.5)
        latency = []
        for r in range(repeats):
            study, series = upload_to_orthanc(o, copies(1, tmp)[0])
            o.rest("POST", "/modalities/bench/store", json={"Resources": [series], "Synchronous": True})
            t_last = time.perf_counter()
            latency.append(round(wait_sr(o, study, 600) - t_last, 2))
            print(f"latency {r + 1}: {latency[-1]} s", flush=True)
        ids = [upload_to_orthanc(o, files) for files in studies]
        sampler = Sampler(proc.pid)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(ids)) as pool:
            list(
                pool.map(
                    lambda s: o.rest(
                        "POST", "/modalities/bench/store", json={"Resources": [s[1]], "Synchronous": True}
                    ),
                    ids,
                )
            )
        t_received = time.perf_counter() - t0
        done = [wait_sr(o, study, 1800) - t0 for study, _ in ids]
        time.sleep(2 * quiet + 2)
        per_study = [srs(o, study) for study, _ in ids]
        answered_lines = [ln for ln in log.read_text().splitlines() if "result objects sent" in ln]
        records = [json.loads(f.read_text()) for f in (tmp / "node" / "answered").glob("*.json")]
        stages = {
            k: round(sum(r[k] for r in records) / len(records), 2)
            for k in ("diagnose_s", "outputs_s", "send_s")
        }
        return {
            "quiet_seconds": quiet,
            "last_instance_to_sr_s": latency,
            "concurrent": {
                "studies": len(ids),
                "all_received_s": round(t_received, 1),
                "all_answered_s": round(max(done), 1),
                "studies_per_minute": round(len(ids) / max(done) * 60, 2),
                "srs_per_study": per_study,
                "answers_sent": len(answered_lines),
                "mean_stage_s": stages,
                "peak_rss_mb": sampler.stop(),
            },
        }
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def http_part(model: Path, studies: list[list[bytes]], tmp: Path) -> dict[str, Any]:
    port = free_port()
    proc = start(
        [sys.executable, "-m", "covidct", "serve", "--model", str(model), "--port", str(port), "--max-pending",
         str(len(studies) + 2), "--work-dir", str(tmp / "serve")],
        tmp / "serve.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    zips = []
    for files in studies:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for i, data in enumerate(files):
                z.writestr(f"IM{i:04d}.dcm", data)
        zips.append(buf.getvalue())
    try:
        end = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/healthz", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise RuntimeError((tmp / "serve.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        sampler = Sampler(proc.pid)
        t0 = time.perf_counter()

        def one(data: bytes) -> float:
            r = httpx.post(
                url + "/v1/studies", files={"file": ("study.zip", data, "application/zip")}, timeout=600
            )
            r.raise_for_status()
            job = r.json()["id"]
            while httpx.get(f"{url}/v1/studies/{job}", timeout=60).json()["status"] not in ("done", "failed"):
                time.sleep(0.2)
            return time.perf_counter() - t0

        with ThreadPoolExecutor(len(zips)) as pool:
            done = list(pool.map(one, zips))
        return {
            "studies": len(zips),
            "all_answered_s": round(max(done), 1),
            "studies_per_minute": round(len(zips) / max(done) * 60, 2),
            "peak_rss_mb": sampler.stop(),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="pipeline folder (default: a tiny random one)")
    p.add_argument("--studies", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quiet-seconds", type=float, default=1.0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import machine

    with tempfile.TemporaryDirectory(prefix="bench-node-") as t:
        tmp = Path(t)
        model = args.model
        if model is None:
            from covidct.testing import random_pipeline

            model = random_pipeline(tmp / "model", name="tiny-random-resnet18")
        studies = copies(args.studies, tmp)
        with running_orthanc(tmp / "orthanc") as o:
            node = node_part(o, model, studies, args.repeats, tmp, args.quiet_seconds)
        print("node:", json.dumps(node), flush=True)
        http = http_part(model, studies, tmp)
        print("http:", json.dumps(http), flush=True)
    doc = {
        "machine": machine(),
        "model": str(args.model or "tiny random pipeline"),
        "node": node,
        "http": http,
    }
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
