"""Cohort throughput: ``--engine ray`` (a local Ray started by the run) vs ``Diagnoser.diagnose_many``, same
studies, one run (issue 15).

The cohort is ``--studies`` real series (P001, cap001, normal001 of ../shared/data in turn; 148-168 slices of
512x512, JPEG Lossless). Reported: wall time and studies per minute of each engine, Ray's overhead per study,
and the per-stage costs of one study in this process (read+decode, chest check, segmentation, classification)
that feed the scaling model in BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_cohort.py --out benchmarks/results/cohort.json

Without ``--model`` a tiny untrained pipeline (random ResNet-18 at 64 px, classical segmenter) is used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MD = ROOT.parent / "shared/data/covid-ct-md/Sample data"
SERIES = [MD / "COVID-19 subjects/P001", MD / "Cap subjects/cap001", MD / "Normal subjects/normal001"]


def stages(model: Path) -> dict[str, Any]:
    """One study's stages in this process, for the scaling model (the second of two runs: warm)."""
    from covidct.diagnose import Diagnoser
    from covidct.io import check_chest_ct, load_study

    d = Diagnoser(model, workers=1)
    out: dict[str, Any] = {}
    for _ in range(2):
        t = time.perf_counter()
        vol = load_study(SERIES[0], workers=1)
        read = time.perf_counter() - t
        t = time.perf_counter()
        check_chest_ct(vol)
        check = time.perf_counter() - t
        r = d.diagnose(vol)
        out = {
            "slices": vol.n_slices,
            "read_decode_1cpu_s": round(read, 3),
            "chest_check_s": round(check, 3),
            **{f"{k}_s": round(v, 3) for k, v in r.timing_s.items() if k not in ("load", "total")},
            "volume_mb": round(vol.hu.nbytes / 2**20, 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path)
    p.add_argument("--studies", type=int, default=20)
    p.add_argument("--cpu-workers", type=int, default=1, help="Ray model actors (1 on this 2-core machine)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import machine
    from covidct.cohort import diagnose_cohort, studies_from_inputs
    from covidct.diagnose import Diagnoser

    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as t:
        tmp = Path(t)
        model = args.model
        if model is None:
            from covidct.testing import random_pipeline

            model = random_pipeline(tmp / "model", name="tiny-random-resnet18")
        paths = [str(SERIES[i % len(SERIES)]) for i in range(args.studies)]
        Diagnoser(model).diagnose(paths[0])  # builds the ONNX cache once, outside both timings
        t0 = time.perf_counter()
        d = Diagnoser(model)
        local = [o for o in d.diagnose_many(paths)]
        local_s = time.perf_counter() - t0
        assert all(o.error is None for o in local)
        del d
        studies = studies_from_inputs(paths)
        t0 = time.perf_counter()
        summary = diagnose_cohort(studies, model, tmp / "ray", engine="ray", cpu_workers=args.cpu_workers)
        ray_s = time.perf_counter() - t0
        assert summary.done == len(paths), summary.errors
        agree = 0
        for s, o in zip(studies, local, strict=True):
            doc = json.loads((tmp / "ray" / f"{s.case}.json").read_text())
            agree += int(o.result is not None and doc["diagnosis"] == o.result.diagnosis)
        st = stages(model)
    n = len(paths)
    doc = {
        "machine": machine(),
        "model": str(args.model or "tiny random pipeline"),
        "studies": n,
        "diagnose_many": {"wall_s": round(local_s, 1), "studies_per_min": round(n / local_s * 60, 2)},
        "ray": {
            "wall_s": round(ray_s, 1),
            "studies_per_min": round(n / ray_s * 60, 2),
            "model_actors": args.cpu_workers,
            "includes": "starting and stopping a local Ray, actors loading the models",
        },
        "ray_over_local_wall": round(ray_s / local_s, 3),
        "ray_overhead_per_study_s": round((ray_s - local_s) / n, 2),
        "same_diagnosis": f"{agree}/{n}",
        "stages_one_study": st,
    }
    print(json.dumps(doc, indent=1))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
