"""Steps shared by both trainings: set-up, splits, the preprocessing cache, the pipeline card."""

from __future__ import annotations

import logging
import os
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
    is_lesion_folder,
    lesion_folder_studies,
    prepare_study,
    read_sources,
    resolve_mask_source,
)
from covidct.train.distributed import DistInfo, barrier
from covidct.train.engine import SELECT_BEST, FitResult
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
    cfg: TrainConfig, *, task: str, window: Window, dist: DistInfo, allow_images: bool, weak: bool = False
) -> tuple[dict[str, list[CachedStudy]], dict[str, Any]]:
    """Read the data, split it by patient, fill the cache; returns cached studies per split and a summary.

    ``weak``: abnormal studies without slice labels are kept, with weak targets (:mod:`covidct.train.weak`).

    Rank 0 draws/writes the split and fills the cache first; the other ranks then read both.
    """
    from tqdm.auto import tqdm

    run_dir = run_dir_of(cfg)
    cache_dir = cfg.cache_dir or run_dir / "cache"
    records: list[StudyRecord] = []
    in_memory: list[CachedStudy] = []
    weights = list(getattr(cfg, "source_weights", None) or [1.0] * len(cfg.data))
    if len(weights) != len(cfg.data):
        raise ConfigError(
            f"{len(weights)} source weights for {len(cfg.data)} --data sources: give one per source"
        )
    for src, w in zip(cfg.data, weights, strict=True):
        if allow_images and (is_image_folder(Path(src)) or is_lesion_folder(Path(src))):
            studies = (
                image_folder_studies(Path(src), cfg.image_size)
                if is_image_folder(Path(src))
                else lesion_folder_studies(Path(src), cfg.image_size)
            )
            in_memory.extend(studies)
            found = [s.record for s in studies]
        elif is_image_folder(Path(src)) or is_lesion_folder(Path(src)):
            raise InputError(f"{src}: slice-image folders train the classifier only (no lung masks to learn)")
        else:
            found = read_sources([Path(src)])
        for rec in found:
            rec.extra["source"] = str(src)
            if w != 1.0:
                rec.extra["weight"] = float(rec.extra.get("weight", 1.0)) * w
        records.extend(found)
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
                    weak=weak,
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
        "left_out_rule": (
            "studies that cannot be read (listed in unreadable_studies)"
            if weak
            else "abnormal studies without slice labels are left out of slice-level training, "
            "and studies that cannot be read (listed in unreadable_studies)"
        ),
        "unreadable_studies": unusable,
        "max_slices_per_study": cfg.max_slices_per_study,
        "mask_source": cfg.mask_source,
        "masks_used": mask_counts,
    }
    return out, summary


def check_validation(
    cfg: TrainConfig, studies: dict[str, list[CachedStudy]], summary: dict[str, Any], *, per_class: bool
) -> dict[str, Any]:
    """Say in one line, before training starts, what validation there is; refuse when there is none.

    The validation set is unusable when it is empty or, with ``per_class`` (the classifier), lacks a class
    that training has: early stopping and the choice of the kept epoch would then rest on nothing, or on
    a score blind to a class. Unless ``cfg.allow_no_validation``, that raises :class:`ConfigError` naming
    the fixes; with it, the line is a warning and training keeps the last epoch. Returns the card's
    validation status: ``{"status": "ok" | "incomplete" | "none", "patients": {class: n}, ...}``.
    """
    val, train = studies["val"], studies["train"]
    counts = {c: sum(1 for s in val if s.record.diagnosis == c) for c in CLASS_NAMES}
    trained = {c for c in CLASS_NAMES if any(s.record.diagnosis == c for s in train)}
    missing = [c for c in CLASS_NAMES if c in trained and not counts[c]] if per_class else []
    n_val = len(val)
    if n_val and not missing:
        log.info("validation: %d patients (%s)", n_val, ", ".join(f"{c} {k}" for c, k in counts.items() if k))
        return {"status": "ok", "patients": counts}
    if cfg.splits_file is not None:
        how = f"split from {cfg.splits_file}"
    else:
        how = f"split drawn with seed {cfg.effective_split_seed} and --val-fraction {cfg.val_fraction:g}"
    n_train = {c: sum(1 for s in train if s.record.diagnosis == c) for c in CLASS_NAMES}
    left_out = int(summary.get("left_out_studies", 0))
    problem = (
        "the validation set is empty" if not n_val else f"validation has no {', '.join(missing)} patients"
    )
    line = (
        f"no usable validation: {problem} ({how}; training patients "
        + ", ".join(f"{c} {k}" for c, k in n_train.items())
        + (f"; {left_out} studies left out" if left_out else "")
        + ")"
    )
    if not cfg.allow_no_validation:
        raise ConfigError(
            f"{line}. Early stopping and the choice of the kept epoch need a validation score: add patients "
            "(at least 2 per class), raise --val-fraction, or give --splits CSV with val rows; or pass "
            "--no-validation to train every epoch and keep the last"
        )
    log.warning("%s; --no-validation: every epoch runs and the last one is kept", line)
    out: dict[str, Any] = {"status": "incomplete" if n_val else "none", "reason": problem, "patients": counts}
    if missing:
        out["missing_classes"] = missing
    return out


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
    validation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The common tail of both trainings (main process only): card -> bundle -> pipeline ``model.json``.

    ``make_card(cfg, summary, best_epoch, metrics)`` builds the card; the facts every
    training shares (seed, optimizer, learning rate and decay, batch size, world size, epochs run and kept,
    the log's place), the training budget and how it ended (``steps_per_epoch``, ``max_minutes``,
    ``stopped``: the line the log gave, ``model_selection``), ``data_provenance`` and the ``validation`` status of :func:`check_validation`
    are added here, as are ``extra_card`` entries (e.g. the classifier's calibration file), all before
    :func:`covidct.bundle.save_component` stamps the hash, so the hash covers them. Returns the written card.
    """
    from covidct.bundle import save_component

    card = make_card(cfg, summary, result.best_epoch, result.metrics)
    training = card.setdefault("training", {})
    training.update(
        {
            "seed": cfg.seed,
            "epochs_max": cfg.epochs,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "stopped_by": result.stopped_by,
            "optimizer": cfg.optimizer,
            "lr": cfg.lr,
            "lr_decay": cfg.lr_decay,
            "batch_size": cfg.batch_size,
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "log": "training/training_log.csv",
            "steps_per_epoch": cfg.steps_per_epoch,
            "max_minutes": cfg.max_minutes,
            "stopped": result.message,
            "model_selection": result.selection,
        }
    )
    if cfg.data_provenance is not None:
        training["data_provenance"] = cfg.data_provenance
    status = dict(validation or {"status": "ok"})
    if status.get("status") == "none":
        measure = dict(card.get("validation") or {}).get("measure")
        card["validation"] = {**status, "measure": measure, "kept_epoch": result.best_epoch}
    else:
        card["validation"] = {**status, **dict(card.get("validation") or {})}
        if result.selection != SELECT_BEST:
            card["validation"]["used_for_selection"] = False
    card.update(extra_card or {})
    written = save_component(cfg.out_dir, result.best_state, card)
    update_pipeline(cfg)
    log.info("%s bundle written to %s (kept epoch %d)", what, cfg.out_dir, result.best_epoch)
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
