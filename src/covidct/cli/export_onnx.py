"""``covidct export-onnx MODEL``: write the ONNX exports that make diagnosis on CPU torch-free."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="export a pipeline's networks to ONNX (diagnosis on CPU then runs without torch)",
        description="Write model.onnx and onnx.json into the classifier, U-Net segmenter and lesion bundles of "
        "a pipeline folder, each checked against PyTorch float32. `covidct diagnose`, `serve` and `listen` "
        "on CPU then run both networks on ONNX Runtime without importing torch. The first CPU diagnosis with "
        "a writable model folder does this by itself; use this command for read-only installs.",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="pipeline folder (with model.json)")
    p.add_argument("--force", action="store_true", help="export again even when current exports exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from covidct.infer.export import export_pipeline

    written = export_pipeline(args.model, force=args.force)
    if written:
        for path in written:
            print(f"wrote {path.parent / 'model.onnx'} ({path.name})", file=sys.stderr)
    else:
        print(
            f"{args.model}: the ONNX exports are current; nothing to do (--force to redo them)",
            file=sys.stderr,
        )
    return 0
