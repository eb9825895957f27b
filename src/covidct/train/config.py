"""Typed settings of the two training entry points (also what the CLI fills in)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from covidct.errors import ConfigError
from covidct.registry import CLASSIFIER_ARCH, CLASSIFIER_IMAGE_SIZE, SEGMENTER_IMAGE_SIZE

OPTIMIZERS = ("adam", "sgd")
LR_DECAYS = ("step", "cosine", "none")
MASK_SOURCES = ("auto", "gt", "classical")
#: ``ClassifierConfig.supervision`` and ``pooling`` (see :mod:`covidct.train.weak`)
SUPERVISIONS = ("slice", "patient", "mixed", "auto")
POOLINGS = ("topk", "noisy-or")


@dataclass
class TrainConfig:
    """Settings shared by the classifier and segmenter training.

    ``data``: one or more data sources (a COVID-CT-MD-layout folder, a synthetic cohort, a manifest CSV; for
    the classifier also a folder of slice images). ``out_dir``: the bundle folder to write. The work is
    ``epochs`` (a maximum) of ``steps_per_epoch`` steps each (when set; else one pass over the training
    slices): with the same ``seed`` the same weights come out. Training stops earlier when the validation
    score has not improved for ``patience`` epochs, or when ``max_minutes`` of wall time are spent (a
    budget that makes the result depend on the machine's speed; the card says when it cut training).
    ``allow_no_validation``: train even when the split leaves the validation set empty or without a class
    (refused otherwise, see :func:`covidct.train.common.check_validation`); every epoch then runs and the
    last is kept. ``data_provenance``: how the data were made (e.g. a synthetic cohort's seed), copied into
    the card. ``lr_gamma`` is the per-epoch factor of the "step" decay.
    ``max_slices_per_study`` keeps that many evenly spaced slices per study (all when ``None``).
    ``split_seed`` (default: ``seed``) draws the patient split; ``splits_file`` reuses a written one.
    ``pipeline_dir``: also write/refresh the pipeline ``model.json`` there (automatic when ``out_dir`` is
    named ``classifier`` or ``segmenter``: its parent is the pipeline folder).
    ``bn_recalibration_batches``: before each validation, BatchNorm statistics are recomputed over that many
    training batches (0: keep the running averages); see :func:`covidct.train.engine.recalibrate_batchnorm`.
    """

    data: list[Path]
    out_dir: Path
    epochs: int = 30
    batch_size: int = 16
    image_size: int = CLASSIFIER_IMAGE_SIZE
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_decay: str = "step"
    lr_gamma: float = 0.9
    patience: int = 5
    seed: int = 0
    split_seed: int | None = None
    splits_file: Path | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    max_slices_per_study: int | None = None
    max_minutes: float | None = None
    steps_per_epoch: int | None = None
    device: str = "auto"
    amp: bool = True
    augment: bool = True
    mask_source: str = "auto"
    cache_dir: Path | None = None
    resume: bool = False
    progress: bool = True
    pipeline_dir: Path | None = None
    name: str | None = None
    bn_recalibration_batches: int = 16
    allow_no_validation: bool = False
    data_provenance: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.data = [Path(p) for p in (self.data if isinstance(self.data, list | tuple) else [self.data])]
        self.out_dir = Path(self.out_dir)
        if not self.data:
            raise ConfigError("no training data given: pass --data FOLDER_OR_CSV")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.image_size < 32:
            raise ConfigError(f"image size must be >= 32 pixels, got {self.image_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.lr_decay not in LR_DECAYS:
            raise ConfigError(f"lr decay {self.lr_decay!r}: use one of {', '.join(LR_DECAYS)}")
        if self.mask_source not in MASK_SOURCES:
            raise ConfigError(f"mask source {self.mask_source!r}: use one of {', '.join(MASK_SOURCES)}")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ConfigError("val/test fractions must lie in [0, 1)")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.max_slices_per_study is not None and self.max_slices_per_study < 1:
            raise ConfigError("max slices per study must be >= 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"steps per epoch must be >= 1, got {self.steps_per_epoch}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"--max-minutes must be positive, got {self.max_minutes}")

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else int(self.split_seed)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()} | {
            "data": [str(p) for p in self.data]
        }


@dataclass
class ClassifierConfig(TrainConfig):
    """Slice classifier training (``arch`` resnet18/34/50; class-balanced sampling when ``balanced``).

    ``supervision`` (:mod:`covidct.train.weak`): ``slice`` (the paper), ``patient`` (patient labels only,
    multiple-instance learning over bags of ``bag_size`` kept slices pooled by ``pooling`` with ``top_k``),
    ``mixed`` (slice labels where present, patient labels elsewhere) or ``auto`` (mixed when some abnormal
    study lacks slice labels, else slice). ``target_accuracy``: the accuracy of accepted (not referred)
    validation patients that the referral threshold is chosen for. ``source_weights`` (one per ``data``
    source): how much more often a source's studies are drawn within their class (times a manifest's own
    ``weight``).
    """

    arch: str = CLASSIFIER_ARCH
    balanced: bool = True
    supervision: str = "auto"
    bag_size: int = 8
    pooling: str = "topk"
    top_k: int = 2
    target_accuracy: float = 0.95
    source_weights: list[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.supervision not in SUPERVISIONS:
            raise ConfigError(f"--supervision {self.supervision!r}: use one of {', '.join(SUPERVISIONS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"--pooling {self.pooling!r}: use one of {', '.join(POOLINGS)}")
        if self.bag_size < 1 or self.top_k < 1 or self.top_k > self.bag_size:
            raise ConfigError(
                f"need 1 <= --top-k <= --bag-size, got top-k {self.top_k}, bag size {self.bag_size}"
            )
        if self.source_weights is not None and (
            len(self.source_weights) != len(self.data)
            or not all(w > 0 and w < float("inf") for w in self.source_weights)
        ):
            raise ConfigError(
                f"--source-weights: give one positive number per --data source ({len(self.data)}), got "
                f"{self.source_weights}"
            )
        if not 0 < self.target_accuracy <= 1:
            raise ConfigError(f"--target-accuracy must lie in (0, 1], got {self.target_accuracy}")


@dataclass
class SegmenterConfig(TrainConfig):
    """U-Net segmenter training on ground-truth masks (and classical pseudo-labels when ``pseudo_labels``)."""

    image_size: int = SEGMENTER_IMAGE_SIZE
    batch_size: int = 8
    features: tuple[int, ...] = field(default=(16, 32, 64, 128, 256, 16))
    pseudo_labels: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % 16:
            raise ConfigError(f"the U-Net needs an image size divisible by 16, got {self.image_size}")
