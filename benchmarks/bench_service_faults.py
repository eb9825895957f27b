"""Faults under load (issue 12): `covidct serve` as a separate process on loopback, measured from outside.

In one run:
1. ``--bursts`` (default 20 and 40) concurrent uploads of one study zip against ``--max-pending`` slots: how many
   were accepted (202) or refused (503, with Retry-After), that every accepted job ends done, and the disk of
   the work folder and the resident memory of the service (with its decoding workers) before and after,
   once every finished study has had slices, masks and its SEG fetched (what the viewer does).
2. SIGTERM, then SIGKILL, each with ``--in-flight`` jobs queued or running, then a restart on the same
   ``--work-dir``: what each id answers afterwards (done / failed with which reason / unknown).
3. A zip bomb (a small zip holding one 2 GiB member of zeros): time to the refusal, and ``/healthz`` answering
   meanwhile.

    .venv/bin/python benchmarks/bench_service_faults.py --out benchmarks/results/service-faults.json

Without ``--model`` a tiny untrained pipeline (random ResNet-18 at 64 px, classical segmenter) is built in a
temporary folder: the figures measure the service, not a classifier. The study defaults to the real series P001
of ``../shared/data/covid-ct-md`` (148 slices) when present, else a synthetic small series.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from loadtest import folder_bytes, study_bytes

ROOT = Path(__file__).resolve().parents[1]
P001 = ROOT.parent / "shared/data/covid-ct-md/Sample data/COVID-19 subjects/P001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,rss="], capture_output=True, text=True, check=True).stdout
    rows = [tuple(int(v) for v in line.split()) for line in out.splitlines() if line.strip()]
    children: dict[int, list[int]] = {}
    rss = {}
    for p, pp, r in rows:
        children.setdefault(pp, []).append(p)
        rss[p] = r
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 1024


def adopted() -> list[str]:
    """Live (not zombie) processes adopted by PID 1, as 'pid cmd': what a stopped service may leave behind."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,stat=,cmd="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines() if line.strip()]
    return [f"{r[0]} {r[3][:60]}" for r in rows if len(r) == 4 and r[1] == "1" and not r[2].startswith("Z")]


def disk_mb(path: Path) -> float:
    return folder_bytes(path) / 2**20


def study_zip(study: Path | None, tmp: Path) -> bytes:
    if study is None:
        return study_bytes("dicom", tmp, seed=3)[1]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(study.iterdir()):
            zf.write(f, f"study/{f.name}")
    return buf.getvalue()


def bomb_zip() -> bytes:
    buf = io.BytesIO()
    block = bytes(1 << 24)
    with (
        zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("IM0001.dcm", "w", force_zip64=True) as member,
    ):
        for _ in range(128):  # 2 GiB of zeros
            member.write(block)
    return buf.getvalue()


class Service:
    def __init__(self, model: Path, work: Path, port: int, log: Path, max_pending: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "covidct", "serve", "--model", str(model), "--port", str(port)]
        cmd += ["--work-dir", str(work), "--max-pending", str(max_pending), "--retention-minutes", "600"]
        self.log = open(log, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError(f"the service did not start; see {log}")

    def stop(self, sig: int = signal.SIGTERM) -> float:
        t0 = time.perf_counter()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=300)
        self.log.close()
        return time.perf_counter() - t0


def upload(url: str, data: bytes, name: str = "study.zip") -> tuple[int, str | None, str | None]:
    r = httpx.post(url + "/v1/studies", files={"file": (name, data)}, timeout=300)
    job = r.json().get("id") if r.status_code == 202 else None
    return r.status_code, r.headers.get("retry-after"), job


def wait_all(url: str, ids: list[str], limit_s: float) -> Counter[str]:
    deadline, states = time.time() + limit_s, {}
    while time.time() < deadline:
        states = {i: httpx.get(f"{url}/v1/studies/{i}", timeout=30).json().get("status") for i in ids}
        if all(s in ("done", "failed") for s in states.values()):
            break
        time.sleep(2)
    return Counter(str(s) for s in states.values())


def view(url: str, ids: list[str]) -> None:
    """What the viewer does per finished study: a few slices and masks, and the SEG."""
    for i in ids:
        for k in (20, 60, 100):
            httpx.get(f"{url}/v1/studies/{i}/slices/{k}.png", timeout=60)
            httpx.get(f"{url}/v1/studies/{i}/mask/{k}.png", timeout=60)
        httpx.get(f"{url}/v1/studies/{i}/seg.dcm", timeout=300)


def burst(svc: Service, data: bytes, n: int, work: Path, limit_s: float) -> dict[str, Any]:
    rss0, disk0 = tree_rss_mb(svc.proc.pid), disk_mb(work)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda _: upload(svc.url, data), range(n)))
    ids = [j for _, _, j in answers if j]
    states = wait_all(svc.url, ids, limit_s)
    elapsed = time.perf_counter() - t0
    rss_done = tree_rss_mb(svc.proc.pid)
    view(svc.url, ids)
    return {
        "uploads": n,
        "accepted": sum(c == 202 for c, _, _ in answers),
        "refused_503": sum(c == 503 for c, _, _ in answers),
        "503_with_retry_after": sum(c == 503 and ra is not None for c, ra, _ in answers),
        "other": sorted(c for c, _, _ in answers if c not in (202, 503)),
        "ended": dict(states),
        "seconds": round(elapsed, 1),
        "rss_mb": [round(rss0), round(rss_done), round(tree_rss_mb(svc.proc.pid))],
        "disk_mb": [round(disk0), round(disk_mb(work))],
    }


def interrupted(
    model: Path, work: Path, data: bytes, n: int, sig: int, log: Path, port: int
) -> dict[str, Any]:
    svc = Service(model, work, port, log, max_pending=64)
    ids = [j for _, _, j in (upload(svc.url, data) for _ in range(n)) if j]
    deadline = time.time() + 120
    while time.time() < deadline:  # one running (or done), the others queued
        states = [httpx.get(f"{svc.url}/v1/studies/{i}").json()["status"] for i in ids]
        if "running" in states:
            break
        time.sleep(0.2)
    before = Counter(states)
    stop_s = svc.stop(sig)
    svc = Service(model, work, port, log, max_pending=64)
    states_after = wait_all(svc.url, ids, 600)
    answers = Counter()
    for i in ids:
        r = httpx.get(f"{svc.url}/v1/studies/{i}")
        answers[f"{r.status_code} {r.json().get('status') or r.json().get('detail', '')[:40]}"] += 1
    svc.stop()
    return {
        "signal": signal.Signals(sig).name,
        "jobs": len(ids),
        "states_at_signal": dict(before),
        "service_stopped_s": round(stop_s, 2),
        "after_restart": dict(states_after),
        "answers": dict(answers),
    }


def bomb(svc: Service) -> dict[str, Any]:
    data = bomb_zip()
    answers: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            ok = httpx.get(svc.url + "/healthz", timeout=30).status_code == 200
            answers.append(time.perf_counter() - t if ok else float("inf"))
            time.sleep(0.2)

    th = threading.Thread(target=probe)
    th.start()
    t0 = time.perf_counter()
    r = httpx.post(svc.url + "/v1/studies", files={"file": ("bomb.zip", data)}, timeout=300)
    refused_s = time.perf_counter() - t0
    stop.set()
    th.join()
    return {
        "zip_bytes": len(data),
        "status": r.status_code,
        "message": r.json().get("detail", r.text)[:160],
        "refused_in_s": round(refused_s, 2),
        "healthz_answers": len(answers),
        "healthz_max_s": round(max(answers), 3) if answers else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="pipeline folder (default: a tiny random one)")
    ap.add_argument(
        "--study", type=Path, default=P001 if P001.is_dir() else None, help="a DICOM series folder"
    )
    ap.add_argument("--bursts", type=int, nargs="+", default=[20, 40])
    ap.add_argument("--max-pending", type=int, default=16)
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="covidct-faults-"))
    orphans_before = set(adopted())
    model = args.model
    if model is None:
        from covidct.testing import random_pipeline

        model = random_pipeline(tmp / "model", name="tiny-random-resnet18")
    data = study_zip(args.study, tmp)
    log = tmp / "serve.log"
    port = free_port()
    report: dict[str, Any] = {
        "study_zip_mb": round(len(data) / 2**20, 1),
        "study": "P001" if args.study else "synthetic",
    }
    work = tmp / "work"
    svc = Service(model, work, port, log, args.max_pending)
    report["bursts"] = [burst(svc, data, n, work, 1800) for n in args.bursts]
    report["bomb"] = bomb(svc)
    svc.stop()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        key = signal.Signals(sig).name
        report[key] = interrupted(model, tmp / f"work-{key}", data, args.in_flight, sig, log, port)
    report["orphans_alive"] = sorted(set(adopted()) - orphans_before)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print(f"service log: {log}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
