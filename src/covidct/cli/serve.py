"""``covidct serve``: the HTTP diagnosis service and its browser viewer (localhost by default)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from covidct.cli.diagnose import add_lesions_argument, lesion_model_of
from covidct.cli.listen import add_node_arguments, node_settings
from covidct.errors import ConfigError

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the diagnosis service and browser viewer",
        description="Serve diagnoses over HTTP with a browser viewer. Binds to 127.0.0.1 unless --host "
        "is given; use --token-file to require a bearer token. Research tool, not a medical device.",
    )
    p.add_argument(
        "--model",
        type=Path,
        metavar="MODEL_DIR",
        help="pipeline model folder (default: the pretrained pipeline in models/ or $COVIDCT_MODEL)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--token-file", type=Path, help="file holding the bearer token clients must send")
    p.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest accepted upload, MiB (1024)")
    p.add_argument("--workers", type=int, default=1, help="studies diagnosed at the same time (1)")
    p.add_argument("--max-pending", type=int, default=32, help="studies queued or running before 503 (32)")
    p.add_argument(
        "--retention-minutes",
        type=float,
        default=60.0,
        help="delete each study this long after it finished (60)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        help="where uploads live until deleted; jobs there survive a restart of the service (default: a "
        "fresh folder in the system temp, removed at shutdown)",
    )
    p.add_argument(
        "--max-kept-mb",
        type=float,
        default=10240.0,
        help="disk kept for finished studies in all, MiB; past it the oldest are deleted early (10240)",
    )
    p.add_argument(
        "--max-unzipped-mb", type=float, default=4096.0, help="largest study a zip may expand to, MiB (4096)"
    )
    p.add_argument(
        "--max-zip-member-mb",
        type=float,
        default=2048.0,
        help="largest file in a zip or gzip upload, MiB (2048)",
    )
    p.add_argument(
        "--max-zip-ratio",
        type=float,
        default=100.0,
        help="refuse a zip or gzip upload (past 16 MiB) that expands more than this many times (100)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the models (cpu)")
    p.add_argument("--backend", default="auto", help="classifier inference backend (auto)")
    add_lesions_argument(p)
    add_node_arguments(p, prefix="dicom-")
    p.set_defaults(func=run)


def read_token(path: Path) -> str:
    """The bearer token from ``path`` (first non-blank line, stripped); refuses empty or short tokens."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the token file is not UTF-8 text; write the token as plain text") from exc
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the token file ({exc.strerror}); give a readable file"
        ) from exc
    lines = text.strip().splitlines()
    if not lines:
        raise ConfigError(f"{path}: the token file is empty; write a token of at least 8 characters in it")
    token = lines[0].strip()
    if len(token) < 8:
        raise ConfigError(f"{path}: the token must be at least 8 characters on the first line")
    return token


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from covidct.diagnose import Diagnoser, resolve_model_dir
    from covidct.serve.app import ServeSettings, create_app

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port; use 1-65535")
    token = read_token(args.token_file) if args.token_file else None
    try:
        settings = ServeSettings(
            token=token,
            max_upload_mb=args.max_upload_mb,
            workers=args.workers,
            max_pending=args.max_pending,
            retention_minutes=args.retention_minutes,
            work_dir=args.work_dir,
            max_unzipped_mb=args.max_unzipped_mb,
            max_zip_member_mb=args.max_zip_member_mb,
            max_zip_ratio=args.max_zip_ratio,
            durable=args.work_dir is not None,
            max_kept_mb=args.max_kept_mb,
        )
    except ValueError as exc:
        raise ConfigError(f"bad service setting: {exc}") from exc
    if args.host not in LOOPBACK:
        log.warning(
            "binding to %s: other machines can reach this service%s",
            args.host,
            "" if token else " WITHOUT authentication (give --token-file)",
        )
    diagnoser = Diagnoser(
        resolve_model_dir(args.model),
        device=args.device,
        backend=args.backend,
        lesion_model=lesion_model_of(args.lesions),
        lesion_gate=args.lesion_gate,
    )
    app = create_app(diagnoser, settings=settings)
    node = None
    if args.dicom_port is not None:
        from covidct.serve.dicom_node import DicomNode, diagnose_through_jobs
        from covidct.serve.node_store import NodeStore

        node_dir = args.store or Path(args.work_dir or ".") / "covidct-node"
        node = DicomNode(
            diagnose_through_jobs(app.state.store),
            NodeStore(node_dir),
            node_settings(args, port=args.dicom_port, host=args.host),
            model=diagnoser.pipeline.identity.to_json(),
            explainer_source=diagnoser,
        )
        try:
            node.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for DICOM on port {args.dicom_port} ({exc}); choose another --dicom-port"
            ) from exc
    log.info("covidct serve: http://%s:%d/ (API docs at /docs)", args.host, args.port)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        if node is not None:
            node.stop()
    return 0
