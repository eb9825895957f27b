"""Jobs of the diagnosis service: a bounded worker pool, an in-memory job store and retention cleanup.

Each job owns a private folder (mode 0700) under the service's work folder holding the upload and the
extracted study while it runs; once done, the result, its arrays (read from disk one slice at a time, so
finished results cost no RAM) and only the DICOM headers of the upload (see :mod:`covidct.serve.stored`),
and cached images. A job's folder and record are deleted ``retention_s`` after it finished. Nothing here
logs upload names or contents, only job ids, sizes and outcomes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidct._files import atomic_write_text
from covidct.errors import CovidCTError
from covidct.serve.stored import RESULT_FILE, load_result, store_result

if TYPE_CHECKING:
    from covidct.diagnose import StudyResult

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
#: On disk only: the upload is still being received (a folder left in this state by a crash is swept).
RECEIVING = "receiving"
#: Each job's state in its folder (durable stores): what a restart reads back.
STATE_FILE = "job.json"
_JOB_ID = re.compile(r"[0-9a-f]{32}")


class QueueFull(Exception):
    """Too many jobs are queued or running (HTTP 503)."""


@dataclass
class Job:
    """One uploaded study and what became of it."""

    id: str
    dir: Path
    created: float = field(default_factory=time.time)
    status: str = QUEUED
    started: float | None = None
    finished: float | None = None
    upload_bytes: int = 0
    source: Path | None = None  # what the diagnoser reads: the extracted study folder or the uploaded file
    kind: str = ""  # sniffed upload format (zip, dicom, nifti, ...)
    error: str | None = None
    user_error: bool = False  # True when the input was at fault (HTTP 4xx), False for a service fault
    result: StudyResult | None = None
    #: Set by DELETE while the job is queued or running: its outcome is thrown away and its data deleted.
    cancelled: bool = False
    future: Future[None] | None = field(default=None, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Held while a document (report, SEG) of this job is generated, so concurrent requests make it once.
    documents: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status, "created": self.created}
        if self.started is not None:
            out["started"] = self.started
        if self.finished is not None:
            out["finished"] = self.finished
        if self.error is not None:
            out["error"] = self.error
        if self.cancelled:
            out["cancelled"] = True
        return out


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 when it is gone)."""
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _path_forms(path: Path) -> set[str]:
    """The spellings of ``path`` a message may contain: as given, absolute, and with links resolved."""
    forms = {str(path), os.path.abspath(path), os.path.realpath(path)}
    return {f for f in forms if f not in ("", ".", "/")}


def public_message(text: str, job: Job, work_dir: Path) -> str:
    """``text`` with every server path of ``job`` replaced by ``upload``: what clients and logs may see.

    Error messages of ``covidct.io`` and the diagnoser start with the path they read (the job's extracted
    study, the saved upload or a file inside it); the service never hands out where it keeps uploads. The job
    folder, its ``input`` folder, the saved upload (``input/upload.*``) and the extracted study
    (``input/study``) all become ``upload``; a file inside the study keeps its path relative to it
    (``upload/series1/IM0001.dcm``: names the client sent). Any other mention of the work folder becomes
    ``upload`` too.
    """
    roots = sorted(_path_forms(job.dir), key=len, reverse=True)
    inner = r"(?:[/\\]input(?:[/\\](?:study|upload(?:\.[A-Za-z0-9]+)*))?)?"
    pattern = "(?:" + "|".join(re.escape(r) for r in roots) + ")" + inner
    out = re.sub(pattern, "upload", text)
    for form in sorted(_path_forms(work_dir), key=len, reverse=True):
        out = out.replace(form, "upload")
    return out


class JobStore:
    """Create, run, look up and expire jobs.

    ``run(job) -> StudyResult`` does the work in one of ``workers`` threads. At most ``max_pending`` jobs
    may be queued or running at once; :meth:`create` raises :class:`QueueFull` beyond that, so memory and
    disk use stay bounded whatever the number of clients.
    """

    def __init__(
        self,
        work_dir: Path,
        run: Callable[[Job], StudyResult],
        *,
        workers: int = 1,
        max_pending: int = 32,
        retention_s: float = 3600.0,
        sweep_interval_s: float | None = None,
        durable: bool = False,
        max_kept_bytes: int | None = None,
    ) -> None:
        if workers < 1 or max_pending < 1:
            raise ValueError(f"workers and max_pending must be >= 1, got {workers} and {max_pending}")
        if retention_s <= 0:
            raise ValueError(f"retention must be positive, got {retention_s} s")
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._run = run
        self.max_pending = max_pending
        self.retention_s = float(retention_s)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="covidct-job")
        self._stop = threading.Event()
        interval = sweep_interval_s if sweep_interval_s is not None else min(60.0, max(1.0, retention_s / 4))
        self._sweeper = threading.Thread(
            target=self._sweep_loop, args=(interval,), name="covidct-retention", daemon=True
        )
        self._sweeper.start()
        self.max_kept_bytes = max_kept_bytes
        self.durable = durable
        if durable:
            self._restore()

    # --- lifecycle ----------------------------------------------------------------------------------
    def create(self) -> Job:
        """Reserve a slot and a private folder for a new job (raises :class:`QueueFull`)."""
        with self._lock:
            if self.pending() >= self.max_pending:
                raise QueueFull(f"{self.max_pending} studies are already queued or running; retry later")
            job_id = uuid.uuid4().hex
            folder = self.work_dir / job_id
            folder.mkdir(mode=0o700)
            job = Job(id=job_id, dir=folder)
            self._jobs[job_id] = job
        self._save_state(job, RECEIVING)
        return job

    def submit(self, job: Job) -> None:
        """Queue ``job`` on the worker pool (a job cancelled while its upload was stored is dropped)."""
        with job.lock:
            if job.cancelled:
                self._forget(job)
                return
            self._save_state(job)  # on disk as queued before the client hears 202
            job.future = self._pool.submit(self._execute, job)

    def public_message(self, job: Job, text: str) -> str:
        """``text`` without server paths (see :func:`public_message`)."""
        return public_message(text, job, self.work_dir)

    def fail(self, job: Job, message: str, *, user_error: bool = True) -> None:
        """Mark a job failed without running it (e.g. its upload was refused) and drop its data now.

        ``message`` is stored (and later shown to the client) without server paths.
        """
        message = self.public_message(job, message)
        shutil.rmtree(
            job.dir / "input", ignore_errors=True
        )  # before the status: a client seeing it finds none
        with job.lock:
            job.status, job.error, job.user_error, job.finished = FAILED, message, user_error, time.time()
        self._save_state(job)

    def _execute(self, job: Job) -> None:
        with job.lock:
            if job.cancelled:
                return
            job.status, job.started = RUNNING, time.time()
        self._save_state(job)
        try:
            result = self._run(job)
            if job.cancelled:
                self._forget(job)
                log.info("job %s: cancelled while running; its outcome and data are deleted", job.id)
                return
            result = store_result(result, job.dir)
        except CovidCTError as exc:
            log.info("job %s: input refused (%s)", job.id, type(exc).__name__)
            self._finish(job, error=self.public_message(job, str(exc)), user_error=True)
        except Exception as exc:  # a service fault: keep the service alive, report without data
            log.error("job %s: failed with %s", job.id, type(exc).__name__)
            if log.isEnabledFor(logging.DEBUG):  # the traceback, with server paths rewritten like messages
                trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                log.debug("job %s: %s", job.id, self.public_message(job, trace))
            error = f"internal error while diagnosing ({type(exc).__name__}); see the service log"
            self._finish(job, error=error, user_error=False)
        else:
            self._finish(job, result=result)
            log.info("job %s: done in %.1f s", job.id, time.time() - (job.started or job.created))

    def _finish(
        self, job: Job, *, result: Any = None, error: str | None = None, user_error: bool = True
    ) -> None:
        """Publish a run's outcome. A failed job's upload is dropped first (nothing to show: not kept until
        the end of the retention), so a client that sees the status never finds the upload still there."""
        if error is not None:
            shutil.rmtree(job.dir / "input", ignore_errors=True)
        with job.lock:
            cancelled = job.cancelled
            if cancelled:
                pass
            elif error is None:
                job.status, job.result = DONE, result
            else:
                job.status, job.error, job.user_error = FAILED, error, user_error
            job.finished = time.time()
        if cancelled:
            self._forget(job)
        else:
            self._save_state(job)
            self._enforce_quota()

    # --- queries ------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """A snapshot of every job held."""
        with self._lock:
            return list(self._jobs.values())

    def pending(self) -> int:
        """Jobs queued or running."""
        return sum(1 for j in list(self._jobs.values()) if j.status in (QUEUED, RUNNING))

    def counts(self) -> dict[str, int]:
        out = {QUEUED: 0, RUNNING: 0, DONE: 0, FAILED: 0}
        for j in list(self._jobs.values()):
            out[j.status] = out.get(j.status, 0) + 1
        return out

    # --- retention ----------------------------------------------------------------------------------
    def delete(self, job_id: str) -> bool:
        """Forget a finished job and delete its folder now; False when unknown or still running."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status in (QUEUED, RUNNING):
                return False
            del self._jobs[job_id]
        shutil.rmtree(job.dir, ignore_errors=True)
        return True

    def cancel(self, job_id: str) -> str | None:
        """DELETE of any job: ``"deleted"`` (finished, or queued and never started: gone now), ``"cancelling"``
        (running: its outcome is thrown away and its data deleted when the current stage returns), or None
        for an unknown id."""
        job = self.get(job_id)
        if job is None:
            return None
        if self.delete(job_id):
            return "deleted"
        with job.lock:  # _finish publishes under this lock: either it sees the flag, or we see it finished
            finished = job.status in (DONE, FAILED)
            job.cancelled = not finished
            never_started = not finished and job.future is not None and job.future.cancel()
        if finished:
            return "deleted" if self.delete(job_id) else None
        if never_started:
            self._forget(job)
            return "deleted"
        log.info("job %s: cancellation requested", job.id)
        return "cancelling"

    def _forget(self, job: Job) -> None:
        """Drop a cancelled job's record and folder."""
        with self._lock:
            self._jobs.pop(job.id, None)
        shutil.rmtree(job.dir, ignore_errors=True)

    def _enforce_quota(self) -> None:
        """Delete the oldest finished studies while their folders hold more than ``max_kept_bytes`` in all
        (the most recent one is always kept, whatever its size)."""
        if self.max_kept_bytes is None:
            return
        finished = sorted(
            (j for j in list(self._jobs.values()) if j.status in (DONE, FAILED) and j.finished is not None),
            key=lambda j: float(j.finished or 0.0),
        )
        sizes = {j.id: _folder_bytes(j.dir) for j in finished}
        total, removed = sum(sizes.values()), 0
        for job in finished[:-1]:
            if total <= self.max_kept_bytes:
                break
            if self.delete(job.id):
                total -= sizes[job.id]
                removed += 1
        if removed:
            log.info(
                "storage: deleted the %d oldest finished studies to stay under %.0f MiB",
                removed,
                self.max_kept_bytes / 2**20,
            )

    def sweep(self, now: float | None = None) -> int:
        """Delete finished jobs older than the retention period; returns how many were deleted."""
        now = time.time() if now is None else now
        expired = [
            j.id
            for j in list(self._jobs.values())
            if j.finished is not None and now - j.finished >= self.retention_s
        ]
        return sum(self.delete(job_id) for job_id in expired)

    def _sweep_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                n = self.sweep()
                if n:
                    log.info("retention: deleted %d finished studies", n)
            except Exception:  # the sweeper must survive a transient file-system error
                log.exception("retention sweep failed")

    def close(self, *, remove: bool = True) -> None:
        """Stop the sweeper and the pool: the running jobs finish, queued ones are not started (a durable
        store keeps them on disk for the next start); delete all job data if ``remove``."""
        self._stop.set()
        queued = sum(1 for j in list(self._jobs.values()) if j.status == QUEUED)
        self._pool.shutdown(wait=True, cancel_futures=True)
        if queued:
            kept = "kept on disk for the next start" if self.durable and not remove else "dropped"
            log.warning("shutdown: %d queued studies %s", queued, kept)
        if remove:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        elif not any(self.work_dir.iterdir()):  # nothing to keep: leave no empty folder behind
            self.work_dir.rmdir()

    # --- durability ---------------------------------------------------------------------------------
    def _save_state(self, job: Job, status: str | None = None) -> None:
        """Write ``job``'s state to its folder (durable stores only); never the client's file name."""
        if not self.durable:
            return
        doc = {
            "id": job.id,
            "status": status or job.status,
            "created": job.created,
            "started": job.started,
            "finished": job.finished,
            "kind": job.kind,
            "upload_bytes": job.upload_bytes,
            "source": job.source.relative_to(job.dir).as_posix() if job.source is not None else None,
            "error": job.error,
            "user_error": job.user_error,
        }
        try:
            atomic_write_text(job.dir / STATE_FILE, json.dumps(doc))
        except OSError as exc:  # a deleted or cancelled job's folder may be gone meanwhile
            log.debug("job %s: state not saved (%s)", job.id, type(exc).__name__)

    def _restore(self) -> None:
        """Read back the jobs of a previous run: finished ones keep their answer (a done study its stored
        result); queued and running ones are diagnosed again from their kept upload (so every id keeps its
        meaning); one whose upload is gone fails with the reason; folders of uploads never completed (a crash
        mid-upload) are swept."""
        resumed: list[Job] = []
        failed = swept = done = 0
        for folder in sorted(p for p in self.work_dir.iterdir() if p.is_dir()):
            if not _JOB_ID.fullmatch(folder.name):
                continue
            try:
                doc = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
                status = str(doc["status"])
            except (OSError, ValueError, KeyError, TypeError):
                status = RECEIVING  # no readable state: an upload that never completed
            if status == RECEIVING:
                shutil.rmtree(folder, ignore_errors=True)
                swept += 1
                continue
            job = Job(id=folder.name, dir=folder, created=float(doc.get("created") or time.time()))
            job.kind, job.upload_bytes = str(doc.get("kind") or ""), int(doc.get("upload_bytes") or 0)
            source = folder / doc["source"] if doc.get("source") else None
            stored = load_result(folder) if status == DONE else None
            if stored is not None:
                job.status, job.result = DONE, stored
                job.started, job.finished = doc.get("started"), doc.get("finished") or time.time()
                done += 1
            elif status == DONE and (folder / RESULT_FILE).exists():
                # its upload was shrunk to headers when it finished: it cannot be diagnosed again from it
                job.status, job.user_error, job.finished = FAILED, False, time.time()
                job.error = (
                    "the service restarted and could not read this study's result back; upload it again"
                )
                self._save_state(job)
                failed += 1
            elif status == FAILED:
                job.status, job.error = FAILED, doc.get("error")
                job.user_error, job.finished = bool(doc.get("user_error")), doc.get("finished") or time.time()
                failed += 1
            elif source is not None and source.exists():
                job.source = source
                shutil.rmtree(folder / "cache", ignore_errors=True)  # images are made again from the new run
                resumed.append(job)
            else:
                job.status, job.user_error, job.finished = FAILED, False, time.time()
                job.error = "the service restarted and this study's upload was lost; upload it again"
                self._save_state(job)
                failed += 1
            with self._lock:
                self._jobs[job.id] = job
        for job in resumed:
            self.submit(job)
        if resumed or failed or swept or done:
            log.info(
                "restart: %d finished studies kept, %d studies resumed, %d failed studies kept, "
                "%d unfinished uploads swept",
                done,
                len(resumed),
                failed,
                swept,
            )
