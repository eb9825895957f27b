"""``covidct listen``: a DICOM C-STORE SCP that diagnoses each CT series it receives and sends the results back.

A series is complete when every association that sent instances of it has closed and none arrived for
``quiet_s`` seconds. Then it is diagnosed (models loaded once), and a Structured Report, the lung DICOM SEG
and the report as Encapsulated PDF go back to the PACS by C-STORE (``send_to``) or STOW-RS (``dicomweb``),
all in the source study. A series that cannot be diagnosed gets a short SR that says why.

Instances are on disk (:class:`~covidct.serve.node_store.NodeStore`) before the SCU hears success; a node
restarted after a crash answers what it had received and not yet answered; a series answered by the same
model is not answered twice. Logs name series by a hash (:func:`~covidct.serve.node_store.series_key`),
never by patient name, patient ID or UID.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidct.errors import CovidCTError
from covidct.report.dicom_sr import write_failure, write_results
from covidct.serve.dicom_send import Destination, SendError, c_store, stow_rs
from covidct.serve.node_store import NodeStore, series_key

if TYPE_CHECKING:
    from covidct.diagnose import StudyResult

log = logging.getLogger(__name__)

#: SOP classes the node diagnoses: CT Image Storage and Enhanced CT Image Storage.
CT_SOP_CLASSES: tuple[str, ...] = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")
_SUCCESS = 0x0000
_SOP_CLASS_NOT_SUPPORTED = 0x0122
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000


@dataclass
class NodeSettings:
    """How the node listens and where it answers."""

    ae_title: str = "COVIDCT"
    host: str = "127.0.0.1"
    port: int = 11112
    allow: Sequence[str] = ()
    quiet_s: float = 5.0
    send_to: Destination | None = None
    dicomweb: str | None = None
    send_attempts: int = 3
    retry_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port} is not a TCP port; use 1-65535 (0: any free port)")
        if not 0 < len(self.ae_title) <= 16:
            raise ValueError(f"AE title {self.ae_title!r} must have 1 to 16 characters")
        if self.quiet_s < 0:
            raise ValueError(f"quiet time must be >= 0 s, got {self.quiet_s}")


@dataclass
class _Series:
    associations: set[int] = field(default_factory=set)
    last: float = 0.0
    queued: bool = False


class DicomNode:
    """The SCP, the completion watch and one worker that diagnoses and answers series in order.

    ``diagnose(folder) -> StudyResult`` does the diagnosis (a :class:`~covidct.diagnose.Diagnoser`'s
    ``diagnose``, or the service's job queue); ``model`` is the result model's identity (name, hash), used to
    recognise series already answered.
    """

    def __init__(
        self,
        diagnose: Callable[[Path], StudyResult],
        store: NodeStore,
        settings: NodeSettings,
        *,
        model: dict[str, Any],
        explainer_source: Any | None = None,
    ) -> None:
        self._diagnose = diagnose
        self.store = store
        self.settings = settings
        self.model_hash = str(model.get("hash") or "unknown")
        self._explainer_source = explainer_source
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._busy = threading.Event()
        self._warned: set[tuple[int, str]] = set()
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self.answered: list[dict[str, Any]] = []  # this run's answers, newest last (for tests and the log)

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> int:
        """Start listening (non-blocking) and answer series left from a previous run; returns the port."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.settings.ae_title)
        for cx in AllStoragePresentationContexts:
            sop_class = str(cx.abstract_syntax)
            syntaxes = ALL_TRANSFER_SYNTAXES if sop_class in CT_SOP_CLASSES else cx.transfer_syntax
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification)
        if self.settings.allow:
            ae.require_called_aet = True
            ae.require_calling_aet = list(self.settings.allow)
        ae.maximum_pdu_size = 0
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, lambda _e: _SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = ae.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
        )
        port = int(self._server.server_address[1])
        for target, name in ((self._watch, "covidct-node-watch"), (self._work, "covidct-node-worker")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        left = self.store.pending_series()
        if left:
            log.info("restart: %d received series not yet answered; answering them now", len(left))
        for uid in left:
            self._enqueue(uid)
        log.info("DICOM node %s listening on %s:%d", self.settings.ae_title, self.settings.host, port)
        return port

    def stop(self) -> None:
        """Stop listening and stop the worker after the series it is on."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=600)

    def idle(self) -> bool:
        """Nothing received and unanswered, nothing queued or running."""
        with self._lock:
            waiting = bool(self._series)
        return not waiting and self._queue.empty() and not self._busy.is_set()

    # --- SCP handlers -------------------------------------------------------------------------------
    def _on_store(self, event: Any) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        assoc = id(event.assoc)
        if sop_class not in CT_SOP_CLASSES:
            if (assoc, sop_class) not in self._warned:
                self._warned.add((assoc, sop_class))
                log.warning("refused objects of SOP class %s: not CT; nothing stored", sop_class)
            return _SOP_CLASS_NOT_SUPPORTED
        try:
            ds = event.dataset
            series_uid, sop_uid = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        except Exception as exc:  # undecodable dataset or no UIDs
            log.warning("refused an instance that cannot be read (%s)", type(exc).__name__)
            return _CANNOT_UNDERSTAND
        if self.store.answered(series_uid, self.model_hash) is not None:
            if (assoc, series_uid) not in self._warned:
                self._warned.add((assoc, series_uid))
                log.info(
                    "series %s: already answered by this model; not diagnosed again", series_key(series_uid)
                )
            return _SUCCESS
        data = event.encoded_dataset()
        try:
            self.store.store_instance(series_uid, sop_uid, data)
        except ValueError:
            log.warning("refused an instance with a malformed UID")
            return _CANNOT_UNDERSTAND
        except OSError as exc:
            log.error(
                "could not store a received instance (%s); the sender is told to retry", type(exc).__name__
            )
            return _OUT_OF_RESOURCES
        with self._lock:
            s = self._series.setdefault(series_uid, _Series())
            s.associations.add(assoc)
            s.last = time.monotonic()
        return _SUCCESS

    def _on_close(self, event: Any) -> None:
        assoc = id(event.assoc)
        now = time.monotonic()
        with self._lock:
            for s in self._series.values():
                if assoc in s.associations:
                    s.associations.discard(assoc)
                    s.last = max(s.last, now)
        self._warned = {w for w in self._warned if w[0] != assoc}

    def _on_rejected(self, event: Any) -> None:
        log.warning("association refused: calling AE title not in --allow")

    # --- completion and work ------------------------------------------------------------------------
    def _enqueue(self, series_uid: str) -> None:
        with self._lock:
            s = self._series.setdefault(series_uid, _Series())
            if s.queued:
                return
            s.queued = True
        self._queue.put(series_uid)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                ready = [
                    uid
                    for uid, s in self._series.items()
                    if not s.queued and not s.associations and now - s.last >= self.settings.quiet_s
                ]
            for uid in ready:
                self._enqueue(uid)

    def _work(self) -> None:
        while True:
            uid = self._queue.get()
            if uid is None or self._stop.is_set():
                return
            self._busy.set()
            try:
                self._answer(uid)
            except Exception as exc:  # keep the node alive; the series stays on disk for the next start
                log.error("series %s: not answered (%s: %s)", series_key(uid), type(exc).__name__, exc)
            finally:
                with self._lock:
                    self._series.pop(uid, None)
                self._busy.clear()

    def _answer(self, series_uid: str) -> None:
        key = series_key(series_uid)
        files = self.store.instances(series_uid)
        if self.store.answered(series_uid, self.model_hash) is not None or not files:
            self.store.drop_instances(series_uid)
            return
        t0 = time.perf_counter()
        folder = self.store.series_dir(series_uid)
        out = self.store.results_dir(series_uid, self.model_hash)
        try:
            result: StudyResult | None = self._diagnose(folder)
            reason = kind = ""
        except CovidCTError as exc:
            result, reason = None, str(exc).replace(str(folder), "the received series")
            kind = type(exc).__name__
        record: dict[str, Any] = {"diagnose_s": round(time.perf_counter() - t0, 3)}
        t1 = time.perf_counter()
        if result is None:
            log.info("series %s (%d instances): not diagnosed (%s)", key, len(files), kind)
            paths = [write_failure(files, reason, out)]
            record.update(diagnosis=None, reason=reason)
        else:
            paths = write_results(result, out, explainer_source=self._explainer_source)
            record.update(diagnosis=result.diagnosis, branch=result.decision.branch)
            log.info(
                "series %s (%d instances): %s in %.1f s",
                key,
                len(files),
                result.diagnosis,
                record["diagnose_s"],
            )
        record["outputs_s"] = round(time.perf_counter() - t1, 3)
        t2 = time.perf_counter()
        self._send(paths, key)
        record["send_s"] = round(time.perf_counter() - t2, 3)
        record.update(
            series=key, instances=len(files), objects=[p.name for p in paths], model=self.model_hash
        )
        record["seconds"] = round(time.perf_counter() - t0, 3)
        self.store.mark_answered(series_uid, self.model_hash, record)
        self.store.drop_instances(series_uid)
        self.answered.append(record)

    def _send(self, paths: list[Path], key: str) -> None:
        s = self.settings
        if s.send_to is None and s.dicomweb is None:
            log.info("series %s: results kept in %s (no --send-to or --dicomweb)", key, paths[0].parent)
            return
        for attempt in range(1, s.send_attempts + 1):
            try:
                if s.send_to is not None:
                    c_store(paths, s.send_to, calling_ae=s.ae_title)
                if s.dicomweb is not None:
                    stow_rs(paths, s.dicomweb)
                log.info("series %s: %d result objects sent", key, len(paths))
                return
            except SendError as exc:
                log.warning(
                    "series %s: sending failed (attempt %d of %d): %s", key, attempt, s.send_attempts, exc
                )
                if attempt < s.send_attempts and not self._stop.wait(s.retry_s):
                    continue
                raise


def diagnose_through_jobs(store: Any, *, retry_s: float = 2.0) -> Callable[[Path], StudyResult]:
    """A ``diagnose`` for :class:`DicomNode` that goes through ``covidct serve``'s job queue (``JobStore``),
    so series received by DICOM show in the viewer like uploads and share the service's workers and limits."""
    import shutil

    from covidct.errors import InputError
    from covidct.serve.jobs import DONE, QueueFull

    def diagnose(folder: Path) -> StudyResult:
        while True:
            try:
                job = store.create()
                break
            except QueueFull:  # the node's worker waits; the PACS already holds its success statuses
                time.sleep(retry_s)
        dest = job.dir / "input"
        shutil.copytree(folder, dest)
        job.source, job.kind = dest, "dicom node"
        store.submit(job)
        if job.future is not None:
            job.future.result()
        if job.status != DONE or job.result is None:
            if job.user_error:
                raise InputError(job.error or "not diagnosed")
            raise RuntimeError(job.error or "the service failed to diagnose the series")
        log.info("series diagnosed as job %s", job.id)
        return job.result

    return diagnose
