"""Weak (patient-level) supervision of the slice classifier: multiple-instance learning over kept slices.

A slice's training target is a *code*: ``0, 1, 2`` is a known slice class (a slice label, or any slice of a
normal patient); ``-(c + 1)`` is "a kept slice of a patient of class ``c`` (CAP or COVID-19) whose slice
labels are unknown". Under ``--supervision``:

- ``slice``: the paper's training; abnormal studies without slice labels are left out.
- ``patient``: every abnormal study counts by its patient label only (its slice labels, if any, are ignored);
  normal studies keep their (all-normal) slices.
- ``mixed``: slice labels where a study has them, the patient label elsewhere (the default when the data
  have both).

Items of :class:`BagDataset` are a single labelled slice, or a **bag** of ``bag_size`` kept slices of one
weakly labelled study, spread from superior to inferior (bag ``j`` of ``m`` takes every ``m``-th kept
slice from ``j``), so every bag spans the lung as the patient rule does. The bag loss (:func:`mil_loss`)
is **top-k pooling**: the mean probability of the patient's class over the bag's ``top_k`` most likely
slices should be high (``-log`` of it), and no slice of the bag may show the *other* disease
(``-log(1 - p_other)`` on every slice), since a CAP patient's slices are CAP or normal. ``noisy-or``
pools ``1 - prod(1 - p_c)`` instead. The network stays a slice classifier, so the paper's rule applies
unchanged at diagnosis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from covidct.decide import kept_range
from covidct.errors import ConfigError
from covidct.registry import CLASS_NAMES, Diagnosis
from covidct.train.config import SUPERVISIONS
from covidct.train.data import CachedStudy


def is_weak(study: CachedStudy) -> bool:
    """Whether the study's abnormal slices are known only by the patient label (codes < 0)."""
    return bool(np.any(np.asarray(study.y) < 0))


def as_patient_labelled(study: CachedStudy) -> CachedStudy:
    """The study with its slice labels dropped (``--supervision patient``): abnormal -> all codes -(c+1)."""
    if study.record.diagnosis == "normal":
        return study
    y = np.full(np.asarray(study.y).shape, -(study.record.label + 1), dtype=np.int64)
    return CachedStudy(study.record, study.x, y, study.indices)


def resolve_supervision(mode: str, studies: Sequence[CachedStudy]) -> str:
    """``auto`` -> ``mixed`` when some training study is weakly labelled, else ``slice``."""
    if mode not in SUPERVISIONS:
        raise ConfigError(f"supervision {mode!r}: use one of {', '.join(SUPERVISIONS)}")
    if mode != "auto":
        return mode
    return "mixed" if any(is_weak(s) for s in studies) else "slice"


def _kept_rows(n: int) -> np.ndarray:
    start, stop = kept_range(n)
    return np.arange(start, stop)


class BagDataset:
    """Training items for weak supervision: labelled slices and bags of weakly labelled kept slices.

    ``item_sizes[i]`` is the number of slices item ``i`` brings; ``targets()`` the class each item stands
    for (for class-balanced sampling); ``study_of[i]`` the study it comes from (for study weights).
    ``__getitem__`` gives ``(x (k, 1, S, S) float32, codes (k,) int64)``; :meth:`collate` joins items.
    """

    def __init__(self, studies: Sequence[CachedStudy], *, bag_size: int) -> None:
        if bag_size < 1:
            raise ConfigError(f"--bag-size must be >= 1, got {bag_size}")
        self.studies = list(studies)
        self.bag_size = int(bag_size)
        items: list[tuple[int, np.ndarray]] = []
        classes: list[int] = []
        for s, st in enumerate(self.studies):
            y = np.asarray(st.y).reshape(-1)
            if is_weak(st):
                rows = _kept_rows(y.size)
                m = max(1, rows.size // self.bag_size)
                for j in range(m):
                    items.append((s, rows[j::m][: self.bag_size]))
                    classes.append(st.record.label)
            else:
                items.extend((s, np.array([r])) for r in range(y.size))
                classes.extend(int(v) for v in y)
        self.items = items
        self._classes = np.asarray(classes, dtype=np.int64)
        self.item_sizes = np.array([rows.size for _, rows in items], dtype=np.int64)
        self.study_of = np.array([s for s, _ in items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def targets(self) -> np.ndarray:
        return self._classes

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, rows = self.items[int(i)]
        st = self.studies[s]
        x = torch.from_numpy(np.asarray(st.x[rows], dtype=np.float32))[:, None]
        return x, torch.from_numpy(np.asarray(st.y, dtype=np.int64)[rows])

    @staticmethod
    def collate(items: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (N, 1, S, S)`` and targets ``(N, 2)``: the code and the item (bag) each slice belongs to."""
        x = torch.cat([it[0] for it in items])
        codes = torch.cat([it[1] for it in items])
        bag = torch.cat([torch.full((it[1].numel(),), k, dtype=torch.int64) for k, it in enumerate(items)])
        return x, torch.stack([codes, bag], dim=1)


def pack_batches(order: np.ndarray, sizes: np.ndarray, batch_size: int, max_batches: int | None) -> list:
    """Consecutive items of ``order`` packed into batches of at most ``batch_size`` slices (an item larger
    than that gets a batch of its own); at most ``max_batches`` batches."""
    batches: list[list[int]] = []
    cur: list[int] = []
    n = 0
    for i in order:
        k = int(sizes[int(i)])
        if cur and n + k > batch_size:
            batches.append(cur)
            cur, n = [], 0
            if max_batches is not None and len(batches) >= max_batches:
                return batches
        cur.append(int(i))
        n += k
    if cur and (max_batches is None or len(batches) < max_batches):
        batches.append(cur)
    return batches


def mil_loss(
    logits: torch.Tensor, target: torch.Tensor, *, pooling: str = "topk", top_k: int = 2
) -> torch.Tensor:
    """Mean over items of: cross-entropy of a labelled slice, or the bag loss of a weak bag (module doc)."""
    codes, bag = target[:, 0], target[:, 1]
    logp = torch.log_softmax(logits.float(), dim=1)
    terms: list[torch.Tensor] = []
    known = codes >= 0
    if bool(known.any()):
        terms.append(-logp[known].gather(1, codes[known][:, None])[:, 0])
    weak = ~known
    if bool(weak.any()):
        p = logp.exp()
        covid, cap = int(Diagnosis.COVID19), int(Diagnosis.CAP)
        for b in torch.unique(bag[weak]).tolist():
            rows = weak & (bag == b)
            c = int(-codes[rows][0].item() - 1)
            other = cap if c == covid else covid
            pc = p[rows, c]
            if pooling == "noisy-or":
                pooled = 1.0 - torch.exp(torch.log1p(-pc.clamp(max=1 - 1e-6)).sum())
            else:
                pooled = torch.topk(pc, min(top_k, pc.numel())).values.mean()
            absent = -torch.log1p(-p[rows, other].clamp(max=1 - 1e-6)).mean()
            terms.append((-torch.log(pooled.clamp_min(1e-7)) + absent)[None])
    return torch.cat(terms).mean()


def patient_validation(
    probs: np.ndarray, codes: np.ndarray, studies: Sequence[CachedStudy]
) -> dict[str, float]:
    """Patient-level validation from cached slices: the rule's balanced accuracy over the studies, plus a
    soft score (mean probability of each patient's class over its kept slices' most likely disease slices)
    that breaks ties; and slice metrics over the rows that have slice labels."""
    from covidct.decide import decide
    from covidct.train.metrics import balanced_accuracy, classification_metrics

    truth, pred, soft = [], [], []
    at = 0
    for st in studies:
        n = int(np.asarray(st.y).size)
        p = probs[at : at + n]
        at += n
        truth.append(st.record.label)
        pred.append(decide(p).label)
        kept = p[slice(*kept_range(n))]
        c = st.record.label
        if c == int(Diagnosis.NORMAL):
            soft.append(float(kept[:, c].mean()))
        else:
            k = max(1, round(0.2 * len(kept)))
            soft.append(float(np.sort(kept[:, c])[-k:].mean()))
    out: dict[str, float] = {
        "patient_balanced_accuracy": balanced_accuracy(np.array(truth), np.array(pred)),
        "patient_accuracy": float(np.mean(np.array(truth) == np.array(pred))) if truth else float("nan"),
        "patient_soft": float(np.mean(soft)) if soft else float("nan"),
    }
    labelled = codes >= 0
    if labelled.any() and len(np.unique(codes[labelled])) > 1:
        out.update(
            {f"slice_{k}": v for k, v in classification_metrics(codes[labelled], probs[labelled]).items()}
        )
    return out


def supervision_summary(
    studies: Sequence[CachedStudy], *, mode: str, bag_size: int, pooling: str, top_k: int
) -> dict[str, Any]:
    """The card's ``training.supervision`` entry."""
    weak = [s for s in studies if is_weak(s)]
    return {
        "mode": mode,
        "objective": "multiple-instance learning over kept slices" if weak else "slice labels",
        "pooling": pooling if weak else None,
        "top_k": top_k if weak and pooling == "topk" else None,
        "bag_size": bag_size if weak else None,
        "patient_labelled_studies": {
            name: sum(1 for s in weak if s.record.label == i) for i, name in enumerate(CLASS_NAMES)
        },
        "slice_labelled_studies": {
            name: sum(1 for s in studies if not is_weak(s) and s.record.label == i)
            for i, name in enumerate(CLASS_NAMES)
        },
    }
