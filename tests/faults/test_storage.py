"""Issue 12, item 8: the disk kept for finished studies is bounded (oldest deleted first)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from serve_helpers import wait_done


def test_finished_studies_are_bounded_oldest_first(make_app: Callable[..., Any], nifti_bytes: bytes) -> None:
    with TestClient(make_app(max_kept_mb=0.2)) as client:  # about two studies of this size
        store = client.app.state.store
        ids = []
        for _ in range(4):
            job = client.post("/v1/studies", files={"file": ("s.nii.gz", nifti_bytes)}).json()["id"]
            assert wait_done(client, job).json()["status"] == "done"
            ids.append(job)
        kept = [j for j in ids if client.get(f"/v1/studies/{j}").status_code == 200]
        assert kept == ids[-len(kept) :] and 1 <= len(kept) <= 2, kept  # the newest survive
        assert not (store.work_dir / ids[0]).exists()
        size = sum(f.stat().st_size for f in store.work_dir.rglob("*") if f.is_file())
        assert size <= 0.2 * (1 << 20) + 1024
