"""The shipped pretrained pipeline measured: real development series apart from phantoms (issue 11).

1. **Real CT** (``../shared/data/covid-ct-md``): each development series diagnosed with the pipeline as shipped
   (its card's lesion gate) and with the gate off; the answer, the slice counts and the slice AUC (infected vs
   not, score 1 - p(normal), against the official slice labels). These three series are in the pipeline's
   training data, so these are training-set figures, not a test; the held-out figures come from
   ``benchmarks/real_loso.py``.
2. **Phantoms of an unseen scanner site** (``covidct.data.synth``, a site profile the pipeline never saw;
   the pipeline saw no phantom at all): patient accuracy. Phantom figures, not real CT.

    .venv/bin/python benchmarks/bench_pretrained.py [--model models] --out benchmarks/results/pretrained.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def real_rows(model: Path, data: Path) -> list[dict[str, Any]]:
    from _data import score_series
    from covidct.data.covidctmd import read_covidctmd
    from covidct.diagnose import Diagnoser

    dx = Diagnoser(model, classify_all=True)
    rows = []
    for rec in read_covidctmd(data):
        scored = score_series(dx, rec)
        # the pipeline as shipped (its gate) first, then the classifier's own answer (gate off)
        pairs = [(dx.lesion_gate, scored["gated"]), (0.0, scored)] if "gated" in scored else [(0.0, scored)]
        for gate, r in pairs:
            auc = r["slice_auc"] if r["infected_slices"] else None
            rows.append(
                {
                    "case": rec.case,
                    "truth": rec.diagnosis,
                    "lesion_gate": gate,
                    "diagnosis": r["diagnosis"],
                    "counts": r["counts"],
                    "slice_auc": None if auc is None else round(float(auc), 4),
                    "seconds": scored["seconds"],
                    "in_training_data": True,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def phantom_rows(model: Path, site: str, patients: int, seed: int) -> dict[str, Any]:
    from covidct.data.synth import generate_cohort
    from covidct.diagnose import Diagnoser
    from covidct.evaluate.cohort import read_cohort

    dx = Diagnoser(model)
    with tempfile.TemporaryDirectory(prefix="covidct-bench-") as tmp:
        cohort = generate_cohort(Path(tmp) / "c", patients=patients, seed=seed, site=site, size="small")
        answers = []
        for rec in read_cohort(cohort):
            answers.append((rec.diagnosis, dx.diagnose(rec.path).diagnosis))
    right = sum(t == a for t, a in answers)
    return {
        "site": site,
        "patients": patients,
        "seed": seed,
        "accuracy": round(right / len(answers), 4),
        "right": right,
        "answers": [{"truth": t, "diagnosis": a} for t, a in answers],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models")
    p.add_argument("--covid-ct-md", type=Path, default=ROOT.parent / "shared/data/covid-ct-md")
    p.add_argument("--site", default="philips-ingenuity")
    p.add_argument("--patients", type=int, default=12)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    doc: dict[str, Any] = {"model": str(args.model.name)}
    doc["real_ct_training_series"] = real_rows(args.model, args.covid_ct_md)
    doc["phantoms_unseen_site"] = phantom_rows(args.model, args.site, args.patients, args.seed)
    print(json.dumps(doc["phantoms_unseen_site"] | {"answers": None}))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
