"""``covidct listen``: a DICOM node (C-STORE SCP) that diagnoses received CT series and sends results back."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from covidct.cli.diagnose import add_lesions_argument, lesion_model_of
from covidct.errors import ConfigError

log = logging.getLogger(__name__)


def add_node_arguments(p: Any, *, prefix: str = "") -> None:
    """The DICOM node's options (``prefix`` ``"dicom-"`` for ``covidct serve``, where --host/--port are HTTP)."""
    if prefix:
        p.add_argument(
            f"--{prefix}port",
            type=int,
            help="also run the DICOM node (C-STORE SCP) on this port; its results appear as jobs in the viewer",
        )
    else:
        p.add_argument(
            "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
        )
        p.add_argument("--port", type=int, default=11112, help="DICOM port (11112)")
    p.add_argument("--ae-title", default="COVIDCT", help="this node's AE title (COVIDCT)")
    p.add_argument(
        "--send-to",
        metavar="AET@HOST:PORT",
        help="send results by C-STORE to this node, e.g. ORTHANC@127.0.0.1:4242",
    )
    p.add_argument("--dicomweb", metavar="URL", help="send results by STOW-RS to this DICOMweb root")
    p.add_argument(
        "--allow", nargs="+", metavar="AET", default=[], help="accept associations only from these AE titles"
    )
    p.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="where received instances and results are kept (default ./covidct-node; what is there and not "
        "yet answered is answered at start)",
    )
    p.add_argument(
        "--quiet-seconds",
        type=float,
        default=5.0,
        help="a series is complete when its associations closed and nothing arrived for this long (5)",
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "listen",
        help="run a DICOM node: receive CT series from a PACS, send back SR, SEG and PDF",
        description="Receive CT series by C-STORE, diagnose each complete series, and send a Structured "
        "Report, the lung DICOM SEG and the PDF report (Encapsulated PDF) back by C-STORE or STOW-RS, in the "
        "source study. Binds to 127.0.0.1 unless --host is given. Research tool, not a medical device.",
    )
    p.add_argument(
        "--model",
        type=Path,
        metavar="MODEL_DIR",
        help="pipeline model folder (default: the pretrained pipeline in models/ or $COVIDCT_MODEL)",
    )
    add_node_arguments(p)
    p.add_argument("--device", default="cpu", help="torch device for the models (cpu)")
    p.add_argument("--backend", default="auto", help="classifier inference backend (auto)")
    add_lesions_argument(p)
    p.set_defaults(func=run)


def node_settings(args: argparse.Namespace, *, port: int, host: str) -> Any:
    from covidct.serve.dicom_node import NodeSettings
    from covidct.serve.dicom_send import Destination

    try:
        return NodeSettings(
            ae_title=args.ae_title,
            host=host,
            port=port,
            allow=tuple(args.allow),
            quiet_s=args.quiet_seconds,
            send_to=Destination.parse(args.send_to) if args.send_to else None,
            dicomweb=args.dicomweb,
        )
    except ValueError as exc:
        raise ConfigError(f"bad DICOM node setting: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from covidct.diagnose import Diagnoser, resolve_model_dir
    from covidct.serve.dicom_node import DicomNode
    from covidct.serve.node_store import NodeStore

    settings = node_settings(args, port=args.port, host=args.host)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "binding to %s: other machines can send to this node%s",
            args.host,
            "" if args.allow else " from any AE title (give --allow)",
        )
    diagnoser = Diagnoser(
        resolve_model_dir(args.model),
        device=args.device,
        backend=args.backend,
        lesion_model=lesion_model_of(args.lesions),
        lesion_gate=args.lesion_gate,
    )
    store = NodeStore(args.store or Path("covidct-node"))
    node = DicomNode(
        diagnoser.diagnose,
        store,
        settings,
        model=diagnoser.pipeline.identity.to_json(),
        explainer_source=diagnoser,
    )
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        node.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); choose another --port"
        ) from exc
    stopped.wait()
    log.info("stopping the DICOM node (the series being diagnosed is finished first)")
    node.stop()
    return 0
