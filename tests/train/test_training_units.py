"""Fast unit tests of the training helpers: splits, cache keys, sampling, augmentation, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.data.records import StudyRecord
from covidct.errors import ConfigError
from covidct.registry import LUNG_WINDOW
from covidct.train.augment import augment_batch
from covidct.train.classifier import balanced_weights
from covidct.train.config import ClassifierConfig, SegmenterConfig
from covidct.train.data import cache_key, pick_slices
from covidct.train.distributed import DistInfo
from covidct.train.engine import epoch_indices
from covidct.train.splits import make_splits, read_splits, study_key, write_splits


def _records(tmp_path: Path, n: dict[str, int]) -> list[StudyRecord]:
    out = []
    for cls, k in n.items():
        for i in range(k):
            p = tmp_path / f"{cls}{i}"
            p.mkdir()
            out.append(StudyRecord(case=f"{cls}{i}", path=p, diagnosis=cls))
    return out


def test_splits_are_by_patient_stratified_and_seeded(tmp_path: Path) -> None:
    recs = _records(tmp_path, {"normal": 10, "cap": 5, "covid19": 10})
    a = make_splits(recs, seed=3, val_fraction=0.2, test_fraction=0.2)
    b = make_splits(recs, seed=3, val_fraction=0.2, test_fraction=0.2)
    c = make_splits(recs, seed=4, val_fraction=0.2, test_fraction=0.2)
    assert a == b and a != c
    assert set(a) == {study_key(r) for r in recs}  # one split per study (patient)
    for cls, n in (("normal", 10), ("cap", 5), ("covid19", 10)):
        got = [a[study_key(r)] for r in recs if r.diagnosis == cls]
        assert got.count("val") == round(n * 0.2) and got.count("test") == round(n * 0.2)
        assert got.count("train") >= 1
    path = write_splits(tmp_path / "s" / "splits.csv", recs, a)
    assert read_splits(path) == a


def test_splits_keep_one_training_study_of_a_tiny_class(tmp_path: Path) -> None:
    recs = _records(tmp_path, {"normal": 3, "cap": 1, "covid19": 2})
    s = make_splits(recs, seed=0, val_fraction=0.5)
    cap = [s[study_key(r)] for r in recs if r.diagnosis == "cap"]
    assert cap == ["train"]
    covid = sorted(s[study_key(r)] for r in recs if r.diagnosis == "covid19")
    assert covid == ["train", "val"]


def test_prescribed_split_is_kept(tmp_path: Path) -> None:
    recs = _records(tmp_path, {"normal": 4})
    recs[0].split = "test"
    s = make_splits(recs, seed=0)
    assert s[study_key(recs[0])] == "test"


def test_cache_key_depends_on_settings_and_data(tmp_path: Path) -> None:
    (rec,) = _records(tmp_path, {"normal": 1})
    base = {"task": "classifier", "size": 64, "window": [LUNG_WINDOW.level, LUNG_WINDOW.width], "mask": "gt"}
    k1 = cache_key(rec, base)
    assert k1 == cache_key(rec, dict(base))
    assert k1 != cache_key(rec, base | {"size": 128})
    assert k1 != cache_key(rec, base | {"max_slices": 8})
    (rec.path / "new.dcm").write_bytes(b"x")  # the study changed
    assert k1 != cache_key(rec, base)


def test_pick_slices_evenly() -> None:
    assert pick_slices(5, None).tolist() == [0, 1, 2, 3, 4]
    got = pick_slices(100, 5)
    assert got.tolist() == [0, 25, 50, 74, 99]


def test_balanced_weights_draw_classes_equally() -> None:
    y = np.array([0] * 90 + [1] * 2 + [2] * 8)
    w = balanced_weights(y)
    per_class = [w[y == c].sum() for c in range(3)]
    assert np.allclose(per_class, per_class[0])
    idx = epoch_indices(len(y), weights=w, seed=0, epoch=0, dist=DistInfo(), cap=None)
    counts = np.bincount(y[idx], minlength=3)
    assert counts.min() > 15  # ~33 each instead of 90/2/8


def test_epoch_indices_split_across_ranks_and_change_per_epoch() -> None:
    r0 = epoch_indices(20, weights=None, seed=1, epoch=0, dist=DistInfo(0, 2), cap=None)
    r1 = epoch_indices(20, weights=None, seed=1, epoch=0, dist=DistInfo(1, 2), cap=None)
    assert sorted(np.concatenate([r0, r1]).tolist()) == list(range(20))
    e1 = epoch_indices(20, weights=None, seed=1, epoch=1, dist=DistInfo(0, 2), cap=None)
    assert r0.tolist() != e1.tolist()


def test_augmentation_keeps_background_labels_and_no_flip() -> None:
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 8:24, 4:12] = 0.5  # a "lung" on the image's left only
    labels = (x[:, 0] > 0).long()
    g = torch.Generator().manual_seed(0)
    xa, la = augment_batch(x, g, labels)
    assert la is not None and xa.shape == x.shape and la.shape == labels.shape
    assert set(torch.unique(la).tolist()) <= {0, 1}
    assert float(xa[:, :, :, 20:].abs().max()) == 0.0  # nothing moved to the other side: no flip
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    g2 = torch.Generator().manual_seed(0)
    xb, _ = augment_batch(x, g2, labels)
    assert torch.equal(xa, xb)  # reproducible from the generator


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="optimizer"):
        ClassifierConfig(data=[tmp_path], out_dir=tmp_path / "o", optimizer="lbfgs")
    with pytest.raises(ConfigError, match="divisible by 16"):
        SegmenterConfig(data=[tmp_path], out_dir=tmp_path / "o", image_size=100)
    with pytest.raises(ConfigError, match="no training data"):
        ClassifierConfig(data=[], out_dir=tmp_path / "o")
    cfg = ClassifierConfig(data=[tmp_path], out_dir=tmp_path / "o", seed=5)
    assert cfg.effective_split_seed == 5 and cfg.to_json()["data"] == [str(tmp_path)]


def test_cli_needs_an_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from covidct.cli.main import main

    assert main(["train", "classifier", "--data", str(tmp_path)]) == 2
    assert "-o MODEL_DIR" in capsys.readouterr().err


def _cached(cls_rows: list[int], size: int = 4, value: float = 0.0) -> object:
    from covidct.train.data import CachedStudy

    y = np.asarray(cls_rows, dtype=np.int64)
    x = np.full((len(y), size, size), value, np.float16) + np.arange(len(y), dtype=np.float16)[:, None, None]
    rec = StudyRecord(case=f"c{value}", path=Path("."), diagnosis="normal")
    return CachedStudy(rec, x, y, np.arange(len(y)))


def test_calibration_slices_are_stratified_and_prefer_validation() -> None:
    from covidct.train.classifier import pick_calibration

    val = [_cached([0] * 50 + [2] * 30, value=0.0), _cached([1] * 5, value=100.0)]
    train = [_cached([1] * 40, value=200.0)]
    x, y = pick_calibration(val, train, n=64, seed=0)
    assert x.shape == (64, 1, 4, 4) and x.dtype == np.float16
    counts = np.bincount(y, minlength=3)
    # validation holds 85 >= 64 slices: training is not touched; the 5 CAP slices all taken, rest split evenly
    assert counts.tolist() == [30, 5, 29] or counts.tolist() == [29, 5, 30]
    assert float(x.max()) < 200.0  # no training slice
    x2, y2 = pick_calibration(val, train, n=64, seed=0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)  # deterministic
    # too few validation slices: training slices fill up, validation ones all kept
    xs, ys = pick_calibration([_cached([0] * 10)], train, n=30, seed=1)
    assert xs.shape[0] == 30 and np.bincount(ys, minlength=3).tolist() == [10, 20, 0]


def test_write_calibration_file_and_card_entry(tmp_path: Path) -> None:
    import hashlib

    from covidct.train.classifier import write_calibration

    entry = write_calibration(tmp_path, [_cached([0, 1, 2] * 30)], [], seed=0)
    arr = np.load(tmp_path / "calibration.npy")
    assert arr.shape == (64, 1, 4, 4) and arr.dtype == np.float16
    assert entry["file"] == "calibration.npy" and entry["n"] == 64
    assert entry["sha256"] == hashlib.sha256((tmp_path / "calibration.npy").read_bytes()).hexdigest()
    assert entry["classes"] == {"normal": 22, "cap": 21, "covid19": 21}
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.npy"]  # no temporary file left


def test_unreadable_study_is_left_out_not_fatal(tmp_path: Path, write_phantoms, caplog) -> None:
    """One corrupt study is listed with its reason; training data from the others is kept (was an abort)."""
    from covidct.train.common import load_split_studies

    manifest = write_phantoms(tmp_path / "d", per_class=2, seed=0, split="train")
    (tmp_path / "d" / "cap01.nii.gz").write_bytes(b"not a volume")
    cfg = ClassifierConfig(
        data=[manifest], out_dir=tmp_path / "o", mask_source="gt", progress=False, image_size=32
    )
    with caplog.at_level("WARNING"):
        studies, summary = load_split_studies(
            cfg, task="classifier", window=LUNG_WINDOW, dist=DistInfo(), allow_images=False
        )
    assert sorted(s.record.case for s in studies["train"]) == [
        "cap00",
        "covid1900",
        "covid1901",
        "normal00",
        "normal01",
    ]
    (bad,) = summary["unreadable_studies"]
    assert bad["case"] == "cap01" and "InputError" in bad["reason"] and "cap01.nii.gz" in bad["reason"]
    assert summary["left_out_studies"] == 1
    assert any("cap01" in r.getMessage() for r in caplog.records)
