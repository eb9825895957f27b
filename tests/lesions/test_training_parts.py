"""The lesion loss, scores, augmentation and folder reading on tiny synthetic data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.errors import InputError
from covidct.evaluate.lesions import dice_of, image_scores, lesion_scores
from covidct.lesions.folders import read_lesion_folder
from covidct.registry import LESION_ANY
from covidct.train.augment import dihedral
from covidct.train.lesions import PSEUDO_OFFSET, partial_label_loss

from .conftest import write_lesion_folder


def _logits_for(labels: torch.Tensor, strength: float = 10.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * strength


def test_loss_is_small_when_right_and_large_when_wrong() -> None:
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    y[:, 2:5, 2:5] = 1
    y[:, 6:, 6:] = 2
    right = partial_label_loss(_logits_for(y), y)
    wrong = partial_label_loss(_logits_for((y + 1) % 3), y)
    assert float(right) < 0.01
    assert float(wrong) > 1.0


def test_untyped_lesion_accepts_either_lesion_class() -> None:
    y = torch.full((1, 4, 4), LESION_ANY, dtype=torch.long)
    as_ggo = partial_label_loss(_logits_for(torch.ones(1, 4, 4, dtype=torch.long)), y)
    as_cons = partial_label_loss(_logits_for(torch.full((1, 4, 4), 2)), y)
    as_bg = partial_label_loss(_logits_for(torch.zeros(1, 4, 4, dtype=torch.long)), y)
    assert float(as_ggo) < 0.01 and float(as_cons) < 0.01
    assert float(as_bg) > 1.0


def test_pseudo_labels_count_by_their_weight() -> None:
    truth = torch.ones(1, 4, 4, dtype=torch.long)
    wrong = _logits_for(torch.zeros(1, 4, 4, dtype=torch.long))
    pseudo = truth + PSEUDO_OFFSET
    assert float(partial_label_loss(wrong, pseudo, pseudo_weight=0.0)) < 0.01
    assert float(partial_label_loss(wrong, pseudo, pseudo_weight=0.5)) > 1.0


def test_scores_per_image_and_nan_where_undefined() -> None:
    truth = np.zeros((10, 10), np.uint8)
    truth[:5, :4] = 1  # 20 px
    pred = np.zeros_like(truth)
    pred[:5, :2] = 1  # 10 px, all inside
    s = image_scores(pred, truth)
    assert s["dice"] == pytest.approx(2 * 10 / 30)
    assert s["sensitivity"] == pytest.approx(0.5)
    assert s["specificity"] == pytest.approx(1.0)
    assert s["dice_ggo"] == pytest.approx(2 * 10 / 30)
    assert math.isnan(s["dice_consolidation"])  # no consolidation in truth or prediction
    empty = image_scores(np.zeros_like(truth), np.zeros_like(truth))
    assert math.isnan(empty["dice"]) and math.isnan(empty["sensitivity"])
    untyped = image_scores(pred, np.where(truth > 0, LESION_ANY, 0).astype(np.uint8))
    assert math.isnan(untyped["dice_ggo"])
    mean = lesion_scores([pred, np.zeros_like(truth)], [truth, np.zeros_like(truth)])
    assert mean["dice"] == pytest.approx(2 * 10 / 30)  # the empty image is left out, not counted as 0 or 1
    assert mean["images"] == 2
    assert math.isnan(lesion_scores([], [])["dice"])
    assert math.isnan(dice_of(np.zeros(3, bool), np.zeros(3, bool)))


def test_dihedral_moves_images_and_labels_together() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(4 * 16, dtype=torch.float32).reshape(4, 1, 4, 4)
    y = x[:, 0].long()
    for _ in range(5):
        xa, ya = dihedral(x, y, gen)
        assert torch.equal(xa[:, 0].long(), ya)
        assert sorted(xa.flatten().tolist()) == sorted(x.flatten().tolist())


def test_read_lesion_folder_splits_and_types(lesion_folder: Path, tmp_path: Path) -> None:
    train = read_lesion_folder(lesion_folder, image_size=32, split="train")
    val = read_lesion_folder(lesion_folder, image_size=32, split="val")
    assert len(train.names) + len(val.names) == 12 and not set(train.names) & set(val.names)
    assert train.x.shape[1:] == (32, 32) and train.x.dtype == np.float16
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert set(np.unique(train.y)) <= {0, 1, 2} and train.multiclass
    binary = read_lesion_folder(write_lesion_folder(tmp_path / "b", 3, binary=True), image_size=32)
    assert set(np.unique(binary.y)) == {0, LESION_ANY} and not binary.multiclass


def test_non_image_and_wrong_mask_size_name_the_file(tmp_path: Path) -> None:
    root = write_lesion_folder(tmp_path / "bad", 2)
    (root / "Imgs" / "1.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=r"1\.png: not a readable image"):
        read_lesion_folder(root, image_size=32)
    root2 = write_lesion_folder(tmp_path / "size", 2)
    from PIL import Image

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root2 / "GT" / "0.png")
    with pytest.raises(InputError, match=r"0\.png: mask size \(10, 10\) differs"):
        read_lesion_folder(root2, image_size=32)


def test_labelled_images_get_their_share_of_draws() -> None:
    from covidct.data.records import StudyRecord
    from covidct.train.data import CachedStudy
    from covidct.train.lesions import sample_weights

    def study(n: int, pseudo: bool) -> CachedStudy:
        y = np.zeros((n, 4, 4), np.uint8) + (PSEUDO_OFFSET if pseudo else 0)
        rec = StudyRecord(case="x", path=Path("x"), diagnosis="covid19")
        return CachedStudy(rec, np.zeros((n, 4, 4), np.float16), y, np.arange(n))

    w = sample_weights([study(2, False), study(18, True)], 0.5)
    assert w is not None and w.shape == (20,)
    assert w[:2].sum() == pytest.approx(0.5) and w[2:].sum() == pytest.approx(0.5)
    assert sample_weights([study(3, False)], 0.5) is None


def test_synthetic_cohort_gives_lung_slices_with_untyped_lesions(small_cohort: Path) -> None:
    from covidct.lesions.volumes import has_lesion_volumes, read_lesion_volumes

    assert has_lesion_volumes(small_cohort)
    part = read_lesion_volumes(small_cohort, image_size=32)
    assert part.x.shape[0] == part.y.shape[0] == len(part.names) > 10
    assert part.x.shape[1:] == (32, 32) and part.x.dtype == np.float16
    assert set(np.unique(part.y)) == {0, LESION_ANY} and not part.multiclass  # 0/1 masks: type not given
    cases = {n.split(":")[0] for n in part.names}
    assert len(cases) == 3
    train = read_lesion_volumes(small_cohort, image_size=32, split="train")
    val = read_lesion_volumes(small_cohort, image_size=32, split="val")
    assert len(train.names) + len(val.names) == len(part.names)
    assert not {n.split(":")[0] for n in train.names} & {n.split(":")[0] for n in val.names}
