"""Training/inference consistency: the classifier input of a slice in the training cache is the input the
network gets when the same series is diagnosed with the same model (same mask source, window, resize).

The cache stores float16, so the two agree to float16 precision (half a unit in the last place of a value in
[0, 1]: 2**-11), not bit for bit. Both inference paths are checked: the torch runner prepares slices as
tensors on the network's device (``classifier_inputs_tensor``), other backends through
``SliceClassifier.preprocess`` (``classifier_inputs``, the function the cache calls).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.data.covidctmd import read_covidctmd
from covidct.data.records import StudyRecord
from covidct.diagnose import Diagnoser
from covidct.io import load_study
from covidct.registry import LUNG_WINDOW
from covidct.train.data import SegmenterSource, load_mask, prepare_study

FLOAT16_HALF_ULP = 2.0**-11  # largest rounding error of a float16 in [0.5, 1]; smaller below


@pytest.fixture(scope="module")
def covid_record(small_cohort: Path) -> StudyRecord:
    record = next(r for r in read_covidctmd(small_cohort) if r.diagnosis == "covid19")
    assert record.slice_labels is not None and record.slice_labels.any()
    return record


def _captured_inputs(diagnoser: Diagnoser, path: Path) -> tuple[np.ndarray, object]:
    """Diagnose ``path`` and return what the classifier network was fed, slice by slice, and the result."""
    from covidct.classify.backends import TorchRunner

    runner = diagnoser.pipeline.classifier.runner
    assert isinstance(runner, TorchRunner)
    seen: list[np.ndarray] = []
    net = runner.network  # the runner's own copy of the network
    handle = net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().cpu().numpy()))
    try:
        result = diagnoser.diagnose(path)
    finally:
        handle.remove()
    return np.concatenate(seen, axis=0), result


@pytest.mark.parametrize("max_slices", [None, 7])
def test_training_cache_input_equals_the_diagnosis_input(
    tiny_model_dir: Path,
    covid_record: StudyRecord,
    tmp_path: Path,
    max_slices: int | None,
    one_torch_thread: None,
) -> None:
    diagnoser = Diagnoser(tiny_model_dir, backend="torch", classify_all=True)
    classifier = diagnoser.pipeline.classifier
    assert diagnoser.pipeline.card.get("segmenter", "classical") == "classical"  # no U-Net in this bundle
    assert classifier.window == LUNG_WINDOW  # what covidct.train.classifier trains with

    cached = prepare_study(
        covid_record,
        task="classifier",
        image_size=classifier.image_size,
        window=LUNG_WINDOW,
        mask_source="classical",
        max_slices=max_slices,
        cache_dir=tmp_path / "cache",
        segmenters=SegmenterSource(),
    )
    assert cached is not None and cached.x.dtype == np.float16
    train_x = np.asarray(cached.x, dtype=np.float32)
    idx = np.asarray(cached.indices)

    fed, result = _captured_inputs(diagnoser, covid_record.path)
    n = result.volume.n_slices  # type: ignore[attr-defined]
    assert fed.shape == (n, 1, classifier.image_size, classifier.image_size)  # every slice, in order
    if max_slices is None:
        assert idx.tolist() == list(range(n))
    else:
        assert len(idx) == max_slices
    # 1. what the torch runner fed the network at diagnosis
    np.testing.assert_allclose(fed[idx, 0], train_x, rtol=0, atol=FLOAT16_HALF_ULP)
    # 2. the numpy path other backends (ONNX Runtime, OpenVINO) take, on the diagnosis' own volume and mask
    pre = classifier.preprocess(result.volume, result.mask, idx)  # type: ignore[attr-defined]
    np.testing.assert_allclose(pre[:, 0], train_x, rtol=0, atol=FLOAT16_HALF_ULP)
    np.testing.assert_array_equal(pre[:, 0].astype(np.float16), cached.x)  # the cache is this, rounded
    # the inputs hold lung (not all zeros), so the comparison is not trivially true
    assert float(train_x.max()) > 0.1
    assert np.count_nonzero(train_x) > 0.05 * train_x.size
    # slice classes line up with the slices they label
    np.testing.assert_array_equal(cached.y, (covid_record.slice_labels[:n][idx] > 0) * 2)


def test_training_reads_the_volume_and_mask_the_diagnosis_uses(
    tiny_model_dir: Path, covid_record: StudyRecord
) -> None:
    diagnoser = Diagnoser(tiny_model_dir, backend="torch")
    result = diagnoser.diagnose(covid_record.path)
    volume = load_study(covid_record.path)
    np.testing.assert_array_equal(volume.hu, result.volume.hu)
    assert volume.spacing == result.volume.spacing
    train_mask = load_mask(covid_record, volume, "classical", SegmenterSource().get())
    np.testing.assert_array_equal(train_mask, result.mask)
    assert train_mask.any()


def test_tensor_and_numpy_preprocessing_agree(tiny_model_dir: Path, covid_record: StudyRecord) -> None:
    """The two inference paths against each other in float32 (tighter than the cache's float16)."""
    diagnoser = Diagnoser(tiny_model_dir, backend="torch")
    classifier = diagnoser.pipeline.classifier
    volume = load_study(covid_record.path)
    mask = diagnoser.pipeline.segmenter.apply(volume)
    chunk = np.arange(volume.n_slices)
    on_device = classifier._inputs_on(torch.device("cpu"), volume, mask, chunk).numpy()
    np.testing.assert_allclose(on_device, classifier.preprocess(volume, mask, chunk), rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_series_training_input_equals_the_diagnosis_input(
    tiny_model_dir: Path, covid_ct_md: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    """The same on a real COVID-CT-MD series (JPEG Lossless DICOM, decoded by the worker pool at
    diagnosis)."""
    record = next(r for r in read_covidctmd(covid_ct_md) if r.case == "P001")
    diagnoser = Diagnoser(tiny_model_dir, backend="torch", classify_all=True)
    cached = prepare_study(
        record,
        task="classifier",
        image_size=diagnoser.pipeline.classifier.image_size,
        window=LUNG_WINDOW,
        mask_source="classical",
        max_slices=12,
        cache_dir=tmp_path / "cache",
    )
    assert cached is not None
    fed, _ = _captured_inputs(diagnoser, record.path)
    idx = np.asarray(cached.indices)
    assert fed.shape[0] == 148 and len(idx) == 12
    np.testing.assert_allclose(fed[idx, 0], np.asarray(cached.x, np.float32), rtol=0, atol=FLOAT16_HALF_ULP)
    assert np.count_nonzero(cached.x) > 0.05 * cached.x.size
