"""The training loop shared by the classifier and the segmenter.

Per epoch: class-balanced (or uniform) sampling of slices with a seed per epoch, augmentation, a step per
batch (Adam/SGD, AMP on CUDA), BatchNorm statistics recomputed over training batches, then validation, a row
in ``training_log.csv``, the learning-curve PNG, the ``last.pt`` checkpoint (model, optimizer, scheduler,
scaler, early-stopping state, history) and ``best.pt`` when the validation score improved.

Reproducibility: the work is fixed by ``epochs`` and ``steps_per_epoch``, and every random draw (slice
order and class-balanced sampling, augmentation, BatchNorm recalibration batches) comes from a
``torch.Generator`` seeded from (seed, epoch, rank); the data are read in the main process (no DataLoader
workers). So the same seed gives the same weights on the same hardware and software, and a run resumed from
``last.pt`` continues exactly as the uninterrupted run would have. ``max_minutes`` is the one exception: a
wall-time budget cuts training where the machine's speed says, and the card says so.

Model selection: the epoch with the best finite validation score is kept. A NaN score is never "best" (nor
compared); when no epoch has a finite score, or the task has no validation set (``Task.validation`` false,
allowed only on request, see :func:`covidct.train.common.check_validation`), every epoch runs and the last
one is kept.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from covidct._files import atomic_write, atomic_write_text
from covidct.train.augment import augment_batch
from covidct.train.config import TrainConfig
from covidct.train.distributed import DistInfo, any_true, barrier, mean_across

log = logging.getLogger(__name__)


class ItemDataset(Protocol):
    """What training draws items from (:class:`covidct.train.data.SliceDataset`, ``weak.BagDataset``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]: ...


CHECKPOINT_DIR = "checkpoints"
LOG_NAME = "training_log.csv"
CURVE_NAME = "learning_curve.png"


@dataclass
class Task:
    """What differs between the two trainings."""

    model: nn.Module
    train_set: ItemDataset
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[nn.Module, torch.device], dict[str, float]]  # must give val_score (higher = better)
    sample_weights: np.ndarray | None = None
    labels_follow_geometry: bool = False
    #: applied after the standard augmentation, e.g. quarter-turns for orientation-free lesion training
    extra_augment: (
        Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None
    ) = None
    #: False: no (usable) validation set; no early stopping, every epoch runs and the last one is kept
    validation: bool = True
    #: items of several slices (bags, :mod:`covidct.train.weak`): joins items into ``(x, y)``; with
    #: ``item_sizes`` (slices per item) a step takes items until ``batch_size`` slices are reached
    collate: Callable[[list[Any]], tuple[torch.Tensor, torch.Tensor]] | None = None
    item_sizes: np.ndarray | None = None


#: How the kept epoch was chosen (``FitResult.selection``, the card's ``training.model_selection``).
SELECT_BEST = "best validation score"
SELECT_LAST_NO_VALIDATION = "last epoch (no validation)"
SELECT_LAST_NO_FINITE_SCORE = "last epoch (no finite validation score)"


@dataclass
class FitResult:
    """``best_state``: the kept weights (of ``best_epoch``); ``stopped_by``: "epochs", "early_stopping" or
    "time_budget"; ``message``: the same in words, as logged and written to the card."""

    best_state: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    stopped_by: str
    metrics: dict[str, float] = field(default_factory=dict)
    selection: str = SELECT_BEST
    message: str = ""


def resolve_device(name: str, dist: DistInfo) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; under DDP on CUDA each rank takes cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            from covidct.errors import ConfigError

            raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if dist.enabled:
            return torch.device(f"cuda:{dist.local_rank}")
    return torch.device(name)


def epoch_indices(
    n: int, *, weights: np.ndarray | None, seed: int, epoch: int, dist: DistInfo, cap: int | None
) -> np.ndarray:
    """This rank's sample indices for one epoch (same draw on every rank, then split by rank)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    total = n if cap is None else min(n, cap)
    total = int(math.ceil(total / dist.world) * dist.world)
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        idx = torch.multinomial(w, total, replacement=True, generator=g)
    else:
        idx = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(total / max(n, 1)))])[:total]
    return idx.numpy()[dist.rank :: dist.world]


def batches_of(
    idx: np.ndarray, batch_size: int, item_sizes: np.ndarray | None, max_steps: int | None
) -> list[np.ndarray]:
    """One epoch's steps: ``batch_size`` items each, or (items of several slices, ``item_sizes``) items
    packed until ``batch_size`` slices, at most ``max_steps`` steps (so a step costs the same either way)."""
    if item_sizes is None:
        return [idx[b : b + batch_size] for b in range(0, len(idx), batch_size)]
    from covidct.train.weak import pack_batches

    return [np.asarray(b) for b in pack_batches(idx, item_sizes, batch_size, max_steps)]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_log(path: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows({**r, "epoch": int(r["epoch"])} for r in history)
    atomic_write_text(path, buf.getvalue())


def plot_curve(path: Path, history: list[dict[str, float]], *, score_name: str) -> None:
    """Learning curve: train/val loss and the validation score per epoch (PNG, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(8, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    a1, a2 = fig.subplots(1, 2)
    a1.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    a1.plot(ep, [r.get("val_loss", float("nan")) for r in history], "s-", label="validation")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend()
    a2.plot(ep, [r.get("val_score", float("nan")) for r in history], "o-", color="tab:green")
    a2.set_xlabel("epoch")
    a2.set_ylabel(score_name)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.lr_decay == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    gamma = cfg.lr_gamma if cfg.lr_decay == "step" else 1.0
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)


def recalibrate_batchnorm(
    model: nn.Module,
    dataset: Any,
    *,
    batches: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    collate: Callable[[list[Any]], tuple[torch.Tensor, torch.Tensor]] | None = None,
    item_sizes: np.ndarray | None = None,
) -> None:
    """Recompute BatchNorm running statistics as exact averages over ``batches`` random training batches.

    With items of several slices (``item_sizes``, joined by ``collate``) a batch holds up to ``batch_size``
    slices, as a training step does, so the recalibration costs the same in every supervision mode.

    The running averages that training keeps (momentum 0.1) mix statistics of earlier, different weights; in
    short trainings the eval-mode network then differs from the train-mode one (measured here: a ResNet-18
    100 % right in train mode answered "normal" for everything in eval mode after 20 steps). Inputs are not
    augmented and drawn uniformly (the data as inference sees it). Deterministic given ``seed``.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0 or len(dataset) < 2:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g)[: batches * batch_size].numpy()
    was_training = model.training
    model.train()
    with torch.no_grad():
        for chunk in batches_of(order, batch_size, item_sizes, batches):
            items = [dataset[int(j)] for j in chunk]
            x = collate(items)[0] if collate is not None else torch.stack([it[0] for it in items])
            if x.shape[0] < 2:  # train-mode BatchNorm needs two samples
                break
            model(x.to(device))
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    model.train(was_training)


def _finite_score(metrics: dict[str, float]) -> float | None:
    """The validation score when it is a finite number, else ``None`` (NaN is never compared)."""
    v = metrics.get("val_score")
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def stop_message(
    *,
    stopped_by: str,
    epochs_run: int,
    epochs_max: int,
    kept: int,
    selection: str,
    cfg: TrainConfig,
    cut: str = "",
) -> str:
    """One line saying why training ended and which epoch's weights were kept."""
    if stopped_by == "time_budget":
        why = (
            f"stopped by the time budget ({cfg.max_minutes:g} min) after {epochs_run} of {epochs_max} epochs"
            + (f", {cut}" if cut else "")
            + " (the result depends on the machine's speed; fix --epochs and --steps-per-epoch instead "
            "for a run the seed reproduces)"
        )
    elif stopped_by == "early_stopping":
        why = (
            f"stopped early after {epochs_run} of {epochs_max} epochs "
            f"(no better validation score for {cfg.patience} epochs)"
        )
    else:
        why = f"trained the full budget of {epochs_run} epoch{'' if epochs_run == 1 else 's'}"
    if selection == SELECT_LAST_NO_VALIDATION:
        return f"no validation: last epoch kept; {why}"
    if selection == SELECT_LAST_NO_FINITE_SCORE:
        return f"no epoch had a finite validation score: last epoch kept; {why}"
    return f"{why}; kept epoch {kept}, the best validation score"


def fit(
    cfg: TrainConfig,
    task: Task,
    *,
    run_dir: Path,
    dist: DistInfo,
    device: torch.device,
    score_name: str = "val_score",
) -> FitResult:
    """Train ``task.model`` per ``cfg``; checkpoints and logs go to ``run_dir`` (rank 0 writes)."""
    from tqdm.auto import tqdm

    model = task.model.to(device)
    net: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = _make_optimizer(cfg, model)
    sched = _make_scheduler(cfg, opt)
    use_amp = bool(cfg.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    history: list[dict[str, float]] = []
    start_epoch, best_score, best_epoch, bad_epochs, stopped_by = 0, -math.inf, 0, 0, ""
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    last = ckpt_dir / "last.pt"
    if cfg.resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        start_epoch, best_score = int(ck["epoch"]), float(ck["best_score"])
        best_epoch, bad_epochs, stopped_by = (
            int(ck["best_epoch"]),
            int(ck["bad_epochs"]),
            str(ck["stopped_by"]),
        )
        history = [dict(r) for r in ck["history"]]
        best_path = ckpt_dir / "best.pt"
        if best_path.is_file():
            best_state = torch.load(best_path, map_location="cpu", weights_only=True)["model"]
        log.info("resumed from %s after epoch %d", last, start_epoch)
    elif cfg.resume:
        log.warning("--resume: no checkpoint at %s, starting from scratch", last)
    t0 = time.monotonic()
    budget = None if cfg.max_minutes is None else cfg.max_minutes * 60.0
    n = len(task.train_set)
    show = cfg.progress and dist.is_main and sys.stderr.isatty()
    epoch = start_epoch
    select_last = not task.validation
    cut = ""  # where the time budget cut an epoch short
    while epoch < cfg.epochs and stopped_by != "early_stopping":
        stopped_by = ""
        cap = None if cfg.steps_per_epoch is None else cfg.steps_per_epoch * cfg.batch_size * dist.world
        idx = epoch_indices(n, weights=task.sample_weights, seed=cfg.seed, epoch=epoch, dist=dist, cap=cap)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + dist.rank)
        net.train()
        te = time.monotonic()
        losses: list[float] = []
        starts = batches_of(idx, cfg.batch_size, task.item_sizes, cfg.steps_per_epoch)
        bar = tqdm(starts, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show)
        for b in bar:
            items = [task.train_set[int(i)] for i in b]
            if task.collate is not None:
                x, y = task.collate(items)
            else:
                x = torch.stack([it[0] for it in items])
                y = torch.stack([it[1] for it in items])
            if cfg.augment:
                x, ya = augment_batch(x, gen, y if task.labels_follow_geometry else None)
                y = ya if ya is not None else y
                if task.extra_augment is not None:
                    x, y = task.extra_augment(x, y, gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = task.loss_fn(net(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if budget is not None and any_true(dist, time.monotonic() - t0 > budget):
                stopped_by = "time_budget"
                if len(losses) < len(starts):
                    cut = f"epoch {epoch + 1} cut after {len(losses)} of {len(starts)} steps"
                break
        sched.step()
        train_loss = mean_across(dist, float(np.mean(losses)) if losses else float("nan"))
        recalibrate_batchnorm(
            model,
            task.train_set,
            batches=cfg.bn_recalibration_batches,
            batch_size=cfg.batch_size,
            seed=cfg.seed * 1009 + epoch,
            device=device,
            collate=task.collate,
            item_sizes=task.item_sizes,
        )
        model.eval()
        metrics = task.evaluate(model, device)
        row: dict[str, float] = {"epoch": float(epoch + 1), "train_loss": train_loss}
        row.update(metrics)
        row["lr"] = float(opt.param_groups[0]["lr"])
        row["seconds"] = time.monotonic() - te
        history.append(row)
        score = _finite_score(metrics)
        epoch += 1
        if select_last:
            improved = True  # no validation: the latest epoch is the one kept
        elif score is None:
            improved = False  # NaN (or no score) is never best, and not compared
            if best_epoch > 0:
                bad_epochs += 1
        else:
            improved = best_epoch == 0 or score > best_score + 1e-6
            bad_epochs = 0 if improved else bad_epochs + 1
        if improved:
            best_epoch = epoch
            if score is not None:
                best_score = score
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if not select_last and bad_epochs >= cfg.patience and not stopped_by:
            stopped_by = "early_stopping"
        if not stopped_by and epoch >= cfg.epochs:
            stopped_by = "epochs"
        if select_last:
            note = ", no validation"
        elif score is None:
            note = f", {score_name} {row.get('val_score', math.nan):.4f} (not a number: not compared)"
        else:
            note = f", {score_name} {score:.4f}" + (" (best)" if improved else "")
        log.info("epoch %d: train loss %.4f%s", epoch, train_loss, note)
        if dist.is_main:
            if improved:
                _atomic_torch_save({"model": best_state, "epoch": epoch}, ckpt_dir / "best.pt")
            _atomic_torch_save(
                {
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "stopped_by": stopped_by,
                    "history": history,
                },
                last,
            )
            write_log(run_dir / LOG_NAME, history)
            plot_curve(run_dir / CURVE_NAME, history, score_name=score_name)
        barrier(dist)
        if stopped_by == "time_budget":
            break
    selection = SELECT_LAST_NO_VALIDATION if select_last else SELECT_BEST
    if best_epoch == 0 and history:  # validation gave no finite score in any epoch
        selection = SELECT_LAST_NO_FINITE_SCORE
        best_epoch = epoch
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    stopped_by = stopped_by or "epochs"
    message = stop_message(
        stopped_by=stopped_by,
        epochs_run=epoch,
        epochs_max=cfg.epochs,
        kept=best_epoch,
        selection=selection,
        cfg=cfg,
        cut=cut,
    )
    if dist.is_main:
        if stopped_by == "time_budget" or selection == SELECT_LAST_NO_FINITE_SCORE:
            log.warning("%s", message)
        else:
            log.info("%s", message)
    best_row = next((r for r in history if int(r["epoch"]) == best_epoch), {})
    return FitResult(
        best_state=best_state,
        history=history,
        best_epoch=best_epoch,
        epochs_run=epoch,
        stopped_by=stopped_by,
        metrics={k: v for k, v in best_row.items() if k.startswith("val_")},
        selection=selection,
        message=message,
    )
