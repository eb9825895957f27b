"""Helpers of the service tests: polling a job and a live loopback server."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def wait_done(
    client: Any, job_id: str, *, timeout: float = 60.0, headers: dict[str, str] | None = None
) -> Any:
    """Poll until the job is done or failed; returns the last response."""
    deadline = time.time() + timeout
    while True:
        resp = client.get(f"/v1/studies/{job_id}", headers=headers or {})
        if resp.status_code != 200 or resp.json()["status"] in ("done", "failed"):
            return resp
        if time.time() > deadline:
            raise AssertionError(f"job {job_id} still {resp.json()['status']} after {timeout} s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn on a free loopback port in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
