"""Issue 12, item 3: no process outlives covidct, even when it is killed (SIGKILL, out-of-memory killer)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = """
import os, sys
from covidct.io import loader

if __name__ == "__main__":
    pool = loader._shared_pool(2, loader._pool_context())
    pids = {pool.submit(os.getpid).result() for _ in range(8)}
    print(" ".join(map(str, sorted(pids))), flush=True)
    os.kill(os.getpid(), 9)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # an exited process that nobody has reaped yet is gone for our purpose


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_decoding_workers_end_with_a_killed_parent(tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr
    workers = [int(p) for p in run.stdout.split()]
    assert workers and os.getpid() not in workers
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "decoding workers outlived their killed parent"
