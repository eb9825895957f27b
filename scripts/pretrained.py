"""Train the pretrained pipeline shipped in ``models/`` and export it (fp16, no real pixels, with its card).

    .venv/bin/python scripts/pretrained.py --work runs/pretrained            # build, train, export, measure

Steps (each skipped when its output exists, so a rerun continues):
1. a realistic cohort from every real labelled series here (``covidct synth-real``: synthetic COVID-19 / CAP
   drawn into the real series' normal slices, lesion textures from COVID-SemiSeg's training images, plus
   those training images as real COVID-19 slices and the series' normal slices given their look);
2. the slice classifier trained on that cohort plus the real series themselves (no phantoms; the real series
   are prescribed to the training split, so none is lost to validation), a fixed budget of epochs x steps
   (same seed, same weights);
3. export to ``models/``: weights as float16 safetensors and ONNX (float16-stored), the int8 calibration slices left out (they are
   real pixels), the lung segmenter the classical one (no weights; the masks the classifier trained on), the
   shipped lesion model kept (``--lesions``, default ``models/lesions``), and a card naming the data, its
   terms and the figures measured by ``--figures`` (a JSON of figures measured on real CT).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

TERMS = (
    "Research use only; not a medical device. Trained on: COVID-CT-MD sample series P001, cap001, normal001 "
    "(Afshar et al., Scientific Data 8:121, 2021, doi:10.1038/s41597-021-00900-3; research use, cite it) and "
    "on synthetic lesions drawn into them with textures from COVID-SemiSeg (Fan et al., Inf-Net, IEEE TMI "
    "39(8), 2020; source: COVID-19 CT segmentation dataset, medicalsegmentation.com, 2020): non-commercial "
    "research use only. The weights inherit the most restrictive of these terms: non-commercial research use."
)


def build(args: argparse.Namespace) -> Path:
    from covidct.data.realistic import RealisticSettings, build_realistic_cohort

    manifest = args.work / "realistic" / "manifest.csv"
    if manifest.is_file():
        return manifest
    return build_realistic_cohort(
        [args.data],
        args.work / "realistic",
        donors=args.donors,
        settings=RealisticSettings(variants=args.variants, seed=args.seed),
        progress=True,
    )


def train(args: argparse.Namespace, manifest: Path) -> Path:
    from covidct.data.covidctmd import read_covidctmd
    from covidct.data.manifest import write_manifest
    from covidct.train.classifier import train_classifier
    from covidct.train.config import ClassifierConfig

    model = args.work / "model"
    if (model / "model.json").is_file():
        return model
    real = write_manifest(
        read_covidctmd(args.data), args.work / "real" / "real.csv", split="train", weight=args.real_weight
    )
    train_classifier(
        ClassifierConfig(
            data=[real, manifest, manifest.parent / "slices"],
            out_dir=model / "classifier",
            arch=args.arch,
            image_size=args.image_size,
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            patience=args.patience,
            lr=args.lr,
            max_slices_per_study=args.max_slices,
            seed=args.seed,
            device=args.device,
            cache_dir=args.work / "cache",
            name=f"covidct-pretrained-{args.arch}-{args.image_size}",
            progress=True,
        )
    )
    return model


def export(
    model: Path, dest: Path, figures: dict[str, Any], lesions: Path | None, lesion_gate: float = 0.0
) -> Path:
    """Write ``dest`` (the shipped pipeline) from a trained pipeline folder: fp16 weights, no calibration,
    with a copy of the lesion bundle ``lesions`` (its card and weights only, no run-time exports). Everything is
    written beside ``dest`` first, so ``lesions`` may lie inside ``dest`` (the default ``models/lesions``)."""
    from covidct.bundle import load_component, read_card, save_component, write_card, write_pipeline

    card, state = load_component(model / "classifier", kind="classifier")
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    drop = {"format", "format_version", "version", "created", "software", "weights", "hash", "calibration"}
    body = {k: v for k, v in card.items() if k not in drop}
    body["weights_dtype"] = "float16"
    body["terms"] = TERMS
    training = dict(body.get("training") or {})
    # no local paths in a shipped card: each source as <its folder>/<its name> inside the work folder
    training["sources"] = [f"{Path(src).parent.name}/{Path(src).name}" for src in training.get("sources", [])]
    training.pop("log", None)  # the training folder is not shipped
    body["training"] = training
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_component(tmp / "classifier", half, body)
    if lesions is not None:
        (tmp / "lesions").mkdir()
        for name in ("model.json", "weights.safetensors"):
            shutil.copy2(lesions / name, tmp / "lesions" / name)
    write_pipeline(tmp, segmenter="classical", name=body.get("name"))
    pipe = read_card(tmp, kind="pipeline")
    pipe.pop("hash", None)
    pipe["terms"] = TERMS
    pipe["data"] = {
        "real": "COVID-CT-MD sample series P001 (COVID-19), cap001 (CAP), normal001 (normal), with slice labels",
        "synthetic": "lesions drawn into their normal slices (covidct synth-real), textures from COVID-SemiSeg "
        "train/multiclass and train/pseudo-label (validation images held out)",
        "phantoms": "none",
    }
    if lesions is not None and lesion_gate > 0:
        pipe["lesion_gate"] = lesion_gate
    pipe["figures"] = figures
    if "training" in pipe:
        pipe["training"] = training
    write_card(tmp, pipe)
    from covidct.infer.export import export_pipeline

    export_pipeline(
        tmp
    )  # the ONNX exports ship too (float16-stored), so a checkout needs no torch to diagnose
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "covid-ct-md")
    p.add_argument(
        "--donors",
        type=Path,
        nargs="*",
        default=[SHARED / "covid-semiseg/train/multiclass", SHARED / "covid-semiseg/train/pseudo-label"],
    )
    p.add_argument("--work", type=Path, default=Path("runs/pretrained"))
    p.add_argument("--dest", type=Path, default=ROOT / "models")
    p.add_argument("--figures", type=Path, help="JSON of measured figures to put into the card")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--patience", type=int, default=12)
    p.add_argument("--max-slices", type=int, default=48)
    p.add_argument("--variants", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--real-weight",
        type=float,
        default=4.0,
        help="sampling weight of the real series' slices within their class (1: as any other study)",
    )
    p.add_argument(
        "--lesion-gate",
        type=float,
        default=0.01,
        help="the pipeline card's lesion gate (a lung fraction; 0: off), see covidct.decide.gate_by_lesions",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--lesions", type=Path, default=ROOT / "models" / "lesions", help="lesion bundle to ship beside it"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--export-only", action="store_true", help="only (re)export an already trained model")
    args = p.parse_args()
    model = args.work / "model"
    if not args.export_only:
        model = train(args, build(args))
    figures = json.loads(args.figures.read_text()) if args.figures else {}
    lesions = args.lesions if (args.lesions / "model.json").is_file() else None
    print(export(model, args.dest, figures, lesions, args.lesion_gate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
