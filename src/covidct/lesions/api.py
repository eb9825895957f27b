"""What ``covidct lesions`` does, as a Python API: find a lesion model, segment image folders or studies.

>>> seg = load_lesion_segmenter(None)                      # doctest: +SKIP  (the shipped model)
>>> rows = segment_image_folder(seg, "covid-semiseg/multiclass", "out")  # doctest: +SKIP
>>> result = segment_study(seg, "path/to/dicom_dir")       # doctest: +SKIP
>>> result.involvement["total"]["score"]                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from covidct.errors import ConfigError, NotChestCTError

if TYPE_CHECKING:
    from covidct.io.volume import CTVolume

log = logging.getLogger(__name__)

#: ``--model classical``: the threshold baseline instead of a network.
CLASSICAL: str = "classical"


class LesionModel(Protocol):
    """What both the network and the threshold baseline offer."""

    card: dict[str, Any]

    def segment_image(self, img: np.ndarray) -> np.ndarray: ...

    def apply(self, volume: Any, lung_mask: np.ndarray, *, progress: Any | None = None) -> np.ndarray: ...


def shipped_lesion_dir() -> Path | None:
    """The lesion bundle that comes with covidct: ``lesions/`` of ``$COVIDCT_MODEL`` when set, else
    ``models/lesions`` at the root of a source checkout; ``None`` when there is none."""
    from covidct.diagnose import shipped_models_root
    from covidct.registry import LESION_FOLDER

    here = shipped_models_root() / LESION_FOLDER
    return here if (here / "model.json").is_file() else None


def resolve_lesion_dir(model: str | Path | None) -> Path:
    """The lesion bundle folder for ``model``: a lesion bundle, a pipeline folder holding ``lesions/``, or
    (``None``) the shipped one. ConfigError naming the fix when there is none."""
    from covidct.bundle import CARD_NAME
    from covidct.registry import LESION_FOLDER

    if model is None:
        found = shipped_lesion_dir()
        if found is None:
            raise ConfigError(
                "no lesion model given and none shipped (models/lesions of a source checkout, or lesions/ in "
                "the folder named by $COVIDCT_MODEL): pass --model DIR, or --model classical for the "
                "threshold baseline"
            )
        return found
    path = Path(model)
    if (path / LESION_FOLDER / CARD_NAME).is_file() and not (path / CARD_NAME).is_file():
        return path / LESION_FOLDER
    if (path / CARD_NAME).is_file():
        import json

        try:
            kind = json.loads((path / CARD_NAME).read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind == "pipeline" and (path / LESION_FOLDER / CARD_NAME).is_file():
            return path / LESION_FOLDER
        if kind == "pipeline":
            raise ConfigError(
                f"--model {path}: this pipeline has no lesions/ bundle; train one with `covidct train "
                f"lesions -o {path / LESION_FOLDER}` or pass a lesion bundle folder"
            )
    return path


def load_lesion_segmenter(model: str | Path | None, *, device: str = "cpu") -> LesionModel:
    """The lesion segmenter for ``model`` (see :func:`resolve_lesion_dir`; ``"classical"`` the baseline)."""
    if str(model) == CLASSICAL:
        from covidct.lesions.classical import ClassicalLesionSegmenter

        return ClassicalLesionSegmenter()
    directory = resolve_lesion_dir(model)
    if device == "cpu":  # the bundle's ONNX export on ONNX Runtime when it has a current one: no torch
        from covidct.bundle import read_card
        from covidct.infer.onnx import onnxruntime_available, sidecar_for

        if onnxruntime_available() and sidecar_for(directory, read_card(directory, verify=False)) is not None:
            from covidct.errors import ModelError
            from covidct.lesions.inference import OnnxLesionSegmenter

            try:
                return OnnxLesionSegmenter.from_bundle(directory)
            except ModelError as exc:
                log.warning("%s; using the PyTorch lesion model", exc)
    from covidct.lesions.model import LesionSegmenter

    return LesionSegmenter.from_bundle(directory, device=device)


def segment_image_folder(
    segmenter: LesionModel,
    folder: str | Path,
    out_dir: str | Path,
    *,
    split: str = "all",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Segment every slice image of ``folder`` into ``out_dir/<stem>.png`` (0/1/2, the image's size).

    Returns one row per image: its name, output, lesion pixels; and, when the folder has a mask for it
    (``GT/<stem>.png`` beside ``Imgs/``), the scores against that mask (:func:`image_scores`). Every input
    is read before anything is written, so an unreadable image leaves no output behind.
    """
    from tqdm import tqdm

    from covidct._files import atomic_write
    from covidct.data.realistic.donors import is_validation_image
    from covidct.evaluate.lesions import image_scores
    from covidct.lesions.folders import SPLITS, list_images, read_image, read_mask

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    files = list_images(folder)
    if split != "all":
        files = [f for f in files if is_validation_image(f.stem) == (split == "val")]
    gt_dir = files[0].parent.parent / "GT" if files else None
    images = []
    for f in files:  # read (and check) everything first: nothing is written for a folder with a bad file
        img = read_image(f)
        gt = gt_dir / f"{f.stem}.png" if gt_dir is not None else None
        truth = read_mask(gt, img.shape)[0] if gt is not None and gt.is_file() else None
        images.append(
            (f, img.astype(np.uint8), truth)
        )  # grey levels 0..255: uint8 holds them, at 1/4 the memory
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for f, img, truth in tqdm(images, desc="lesions", unit="image", disable=not progress):
        labels = segmenter.segment_image(img)
        dest = out / f"{f.stem}.png"
        atomic_write(dest, partial(_save_label_png, labels=labels))
        row: dict[str, Any] = {
            "image": f.name,
            "output": str(dest),
            "ground_glass_px": int(np.count_nonzero(labels == 1)),
            "consolidation_px": int(np.count_nonzero(labels == 2)),
        }
        if truth is not None:
            row["scores"] = image_scores(labels, truth)
        rows.append(row)
    return rows


def _save_label_png(path: Path, *, labels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(labels, np.uint8), mode="L").save(path, format="PNG")


@dataclass
class LesionResult:
    """One study's lesions: the mask (uint8, volume-shaped), its lung mask, the involvement figures."""

    input: str
    volume: CTVolume
    lung_mask: np.ndarray
    lesions: np.ndarray
    involvement: dict[str, Any]
    timing_s: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "n_slices": int(self.volume.n_slices),
            "labels": {"0": "background", "1": "ground_glass", "2": "consolidation"},
            "involvement": self.involvement,
            "timing_s": {k: round(v, 3) for k, v in self.timing_s.items()},
        }


def lesions_of_volume(
    segmenter: LesionModel, volume: CTVolume, lung_mask: np.ndarray, *, progress: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """Lesion mask and involvement of a loaded study with its lung mask."""
    from tqdm import tqdm

    from covidct.lesions.quantify import involvement

    with tqdm(total=volume.n_slices, desc="lesions", unit="slice", disable=not progress) as bar:
        lesions = np.asarray(segmenter.apply(volume, lung_mask, progress=bar), np.uint8)
    return lesions, involvement(lesions, lung_mask, volume.spacing)


def segment_study(
    segmenter: LesionModel,
    source: str | Path,
    *,
    series: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> LesionResult:
    """Read a study, segment its lungs (classical) and lesions, and quantify them."""
    from covidct.io import check_chest_ct, load_study
    from covidct.segment import get_segmenter

    timing: dict[str, float] = {}
    t = time.perf_counter()
    volume = load_study(source, workers=workers, series=series, progress=progress)
    timing["load"] = time.perf_counter() - t
    check = check_chest_ct(volume)
    if not check.is_chest_ct:
        raise NotChestCTError(f"{source}: {check.reason}; covidct needs a chest CT that shows the lungs")
    t = time.perf_counter()
    lung = np.asarray(get_segmenter("classical").apply(volume), np.uint8)
    timing["lungs"] = time.perf_counter() - t
    if not lung.any():
        raise NotChestCTError(f"{source}: no lung was found by the segmenter; is this a chest CT?")
    t = time.perf_counter()
    lesions, inv = lesions_of_volume(segmenter, volume, lung, progress=progress)
    timing["lesions"] = time.perf_counter() - t
    return LesionResult(str(source), volume, lung, lesions, inv, timing)
