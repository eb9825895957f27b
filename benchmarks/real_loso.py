"""Leave-one-real-series-out: train without one real COVID-CT-MD series, diagnose it, score its slices.

Two recipes with the same budget (architecture, image size, epochs x steps x batch, seed):

- ``today``: phantom cohort (the demo's 36 training patients) + the real series left in;
- ``realistic``: synthetic disease drawn into the real series left in (``covidct.data.realistic``, lesion
  textures from COVID-SemiSeg's training images) + the real series left in. No phantoms.
- ``realslices``: ``realistic`` + COVID-SemiSeg's training images as real COVID-19 slices and the
  backgrounds' normal slices given their look (``covidct synth-real`` writes both to ``slices/``).

For each held-out series: the patient answer, and the slice AUC of infected vs not (score 1 - p(normal) on
every slice, truth from the official slice labels; normal001's slices are all negatives, so its AUC is
undefined and the pooled AUC over the three held-out series is the summary figure).

    .venv/bin/python benchmarks/real_loso.py --out runs/loso [--recipes today,realistic] [--cases P001,...]

Writes ``OUT/loso.json`` and ``benchmarks/results/real-loso.md``. Real CT figures only; nothing here is a
phantom figure except the training data of ``today``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def real_manifest(data: Path, exclude: str, out: Path, weight: float = 1.0) -> Path:
    """A manifest of the real series of ``data`` except ``exclude``, all prescribed to training (with the
    sampling ``weight`` within their class)."""
    from covidct.data.covidctmd import read_covidctmd
    from covidct.data.manifest import write_manifest

    records = [r for r in read_covidctmd(data) if r.case != exclude]
    return write_manifest(records, out / "real.csv", split="train", weight=weight if weight != 1.0 else None)


def train(data: list[Path], model_dir: Path, args: argparse.Namespace) -> Path:
    from covidct.train.classifier import train_classifier
    from covidct.train.config import ClassifierConfig

    train_classifier(
        ClassifierConfig(
            data=data,
            out_dir=model_dir / "classifier",
            arch=args.arch,
            image_size=args.image_size,
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            patience=args.epochs,
            max_slices_per_study=args.max_slices,
            seed=args.seed,
            device="cpu",
            cache_dir=args.out / "cache",
            progress=False,
            supervision=args.supervision,
        )
    )
    return model_dir


def score(model_dir: Path, record: Any, lesion_gate: float = 0.0) -> dict[str, Any]:
    """The held-out series diagnosed; with ``lesion_gate`` also the gated answer (shipped lesion model)."""
    from _data import score_series
    from covidct.diagnose import Diagnoser
    from covidct.lesions.api import resolve_lesion_dir

    lesions = resolve_lesion_dir(None) if lesion_gate > 0 else None
    return score_series(
        Diagnoser(
            model_dir, classify_all=True, lesion_model=lesions, lesion_gate=lesion_gate if lesions else None
        ),
        record,
    )


def study_inputs(records: list[Any], args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every slice's classifier input (as training prepares it: cache, same mask source) with its class."""
    from covidct.registry import LUNG_WINDOW
    from covidct.train.data import prepare_study

    xs, ys, ids = [], [], []
    for rec in records:
        st = prepare_study(
            rec,
            task="classifier",
            image_size=args.image_size,
            window=LUNG_WINDOW,
            mask_source="auto",
            max_slices=args.max_slices,
            cache_dir=args.out / "cache",
        )
        if st is None:
            continue
        xs.append(np.asarray(st.x, np.float32)[:, None])
        ys.append(np.asarray(st.y))
        ids += [rec.case] * len(st.y)
    return np.concatenate(xs), np.concatenate(ys), ids


def analyse(recipe: str, case: str, args: argparse.Namespace, semiseg: dict[str, Any]) -> dict[str, Any]:
    """For one fold's model: AUC of real infected COVID-SemiSeg slices (held out from lesion donation) vs the
    held-out series' clean slices, and the synthetic-vs-real probe on the model's features (all slices, and
    infected slices only, where a class cannot explain the difference)."""
    from covidct.data.covidctmd import read_covidctmd
    from covidct.diagnose import Diagnoser
    from covidct.evaluate.metrics import roc_auc
    from covidct.evaluate.probe import shortcut_probe
    from covidct.train.data import read_sources

    fold = args.out / recipe / case
    diagnoser = Diagnoser(fold / "model")
    clf = diagnoser.pipeline.classifier
    out: dict[str, Any] = {"recipe": recipe, "case": case}
    held = next(r for r in read_covidctmd(args.data) if r.case == case)
    hx, hy, _ = study_inputs([held], argparse.Namespace(**{**vars(args), "max_slices": None}))
    clean = 1.0 - clf.predict_inputs(hx[hy == 0])[:, 0]
    for name, (x, flags) in semiseg.items():
        pos = 1.0 - clf.predict_inputs(x[flags])[:, 0]
        out[f"auc_{name}"] = roc_auc(
            np.concatenate([np.ones(pos.size, bool), np.zeros(clean.size, bool)]),
            np.concatenate([pos, clean]),
        )
        out[f"n_{name}"] = int(pos.size)
    out["n_clean"] = int(clean.size)
    data = [
        fold / "real" / "real.csv",
        args.out / "phantoms" if recipe == "today" else fold / "realistic" / "manifest.csv",
    ]
    real_recs = [*read_sources([data[0]]), held]
    syn_recs = read_sources([data[1]])
    rx, ry, rid = study_inputs(real_recs, args)
    sx, sy, sid = study_inputs(syn_recs, args)
    for label, rsel, ssel in (("all", ry >= 0, sy >= 0), ("infected", ry > 0, sy > 0)):
        res = shortcut_probe(
            clf,
            rx[rsel],
            sx[ssel],
            max_per_group=400,
            seed=args.seed,
            real_studies=np.asarray(rid)[rsel],
            synthetic_studies=np.asarray(sid)[ssel],
        )
        out[f"probe_{label}"] = {
            "balanced_accuracy": res.balanced_accuracy,
            "auc": res.auc,
            "n_real": res.n_real,
            "n_synthetic": res.n_synthetic,
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "covid-ct-md")
    p.add_argument(
        "--donors",
        type=Path,
        nargs="*",
        default=[SHARED / "covid-semiseg/train/multiclass", SHARED / "covid-semiseg/train/pseudo-label"],
    )
    p.add_argument("--out", type=Path, default=Path("runs/loso"))
    p.add_argument("--recipes", default="today,realistic")
    p.add_argument("--cases", default="P001,cap001,normal001")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--max-slices", type=int, default=48)
    p.add_argument("--variants", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--real-weight",
        type=float,
        default=1.0,
        help="sampling weight of the real series' slices within their class (scripts/pretrained.py: 4)",
    )
    p.add_argument(
        "--lesion-gate",
        type=float,
        default=0.0,
        help="also score the held-out series with this lesion gate (shipped lesion model; 0: not)",
    )
    p.add_argument(
        "--supervision",
        default="slice",
        choices=("slice", "patient", "mixed"),
        help="the classifier's supervision (patient: every abnormal study by its patient label only)",
    )
    p.add_argument("--md", type=Path, default=ROOT / "benchmarks/results/real-loso.md")
    p.add_argument("--render", action="store_true", help="only re-render the table from OUT/loso-*.json")
    p.add_argument(
        "--analyse", action="store_true", help="only the COVID-SemiSeg AUC and probes of trained folds"
    )
    args = p.parse_args()
    if args.analyse:
        return analyse_all(args)
    if args.render:
        return render_saved(args)

    from covidct.data.covidctmd import read_covidctmd
    from covidct.data.realistic import RealisticSettings, build_realistic_cohort
    from covidct.data.synth import generate_cohort

    records = {r.case: r for r in read_covidctmd(args.data)}
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    phantoms = out / "phantoms"
    for recipe in args.recipes.split(","):
        results[recipe] = []
        for case in args.cases.split(","):
            fold = out / recipe / case
            t0 = time.perf_counter()
            data = [real_manifest(args.data, case, fold / "real", args.real_weight)]
            if recipe == "today":
                if not (phantoms / "cohort.csv").is_file():
                    generate_cohort(
                        phantoms, patients=36, seed=args.seed, size="small", overwrite=True, progress=False
                    )
                data.append(phantoms)
            elif recipe == "realslices":
                cohort = fold / "realistic"
                if not (cohort / "manifest.csv").is_file():
                    build_realistic_cohort(
                        [args.data],
                        cohort,
                        donors=args.donors,
                        exclude=[case],
                        settings=RealisticSettings(variants=args.variants, seed=args.seed),
                        overwrite=True,
                        progress=False,
                    )
                data += [cohort / "manifest.csv", cohort / "slices"]
            elif recipe == "realistic" and (fold / "realistic" / "manifest.csv").is_file():
                data.append(fold / "realistic" / "manifest.csv")
            elif recipe == "realistic":
                data.append(
                    build_realistic_cohort(
                        [args.data],
                        fold / "realistic",
                        donors=args.donors,
                        exclude=[case],
                        settings=RealisticSettings(variants=args.variants, seed=args.seed),
                        overwrite=True,
                        progress=False,
                    )
                )
            else:
                raise SystemExit(f"unknown recipe {recipe}")
            model = train(data, fold / "model", args)
            row = score(model, records[case], args.lesion_gate)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            results[recipe].append(row)
            for tag, r in (("", row), (" +gate", row.get("gated"))):
                if r is not None:
                    print(
                        f"{recipe + tag:16s} {case:10s} truth {r['truth']:8s} said {r['diagnosis']:8s} "
                        f"slice AUC {r['slice_auc']:.3f} counts {r['counts']} ({row['seconds']} s)",
                        flush=True,
                    )
            (out / f"loso-{args.recipes.replace(',', '-')}.json").write_text(
                json.dumps(results, indent=1, default=str)
            )
    render(results, args)
    return 0


def render(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    """Write the leave-one-out table (markdown) of ``results`` to ``args.md``."""
    from covidct.evaluate.metrics import roc_auc

    lines = [
        "# Leave-one-real-series-out (real CT)",
        "",
        f"`python benchmarks/real_loso.py` — {args.arch} {args.image_size}px, {args.epochs} epochs x {args.steps} "
        f"steps x batch 16, at most {args.max_slices} slices per study, seed {args.seed}; CPU.",
        "",
        "| recipe | held out | truth | answer | counts (normal, cap, covid19) | slice AUC | mean 1-p(normal), clean slices |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    expanded: dict[str, list[dict[str, Any]]] = {}
    for recipe, rows in results.items():
        expanded[recipe] = rows
        if rows and all("gated" in r for r in rows):
            expanded[f"{recipe} + lesion gate {getattr(args, 'lesion_gate', 0):g}"] = [
                r["gated"] for r in rows
            ]
    for recipe, rows in expanded.items():
        for r in rows:
            c = r["counts"]
            counts = (
                ", ".join(str(c.get(k, 0)) for k in ("normal", "cap", "covid19"))
                if isinstance(c, dict)
                else str(c)
            )
            lines.append(
                f"| {recipe} | {r['case']} | {r['truth']} | {r['diagnosis']} | {counts} | "
                f"{r['slice_auc']:.3f} | {r['mean_p_infected_on_clean']:.3f} |"
            )
        pooled = roc_auc(
            np.concatenate([np.asarray(r["infected"], bool) for r in rows]),
            np.concatenate([np.asarray(r["scores"]) for r in rows]),
        )
        right = sum(r["diagnosis"] == r["truth"] for r in rows)
        lines.append(f"| {recipe} | **pooled** | | {right}/{len(rows)} right | | **{pooled:.3f}** | |")
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def render_saved(args: argparse.Namespace) -> int:
    """Render every ``OUT/loso-*.json`` together (runs of different recipes made separately)."""
    results: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(args.out.glob("loso-*.json")):
        for recipe, rows in json.loads(path.read_text()).items():
            results.setdefault(recipe, []).extend(rows)
    render(results, args)
    return 0


def analyse_all(args: argparse.Namespace) -> int:
    from covidct.data.lesionfolder import lesion_folder_inputs

    semiseg_root = SHARED / "covid-semiseg/train"
    semiseg = {}
    for name, folder in (("doctor", "multiclass"), ("pseudo", "pseudo-label")):
        x, flags, _ = lesion_folder_inputs(semiseg_root / folder, image_size=args.image_size, split="val")
        semiseg[name] = (x, flags)
    rows = []
    for recipe in args.recipes.split(","):
        for case in args.cases.split(","):
            if (args.out / recipe / case / "model" / "model.json").is_file():
                rows.append(analyse(recipe, case, args, semiseg))
                print(json.dumps(rows[-1]), flush=True)
    (args.out / "analysis.json").write_text(json.dumps(rows, indent=1, default=str))
    lines = [
        "",
        "## Real infected slices from outside COVID-CT-MD, and the synthetic-vs-real probe",
        "",
        "Per fold model: AUC of COVID-SemiSeg validation slices (never lesion donors; radiologist masks: "
        "`doctor`; model-made masks, not truth: `pseudo`) against the held-out series' clean slices; probe "
        "balanced accuracy (logistic regression on the model's penultimate features, 5-fold, folds by study) "
        "for real vs synthetic slices, all and infected only. 0.5 = cannot tell.",
        "",
        "| recipe | held out | AUC doctor (n) | AUC pseudo (n) | clean slices | probe all | probe infected |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['case']} | {r['auc_doctor']:.3f} ({r['n_doctor']}) | {r['auc_pseudo']:.3f} "
            f"({r['n_pseudo']}) | {r['n_clean']} | {r['probe_all']['balanced_accuracy']:.3f} | "
            f"{r['probe_infected']['balanced_accuracy']:.3f} |"
        )
    with args.md.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
