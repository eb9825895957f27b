"""``covidct`` entry point: parse, dispatch to a sub-command module, turn user errors into one line.

Exit codes, the same for every command: 0 done; 2 the input, the arguments or the model cannot be used (a
:class:`covidct.errors.CovidCTError`, argparse's own errors too); 1 the run went wrong otherwise (some of
several studies failed, an output could not be written after all); 130 Ctrl-C; 143 SIGTERM. Never a traceback
for any of these.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from covidct import __version__
from covidct.errors import CovidCTError

#: Sub-command modules under ``covidct.cli``; each defines ``register(subparsers)`` which adds its parser and
#: sets ``func=run`` with ``run(args: argparse.Namespace) -> int`` (module ``synth_real`` for ``synth-real``).
COMMANDS: tuple[str, ...] = (
    "info",
    "convert",
    "segment",
    "lesions",
    "synth",
    "synth-real",
    "train",
    "diagnose",
    "evaluate",
    "calibrate",
    "readers",
    "demo",
    "serve",
    "listen",
    "export-onnx",
)

log = logging.getLogger("covidct")

#: errno values of a write the user can fix (space, permissions, read-only mount): one line, not a traceback.
_WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM") if hasattr(errno, name)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidct",
        description="Normal / CAP / COVID-19 diagnosis from chest CT (research tool, not a medical device).",
    )
    parser.add_argument("--version", action="version", version=f"covidct {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"covidct.cli.{name.replace('-', '_')}")
        module.register(sub)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    if os.environ.get("RANK", "0") not in ("", "0") and verbose < 2:
        level = logging.WARNING  # distributed training: only rank 0 reports progress, every rank its problems
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        for noisy in (
            "pydicom",
            "PIL",
            "matplotlib",
            "urllib3",
            "highdicom",
            "pynetdicom",
            "dicomweb_client",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING)


#: Packages of the training stack that a slim install (``pip install covidct``) leaves out.
TRAINING_STACK: frozenset[str] = frozenset({"torch", "monai", "onnx"})


class Terminated(KeyboardInterrupt):
    """SIGTERM: the run stops as for Ctrl-C (workers stopped, temporary files removed), exit 143."""


def _stop_workers() -> None:
    """Terminate the decoding worker processes, if any were started (they ignore Ctrl-C themselves)."""
    loader = sys.modules.get("covidct.io.loader")
    if loader is not None:
        loader.stop_pools()


def _stop_workers_on_ctrl_c() -> Callable[[], object]:
    """Make Ctrl-C (and SIGTERM) stop the decoding workers before the exception unwinds the command, so that
    nothing waits for them (e.g. a study being read in a background thread); returns a function restoring the
    previous handler (a no-op outside the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_sigint(signum: int, frame: Any) -> None:
        _stop_workers()
        raise KeyboardInterrupt

    def on_sigterm(signum: int, frame: Any) -> None:
        _stop_workers()
        raise Terminated

    handlers = {signal.SIGINT: on_sigint, signal.SIGTERM: on_sigterm}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return restore


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.verbose, args.quiet)
    restore_sigint = _stop_workers_on_ctrl_c()
    try:
        return int(args.func(args) or 0)
    except CovidCTError as exc:
        print(f"covidct {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:  # a slim install (no training stack) asked for something that needs it
        if (exc.name or "").split(".")[0] not in TRAINING_STACK:
            raise
        print(
            f"covidct {args.command}: error: this needs PyTorch and MONAI ({exc.name} is not installed; training, "
            "--backend torch, CUDA, Grad-CAM heat maps and lesions use them): pip install 'covidct[train]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): unwound, so temporary files are gone
        terminated = isinstance(exc, Terminated)
        print(f"covidct {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        _stop_workers()
        return 143 if terminated else 130
    except OSError as exc:  # e.g. an output that could not be written after all (disk full, quota)
        if exc.errno not in _WRITE_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        hint = "check the folder's permissions and the free space"
        print(f"covidct {args.command}: error: {where}{exc.strerror}; {hint}", file=sys.stderr)
        return 1
    finally:
        restore_sigint()


if __name__ == "__main__":
    raise SystemExit(main())
