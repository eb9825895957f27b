"""``covidct`` entry point: parse, dispatch to a sub-command module, turn user errors into one line."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from covidct import __version__
from covidct.errors import CovidCTError

#: Sub-command modules under ``covidct.cli``; each defines ``register(subparsers)`` which adds its parser and
#: sets ``func=run`` with ``run(args: argparse.Namespace) -> int`` (module ``synth_real`` for ``synth-real``).
COMMANDS: tuple[str, ...] = (
    "info",
    "convert",
    "segment",
    "synth",
    "synth-real",
    "train",
    "diagnose",
    "evaluate",
    "readers",
    "demo",
    "serve",
)

log = logging.getLogger("covidct")


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
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        for noisy in ("pydicom", "PIL", "matplotlib", "urllib3", "highdicom"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except CovidCTError as exc:
        print(f"covidct {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"covidct {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
