"""Train the U-Net lung segmenter: ``train_segmenter(SegmenterConfig(...)) -> bundle folder``.

Targets are ground-truth lung masks where a study has one (synthetic cohorts, manifest ``mask`` column) and,
when ``pseudo_labels`` is on, masks of the classical segmenter for the other studies (real series). Loss:
Dice + cross-entropy (MONAI ``DiceCELoss``). Validation measure: mean Dice of the right and left lung over the
validation slices.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidct.preprocess import SEGMENTER_WINDOW
from covidct.registry import LUNG_LABEL_NAMES
from covidct.segment.quality import dice
from covidct.segment.unet import build_segmenter, unet_architecture
from covidct.train import augment
from covidct.train.common import (
    check_validation,
    finish_training,
    load_split_studies,
    run_dir_of,
    seed_everything,
)
from covidct.train.config import SegmenterConfig
from covidct.train.data import CachedStudy, SliceDataset
from covidct.train.distributed import init_distributed, shutdown
from covidct.train.engine import Task, fit, resolve_device

log = logging.getLogger(__name__)


def predict_labels(
    model: nn.Module, studies: list[CachedStudy], device: torch.device, *, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    preds, truth = [], []
    with torch.inference_mode():
        for st in studies:
            for i in range(0, st.x.shape[0], batch_size):
                x = torch.from_numpy(np.asarray(st.x[i : i + batch_size], dtype=np.float32))[:, None]
                preds.append(model(x.to(device)).argmax(1).to(torch.uint8).cpu().numpy())
            truth.append(np.asarray(st.y, dtype=np.uint8))
    if not preds:
        return np.zeros((0, 1, 1), np.uint8), np.zeros((0, 1, 1), np.uint8)
    return np.concatenate(preds), np.concatenate(truth)


def train_segmenter(config: SegmenterConfig) -> Path:
    """Train the U-Net and write its bundle to ``config.out_dir``; returns that folder."""
    from monai.losses import DiceCELoss

    cfg = config
    if not cfg.pseudo_labels and cfg.mask_source == "auto":
        cfg.mask_source = "gt"
    dist = init_distributed(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    try:
        device = resolve_device(cfg.device, dist)
        seed_everything(cfg.seed)
        studies, summary = load_split_studies(
            cfg, task="segmenter", window=SEGMENTER_WINDOW, dist=dist, allow_images=False
        )
        validation = check_validation(cfg, studies, summary, per_class=False)
        train_set = SliceDataset(studies["train"])
        torch.manual_seed(cfg.seed)
        model = build_segmenter(features=cfg.features)
        dce = DiceCELoss(to_onehot_y=True, softmax=True)

        def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return dce(logits.float(), y[:, None].long())

        def evaluate(m: nn.Module, dev: torch.device) -> dict[str, float]:
            if not studies["val"]:
                return {}
            pred, truth = predict_labels(m, studies["val"], dev)
            d_right, d_left = dice(pred, truth, 1), dice(pred, truth, 2)
            finite = [d for d in (d_right, d_left) if not np.isnan(d)]
            mean = float(np.mean(finite)) if finite else float("nan")
            return {"val_dice_right": d_right, "val_dice_left": d_left, "val_dice": mean, "val_score": mean}

        task = Task(
            model=model,
            train_set=train_set,
            loss_fn=loss_fn,
            evaluate=evaluate,
            labels_follow_geometry=True,
            validation=validation["status"] == "ok",
        )
        result = fit(
            cfg, task, run_dir=run_dir_of(cfg), dist=dist, device=device, score_name="mean lung Dice"
        )
        if dist.is_main:
            finish_training(
                cfg, result, summary, make_card=segmenter_card, what="segmenter", validation=validation
            )
        return cfg.out_dir
    finally:
        shutdown(dist)


def segmenter_card(
    cfg: SegmenterConfig,
    summary: dict[str, Any],
    best_epoch: int,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """The ``model.json`` content of a segmenter bundle."""
    return {
        "kind": "segmenter",
        "name": cfg.name or f"covidct-unet-{cfg.image_size}",
        "labels": {str(k): v for k, v in LUNG_LABEL_NAMES.items()},
        "architecture": unet_architecture(cfg.features),
        "preprocessing": {
            "window": {"level": SEGMENTER_WINDOW.level, "width": SEGMENTER_WINDOW.width},
            "image_size": cfg.image_size,
            "resize": "bilinear in, nearest-neighbour labels out",
            "function": "covidct.preprocess.segmenter_inputs",
        },
        "training": {
            **summary,
            "targets": "ground-truth masks" + (" + classical pseudo-labels" if cfg.pseudo_labels else ""),
            "loss": "Dice + cross-entropy",
            "augmentation": {"rotation_deg": augment.MAX_ROTATION_DEG, "flips": "none"}
            if cfg.augment
            else None,
        },
        "validation": {"epoch": best_epoch, "measure": "val_dice", **metrics},
    }
