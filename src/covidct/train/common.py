"""Steps shared by both trainings: set-up, splits, the preprocessing cache, the pipeline card."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidct.data.records import StudyRecord, class_counts
from covidct.errors import ConfigError, InputError
from covidct.registry import CLASS_NAMES, Window
from covidct.train.config import TrainConfig
from covidct.train.data import (
    CachedStudy,
    SegmenterSource,
    image_folder_studies,
    is_image_folder,
    prepare_study,
    read_sources,
    resolve_mask_source,
)
from covidct.train.distributed import DistInfo, barrier
from covidct.train.engine import FitResult
from covidct.train.splits import SPLITS, assign, make_splits, read_splits, write_splits

log = logging.getLogger(__name__)

RUN_SUBDIR = "training"
SPLITS_NAME = "splits.csv"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def run_dir_of(cfg: TrainConfig) -> Path:
    """Where logs, checkpoints, the split file and (by default) the cache of a bundle's training live."""
    return cfg.out_dir / RUN_SUBDIR


def load_split_studies(
    cfg: TrainConfig, *, task: str, window: Window, dist: DistInfo, allow_images: bool
) -> tuple[dict[str, list[CachedStudy]], dict[str, Any]]:
    """Read the data, split it by patient, fill the cache; returns cached studies per split and a summary.

    Rank 0 draws/writes the split and fills the cache first; the other ranks then read both.
    """
    from tqdm.auto import tqdm

    run_dir = run_dir_of(cfg)
    cache_dir = cfg.cache_dir or run_dir / "cache"
    records: list[StudyRecord] = []
    in_memory: list[CachedStudy] = []
    for src in cfg.data:
        if allow_images and is_image_folder(Path(src)):
            studies = image_folder_studies(Path(src), cfg.image_size)
            in_memory.extend(studies)
            records.extend(s.record for s in studies)
        elif is_image_folder(Path(src)):
            raise InputError(f"{src}: slice-image folders train the classifier only (no lung masks to learn)")
        else:
            records.extend(read_sources([Path(src)]))
    if not records:
        raise InputError(f"no studies found in {', '.join(map(str, cfg.data))}")
    split_path = run_dir / SPLITS_NAME
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.splits_file is not None:
            splits = read_splits(Path(cfg.splits_file))
        elif cfg.resume and split_path.is_file():
            splits = read_splits(split_path)
        else:
            splits = make_splits(
                records,
                seed=cfg.effective_split_seed,
                val_fraction=cfg.val_fraction,
                test_fraction=cfg.test_fraction,
            )
        write_splits(split_path, records, splits)
    barrier(dist)
    splits = read_splits(split_path)
    groups = assign(records, splits, source=split_path)
    by_key = {id(s.record): s for s in in_memory}
    out: dict[str, list[CachedStudy]] = {s: [] for s in SPLITS}
    left_out: list[str] = []
    unusable: list[dict[str, str]] = []  # studies that could not be read (InputError), with the reason
    segs = SegmenterSource()
    todo = [(split, r) for split in ("train", "val") for r in groups[split]]

    mask_counts: dict[str, int] = {}

    def fill(show: bool) -> None:
        for split, rec in tqdm(todo, desc="preprocessing", disable=not show):
            try:
                cached = by_key.get(id(rec)) or prepare_study(
                    rec,
                    task=task,
                    image_size=cfg.image_size,
                    window=window,
                    mask_source=cfg.mask_source,
                    max_slices=cfg.max_slices_per_study,
                    cache_dir=cache_dir,
                    segmenters=segs,
                )
            except InputError as exc:  # unreadable study, not a chest CT, bad mask: leave it out, go on
                if dist.is_main:
                    log.warning("study %s left out of training: %s", rec.case, exc)
                unusable.append({"case": rec.case, "split": split, "reason": f"{type(exc).__name__}: {exc}"})
                left_out.append(rec.case)
                continue
            if cached is None:
                left_out.append(rec.case)
            else:
                out[split].append(cached)
                if id(rec) not in by_key:
                    src = resolve_mask_source(rec, cfg.mask_source)
                    mask_counts[src] = mask_counts.get(src, 0) + 1

    # rank 0 fills the cache; the others wait and then read it
    if dist.is_main:
        fill(cfg.progress and sys.stderr.isatty())
        barrier(dist)
    else:
        barrier(dist)
        fill(False)
    if not out["train"]:
        why = f"; {len(unusable)} could not be read, e.g. {unusable[0]['reason']}" if unusable else ""
        raise ConfigError(
            "no training slices: every training study was left out (abnormal studies need slice labels)" + why
        )
    summary: dict[str, Any] = {
        "sources": [str(p) for p in cfg.data],
        "studies": {s: class_counts(groups[s]) for s in SPLITS},
        "split_seed": cfg.effective_split_seed,
        "split_file": SPLITS_NAME,
        "left_out_studies": len(left_out),
        "left_out_rule": "abnormal studies without slice labels are left out of slice-level training, "
        "and studies that cannot be read (listed in unreadable_studies)",
        "unreadable_studies": unusable,
        "max_slices_per_study": cfg.max_slices_per_study,
        "mask_source": cfg.mask_source,
        "masks_used": mask_counts,
    }
    return out, summary


def slice_class_counts(studies: list[CachedStudy]) -> dict[str, int]:
    y = np.concatenate([np.asarray(s.y).reshape(-1) for s in studies]) if studies else np.zeros(0, int)
    return {name: int((y == i).sum()) for i, name in enumerate(CLASS_NAMES)}


def pipeline_dir_for(cfg: TrainConfig) -> Path | None:
    """The pipeline folder to refresh: ``--pipeline``, or the parent of ``.../classifier`` (``segmenter``)."""
    if cfg.pipeline_dir is not None:
        return Path(cfg.pipeline_dir)
    if cfg.out_dir.name in ("classifier", "segmenter"):
        return cfg.out_dir.parent
    return None


def finish_training(
    cfg: TrainConfig,
    result: FitResult,
    summary: dict[str, Any],
    *,
    make_card: Callable[..., dict[str, Any]],
    what: str,
    extra_card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The common tail of both trainings (main process only): card -> bundle -> pipeline ``model.json``.

    ``make_card(cfg, summary, history, best_epoch, stopped_by, metrics)`` builds the card; ``extra_card``
    entries (e.g. the classifier's calibration file) are added before :func:`covidct.bundle.save_component`
    stamps the hash, so the hash covers them. Returns the written card.
    """
    from covidct.bundle import save_component

    card = make_card(cfg, summary, result.history, result.best_epoch, result.stopped_by, result.metrics)
    card.update(extra_card or {})
    written = save_component(cfg.out_dir, result.best_state, card)
    update_pipeline(cfg)
    log.info("%s bundle written to %s (best epoch %d)", what, cfg.out_dir, result.best_epoch)
    return written


def update_pipeline(cfg: TrainConfig) -> Path | None:
    """Write/refresh ``<pipeline>/model.json`` once a classifier bundle exists there (returns its path)."""
    from covidct.bundle import CARD_NAME, write_pipeline

    pdir = pipeline_dir_for(cfg)
    if pdir is None:
        return None
    if not (pdir / "classifier" / CARD_NAME).is_file():
        log.info("pipeline %s: no classifier yet; its model.json is written after classifier training", pdir)
        return None
    seg = "segmenter" if (pdir / "segmenter" / CARD_NAME).is_file() else "classical"
    write_pipeline(pdir, segmenter=seg, classifier="classifier")
    return pdir / CARD_NAME
