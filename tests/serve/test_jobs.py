"""JobStore: a failed job's upload is gone before its failed status can be seen."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from covidct.errors import InputError
from covidct.serve import jobs as jobs_mod
from covidct.serve.jobs import FAILED, JobStore


@pytest.mark.parametrize("how", ["refused", "run fails", "service fault"])
def test_upload_is_removed_before_the_failed_status_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    def run(job: Any) -> Any:
        if how == "run fails":
            raise InputError("no CT images in the upload")
        raise RuntimeError("boom")

    store = JobStore(tmp_path, run)
    seen: list[str] = []
    real_rmtree = jobs_mod.shutil.rmtree

    def rmtree(path: Any, *args: Any, **kw: Any) -> None:
        if Path(path).name == "input":
            seen.append(job.status)  # what a polling client could see while the upload still exists
        real_rmtree(path, *args, **kw)

    monkeypatch.setattr(jobs_mod.shutil, "rmtree", rmtree)
    job = store.create()
    (job.dir / "input").mkdir()
    (job.dir / "input" / "a.dcm").write_bytes(b"x")
    if how == "refused":
        store.fail(job, "not a DICOM file")
    else:
        store.submit(job)
        deadline = time.time() + 30
        while job.finished is None and time.time() < deadline:
            time.sleep(0.01)
    assert job.status == FAILED and not (job.dir / "input").exists()
    assert seen and FAILED not in seen
    store.close()
