"""Load test of `covidct serve` on loopback: N concurrent uploads against a bounded worker pool.

Starts the service in-process with uvicorn on 127.0.0.1 (a free port; nothing else is ever contacted),
uploads one synthetic chest CT (a zip of DICOM files, or NIfTI) ``--requests`` times from ``--concurrency``
client threads, polls each job to the end and prints: accepted/refused/failed counts, upload latency,
time to result (p50/p95/max), throughput, peak resident memory of the process and peak disk use of the
job folders. Bounded: stops waiting after ``--max-seconds``.

    .venv/bin/python benchmarks/loadtest.py --requests 20 --concurrency 20 --workers 2

Without ``--model`` a tiny untrained pipeline (random ResNet-18 at 64 px, classical segmenter) is built
in a temporary folder: the figures then measure the service (upload, ingestion, segmentation, queueing),
not a production classifier.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def study_bytes(kind: str, tmp: Path, *, seed: int) -> tuple[str, bytes]:
    """One synthetic COVID-19 patient (128 x 128, small) as a DICOM zip or NIfTI."""
    from covidct.data.synth import generate_cohort

    cohort = generate_cohort(tmp / "cohort", patients=1, mix=("covid19",), seed=seed, size="small")
    study = next(
        p for p in sorted(cohort.rglob("*")) if p.is_dir() and any(f.suffix == ".dcm" for f in p.iterdir())
    )
    if kind == "nifti":
        from covidct.io import load_study

        return "study.nii.gz", load_study(study).save(tmp / "study.nii.gz").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(study.iterdir()):
            zf.write(f, f"study/{f.name}")
    return "study.zip", buf.getvalue()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="pipeline MODEL_DIR (default: a tiny untrained one)")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="service worker pool size")
    ap.add_argument("--max-pending", type=int, default=32)
    ap.add_argument("--study", choices=("zip", "nifti"), default="zip")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="give up waiting after this long")
    args = ap.parse_args(argv)
    if not (1 <= args.requests <= 200 and 1 <= args.concurrency <= 64):
        ap.error("--requests must be 1-200 and --concurrency 1-64 (this is a bounded load test)")

    import httpx
    import uvicorn

    from covidct.diagnose import Diagnoser
    from covidct.serve.app import ServeSettings, create_app
    from covidct.testing import random_pipeline

    with tempfile.TemporaryDirectory(prefix="covidct-loadtest-") as tmp_s:
        tmp = Path(tmp_s)
        model = args.model or random_pipeline(tmp / "model", name="loadtest-random-resnet18")
        name, payload = study_bytes(args.study, tmp, seed=11)
        settings = ServeSettings(workers=args.workers, max_pending=args.max_pending, work_dir=tmp / "work")
        app = create_app(Diagnoser(model, backend="torch"), settings=settings)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        disk_peak = 0
        stop = threading.Event()

        def watch_disk() -> None:
            nonlocal disk_peak
            while not stop.wait(0.5):
                disk_peak = max(disk_peak, folder_bytes(tmp / "work"))

        threading.Thread(target=watch_disk, daemon=True).start()
        deadline = time.time() + args.max_seconds

        def one(_: int) -> dict[str, Any]:
            with httpx.Client(base_url=url, timeout=120) as client:
                t0 = time.perf_counter()
                resp = client.post("/v1/studies", files={"file": (name, payload)})
                t_up = time.perf_counter() - t0
                if resp.status_code != 202:
                    return {"outcome": f"refused {resp.status_code}", "upload_s": t_up}
                job = resp.json()["id"]
                while time.time() < deadline:
                    r = client.get(f"/v1/studies/{job}")
                    status = r.json().get("status")
                    if status in ("done", "failed"):
                        return {"outcome": status, "upload_s": t_up, "total_s": time.perf_counter() - t0}
                    time.sleep(0.2)
                return {"outcome": "timeout", "upload_s": t_up}

        t_start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t_start
        stop.set()
        server.should_exit = True
        thread.join(timeout=30)

    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    ups = [r["upload_s"] for r in results]
    totals = [r["total_s"] for r in results if "total_s" in r]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"loadtest: {args.requests} uploads of a {len(payload) / 1e6:.1f} MB {args.study} study, "
        f"{args.concurrency} clients, {args.workers} workers, loopback, {os.cpu_count()} CPUs"
    )
    print(f"outcomes: {outcomes}")
    print(f"upload latency s: p50 {pct(ups, 0.5):.2f}  p95 {pct(ups, 0.95):.2f}  max {max(ups):.2f}")
    if totals:
        print(
            f"time to result s: p50 {pct(totals, 0.5):.2f}  p95 {pct(totals, 0.95):.2f}  max {max(totals):.2f}"
            f"  mean {statistics.fmean(totals):.2f}"
        )
    print(f"wall {wall:.1f} s, throughput {60 * len(totals) / wall:.1f} studies/min")
    print(
        f"peak RSS {rss_mb:.0f} MB (whole process: server + clients), peak job-folder disk {disk_peak / 1e6:.1f} MB"
    )
    return 0 if outcomes.get("done", 0) == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
