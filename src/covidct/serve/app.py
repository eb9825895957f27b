"""The diagnosis service: a FastAPI app that loads the models once and diagnoses uploaded studies.

Endpoints (all under ``/v1`` need ``Authorization: Bearer <token>`` when a token is set):

- ``POST /v1/studies`` multipart field ``file`` (zip of DICOM, a DICOM file, NIfTI/NRRD/MHA) -> 202 {"id"}
- ``GET /v1/studies/{id}`` status; when done the ``StudyResult`` JSON under ``"result"``; a study the input
  made impossible answers 422 with the reason
- ``GET /v1/studies/{id}/slices/{i}.png`` lung-window slice, ``.../mask/{i}.png``, ``.../heatmap/{i}.png``
  and ``.../lesions/{i}.png`` (when the pipeline has a lesion model) transparent overlays of the same size, ``.../report.html``, ``.../report.pdf``, ``.../seg.dcm``
- ``DELETE /v1/studies/{id}``: a finished or queued study is deleted now (200); a running one is cancelled
  (202 ``cancelling``: its outcome is dropped and its data deleted when the current stage returns)
- ``GET /healthz`` (only ``{"status": "ok"}`` without the token, when one is set); the viewer at ``/``;
  OpenAPI docs at ``/docs``.

Upload size is limited (413); a malformed multipart body is a 400 with the reason; zips and gzip uploads are
refused before extraction by size, per-file size and compression ratio (bombs), and extracted with traversal
checks. Jobs run in a bounded worker pool, and each study's data is deleted ``retention_minutes`` after it
finished. Every response carries hardening headers (:mod:`covidct.serve.security`: nosniff, no framing, a CSP;
``Cache-Control: no-store`` on everything under ``/v1``).
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from covidct import __version__
from covidct._files import atomic_write_bytes
from covidct.bundle import json_safe
from covidct.errors import InputError
from covidct.registry import CLASS_NAMES, DISPLAY_NAMES, LUNG_WINDOW, MEDIASTINAL_WINDOW
from covidct.report.images import check_index
from covidct.serve.jobs import DONE, FAILED, Job, JobStore, QueueFull
from covidct.serve.security import SecurityHeaders
from covidct.serve.settings import ServeSettings
from covidct.serve.uploads import UnsupportedUpload, UploadTooLarge, save_upload

if TYPE_CHECKING:
    from covidct.diagnose import StudyResult
    from covidct.report.gradcam import SliceExplainer

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_MULTIPART_SLACK = 64 * 1024  # multipart boundaries and headers on top of the file itself
_WINDOWS = {"lung": LUNG_WINDOW, "mediastinal": MEDIASTINAL_WINDOW}


_JOB_ID = re.compile(r"[0-9a-f]{32}")


def _shown_id(job_id: str) -> str:
    """A requested id as an error message may echo it: a well-formed id in full, anything else cut to 40
    characters and quoted (never a client's megabyte of text, or markup, back in an answer or a log)."""
    if _JOB_ID.fullmatch(job_id):
        return job_id
    cut = job_id[:40] + ("..." if len(job_id) > 40 else "")
    return repr(cut)


def _multipart_reason(detail: str) -> str:
    """The client-facing reason for a multipart body the parser refused (``detail``: its message)."""
    known = {
        "Missing boundary": "the Content-Type header has no boundary (multipart/form-data; boundary=...)",
        "Invalid multipart": "the body does not match the boundary of the Content-Type header",
        'field "name" must be provided': "a part has no Content-Disposition header with a name",
        "Too many files": "more than one file part (one study per request)",
        "Too many fields": "too many form fields",
    }
    reason = next((text for key, text in known.items() if key in detail), detail.rstrip(".")[:200])
    return f"malformed multipart upload: {reason}; send the study as multipart/form-data field 'file'"


_WORK_PREFIX = "covidct-serve-"
_OWNER_FILE = "owner.pid"


def sweep_stale_work_dirs(parent: Path) -> int:
    """Remove the work folders in ``parent`` of services that are gone (killed, so they could not clean up):
    those whose owner process no longer exists. Returns how many were removed; never fails the start."""
    removed = 0
    try:
        candidates = [p for p in parent.glob(_WORK_PREFIX + "*") if p.is_dir()]
    except OSError:
        return 0
    for folder in candidates:
        try:
            pid = int((folder / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours to judge (no owner recorded)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        except OSError:
            continue  # alive, another user's
    if removed:
        log.info("removed %d work folder(s) left by services that were killed", removed)
    return removed


def create_app(diagnoser: Any, *, settings: ServeSettings | None = None) -> FastAPI:
    """The service for a loaded ``diagnoser`` (anything with ``diagnose(path) -> StudyResult``).

    Grad-CAM heat maps need ``diagnoser.pipeline.classifier`` (``.network`` and ``.preprocess``).
    """
    settings = settings or ServeSettings()
    if settings.work_dir is not None:
        Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
    if settings.durable:  # one stable folder: a restart finds the jobs again
        work_dir = Path(settings.work_dir or ".") / "jobs"
        work_dir.mkdir(mode=0o700, exist_ok=True)
    else:
        parent = Path(settings.work_dir) if settings.work_dir is not None else Path(tempfile.gettempdir())
        sweep_stale_work_dirs(parent)
        work_dir = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=parent))
        (work_dir / _OWNER_FILE).write_text(str(os.getpid()))

    def run(job: Job) -> StudyResult:
        if job.source is None:
            raise InputError("the job has no input")
        result: StudyResult = diagnoser.diagnose(job.source)
        result.input = f"upload ({job.kind})"  # never the server path or the client's file name
        return result

    store = JobStore(
        work_dir,
        run,
        workers=settings.workers,
        max_pending=settings.max_pending,
        retention_s=settings.retention_minutes * 60.0,
        durable=settings.durable,
        max_kept_bytes=int(settings.max_kept_mb * (1 << 20)),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close(remove=not settings.durable)

    app = FastAPI(
        title="covidct",
        version=__version__,
        description="Normal / CAP / COVID-19 diagnosis from chest CT. Research tool, not a medical device.",
        lifespan=lifespan,
    )
    app.add_middleware(SecurityHeaders)
    app.state.store = store
    app.state.settings = settings
    app.state.diagnoser = diagnoser

    def token_ok(request: Request) -> bool:
        """No token is set, or the request carries it."""
        if settings.token is None:
            return True
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("utf-8"), settings.token.strip().encode("utf-8")
        )

    def require_token(request: Request) -> None:
        if not token_ok(request):
            raise HTTPException(
                401,
                "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    auth = [Depends(require_token)]

    def explainer() -> SliceExplainer | None:
        """The diagnoser's Grad-CAM explainer (built once, shared by all requests); None without a classifier."""
        if getattr(getattr(diagnoser, "pipeline", None), "classifier", None) is None:
            return None
        from covidct.report.gradcam import explainer_for

        return explainer_for(diagnoser)

    def finished_job(job_id: str) -> tuple[Job, StudyResult]:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(
                404, f"no study {_shown_id(job_id)} (unknown id, or deleted after the retention period)"
            )
        if job.status != DONE or job.result is None:
            raise HTTPException(
                409, f"study {job_id} is {job.status}, not done; poll GET /v1/studies/{job_id}"
            )
        return job, job.result

    def cache_path(job: Job, name: str) -> Path:
        cache = job.dir / "cache"
        cache.mkdir(mode=0o700, exist_ok=True)
        return cache / name

    def cached_png(job: Job, name: str, make: Callable[[], bytes]) -> Response:
        """A PNG made once per job (concurrent first requests may both render; each rename is whole)."""
        path = cache_path(job, name)
        if not path.exists():
            atomic_write_bytes(path, make())
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def cached_document(
        job: Job,
        name: str,
        write: Callable[[Path], object],
        *,
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """A document written once per job by ``write(path)``; the job's document lock makes concurrent
        requests wait for the first writer instead of rendering (and renaming) the same file in parallel."""
        path = cache_path(job, name)
        with job.documents:
            if not path.exists():
                try:
                    write(path)
                except InputError as exc:
                    raise HTTPException(409, store.public_message(job, str(exc))) from None
        return FileResponse(path, media_type=media_type, headers=headers)

    @app.get("/healthz", tags=["service"])
    def healthz(request: Request) -> dict[str, Any]:
        """Liveness. With the token (or when none is set) also the version, the model identity and how many
        jobs are in each state; without it only ``{"status": "ok"}``."""
        if not token_ok(request):
            return {"status": "ok"}
        identity: Any = getattr(getattr(diagnoser, "pipeline", None), "identity", None)
        model = identity.to_json() if hasattr(identity, "to_json") else dict(identity or {})
        return {"status": "ok", "version": __version__, "model": model, "jobs": store.counts()}

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/static/viewer.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    upload_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    }

    @app.post("/v1/studies", status_code=202, dependencies=auth, tags=["studies"], openapi_extra=upload_doc)
    async def create_study(request: Request) -> JSONResponse:
        """Upload a study (zip of DICOM files, one DICOM file, or NIfTI/NRRD/MHA) in the field ``file``."""
        limit = int(settings.max_upload_mb * (1 << 20))
        too_large = (
            f"the upload exceeds the limit of {settings.max_upload_mb:g} MiB; "
            "send a smaller study or start the service with a larger --max-upload-mb"
        )
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + _MULTIPART_SLACK:
            raise HTTPException(413, too_large)
        try:
            job = store.create()
        except QueueFull as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from exc
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await request.receive()
            received += len(message.get("body", b""))
            if received > limit + _MULTIPART_SLACK:
                raise UploadTooLarge
            return message

        form = None
        try:
            try:
                form = await Request(request.scope, limited_receive).form(max_files=1, max_fields=8)
            except StarletteHTTPException as exc:  # the multipart parser's 400: a client error, not ours
                raise InputError(_multipart_reason(str(exc.detail))) from None
            uploads = form.getlist("file")
            if len(uploads) > 1:
                raise InputError(
                    f"malformed multipart upload: {len(uploads)} parts named 'file'; send exactly one study "
                    "in the multipart/form-data field 'file'"
                )
            upload = uploads[0] if uploads else None
            if not isinstance(upload, UploadFile):
                raise InputError("no file in the request: send the study as multipart/form-data field 'file'")
            job.source = await run_in_threadpool(save_upload, upload.file, job, settings=settings)
        except UploadTooLarge:
            store.fail(job, too_large)
            raise HTTPException(413, too_large) from None
        except UnsupportedUpload as exc:
            store.fail(job, str(exc))
            raise HTTPException(415, job.error) from None
        except InputError as exc:
            store.fail(job, str(exc))  # stores the message without server paths
            raise HTTPException(400, job.error) from None
        except Exception as exc:  # a service fault (disk full...): answer without server paths or a traceback
            log.error("job %s: the upload failed with %s", job.id, type(exc).__name__)
            store.fail(job, "the upload could not be stored", user_error=False)
            raise HTTPException(500, "the upload could not be stored; see the service log") from None
        finally:
            if form is not None:
                await form.close()
        store.submit(job)
        log.info("job %s: accepted %d bytes (%s)", job.id, job.upload_bytes, job.kind)
        return JSONResponse(
            {"id": job.id, "status": job.status, "url": f"/v1/studies/{job.id}"}, status_code=202
        )

    @app.get("/v1/studies", dependencies=auth, tags=["studies"])
    def list_studies() -> JSONResponse:
        """Every study the service holds, newest first: id, status, times, and how it came (``kind``: the
        upload's format, or ``dicom node`` for series received by ``--dicom-port``)."""
        jobs = sorted(store.jobs(), key=lambda j: j.created, reverse=True)
        return JSONResponse(json_safe([{**j.summary(), "kind": j.kind} for j in jobs]))

    @app.get("/v1/studies/{job_id}", dependencies=auth, tags=["studies"])
    def get_study(job_id: str) -> JSONResponse:
        """Status of a study; when done, its result (``StudyResult.to_json()``) under ``result``."""
        job = store.get(job_id)
        if job is None:
            raise HTTPException(
                404, f"no study {_shown_id(job_id)} (unknown id, or deleted after the retention period)"
            )
        body = job.summary()
        if job.status == DONE and job.result is not None:
            body["result"] = job.result.to_json()
            choice = getattr(job.result.volume.meta, "extra", {}).get("series_choice")
            if choice is not None:  # which series of the upload was diagnosed, and which were left out
                body["result"]["series_choice"] = choice
            body["display_names"] = dict(zip(CLASS_NAMES, DISPLAY_NAMES, strict=True))
            body["explanation"] = job.result.decision.explain()
        status = 200
        if job.status == FAILED:
            status = 422 if job.user_error else 500
        return JSONResponse(json_safe(body), status_code=status)

    @app.delete("/v1/studies/{job_id}", dependencies=auth, tags=["studies"])
    def delete_study(job_id: str) -> JSONResponse:
        """Delete a study and its data: now when finished or still queued (200 ``deleted``); a running one is
        cancelled (202 ``cancelling``): its outcome is thrown away and its data deleted when the current
        stage ends, after which its id answers 404."""
        outcome = store.cancel(job_id)
        if outcome is None:
            raise HTTPException(
                404, f"no study {_shown_id(job_id)} (unknown id, or deleted after the retention period)"
            )
        return JSONResponse(
            {"id": job_id, "status": outcome}, status_code=200 if outcome == "deleted" else 202
        )

    def _index(result: StudyResult, index: int) -> int:
        try:
            check_index(result.volume.n_slices, index)
        except IndexError as exc:
            raise HTTPException(404, f"{exc}: no such slice in this study") from None
        return index

    @app.get("/v1/studies/{job_id}/slices/{index}.png", dependencies=auth, tags=["images"])
    def slice_png(job_id: str, index: int, window: str = "lung") -> Response:
        """Slice ``index`` (0 = most superior) through the lung (default) or mediastinal window."""
        from covidct.report.images import png_bytes, slice_grey

        job, result = finished_job(job_id)
        i = _index(result, index)
        if window not in _WINDOWS:
            raise HTTPException(422, f"unknown window {window!r}: use one of {', '.join(_WINDOWS)}")
        return cached_png(
            job, f"slice_{window}_{i}.png", lambda: png_bytes(slice_grey(result.volume, i, _WINDOWS[window]))
        )

    @app.get("/v1/studies/{job_id}/mask/{index}.png", dependencies=auth, tags=["images"])
    def mask_png(job_id: str, index: int) -> Response:
        """Transparent overlay of the lung mask on slice ``index`` (right lung blue, left lung green)."""
        from covidct.report.images import mask_rgba, png_bytes

        job, result = finished_job(job_id)
        i = _index(result, index)
        return cached_png(job, f"mask_{i}.png", lambda: png_bytes(mask_rgba(result.mask[i])))

    @app.get("/v1/studies/{job_id}/lesions/{index}.png", dependencies=auth, tags=["images"])
    def lesions_png(job_id: str, index: int) -> Response:
        """Transparent overlay of the lesions on slice ``index`` (ground glass yellow, consolidation red);
        404 when the study was diagnosed without a lesion model."""
        from covidct.report.images import png_bytes
        from covidct.report.involvement import lesion_rgba

        job, result = finished_job(job_id)
        i = _index(result, index)
        lesions = getattr(result, "lesions", None)
        if lesions is None:
            raise HTTPException(
                404, "no lesions for this study: start the service with a pipeline that has lesions/"
            )
        return cached_png(job, f"lesions_{i}.png", lambda: png_bytes(lesion_rgba(lesions[i])))

    @app.get("/v1/studies/{job_id}/heatmap/{index}.png", dependencies=auth, tags=["images"])
    def heatmap_png(job_id: str, index: int) -> Response:
        """Transparent Grad-CAM heat map of the decided class on slice ``index``."""
        from covidct.report.images import heat_rgba, png_bytes

        job, result = finished_job(job_id)
        i = _index(result, index)
        cls = CLASS_NAMES.index(result.decision.diagnosis)
        ex = explainer()
        if ex is None:
            raise HTTPException(404, "heat maps are not available: the model has no slice classifier")

        def make() -> bytes:
            cam = ex.slice_maps(result.volume, result.mask, [i], class_idx=[cls])[0]
            return png_bytes(heat_rgba(cam))

        return cached_png(job, f"heat_{i}.png", make)

    @app.get("/v1/studies/{job_id}/report.html", dependencies=auth, tags=["documents"])
    def report_html(job_id: str) -> Response:
        """The self-contained HTML report (no patient name or ID)."""
        from covidct.report.html import write_report

        job, result = finished_job(job_id)
        return cached_document(
            job,
            "report.html",
            lambda path: write_report(result, path, explainer=explainer(), show_phi=False),
            media_type="text/html; charset=utf-8",
        )

    @app.get("/v1/studies/{job_id}/report.pdf", dependencies=auth, tags=["documents"])
    def report_pdf(job_id: str) -> Response:
        """The PDF report (same content as the HTML report; no patient name or ID)."""
        from covidct.report.pdf import write_pdf

        job, result = finished_job(job_id)
        return cached_document(
            job,
            "report.pdf",
            lambda path: write_pdf(result, path, explainer=explainer(), show_phi=False),
            media_type="application/pdf",
        )

    @app.get("/v1/studies/{job_id}/seg.dcm", dependencies=auth, tags=["documents"])
    def seg_dcm(job_id: str) -> Response:
        """The lung mask as DICOM SEG referencing the uploaded series (DICOM uploads only)."""
        from covidct.report.dicom_seg import write_dicom_seg

        job, result = finished_job(job_id)
        return cached_document(
            job,
            "seg.dcm",
            lambda path: write_dicom_seg(result.volume, result.mask, path),
            media_type="application/dicom",
            headers={"Content-Disposition": f'attachment; filename="covidct-seg-{job_id[:8]}.dcm"'},
        )

    return app
