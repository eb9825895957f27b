"""Train the slice classifier: ``train_classifier(ClassifierConfig(...)) -> bundle folder``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidct.bundle import default_rule, save_component
from covidct.classify.networks import CONV1_SIZE, CONV1_STRIDE, build_classifier
from covidct.registry import CLASS_NAMES, LUNG_WINDOW, NUM_CLASSES
from covidct.train import augment
from covidct.train.common import (
    load_split_studies,
    run_dir_of,
    seed_everything,
    slice_class_counts,
    update_pipeline,
)
from covidct.train.config import ClassifierConfig
from covidct.train.data import CachedStudy, SliceDataset
from covidct.train.distributed import init_distributed, shutdown
from covidct.train.engine import Task, fit, resolve_device
from covidct.train.metrics import classification_metrics

log = logging.getLogger(__name__)


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-slice sampling weights ``1 / count(class)``: each class is drawn equally often."""
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(np.float64)
    return np.where(counts[y] > 0, 1.0 / np.maximum(counts[y], 1), 0.0)


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
            cfg, task="classifier", window=LUNG_WINDOW, dist=dist, allow_images=True
        )
        train_set = SliceDataset(studies["train"])
        y = train_set.targets().astype(np.int64)
        summary["train_slices"] = slice_class_counts(studies["train"])
        summary["val_slices"] = slice_class_counts(studies["val"])
        torch.manual_seed(cfg.seed)
        model = build_classifier(cfg.arch)
        ce = nn.CrossEntropyLoss()

        def evaluate(m: nn.Module, dev: torch.device) -> dict[str, float]:
            if not studies["val"]:
                return {}
            probs, yv = predict_studies(m, studies["val"], dev)
            loss = float(
                nn.functional.nll_loss(
                    torch.log(torch.from_numpy(probs).clamp_min(1e-7)), torch.from_numpy(yv)
                )
            )
            met = {f"val_{k}": v for k, v in classification_metrics(yv, probs).items()}
            met["val_loss"] = loss
            met["val_score"] = met["val_balanced_accuracy"]
            return met

        task = Task(
            model=model,
            train_set=train_set,
            loss_fn=ce,
            evaluate=evaluate,
            sample_weights=balanced_weights(y) if cfg.balanced else None,
        )
        result = fit(
            cfg, task, run_dir=run_dir_of(cfg), dist=dist, device=device, score_name="balanced accuracy"
        )
        if dist.is_main:
            card = classifier_card(
                cfg, summary, result.history, result.best_epoch, result.stopped_by, result.metrics
            )
            save_component(cfg.out_dir, result.best_state, card)
            update_pipeline(cfg)
            log.info("classifier bundle written to %s (best epoch %d)", cfg.out_dir, result.best_epoch)
        return cfg.out_dir
    finally:
        shutdown(dist)


def classifier_card(
    cfg: ClassifierConfig,
    summary: dict[str, Any],
    history: list[dict[str, float]],
    best_epoch: int,
    stopped_by: str,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """The ``model.json`` content of a classifier bundle (format fields are added by ``save_component``)."""
    import os

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
            "seed": cfg.seed,
            "epochs_max": cfg.epochs,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "stopped_by": stopped_by,
            "optimizer": cfg.optimizer,
            "lr": cfg.lr,
            "lr_decay": cfg.lr_decay,
            "lr_gamma": cfg.lr_gamma,
            "weight_decay": cfg.weight_decay,
            "batch_size": cfg.batch_size,
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
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "device": cfg.device,
            "log": "training/training_log.csv",
        },
        "validation": {"epoch": best_epoch, "measure": "val_balanced_accuracy", **metrics},
        "rule": default_rule(),
    }
