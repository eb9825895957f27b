"""Train the slice classifier: ``train_classifier(ClassifierConfig(...)) -> bundle folder``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidct.bundle import default_rule
from covidct.classify.networks import CONV1_SIZE, CONV1_STRIDE, build_classifier
from covidct.registry import CLASS_NAMES, LUNG_WINDOW, NUM_CLASSES
from covidct.train import augment
from covidct.train.common import (
    check_validation,
    finish_training,
    load_split_studies,
    run_dir_of,
    seed_everything,
    slice_class_counts,
)
from covidct.train.config import ClassifierConfig
from covidct.train.data import CachedStudy, SliceDataset
from covidct.train.distributed import init_distributed, shutdown
from covidct.train.engine import Task, fit, resolve_device
from covidct.train.metrics import classification_metrics
from covidct.train.sources import source_summary, source_validation
from covidct.train.weak import (
    BagDataset,
    as_patient_labelled,
    mil_loss,
    patient_validation,
    resolve_supervision,
    supervision_summary,
)

log = logging.getLogger(__name__)

#: Preprocessed slices saved with a classifier bundle for int8 calibration (``calibration.npy``).
CALIBRATION_SLICES = 64
CALIBRATION_NAME = "calibration.npy"


def balanced_weights(y: np.ndarray, factors: np.ndarray | None = None) -> np.ndarray:
    """Per-slice sampling weights that draw each class equally often: ``1 / count(class)``, or with per-slice
    ``factors`` ``factor / sum of the class's factors`` (a slice with a larger factor takes a larger share of
    its own class only)."""
    f = np.ones(len(y)) if factors is None else np.asarray(factors, dtype=np.float64)
    totals = np.bincount(y, weights=f, minlength=NUM_CLASSES)
    return np.where(totals[y] > 0, f / np.where(totals[y] > 0, totals[y], 1.0), 0.0)


def study_weights(studies: Sequence[CachedStudy], study_of: np.ndarray | None = None) -> np.ndarray:
    """Per-item factor from each study's ``weight`` (a manifest column; 1 when not given): one per slice, or
    (``study_of``: the study of each item, e.g. bags of :class:`~covidct.train.weak.BagDataset`) per item."""
    per_study = np.array([float(st.record.extra.get("weight", 1.0)) for st in studies])
    if study_of is not None:
        return per_study[study_of] if per_study.size else np.zeros(0)
    parts = [np.full(st.x.shape[0], w) for st, w in zip(studies, per_study, strict=True)]
    return np.concatenate(parts) if parts else np.zeros(0)


def sample_weights_of(
    studies: Sequence[CachedStudy],
    y: np.ndarray,
    *,
    balanced: bool,
    study_of: np.ndarray | None = None,
) -> np.ndarray | None:
    """The training draw's per-item weights: study weights, class-balanced (:func:`balanced_weights`) when
    ``balanced``; ``None`` (uniform) when neither applies. Items are slices, or those of ``study_of``."""
    w = study_weights(studies, study_of)
    if balanced:
        return balanced_weights(y, w)
    return None if np.all(w == 1.0) else w


def predict_studies(
    model: nn.Module, studies: list[CachedStudy], device: torch.device, *, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(n, 3)`` and slice classes ``(n,)`` of every cached slice (model in eval mode)."""
    probs, ys = [], []
    with torch.inference_mode():
        for st in studies:
            for i in range(0, st.x.shape[0], batch_size):
                x = torch.from_numpy(np.asarray(st.x[i : i + batch_size], dtype=np.float32))[:, None]
                probs.append(torch.softmax(model(x.to(device)).float(), 1).cpu().numpy())
            ys.append(np.asarray(st.y, dtype=np.int64))
    if not probs:
        return np.zeros((0, NUM_CLASSES), np.float32), np.zeros(0, np.int64)
    return np.concatenate(probs), np.concatenate(ys)


def pick_calibration(
    preferred: list[CachedStudy], fallback: list[CachedStudy], *, n: int = CALIBRATION_SLICES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` cached slices for int8 calibration, stratified across the slice classes.

    Slices of ``preferred`` (the validation studies) come first; ``fallback`` (training) studies are used only
    when ``preferred`` holds fewer than ``n`` slices. Classes take turns (round robin), each class's slices in a
    seeded random order, so a rare class is represented as far as it exists. Returns ``x`` (k, 1, S, S)
    float16 in [0, 1], exactly the classifier's inputs, and the slice classes ``y`` (k,). Deterministic.
    """
    rng = np.random.default_rng(seed)
    pools: dict[int, list[tuple[int, int, int]]] = {}  # class -> (source rank, study, row)
    sources = [preferred] if sum(st.x.shape[0] for st in preferred) >= n else [preferred, fallback]
    studies = [st for group in sources for st in group]
    offset = 0
    for rank, group in enumerate(sources):
        for k, st in enumerate(group):
            ys = np.asarray(st.y).reshape(-1)
            for cls in np.unique(ys):
                rows = np.flatnonzero(ys == cls)
                pools.setdefault(int(cls), []).extend((rank, offset + k, int(r)) for r in rows)
        offset += len(group)
    for cls, items in pools.items():  # preferred source first, random order within a source
        order = rng.permutation(len(items))
        pools[cls] = sorted((items[i] for i in order), key=lambda t: t[0])
    chosen: list[tuple[int, int, int]] = []
    classes = sorted(pools)
    while len(chosen) < n and any(pools[c] for c in classes):
        for c in classes:
            if pools[c] and len(chosen) < n:
                chosen.append((c, *pools[c].pop(0)[1:]))
    if not chosen:
        return np.zeros((0, 1, 1, 1), np.float16), np.zeros(0, np.int64)
    chosen.sort(key=lambda t: (t[1], t[2]))
    x = np.stack([np.asarray(studies[s].x[r], dtype=np.float16) for _, s, r in chosen])[:, None]
    return x, np.array([c for c, _, _ in chosen], dtype=np.int64)


def write_calibration(
    out_dir: Path, preferred: list[CachedStudy], fallback: list[CachedStudy], *, seed: int = 0
) -> dict[str, Any]:
    """Write ``calibration.npy`` ((n, 1, S, S) float16) into the bundle folder; returns its card entry.

    The entry ``{"file", "n", "sha256", "classes", "source"}`` goes into the card before the hash is stamped.
    ``covidct.classify`` reads the file to calibrate int8 backends on real preprocessed slices.
    """
    from covidct._files import atomic_write
    from covidct.bundle import file_sha256

    x, y = pick_calibration(preferred, fallback, seed=seed)

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, x)

    path = atomic_write(Path(out_dir) / CALIBRATION_NAME, save)
    n_pref = sum(st.x.shape[0] for st in preferred)
    return {
        "file": CALIBRATION_NAME,
        "n": int(x.shape[0]),
        "sha256": file_sha256(path),
        "classes": {name: int((y == i).sum()) for i, name in enumerate(CLASS_NAMES)},
        "source": "validation" if n_pref >= CALIBRATION_SLICES else "validation+training",
    }


def fit_validation_confidence(
    model: nn.Module, val: list[CachedStudy], device: torch.device, *, target_accuracy: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Temperatures and the referral threshold fitted on the validation studies (the card's ``confidence``),
    and the validation figures per data source (the card's ``validation_per_source``).

    Validation studies hold at most ``max_slices_per_study`` evenly spaced slices, and the patient rule is
    applied to them as to a whole study.
    """
    from covidct.confidence import fit_confidence
    from covidct.decide import decide

    probs, codes = predict_studies(model, val, device)
    patients: list[tuple[np.ndarray, int, int, tuple[int, int]]] = []
    at = 0
    for st in val:
        n = int(np.asarray(st.y).size)
        p = probs[at : at + n]
        at += n
        d = decide(p)
        patients.append((p, st.record.label, d.label, d.kept))
    known = codes >= 0
    fitted = fit_confidence(
        patients, slice_probs=probs[known], slice_y=codes[known], target_accuracy=target_accuracy
    )
    log.info(
        "confidence fitted on %d validation patients: T_slice %.3g, T_patient %.3g, refer below %s",
        len(val),
        fitted.slice_temperature,
        fitted.patient_temperature,
        "-" if fitted.refer_below is None else f"{fitted.refer_below:.3g}",
    )
    per_source = source_validation(val, probs, [a for _, _, a, _ in patients])
    return fitted.to_card() | {"fitted_on": "validation split"}, per_source


def train_classifier(config: ClassifierConfig) -> Path:
    """Train a slice classifier and write its bundle to ``config.out_dir``; returns that folder.

    Works alone or under ``torchrun`` (DDP). The bundle's card records the data summary, the split seed,
    the best epoch's validation metrics (slice-level accuracy, balanced accuracy, one-vs-rest AUCs), the
    preprocessing and the patient-rule parameters. With ``out_dir`` named ``classifier`` (or ``pipeline_dir``
    set), the pipeline ``model.json`` above it is refreshed too.
    """
    cfg = config
    dist = init_distributed(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    try:
        device = resolve_device(cfg.device, dist)
        seed_everything(cfg.seed)
        studies, summary = load_split_studies(
            cfg,
            task="classifier",
            window=LUNG_WINDOW,
            dist=dist,
            allow_images=True,
            weak=cfg.supervision != "slice",
        )
        mode = resolve_supervision(cfg.supervision, studies["train"])
        if mode == "patient":  # slice labels are not used, in training nor in validation
            studies = {k: [as_patient_labelled(s) for s in v] for k, v in studies.items()}
        weak_run = mode != "slice"
        train_set: SliceDataset | BagDataset = (
            BagDataset(studies["train"], bag_size=cfg.bag_size)
            if weak_run
            else SliceDataset(studies["train"])
        )
        y = train_set.targets().astype(np.int64)
        summary["per_source"] = source_summary(studies["train"], cfg.source_weights, cfg.data)
        summary["supervision"] = supervision_summary(
            studies["train"], mode=mode, bag_size=cfg.bag_size, pooling=cfg.pooling, top_k=cfg.top_k
        )
        log.info(
            "supervision %s: %s",
            mode,
            ", ".join(f"{k} {v}" for k, v in summary["supervision"]["patient_labelled_studies"].items())
            + " patient-labelled studies",
        )
        summary["train_slices"] = slice_class_counts(studies["train"])
        summary["val_slices"] = slice_class_counts(studies["val"])
        weighted = {
            st.record.case: st.record.extra["weight"]
            for st in studies["train"]
            if "weight" in st.record.extra
        }
        if weighted:
            summary["study_weights"] = weighted
        validation = check_validation(cfg, studies, summary, per_class=True)
        torch.manual_seed(cfg.seed)
        model = build_classifier(cfg.arch)
        ce = nn.CrossEntropyLoss()

        def evaluate(m: nn.Module, dev: torch.device) -> dict[str, float]:
            if not studies["val"]:
                return {}
            probs, yv = predict_studies(m, studies["val"], dev)
            known = yv >= 0
            loss = float(
                nn.functional.nll_loss(
                    torch.log(torch.from_numpy(probs[known]).clamp_min(1e-7)), torch.from_numpy(yv[known])
                )
            )
            if weak_run:  # patients decide: the rule's balanced accuracy, ties broken by the soft score
                met = {f"val_{k}": v for k, v in patient_validation(probs, yv, studies["val"]).items()}
                met["val_score"] = met["val_patient_balanced_accuracy"] + 1e-3 * met["val_patient_soft"]
            else:
                met = {f"val_{k}": v for k, v in classification_metrics(yv, probs).items()}
                met["val_score"] = met["val_balanced_accuracy"]
            met["val_loss"] = loss
            return met

        bags = train_set if isinstance(train_set, BagDataset) else None
        task = Task(
            model=model,
            train_set=train_set,
            loss_fn=partial(mil_loss, pooling=cfg.pooling, top_k=cfg.top_k) if weak_run else ce,
            evaluate=evaluate,
            sample_weights=sample_weights_of(
                studies["train"], y, balanced=cfg.balanced, study_of=None if bags is None else bags.study_of
            ),
            validation=validation["status"] == "ok",
            collate=None if bags is None else bags.collate,
            item_sizes=None if bags is None else bags.item_sizes,
        )
        score = "patient balanced accuracy" if weak_run else "balanced accuracy"
        result = fit(cfg, task, run_dir=run_dir_of(cfg), dist=dist, device=device, score_name=score)
        if dist.is_main:
            calibration = write_calibration(cfg.out_dir, studies["val"], studies["train"], seed=cfg.seed)
            model.load_state_dict(result.best_state)
            confidence, per_source = fit_validation_confidence(
                model.eval(), studies["val"], device, target_accuracy=cfg.target_accuracy
            )
            finish_training(
                cfg,
                result,
                summary,
                make_card=classifier_card,
                what="classifier",
                extra_card={
                    "calibration": calibration,
                    "confidence": confidence,
                    "validation_per_source": per_source,
                },
                validation=validation,
            )
        return cfg.out_dir
    finally:
        shutdown(dist)


def classifier_card(
    cfg: ClassifierConfig,
    summary: dict[str, Any],
    best_epoch: int,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """The ``model.json`` content of a classifier bundle (format fields are added by ``save_component``)."""

    return {
        "kind": "classifier",
        "name": cfg.name or f"covidct-{cfg.arch}-{cfg.image_size}",
        "classes": list(CLASS_NAMES),
        "architecture": {
            "name": cfg.arch,
            "library": "monai.networks.nets.ResNet",
            "spatial_dims": 2,
            "in_channels": 1,
            "num_classes": NUM_CLASSES,
            "conv1_t_size": CONV1_SIZE,
            "conv1_t_stride": CONV1_STRIDE,
            "norm": "batch",
        },
        "preprocessing": {
            "window": {"level": LUNG_WINDOW.level, "width": LUNG_WINDOW.width},
            "image_size": cfg.image_size,
            "masking": "pixels outside the lung mask set to 0 (background) before resizing",
            "resize": "bilinear, anti-aliased when shrinking",
            "input_range": [0.0, 1.0],
            "function": "covidct.preprocess.classifier_inputs",
        },
        "training": {
            **summary,
            "lr_gamma": cfg.lr_gamma,
            "weight_decay": cfg.weight_decay,
            "patience": cfg.patience,
            "balanced_sampling": cfg.balanced,
            "augmentation": (
                {
                    "rotation_deg": augment.MAX_ROTATION_DEG,
                    "scale": list(augment.SCALE_RANGE),
                    "shift": augment.MAX_SHIFT,
                    "contrast": list(augment.CONTRAST_RANGE),
                    "brightness": augment.MAX_BRIGHTNESS,
                    "noise_std": augment.NOISE_STD,
                    "flips": "none",
                }
                if cfg.augment
                else None
            ),
            "device": cfg.device,
        },
        "validation": {
            "epoch": best_epoch,
            "measure": (
                "val_balanced_accuracy"
                if summary.get("supervision", {}).get("mode", "slice") == "slice"
                else "val_patient_balanced_accuracy (+ 1e-3 x val_patient_soft, a tie-break)"
            ),
            **metrics,
        },
        "rule": default_rule(),
    }
