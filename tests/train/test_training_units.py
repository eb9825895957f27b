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


class _Slices:
    """A stand-in training set: ``n`` random (x, y) pairs (x (1, 4, 4), y a class)."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 4, 4, generator=g)
        self.y = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _fit(tmp_path: Path, scores: list[float] | None, *, epochs: int = 4, **kw: object) -> object:
    """``fit`` on a linear model whose validation gives ``scores`` epoch by epoch (None: no validation)."""
    from torch import nn

    from covidct.train.engine import Task, fit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    seen = iter(scores or [])
    task = Task(
        model=model,
        train_set=_Slices(),  # type: ignore[arg-type]
        loss_fn=nn.CrossEntropyLoss(),
        evaluate=lambda m, d: {} if scores is None else {"val_score": next(seen)},
        validation=scores is not None,
    )
    cfg = ClassifierConfig(
        data=[tmp_path], out_dir=tmp_path / "o", epochs=epochs, batch_size=4, progress=False, **kw
    )  # type: ignore[arg-type]
    return fit(cfg, task, run_dir=tmp_path / "o" / "training", dist=DistInfo(), device=torch.device("cpu"))


def _weights(result: object) -> dict[str, torch.Tensor]:
    return result.best_state  # type: ignore[attr-defined,no-any-return]


def test_nan_validation_scores_are_never_best(tmp_path: Path) -> None:
    nan = float("nan")
    r = _fit(tmp_path, [nan, 0.5, nan, 0.4], epochs=4, patience=5)
    assert r.best_epoch == 2 and r.metrics == {"val_score": 0.5}  # type: ignore[attr-defined]
    assert r.selection == "best validation score"  # type: ignore[attr-defined]
    assert r.message == "trained the full budget of 4 epochs; kept epoch 2, the best validation score"  # type: ignore[attr-defined]
    # NaN after a finite best counts towards early stopping like a worse score
    r = _fit(tmp_path / "p", [0.5, nan, nan, 0.9], epochs=4, patience=2)
    assert r.stopped_by == "early_stopping" and r.epochs_run == 3 and r.best_epoch == 1  # type: ignore[attr-defined]


def test_nan_everywhere_keeps_the_last_epoch_and_says_so(tmp_path: Path, caplog) -> None:
    nan = float("nan")
    with caplog.at_level("INFO", logger="covidct.train.engine"):
        r = _fit(tmp_path, [nan] * 4, epochs=4, patience=1)
    assert r.epochs_run == 4 and r.best_epoch == 4 and r.stopped_by == "epochs"  # type: ignore[attr-defined]
    assert r.selection == "last epoch (no finite validation score)"  # type: ignore[attr-defined]
    assert r.message.startswith("no epoch had a finite validation score: last epoch kept")  # type: ignore[attr-defined]
    assert "(best)" not in caplog.text and "not a number: not compared" in caplog.text
    assert r.message in caplog.text  # type: ignore[attr-defined]
    last = torch.load(tmp_path / "o/training/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(last[k], _weights(r)[k]) for k in last)


def test_no_validation_runs_every_epoch_and_keeps_the_last(tmp_path: Path) -> None:
    r = _fit(tmp_path, None, epochs=3, patience=1)
    assert r.epochs_run == 3 and r.best_epoch == 3 and r.metrics == {}  # type: ignore[attr-defined]
    assert r.message == "no validation: last epoch kept; trained the full budget of 3 epochs"  # type: ignore[attr-defined]
    last = torch.load(tmp_path / "o/training/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(last[k], _weights(r)[k]) for k in last)


def test_time_budget_says_it_cut_training(tmp_path: Path, caplog) -> None:
    with caplog.at_level("WARNING", logger="covidct.train.engine"):
        r = _fit(tmp_path, [0.1, 0.2, 0.3], epochs=3, max_minutes=1e-9)
    assert r.stopped_by == "time_budget" and r.epochs_run == 1  # type: ignore[attr-defined]
    assert r.message.startswith(  # type: ignore[attr-defined]
        "stopped by the time budget (1e-09 min) after 1 of 3 epochs, epoch 1 cut after 1 of 2 steps"
    )
    assert "stopped by the time budget" in caplog.text


def test_check_validation_refuses_an_empty_or_incomplete_validation_set(tmp_path: Path, caplog) -> None:
    from covidct.train.common import check_validation
    from covidct.train.data import CachedStudy

    def study(cls: str) -> CachedStudy:
        rec = StudyRecord(case=cls, path=tmp_path, diagnosis=cls)
        return CachedStudy(rec, np.zeros((1, 4, 4), np.float16), np.zeros(1, np.int64), np.arange(1))

    train = [study(c) for c in ("normal", "cap", "covid19")]
    cfg = ClassifierConfig(data=[tmp_path], out_dir=tmp_path / "o", progress=False)
    empty = {"train": train, "val": [], "test": []}
    with pytest.raises(ConfigError, match="validation set is empty") as err:
        check_validation(cfg, empty, {}, per_class=True)
    for fix in ("add patients", "--val-fraction", "--splits", "--no-validation"):
        assert fix in str(err.value)
    no_cap = {"train": train, "val": [study("normal"), study("covid19")], "test": []}
    with pytest.raises(ConfigError, match="validation has no cap patients"):
        check_validation(cfg, no_cap, {}, per_class=True)
    # the segmenter's Dice needs validation slices, not every diagnosis
    assert check_validation(cfg, no_cap, {}, per_class=False)["status"] == "ok"
    full = {"train": train, "val": [study("normal"), study("cap"), study("covid19")], "test": []}
    assert check_validation(cfg, full, {}, per_class=True) == {
        "status": "ok",
        "patients": {"normal": 1, "cap": 1, "covid19": 1},
    }
    cfg.allow_no_validation = True
    with caplog.at_level("WARNING"):
        got = check_validation(cfg, empty, {}, per_class=True)
        part = check_validation(cfg, no_cap, {}, per_class=True)
    assert got["status"] == "none" and part["status"] == "incomplete" and part["missing_classes"] == ["cap"]
    assert "no usable validation: the validation set is empty" in caplog.text


def test_study_weights_raise_a_study_within_its_class() -> None:
    from covidct.data.records import StudyRecord
    from covidct.train.classifier import sample_weights_of
    from covidct.train.data import CachedStudy

    def study(case: str, cls: int, n: int, **extra: float) -> CachedStudy:
        rec = StudyRecord(case, Path(case), "normal", extra=dict(extra))
        return CachedStudy(rec, np.zeros((n, 4, 4), np.float16), np.full(n, cls), np.arange(n))

    studies = [study("real", 0, 10, weight=4.0), study("syn", 0, 40), study("cap", 1, 5)]
    y = np.concatenate([s.y for s in studies])
    w = sample_weights_of(studies, y, balanced=True)
    assert w is not None
    assert w[:10].sum() == pytest.approx(w[10:50].sum())  # 10 slices x 4 weigh as much as 40 x 1
    assert w[:50].sum() == pytest.approx(w[50:].sum())  # the classes are still drawn equally often
    np.testing.assert_allclose(
        sample_weights_of(studies[1:], y[10:], balanced=True), balanced_weights(y[10:])
    )
    assert sample_weights_of(studies[1:], y[10:], balanced=False) is None
    np.testing.assert_allclose(sample_weights_of(studies, y, balanced=False), [4.0] * 10 + [1.0] * 45)
