"""Train the lesion U-Net: ``train_lesions(LesionConfig(...)) -> bundle folder``.

Data: lesion folders (``ROOT/Imgs`` + ``ROOT/GT``, see :mod:`covidct.lesions.folders`), or CT cohorts with
``masks/<case>_lesion.nii.gz`` (synthetic cohorts, COVID-CT-MD-style folders: :mod:`covidct.lesions.volumes`). ``data`` folders hold
masks drawn by people: a fixed fifth of their images (by a hash of the name) is the validation set, the rest
is trained on. ``pseudo`` folders hold model-made masks (COVID-SemiSeg's ``pseudo-label``): every image is
trained on with the loss weighted by ``pseudo_weight``, none is ever used to validate or to report. The few
people-labelled images are drawn ``labelled_share`` of the time (half by default), the many pseudo-labelled
ones the rest.

Loss: cross-entropy over background / ground glass / consolidation, where a pixel of a mask that does not
give the lesion type ("lesion, type not given") counts as right when ground glass *or* consolidation is
predicted (the log of their summed probabilities), plus a soft Dice of the infection (ground glass +
consolidation). Validation measure: the mean Dice of the infection per validation image, as published
methods on COVID-SemiSeg are measured. Augmentation: the standard small affine and contrast changes, then
the eight quarter-turns and mirrorings (the folders' images are rotated; CT slices are not).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidct.data.records import StudyRecord
from covidct.errors import ConfigError
from covidct.registry import LESION_ANY, LESION_IMAGE_SIZE, LESION_LABEL_NAMES, LESION_WINDOW
from covidct.segment.unet import unet_architecture
from covidct.train.augment import dihedral
from covidct.train.common import finish_training, run_dir_of, seed_everything
from covidct.train.config import TrainConfig
from covidct.train.data import CachedStudy, SliceDataset
from covidct.train.distributed import init_distributed, shutdown
from covidct.train.engine import Task, fit, resolve_device

log = logging.getLogger(__name__)

#: Targets of pseudo-labelled images are stored shifted by this much (so the loss can weight them).
PSEUDO_OFFSET = 8


@dataclass
class LesionConfig(TrainConfig):
    """Lesion U-Net training: ``data`` human-labelled lesion folders, ``pseudo`` model-labelled ones."""

    image_size: int = LESION_IMAGE_SIZE
    batch_size: int = 8
    features: tuple[int, ...] = field(default=(16, 32, 64, 128, 256, 16))
    pseudo: list[Path] = field(default_factory=list)
    pseudo_weight: float = 0.5
    dice_weight: float = 1.0
    labelled_share: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pseudo = [Path(p) for p in self.pseudo]
        if self.image_size % 16:
            raise ConfigError(f"the U-Net needs an image size divisible by 16, got {self.image_size}")
        if not 0 <= self.pseudo_weight <= 1:
            raise ConfigError(f"--pseudo-weight must lie in [0, 1], got {self.pseudo_weight}")
        if not 0 < self.labelled_share <= 1:
            raise ConfigError(f"--labelled-share must lie in (0, 1], got {self.labelled_share}")


def partial_label_loss(
    logits: torch.Tensor, y: torch.Tensor, *, pseudo_weight: float = 0.5, dice_weight: float = 1.0
) -> torch.Tensor:
    """The lesion loss (see the module text) of logits ``(n, 3, S, S)`` and targets ``(n, S, S)``.

    Targets: 0/1/2 the labels, :data:`LESION_ANY` "lesion, type not given"; plus :data:`PSEUDO_OFFSET` for
    pixels of pseudo-labelled images, whose terms count ``pseudo_weight``.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    pseudo = y >= PSEUDO_OFFSET
    t = torch.where(pseudo, y - PSEUDO_OFFSET, y).long()
    known = t.clamp(max=2)
    nll = -logp.gather(1, known[:, None])[:, 0]
    any_lesion = -torch.logsumexp(logp[:, 1:3], dim=1)
    nll = torch.where(t == LESION_ANY, any_lesion, nll)
    weight = torch.where(pseudo, torch.full_like(nll, pseudo_weight), torch.ones_like(nll))
    ce = (nll * weight).sum() / weight.sum().clamp(min=1e-6)
    p_inf = logp[:, 1:3].exp().sum(1)
    truth = (t > 0).float()
    inter = (p_inf * truth * weight).sum()
    dice = 1 - (2 * inter + 1) / ((p_inf * weight).sum() + (truth * weight).sum() + 1)
    return ce + dice_weight * dice


def sample_weights(studies: list[CachedStudy], labelled_share: float) -> np.ndarray | None:
    """Per-image sampling weights giving people-labelled images ``labelled_share`` of the draws (they are few
    beside the pseudo-labelled ones); ``None`` (uniform) when only one kind is there."""
    pseudo = np.concatenate([np.full(s.x.shape[0], bool(s.y.max() >= PSEUDO_OFFSET)) for s in studies])
    n_p, n_h = int(pseudo.sum()), int((~pseudo).sum())
    if n_p == 0 or n_h == 0:
        return None
    return np.where(pseudo, (1 - labelled_share) / n_p, labelled_share / n_h)


def lesion_studies(cfg: LesionConfig) -> tuple[dict[str, list[CachedStudy]], dict[str, Any]]:
    """Training and validation 'studies' (one per folder and split) and the data summary for the card."""
    from covidct.lesions.folders import read_lesion_folder
    from covidct.lesions.volumes import has_lesion_volumes, read_lesion_volumes

    out: dict[str, list[CachedStudy]] = {"train": [], "val": []}
    sources: list[dict[str, Any]] = []
    for root, pseudo in [(p, False) for p in cfg.data] + [(p, True) for p in cfg.pseudo]:
        splits = ("all",) if pseudo else ("train", "val")
        counts: dict[str, int] = {}
        for split in splits:
            reader = read_lesion_volumes if has_lesion_volumes(root) else read_lesion_folder
            part = reader(root, image_size=cfg.image_size, split=split)
            counts[split] = len(part.names)
            if not part.names:
                continue
            y = part.y + np.uint8(PSEUDO_OFFSET) if pseudo else part.y
            rec = StudyRecord(case=f"{Path(root).name}:{split}", path=Path(root), diagnosis="covid19")
            out["val" if split == "val" else "train"].append(
                CachedStudy(rec, part.x, y.astype(np.uint8), np.arange(len(part.names)))
            )
        sources.append(
            {
                "path": str(root),
                "masks": "model-made (pseudo-labels)" if pseudo else "drawn by people",
                **counts,
            }
        )
    summary = {
        "sources": sources,
        "train_images": sum(s.x.shape[0] for s in out["train"]),
        "val_images": sum(s.x.shape[0] for s in out["val"]),
    }
    if summary["train_images"] == 0:
        raise ConfigError("no training image found: pass --data ROOT with ROOT/Imgs and ROOT/GT")
    if summary["val_images"] == 0 and not cfg.allow_no_validation:
        raise ConfigError(
            "no validation image: the held-out fifth of the --data folders is empty; add images or pass "
            "--no-validation to keep the last epoch"
        )
    return out, summary


def train_lesions(config: LesionConfig) -> Path:
    """Train the lesion U-Net and write its bundle to ``config.out_dir``; returns that folder."""
    from covidct.evaluate.lesions import lesion_scores
    from covidct.lesions.model import build_lesion_net

    cfg = config
    dist = init_distributed(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    try:
        device = resolve_device(cfg.device, dist)
        seed_everything(cfg.seed)
        studies, summary = lesion_studies(cfg)
        log.info(
            "lesion training: %d images (%d validation) from %d folders",
            summary["train_images"],
            summary["val_images"],
            len(summary["sources"]),
        )
        torch.manual_seed(cfg.seed)
        model = build_lesion_net(features=cfg.features)

        def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return partial_label_loss(logits, y, pseudo_weight=cfg.pseudo_weight, dice_weight=cfg.dice_weight)

        def evaluate(m: nn.Module, dev: torch.device) -> dict[str, float]:
            val = studies["val"]
            if not val:
                return {}
            x = np.concatenate([np.asarray(s.x, np.float32) for s in val])
            truth = np.concatenate([np.asarray(s.y) for s in val])
            preds = []
            with torch.inference_mode():
                for i in range(0, x.shape[0], cfg.batch_size):
                    xb = torch.from_numpy(x[i : i + cfg.batch_size, None]).to(dev)
                    preds.append(m(xb).argmax(1).to(torch.uint8).cpu().numpy())
            scores = lesion_scores(list(np.concatenate(preds)), list(truth))
            return {f"val_{k}": v for k, v in scores.items()} | {"val_score": scores["dice"]}

        task = Task(
            model=model,
            train_set=SliceDataset(studies["train"]),
            sample_weights=sample_weights(studies["train"], cfg.labelled_share),
            loss_fn=loss_fn,
            evaluate=evaluate,
            labels_follow_geometry=True,
            validation=bool(studies["val"]),
            extra_augment=dihedral if cfg.augment else None,
        )
        result = fit(
            cfg, task, run_dir=run_dir_of(cfg), dist=dist, device=device, score_name="infection Dice"
        )
        if dist.is_main:
            status = {"status": "ok"} if studies["val"] else {"status": "none"}
            finish_training(cfg, result, summary, make_card=lesion_card, what="lesions", validation=status)
        return cfg.out_dir
    finally:
        shutdown(dist)


def lesion_card(
    cfg: LesionConfig,
    summary: dict[str, Any],
    best_epoch: int,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """The ``model.json`` content of a lesion bundle."""
    return {
        "kind": "lesions",
        "name": cfg.name or f"covidct-lesion-unet-{cfg.image_size}",
        "labels": {str(k): v for k, v in LESION_LABEL_NAMES.items()},
        "architecture": unet_architecture(cfg.features),
        "preprocessing": {
            "window": {"level": LESION_WINDOW.level, "width": LESION_WINDOW.width},
            "image_size": cfg.image_size,
            "crop": "each slice's lung-mask box plus 6 px (lesion-folder images are such crops already)",
            "function": "covidct.lesions.model.slice_input / covidct.lesions.folders.image_inputs",
        },
        "training": {
            **summary,
            "loss": "partial-label cross-entropy + soft Dice of the infection",
            "pseudo_weight": cfg.pseudo_weight,
            "labelled_share": cfg.labelled_share,
            "augmentation": "small affine + contrast, quarter-turns and mirroring" if cfg.augment else None,
        },
        "validation": {"epoch": best_epoch, "measure": "val_dice (mean infection Dice per image)", **metrics},
    }
