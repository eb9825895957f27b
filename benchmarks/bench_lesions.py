"""The lesion segmenter measured: real validation images, real lobe labels, synthetic cohort, speed.

Usage: ``python benchmarks/bench_lesions.py [--model DIR] [--out benchmarks/results/lesions.json]``

1. COVID-SemiSeg ``multiclass``: the validation fifth (by image name; never trained on) at the images' own
   size: mean Dice per image, sensitivity, specificity of the infection, per-class Dice; for the network and
   for the classical HU-threshold baseline side by side.
2. COVID-CT-MD development series (P001, cap001, normal001): per slice and lung, does the segmenter put
   lesion voxels (at least ``--min-ml``) in the lungs that the official lobe-level labels mark? Accuracy,
   sensitivity, specificity over lung-slices; the same per zone (each lung's z-thirds, as in the
   involvement figures: a slice lies in one zone of each lung, so within a slice lobes cannot be told apart);
   lesion volume on the normal series.
3. A synthetic cohort of a scanner site (``--site``): infection Dice per patient against its lesion mask,
   by class (phantom figures: kept apart from the real ones).
4. Speed on P001: the lesion step and the classical lung segmentation, timed side by side (median of
   ``--repeats``), per 150 slices.

Real pixels are only read, never written. Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
LOBES = ("LLL", "LUL", "RLL", "RML", "RUL")


def lobe_agreement(segmenter: Any, md_root: Path, min_ml: float, zone_min_ml: float = 1.0) -> dict[str, Any]:
    from covidct.data.covidctmd import label_row, pick_label_file, read_covidctmd, read_index
    from covidct.io import load_study
    from covidct.lesions.quantify import zone_slices
    from covidct.segment import get_segmenter

    index = read_index(md_root / "Index.csv")
    lobe_file = pick_label_file(md_root, "Lobe-level-labels")
    lobes = np.load(lobe_file) if lobe_file is not None else None
    known = [v[0] for v in index.values()]
    out: dict[str, Any] = {"lobe_file": lobe_file.name if lobe_file else None, "series": {}}
    tp = fp = fn = tn = 0
    z_tp = z_fp = z_fn = z_tn = 0
    for rec in read_covidctmd(md_root):
        volume = load_study(rec.path)
        lung = get_segmenter("classical").apply(volume)
        les = segmenter.apply(volume, lung)
        min_vox = min_ml * 1000.0 / float(np.prod(volume.spacing))
        entry = index.get(rec.case.lower())
        n = volume.n_slices
        if entry is not None and lobes is not None:
            row = lobes[label_row(entry[0], lobes.shape[0], known)][:n].astype(bool)
            truth = {1: row[:, 2:5].any(axis=1), 2: row[:, 0:2].any(axis=1)}  # right: RLL RML RUL
        else:  # no row: a normal patient, no lesion anywhere
            truth = {1: np.zeros(n, bool), 2: np.zeros(n, bool)}
        s_tp = s_fp = s_fn = s_tn = 0
        zones = []
        for side in (1, 2):
            has = (lung == side).any(axis=(1, 2))
            voxel_ml = float(np.prod(volume.spacing)) / 1000.0
            for z0, z1 in zone_slices(has):
                les_ml = float(((les[z0:z1] > 0) & (lung[z0:z1] == side)).sum()) * voxel_ml
                zones.append((bool(truth[side][z0:z1].any()), les_ml >= zone_min_ml))
        z_tp += sum(t and p for t, p in zones)
        z_fp += sum(p and not t for t, p in zones)
        z_fn += sum(t and not p for t, p in zones)
        z_tn += sum(not t and not p for t, p in zones)
        for side in (1, 2):
            pred = ((les > 0) & (lung == side)).sum(axis=(1, 2)) >= min_vox
            has_lung = (lung == side).any(axis=(1, 2))
            t, p = truth[side][has_lung], pred[has_lung]
            s_tp += int((t & p).sum())
            s_fp += int((~t & p).sum())
            s_fn += int((t & ~p).sum())
            s_tn += int((~t & ~p).sum())
        tp, fp, fn, tn = tp + s_tp, fp + s_fp, fn + s_fn, tn + s_tn
        lesion_ml = float((les > 0).sum()) * float(np.prod(volume.spacing)) / 1000.0
        out["series"][rec.case] = {
            "class": rec.diagnosis,
            "lung_slices": s_tp + s_fp + s_fn + s_tn,
            "labelled_involved": s_tp + s_fn,
            "tp": s_tp,
            "fp": s_fp,
            "fn": s_fn,
            "tn": s_tn,
            "lesion_ml": round(lesion_ml, 1),
            "zones_labelled_involved": sum(t for t, _ in zones),
            "zones_predicted_involved": sum(p for _, p in zones),
        }
    total = tp + fp + fn + tn
    out["accuracy"] = (tp + tn) / total if total else float("nan")
    out["sensitivity"] = tp / (tp + fn) if tp + fn else float("nan")
    out["specificity"] = tn / (tn + fp) if tn + fp else float("nan")
    out["min_ml"] = min_ml
    out["zones"] = {
        "what": "each lung's z-thirds: labelled involved when any of its slices has a lobe label, predicted "
        f"involved when it holds >= {zone_min_ml} ml of lesion",
        "tp": z_tp,
        "fp": z_fp,
        "fn": z_fn,
        "tn": z_tn,
    }
    return out


def synthetic_dice(segmenter: Any, *, site: str, patients: int, seed: int) -> dict[str, Any]:
    import SimpleITK as sitk

    from covidct.data.covidctmd import read_covidctmd
    from covidct.data.synth import generate_cohort
    from covidct.evaluate.lesions import dice_of
    from covidct.io import load_study

    per_class: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_cohort(
            Path(tmp) / "c", patients=patients, mix=("cap", "covid19"), seed=seed, size="small", site=site
        )
        for rec in read_covidctmd(root):
            volume = load_study(rec.path)
            lung = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "masks" / f"{rec.case}_lung.nii.gz")))
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "masks" / f"{rec.case}_lesion.nii.gz")))
            pred = segmenter.apply(volume, lung)
            per_class.setdefault(rec.diagnosis, []).append(dice_of(pred > 0, (truth > 0) & (lung > 0)))
    return {
        "site": site,
        "seed": seed,
        "dice_by_class": {k: round(float(np.nanmean(v)), 4) for k, v in per_class.items()},
        "patients": {k: len(v) for k, v in per_class.items()},
    }


def speed(segmenter: Any, series: Path, repeats: int) -> dict[str, float]:
    from covidct.io import load_study
    from covidct.segment import get_segmenter

    volume = load_study(series)
    lungs = get_segmenter("classical")
    t_lung, t_les = [], []
    lung = lungs.apply(volume)
    for _ in range(repeats):
        t = time.perf_counter()
        lung = lungs.apply(volume)
        t_lung.append(time.perf_counter() - t)
        t = time.perf_counter()
        segmenter.apply(volume, lung)
        t_les.append(time.perf_counter() - t)
    per150 = 150.0 / volume.n_slices
    lung_s, les_s = statistics.median(t_lung), statistics.median(t_les)
    return {
        "slices": volume.n_slices,
        "lung_s_per_150": round(lung_s * per150, 2),
        "lesion_s_per_150": round(les_s * per150, 2),
        "ratio_lesion_to_lung": round(les_s / lung_s, 2),
        "repeats": repeats,
    }


def main() -> None:
    import torch

    from covidct.evaluate.lesions import score_lesion_folder
    from covidct.lesions.api import load_lesion_segmenter

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", default=None, help="lesion bundle (default: the shipped one)")
    p.add_argument("--semiseg", default=str(SHARED / "covid-semiseg" / "train" / "multiclass"))
    p.add_argument("--covid-ct-md", default=str(SHARED / "covid-ct-md"))
    p.add_argument("--min-ml", type=float, default=0.1, help="lesion volume that marks a lung-slice involved")
    p.add_argument("--site", default="ge-lightspeed")
    p.add_argument("--patients", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", action="append", default=[], choices=("real", "lobes", "synthetic", "speed"))
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net = load_lesion_segmenter(args.model)
    classical = load_lesion_segmenter("classical")
    doc: dict[str, Any] = {"model": net.card.get("name"), "model_hash": net.card.get("hash")}
    if "real" not in args.skip:
        doc["covid_semiseg_val"] = {
            "network": score_lesion_folder(net, args.semiseg),
            "classical": score_lesion_folder(classical, args.semiseg),
        }
        print("COVID-SemiSeg validation fifth:", json.dumps(doc["covid_semiseg_val"]))
    if "lobes" not in args.skip:
        doc["lobe_agreement"] = {
            "network": lobe_agreement(net, Path(args.covid_ct_md), args.min_ml),
            "classical": lobe_agreement(classical, Path(args.covid_ct_md), args.min_ml),
        }
        print("lobe agreement:", json.dumps(doc["lobe_agreement"]))
    if "synthetic" not in args.skip:
        doc["synthetic"] = {
            "network": synthetic_dice(net, site=args.site, patients=args.patients, seed=11),
            "classical": synthetic_dice(classical, site=args.site, patients=args.patients, seed=11),
        }
        print("synthetic (phantoms):", json.dumps(doc["synthetic"]))
    if "speed" not in args.skip:
        series = Path(args.covid_ct_md) / "Sample data" / "COVID-19 subjects" / "P001"
        doc["speed_cpu"] = {"threads": args.threads, **speed(net, series, args.repeats)}
        print("speed:", json.dumps(doc["speed_cpu"]))
    if args.out:
        from covidct.bundle import json_safe

        Path(args.out).write_text(json.dumps(json_safe(doc), indent=1) + "\n")


if __name__ == "__main__":
    main()
