"""``covidct train segmenter|classifier|lesions --data ... -o MODEL_DIR``: train a network into a bundle.

Pipeline folders: with ``-o MODEL/classifier`` (or ``-o MODEL/segmenter``), or with ``--pipeline MODEL``
(then ``-o`` defaults to ``MODEL/<what>``), the top-level ``MODEL/model.json`` that ``covidct diagnose
--model MODEL`` loads is written or refreshed once a classifier exists there (with ``MODEL/segmenter`` when
one was trained, else the classical segmenter). Under ``torchrun --nproc_per_node N`` training uses DDP.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from covidct.errors import ConfigError
from covidct.registry import (
    CLASSIFIER_ARCH,
    CLASSIFIER_IMAGE_SIZE,
    LESION_IMAGE_SIZE,
    SEGMENTER_IMAGE_SIZE,
)

log = logging.getLogger(__name__)


def _common(p: argparse.ArgumentParser, *, size: int, batch: int) -> None:
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="PATH",
        help="COVID-CT-MD-layout folder, synthetic cohort or manifest .csv; for the classifier also a slice-image "
        "folder or a lesion folder (Imgs/ + GT/) (repeat for several sources)",
    )
    p.add_argument("-o", "--output", metavar="MODEL_DIR", default=None, help="bundle folder to write")
    p.add_argument(
        "--pipeline", metavar="DIR", default=None, help="pipeline folder whose model.json to refresh"
    )
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (default: 30)")
    p.add_argument("--image-size", type=int, default=size, help=f"network input side in pixels ({size})")
    p.add_argument("--batch-size", type=int, default=batch, help=f"slices per step and process ({batch})")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (1e-3)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument(
        "--lr-decay",
        choices=("step", "cosine", "none"),
        default="step",
        help="step: x --lr-gamma each epoch (default); cosine over --epochs",
    )
    p.add_argument("--lr-gamma", type=float, default=0.9, help="per-epoch decay factor of 'step' (0.9)")
    p.add_argument("--patience", type=int, default=5, help="early stopping: epochs without improvement (5)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling, augmentation (0)")
    p.add_argument("--split-seed", type=int, default=None, help="seed of the patient split (default: --seed)")
    p.add_argument(
        "--splits", metavar="CSV", default=None, help="reuse a splits.csv written by an earlier run"
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="patients per class for validation (0.2)")
    p.add_argument(
        "--max-slices",
        type=int,
        default=None,
        metavar="N",
        help="evenly spaced slices kept per study (default: all)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-time budget; the best model so far is kept (the result then depends on the machine's "
        "speed: for a run the seed reproduces, bound the work with --epochs and --steps-per-epoch)",
    )
    p.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="steps per epoch (default: one pass over the training slices)",
    )
    p.add_argument(
        "--no-validation",
        action="store_true",
        help="train even when the split leaves no validation patients (or none of a class): every epoch "
        "runs and the last is kept, and the card says so (refused without this flag)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--no-augment", action="store_true", help="no augmentation")
    p.add_argument(
        "--mask-source",
        choices=("auto", "gt", "classical"),
        default="auto",
        help="lung masks: ground truth where present else classical (auto), or force one",
    )
    p.add_argument(
        "--cache-dir", default=None, help="preprocessing cache (default: MODEL_DIR/training/cache)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from MODEL_DIR/training/checkpoints/last.pt"
    )
    p.add_argument("--name", default=None, help="model name recorded in model.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train the lung segmenter, the slice classifier or the lesion segmenter into a model bundle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    seg = what.add_parser("segmenter", help="U-Net lung segmenter (3 classes, batch norm)")
    _common(seg, size=SEGMENTER_IMAGE_SIZE, batch=8)
    seg.add_argument(
        "--no-pseudo-labels",
        action="store_true",
        help="train only on ground-truth masks (no classical masks of real series)",
    )
    seg.set_defaults(func=run)
    cls = what.add_parser("classifier", help="ResNet slice classifier (normal / CAP / COVID-19)")
    _common(cls, size=CLASSIFIER_IMAGE_SIZE, batch=16)
    cls.add_argument("--arch", choices=("resnet18", "resnet34", "resnet50"), default=CLASSIFIER_ARCH)
    cls.add_argument("--no-balance", action="store_true", help="uniform instead of class-balanced sampling")
    cls.add_argument(
        "--supervision",
        choices=("auto", "slice", "patient", "mixed"),
        default="auto",
        help="slice: slice labels (the paper; abnormal studies without them are left out); patient: patient "
        "labels only (multiple-instance learning over kept slices); mixed: slice labels where present, patient "
        "labels elsewhere; auto (default): mixed when some abnormal study lacks slice labels, else slice",
    )
    cls.add_argument(
        "--bag-size", type=int, default=8, help="kept slices per bag of a patient-labelled study (8)"
    )
    cls.add_argument(
        "--pooling", choices=("topk", "noisy-or"), default="topk", help="bag pooling (topk: mean of --top-k)"
    )
    cls.add_argument(
        "--top-k", type=int, default=2, help="most likely slices of a bag that carry its label (2)"
    )
    cls.add_argument(
        "--source-weights",
        type=float,
        nargs="+",
        metavar="W",
        help="one weight per --data source: its studies are drawn W times more often within their class",
    )
    cls.add_argument(
        "--target-accuracy",
        type=float,
        default=0.95,
        help="accuracy of accepted validation patients the referral threshold is chosen for (0.95)",
    )
    cls.set_defaults(func=run)
    les = what.add_parser(
        "lesions",
        help="lesion U-Net (background / ground glass / consolidation) from 2-D lesion folders",
        description="--data: folders ROOT/Imgs/*.jpg|png + ROOT/GT/*.png with masks drawn by people (a fixed "
        "fifth of each, by image name, validates), or CT cohorts with masks/<case>_lesion.nii.gz and "
        "masks/<case>_lung.nii.gz (synthetic cohorts; a fifth of the cases validates); --pseudo: folders with model-made masks (trained on, "
        "weighted by --pseudo-weight, never validated on). Masks: 0/1/2 = background/ground glass/"
        "consolidation, else >= 128 = lesion of either type.",
    )
    _common(les, size=LESION_IMAGE_SIZE, batch=8)
    les.add_argument(
        "--pseudo", action="append", default=[], metavar="PATH", help="lesion folder with model-made masks"
    )
    les.add_argument(
        "--pseudo-weight", type=float, default=0.5, help="loss weight of pseudo-labelled images (0.5)"
    )
    les.add_argument(
        "--labelled-share",
        type=float,
        default=0.5,
        help="share of the draws given to the people-labelled (--data) images when --pseudo is given (0.5)",
    )
    les.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from covidct.train import ClassifierConfig, SegmenterConfig

    out = args.output
    if out is None:
        if args.pipeline is None:
            raise ConfigError("give -o MODEL_DIR (or --pipeline DIR to write DIR/" + args.what + ")")
        out = str(Path(args.pipeline) / args.what)
    elif args.pipeline is not None and Path(out).resolve() != (Path(args.pipeline) / args.what).resolve():
        raise ConfigError(
            f"with --pipeline {args.pipeline}, -o must be {Path(args.pipeline) / args.what} (or omitted)"
        )
    common: dict[str, Any] = {
        "data": [Path(d) for d in args.data],
        "out_dir": Path(out),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "lr_decay": args.lr_decay,
        "lr_gamma": args.lr_gamma,
        "patience": args.patience,
        "seed": args.seed,
        "split_seed": args.split_seed,
        "splits_file": Path(args.splits) if args.splits else None,
        "val_fraction": args.val_fraction,
        "max_slices_per_study": args.max_slices,
        "max_minutes": args.max_minutes,
        "steps_per_epoch": args.steps_per_epoch,
        "device": args.device,
        "amp": not args.no_amp,
        "augment": not args.no_augment,
        "mask_source": args.mask_source,
        "cache_dir": Path(args.cache_dir) if args.cache_dir else None,
        "resume": args.resume,
        "progress": not args.no_progress,
        "pipeline_dir": Path(args.pipeline) if args.pipeline else None,
        "name": args.name,
        "allow_no_validation": args.no_validation,
    }
    if args.what == "classifier":
        from covidct.train.classifier import train_classifier

        path = train_classifier(
            ClassifierConfig(
                **common,
                arch=args.arch,
                balanced=not args.no_balance,
                supervision=args.supervision,
                bag_size=args.bag_size,
                pooling=args.pooling,
                top_k=args.top_k,
                target_accuracy=args.target_accuracy,
                source_weights=args.source_weights,
            )
        )
    elif args.what == "lesions":
        from covidct.train.lesions import LesionConfig, train_lesions

        path = train_lesions(
            LesionConfig(
                **common,
                pseudo=[Path(p) for p in args.pseudo],
                pseudo_weight=args.pseudo_weight,
                labelled_share=args.labelled_share,
            )
        )
    else:
        from covidct.train.segmenter import train_segmenter

        path = train_segmenter(SegmenterConfig(**common, pseudo_labels=not args.no_pseudo_labels))
    card_file = path / "model.json"
    if card_file.is_file() and os.environ.get("RANK", "0") == "0":
        card = json.loads(card_file.read_text())
        print(
            json.dumps(
                {
                    "bundle": str(path),
                    "validation": card.get("validation", {}),
                    "stopped_by": card.get("training", {}).get("stopped_by"),
                    "stopped": card.get("training", {}).get("stopped"),
                }
            )
        )
    return 0
