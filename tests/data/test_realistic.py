"""Realistic training data: real-lesion donors and disease drawn into (here: phantom) backgrounds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.data.manifest import read_manifest
from covidct.data.realistic import RealisticSettings, build_realistic_cohort, load_bank
from covidct.data.realistic.donors import (
    CONSOLIDATION_DELTA,
    LUNG_HU,
    hu_anchors,
    is_validation_image,
    patches_from_image,
)
from covidct.errors import ConfigError, InputError
from covidct.io import load_study


def _donor_image(rng: np.random.Generator, *, value: float) -> tuple[np.ndarray, np.ndarray]:
    """A 96x96 lung-window image: lung at grey 50, soft tissue at 200, one lesion disc at ``value``."""
    img = np.full((96, 96), 200.0, np.float32)
    img[10:86, 10:86] = 50.0
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 < 15**2
    img[disc] = value
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255), disc.astype(np.uint8)


def write_donors(root: Path, n: int = 12, *, multiclass: bool = False) -> Path:
    rng = np.random.default_rng(0)
    (root / "Imgs").mkdir(parents=True)
    (root / "GT").mkdir()
    for i in range(n):
        img, m = _donor_image(rng, value=110.0 if i % 2 else 190.0)
        Image.fromarray(img.astype(np.uint8)).save(root / "Imgs" / f"{i}.jpg")
        gt = m * (2 if i % 2 == 0 else 1) if multiclass else m * 255
        Image.fromarray(gt.astype(np.uint8)).save(root / "GT" / f"{i}.png")
    return root


def test_patch_contrast_is_relative_to_the_healthy_lung() -> None:
    img, m = _donor_image(np.random.default_rng(1), value=110.0)
    lung, soft = hu_anchors(img, m)
    assert abs(lung - 50) < 3 and abs(soft - 200) < 3
    (patch,) = patches_from_image(img, m, source="x")
    inside = patch.delta[patch.alpha > 0.9]
    # grey 110 is 60/150 of the way from lung to soft tissue: 360 HU above the healthy lung
    assert abs(float(np.median(inside)) - 360.0) < 25.0
    assert patch.kind == "ggo" and float(np.median(inside)) < CONSOLIDATION_DELTA
    dense, dm = _donor_image(np.random.default_rng(2), value=190.0)
    assert patches_from_image(dense, dm, source="y")[0].kind == "consolidation"
    assert LUNG_HU < -800


def test_bank_reads_multiclass_and_grey_masks_and_holds_out_validation(tmp_path: Path) -> None:
    grey = write_donors(tmp_path / "grey")
    multi = write_donors(tmp_path / "multi", multiclass=True)
    held = [str(i) for i in range(12) if is_validation_image(str(i))]
    train = load_bank([grey], split="train")
    val = load_bank([grey], split="val")
    assert len(train) + len(val) == 12 and len(val) == len(held)
    assert {p.source for p in val.patches} == set(held)
    assert not {p.source for p in train.patches} & set(held)
    kinds = load_bank([multi], split="all").counts()
    assert kinds == {"ggo": 6, "consolidation": 6}  # palette classes 1/2 decide, not the grey level
    with pytest.raises(InputError, match="Imgs/ and GT/"):
        load_bank([tmp_path / "nowhere"])


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from covidct.data.synth import generate_cohort

    out = tmp_path_factory.mktemp("bg") / "cohort"
    generate_cohort(out, patients=2, mix=["normal", "covid19"], seed=3, size="small", progress=False)
    return out


@pytest.mark.slow
def test_realistic_cohort_puts_every_background_in_every_class(backgrounds: Path, tmp_path: Path) -> None:
    donors = write_donors(tmp_path / "donors")
    settings = RealisticSettings(variants=2, seed=5, min_background_slices=8)
    manifest = build_realistic_cohort(
        [backgrounds], tmp_path / "rs", donors=[donors], settings=settings, progress=False
    )
    records = read_manifest(manifest)
    card = json.loads((tmp_path / "rs" / "cohort.json").read_text())
    assert "non-commercial" in card["terms"] and len(card["backgrounds"]) == 2
    # the donors' own training images become real COVID-19 slices, and normal slices of the backgrounds get
    # the donors' look (crop, 8-bit, JPEG) so that look appears in both classes
    from covidct.data.imagefolder import read_image_folder

    slices = read_image_folder(tmp_path / "rs" / "slices")
    labels = {s.label for s in slices}
    assert labels == {0, 2} and card["real_slices"]["covid19"] > 0 and card["real_slices"]["normal_crops"] > 0
    assert card["train_with"] == ["manifest.csv", "slices"]
    by_bg: dict[str, set[str]] = {}
    for row in card["studies"]:
        by_bg.setdefault(row["background"], set()).add(row["class"])
    assert all(classes == {"normal", "cap", "covid19"} for classes in by_bg.values())
    assert all(r.case.startswith("rs-") for r in records)
    assert {r.split for r in records} == {"train", "val"}
    for r in records:
        flags = np.asarray(r.slice_labels)
        if r.diagnosis == "normal":
            assert not flags.any()
        else:
            assert flags.any(), f"{r.case}: an abnormal variant without an infected slice"
    # lesions stay inside the lungs: outside the background's lung mask the variant equals the background
    from covidct.segment import get_segmenter

    normal = next(r for r in records if r.diagnosis == "normal" and r.split == "train")
    covid = next(r for r in records if r.case == normal.case.replace("-normal-", "-covid19-"))
    a, b = load_study(normal.path).hu, load_study(covid.path).hu
    lung = get_segmenter("classical").apply(load_study(normal.path)) > 0
    changed = np.abs(a.astype(np.int32) - b.astype(np.int32)) > 0
    assert changed.any()
    grown = __import__("scipy.ndimage", fromlist=["x"]).binary_dilation(lung, iterations=2)
    assert not (changed & ~grown).any()


@pytest.mark.slow
def test_realistic_cohort_is_deterministic_and_excludes_cases(backgrounds: Path, tmp_path: Path) -> None:
    settings = RealisticSettings(variants=1, seed=2, min_background_slices=8)
    m1 = build_realistic_cohort([backgrounds], tmp_path / "a", settings=settings, progress=False)
    m2 = build_realistic_cohort([backgrounds], tmp_path / "b", settings=settings, progress=False)
    for r1, r2 in zip(read_manifest(m1), read_manifest(m2), strict=True):
        assert np.array_equal(load_study(r1.path).hu, load_study(r2.path).hu)
    with (tmp_path / "a" / "manifest.csv").open() as f:
        cases = [row["case"] for row in csv.DictReader(f)]
    assert len(cases) == 2 * 3
    kept = build_realistic_cohort(
        [backgrounds], tmp_path / "c", exclude=["syn-normal001"], settings=settings, progress=False
    )
    assert all("syn-normal001" not in r.case for r in read_manifest(kept))
    with pytest.raises(ConfigError, match="not empty"):
        build_realistic_cohort([backgrounds], tmp_path / "a", settings=settings, progress=False)
    with pytest.raises(ConfigError, match="variants"):
        RealisticSettings(variants=0)


def test_lesion_folder_images_become_classifier_inputs(tmp_path: Path) -> None:
    from covidct.data.lesionfolder import classifier_inputs_from_image, lesion_folder_inputs

    img, m = _donor_image(np.random.default_rng(4), value=110.0)
    x = classifier_inputs_from_image(img, m, 64)
    assert x.shape == (1, 64, 64) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    # the crop is padded so the lungs span part of the field of view: the border is background (0)
    assert x[0, :4].max() == 0.0 and x[0, :, :4].max() == 0.0
    assert x[0, 24:40, 24:40].mean() > 0.3  # the lesion (grey 110) is kept inside the lung mask
    write_donors(tmp_path / "d")
    xs, flags, names = lesion_folder_inputs(tmp_path / "d", image_size=32, split="all")
    assert xs.shape == (12, 1, 32, 32) and flags.all() and len(names) == 12
    val = lesion_folder_inputs(tmp_path / "d", image_size=32, split="val")[2]
    assert set(val) == {n for n in names if is_validation_image(n)}


def test_lesion_folder_mask_follows_each_images_window() -> None:
    """A darker window (soft tissue at grey 90, under the default lung cut): the mask stays on the lungs
    and the lungs come out at CT's lung-window level, not darker."""
    from covidct.data.lesionfolder import classifier_inputs_from_image, lung_mask_2d

    rng = np.random.default_rng(0)
    img = np.zeros((120, 160), np.float32)
    img[10:110, 10:150] = 90.0  # body / mediastinum
    img[20:100, 20:70] = 30.0  # lungs
    img[20:100, 90:140] = 30.0
    img += rng.normal(0, 2, img.shape)
    mask = lung_mask_2d(img, np.zeros(img.shape, np.uint8))
    assert mask[60, 45] and mask[60, 115] and not mask[60, 80] and not mask[5, 5]
    x = classifier_inputs_from_image(img, np.zeros(img.shape, np.uint8), 64)[0]
    lungs = x[x > 0]
    # healthy lung -> about -860 HU -> (1200 - 860) / 1200 = 0.28 in the lung window
    assert abs(float(np.median(lungs)) - 0.283) < 0.03


def test_lesion_folder_trains_the_classifier_as_covid19_slices(tmp_path: Path) -> None:
    """A COVID-SemiSeg-layout folder is a classifier source: infected slices are COVID-19, clean ones normal."""
    from covidct.train.data import is_lesion_folder, lesion_folder_studies

    root = write_donors(tmp_path / "d")
    rng = np.random.default_rng(1)
    clean = np.clip(np.full((96, 96), 50.0) + rng.normal(0, 3, (96, 96)), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(root / "Imgs" / "clean.jpg")
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(root / "GT" / "clean.png")
    assert is_lesion_folder(root) and not is_lesion_folder(tmp_path)
    studies = lesion_folder_studies(root, 32)
    assert len(studies) == 1 and studies[0].record.diagnosis == "covid19"
    st = studies[0]
    assert st.x.shape == (13, 32, 32) and sorted(st.y.tolist()) == [0] + [2] * 12
    assert st.record.has_slice_classes and st.record.case == "d-medseg"
