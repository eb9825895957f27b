"""Diagnosis without the training stack vs today's path, side by side in one run (issue 17).

For each study (P001 and cap001 by default) and each path, ``covidct diagnose STUDY --model MODEL -o OUT
--json`` runs as its own process, ``--repeats`` times, alternating the paths:

- ``torch``: the PyTorch pipeline with the classifier on ONNX Runtime (what ``--backend auto`` did before the
  torch-free path; ``--backend onnx`` now): torch and MONAI imported, the U-Net in PyTorch eager;
- ``torch-free``: ``--backend auto`` on CPU: both networks on ONNX Runtime, NumPy preprocessing.

Reported per run: process wall time, the JSON's ``timing_s`` (total and per stage), peak resident memory of the
process (``ru_maxrss`` of the child; decoding workers are separate processes and not included), the import
time of ``covidct.diagnose`` + model loading (``-X importtime`` top-level sum), and whether torch was imported.
Then the segmenter alone on the real series: U-Net PyTorch vs ONNX Runtime (mask Dice, lung volumes) and the
classical segmenter's time in the same table.

    .venv/bin/python benchmarks/bench_torch_free.py --model MODEL --out benchmarks/results/torch-free.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MD = ROOT.parent / "shared/data/covid-ct-md/Sample data"
STUDIES = {
    "P001": MD / "COVID-19 subjects/P001",
    "cap001": MD / "Cap subjects/cap001",
    "normal001": MD / "Normal subjects/normal001",
}

PATHS = {"torch": ["--backend", "onnx"], "torch-free": ["--backend", "auto"]}


def one_run(model: Path, study: Path, extra: list[str], out: Path) -> dict[str, Any]:
    code = (
        "import sys\n"
        "sys.argv = ['covidct'] + sys.argv[1:]\n"
        "from covidct.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('TORCH_IMPORTED=' + str('torch' in sys.modules), file=sys.stderr)\n"
        "import resource\n"
        "print('PEAK_RSS_KB=' + str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    cmd = [sys.executable, "-X", "importtime", "-c", code, "diagnose", str(study), "--model", str(model),
           "-o", str(out), "--no-progress", "--no-strip", *extra]  # fmt: skip
    t = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    doc = json.loads(next(out.glob("*.json")).read_text())
    for f in out.glob("*"):
        f.unlink()
    import_us = 0
    for line in run.stderr.splitlines():  # "import time: self | cumulative | name"; top-level packages only
        if line.startswith("import time:") and "|" in line:
            parts = [p.strip() for p in line[len("import time:") :].split("|")]
            if (
                len(parts) == 3
                and parts[1].isdigit()
                and not parts[2].startswith(" ")
                and "." not in parts[2]
            ):
                import_us += int(parts[1])
    return {
        "wall_s": round(wall, 2),
        "timing_s": doc["timing_s"],
        "peak_rss_mb": round(int(run.stderr.rsplit("PEAK_RSS_KB=", 1)[1].split()[0]) / 1024, 1),
        "imports_s": round(import_us / 1e6, 2),
        "torch_imported": "TORCH_IMPORTED=True" in run.stderr,
        "backend": doc["model"].get("backend"),
        "diagnosis": doc["diagnosis"],
    }


def segmenters(model: Path, names: list[str]) -> list[dict[str, Any]]:

    from covidct.bundle import read_card
    from covidct.infer.onnx import OnnxUNetSegmenter
    from covidct.io import load_study
    from covidct.segment.classical import ClassicalSegmenter
    from covidct.segment.quality import lung_volumes_ml
    from covidct.segment.unet import UNetSegmenter

    seg = str(read_card(model).get("segmenter", "classical"))
    rows = []
    for name in names:
        vol = load_study(STUDIES[name])
        row: dict[str, Any] = {"study": name, "slices": vol.n_slices}
        runs = {"classical": ClassicalSegmenter()}
        if seg != "classical":
            runs["unet-torch"] = UNetSegmenter.from_bundle(model / seg)
            runs["unet-onnx"] = OnnxUNetSegmenter.from_bundle(model / seg)
        masks = {}
        for key, s in runs.items():
            s.apply(vol)  # warm
            t = time.perf_counter()
            masks[key] = s.apply(vol)
            row[f"{key}_s"] = round(time.perf_counter() - t, 3)
        if seg != "classical":
            a, b = masks["unet-torch"] > 0, masks["unet-onnx"] > 0
            row["dice_onnx_vs_torch"] = round(float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1)), 6)
            row["labels_equal"] = round(float((masks["unet-torch"] == masks["unet-onnx"]).mean()), 6)
            va, vb = (
                lung_volumes_ml(masks["unet-torch"], vol.spacing),
                lung_volumes_ml(masks["unet-onnx"], vol.spacing),
            )
            row["volume_diff_pct"] = {k: round(100 * abs(va[k] - vb[k]) / max(va[k], 1e-9), 4) for k in va}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", type=Path, required=True, help="pipeline folder (with a U-Net segmenter for the gate)"
    )
    p.add_argument("--studies", nargs="+", default=["P001", "cap001"], choices=sorted(STUDIES))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import machine
    from covidct.infer.export import export_pipeline

    export_pipeline(args.model)  # the bundle carries its exports (a first CPU diagnosis would write them)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tf-") as t:
        for r in range(args.repeats):
            for study in args.studies:
                for path, extra in PATHS.items():
                    out = Path(t) / f"{study}-{path}"
                    out.mkdir(exist_ok=True)
                    row = one_run(args.model, STUDIES[study], extra, out)
                    results.setdefault(study, {}).setdefault(path, []).append(row)
                    print(r, study, path, json.dumps(row), flush=True)
    seg = segmenters(args.model, sorted(set(args.studies) | {"normal001"}))
    print(json.dumps(seg, indent=1))
    doc = {"machine": machine(), "model": str(args.model), "runs": results, "segmenters": seg}
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
