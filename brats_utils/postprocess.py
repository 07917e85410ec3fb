"""Enhancing-tumour post-processing (the BraTS 2020 winner's, nnU-Net): drop a tiny predicted ET.

Why it exists: the BraTS empty-mask rules (:mod:`brats_utils.metrics`). Some cases (low-grade
gliomas, mostly) have **no** enhancing tumour. If the truth's ET is empty, a prediction with an empty ET
scores Dice 1 and HD95 0, and a prediction with *a handful* of false ET voxels scores Dice 0 and HD95
373 mm: a few voxels cost a whole case, and one such case moves the mean ET Dice of 70 cases by 1.4
points. A network is rarely sure about a few scattered voxels, so the rule is:

    if the predicted ET of a case has fewer than ``min_voxels`` voxels, relabel it as NCR/NET.

Relabelling (not erasing) keeps those voxels in the tumour core and the whole tumour, so WT and TC do
not change; only ET does. The threshold is a hyper-parameter: :func:`choose_et_threshold` picks it on
validation predictions by mean ET Dice (nnU-Net chose it on its cross-validation predictions). On a
case *with* a small true ET, the rule costs that ET; the choice weighs both kinds of cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from brats_utils.labels import BRATS2020, LabelScheme
from brats_utils.metrics import dice


def et_and_ncr_labels(scheme: LabelScheme = BRATS2020) -> tuple[int, int]:
    """The file labels of ET and NCR/NET in ``scheme`` (training labels 3 and 1): the rule relabels the
    first as the second. BraTS 2020: (4, 1); BraTS 2023: (3, 1); MSD: (3, 2)."""
    return scheme.to_file[3], scheme.to_file[1]


#: The labels the rule works on by default, BraTS 2020's file labels: ET (4) becomes NCR/NET (1).
ET_LABEL, NCR_LABEL = et_and_ncr_labels(BRATS2020)


def et_voxels(labels: np.ndarray, *, et_label: int = ET_LABEL) -> int:
    """Number of enhancing-tumour voxels of a label map."""
    return int(np.count_nonzero(np.asarray(labels) == et_label))


def suppress_small_et(labels: np.ndarray, min_voxels: int, *, et_label: int = ET_LABEL,
                      replacement: int = NCR_LABEL) -> np.ndarray:
    """A copy of ``labels``, its ET relabelled ``replacement`` when it has fewer than ``min_voxels`` voxels.

    Defaults are BraTS 2020 file labels (ET 4 → NCR/NET 1); for training labels pass ``et_label=3``.
    ``min_voxels=0`` changes nothing. An ET of exactly ``min_voxels`` voxels is kept.
    """
    if min_voxels < 0:
        raise ValueError(f"min_voxels must be >= 0, got {min_voxels}")
    labels = np.array(labels, copy=True)
    mask = labels == et_label
    if 0 < np.count_nonzero(mask) < min_voxels:
        labels[mask] = replacement
    return labels


def candidate_thresholds(predictions: Sequence[np.ndarray], *, et_label: int = ET_LABEL) -> list[int]:
    """Every threshold that gives a different outcome: 0 (off) and one more than each predicted ET size."""
    sizes = {et_voxels(p, et_label=et_label) for p in predictions}
    return sorted({0} | {size + 1 for size in sizes if size > 0})


def et_threshold_table(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                       candidates: Sequence[int] | None = None, *, et_label: int = ET_LABEL) -> pd.DataFrame:
    """Mean ET Dice (BraTS empty rules) of ``predictions`` against ``truths`` after the rule, per threshold.

    Columns ``threshold``, ``mean ET Dice``, ``cases changed``; ``candidates`` default to
    :func:`candidate_thresholds` (the exact search).
    """
    if len(predictions) != len(truths) or not predictions:
        raise ValueError(f"need as many predictions as truths (at least one), got {len(predictions)} "
                         f"and {len(truths)}")
    candidates = candidate_thresholds(predictions, et_label=et_label) if candidates is None else candidates
    truth_et = [np.asarray(t) == et_label for t in truths]
    sizes = [et_voxels(p, et_label=et_label) for p in predictions]
    rows = []
    for threshold in candidates:
        scores = []
        for prediction, truth, size in zip(predictions, truth_et, sizes, strict=True):
            dropped = 0 < size < threshold
            predicted = np.zeros_like(truth) if dropped else np.asarray(prediction) == et_label
            scores.append(dice(predicted, truth))
        rows.append({"threshold": int(threshold), "mean ET Dice": float(np.mean(scores)),
                     "cases changed": sum(0 < size < threshold for size in sizes)})
    return pd.DataFrame(rows)


def choose_et_threshold(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                        candidates: Sequence[int] | None = None, *, et_label: int = ET_LABEL) -> int:
    """The threshold with the highest mean ET Dice on these (validation) cases; ties go to the smallest.

    Choose it on cases that are not the ones it is reported on, or the gain is flattered.
    """
    table = et_threshold_table(predictions, truths, candidates, et_label=et_label)
    best = table["mean ET Dice"].max()
    return int(table.loc[table["mean ET Dice"] >= best - 1e-12, "threshold"].min())
