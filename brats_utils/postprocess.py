"""Enhancing-tumour post-processing (the BraTS 2020 winner's, nnU-Net): drop a tiny predicted ET.

Why it exists: the BraTS empty-mask rules (:mod:`brats_utils.metrics`). Some cases (low-grade
gliomas, mostly) have **no** enhancing tumour. If the truth's ET is empty, a prediction with an empty ET
scores Dice 1 and HD95 0, and a prediction with *a handful* of false ET voxels scores Dice 0 and HD95
373 mm: a few voxels cost a whole case, and one such case moves the mean ET Dice of 70 cases by 1.4
points. A network is rarely sure about a few scattered voxels, so the rule is:

    if the predicted ET of a case is smaller than ``min_volume_mm3``, relabel it as NCR/NET.

Relabelling (not erasing) keeps those voxels in the tumour core and the whole tumour, so WT and TC do
not change; only ET does. The threshold is a volume in mm³, not a voxel count, so that it means the same
on data of another spacing (at BraTS's 1 mm spacing the two are equal). It is a hyper-parameter:
:func:`choose_et_threshold` picks it by mean ET Dice on predictions of cases the model did not train on:
the pooled out-of-fold predictions of a cross-validation (as nnU-Net), or the validation cases when there
is no cross-validation; :func:`threshold_record` keeps the value with the cases it was chosen on. On a
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


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel in mm³ from a 4x4 voxel-to-world affine (its 3x3 block's absolute determinant)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))


def suppress_small_et(labels: np.ndarray, min_volume_mm3: float, *, voxel_volume_mm3: float = 1.0,
                      et_label: int = ET_LABEL, replacement: int = NCR_LABEL) -> np.ndarray:
    """A copy of ``labels``, its ET relabelled ``replacement`` when its volume is below ``min_volume_mm3``.

    The ET's volume is its voxel count times ``voxel_volume_mm3`` (1 mm³ at BraTS's spacing). Defaults are
    BraTS 2020 file labels (ET 4 → NCR/NET 1); for training labels pass ``et_label=3``.
    ``min_volume_mm3=0`` changes nothing. An ET of exactly ``min_volume_mm3`` is kept.
    """
    if min_volume_mm3 < 0:
        raise ValueError(f"min_volume_mm3 must be >= 0, got {min_volume_mm3}")
    labels = np.array(labels, copy=True)
    mask = labels == et_label
    if 0 < np.count_nonzero(mask) * voxel_volume_mm3 < min_volume_mm3:
        labels[mask] = replacement
    return labels


def _volumes(predictions: Sequence[np.ndarray], voxel_volumes: Sequence[float] | None,
             et_label: int) -> list[float]:
    """Predicted ET volume (mm³) of every case; ``voxel_volumes`` None: 1 mm³ each."""
    voxel_volumes = [1.0] * len(predictions) if voxel_volumes is None else list(voxel_volumes)
    if len(voxel_volumes) != len(predictions):
        raise ValueError(f"need one voxel volume per prediction, got {len(voxel_volumes)} for "
                         f"{len(predictions)}")
    return [et_voxels(p, et_label=et_label) * v for p, v in zip(predictions, voxel_volumes, strict=True)]


def candidate_thresholds(predictions: Sequence[np.ndarray], voxel_volumes: Sequence[float] | None = None, *,
                         et_label: int = ET_LABEL) -> list[float]:
    """Every threshold (mm³) that gives a different outcome: 0 (off) and, for each predicted ET, its
    volume plus one voxel's (the smallest threshold that drops it)."""
    voxel_volumes = [1.0] * len(predictions) if voxel_volumes is None else list(voxel_volumes)
    volumes = _volumes(predictions, voxel_volumes, et_label)
    return sorted({0.0} | {volume + voxel for volume, voxel in zip(volumes, voxel_volumes, strict=True)
                           if volume > 0})


def et_threshold_table(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                       candidates: Sequence[float] | None = None, *,
                       voxel_volumes: Sequence[float] | None = None,
                       et_label: int = ET_LABEL) -> pd.DataFrame:
    """Mean ET Dice (BraTS empty rules) of ``predictions`` against ``truths`` after the rule, per threshold.

    Columns ``threshold`` (mm³), ``mean ET Dice``, ``cases changed``; ``voxel_volumes``: mm³ of one voxel
    of each case (None: 1 mm³); ``candidates`` default to :func:`candidate_thresholds` (the exact search).
    """
    if len(predictions) != len(truths) or not predictions:
        raise ValueError(f"need as many predictions as truths (at least one), got {len(predictions)} "
                         f"and {len(truths)}")
    if candidates is None:
        candidates = candidate_thresholds(predictions, voxel_volumes, et_label=et_label)
    truth_et = [np.asarray(t) == et_label for t in truths]
    volumes = _volumes(predictions, voxel_volumes, et_label)
    rows = []
    for threshold in candidates:
        scores = []
        for prediction, truth, volume in zip(predictions, truth_et, volumes, strict=True):
            dropped = 0 < volume < threshold
            predicted = np.zeros_like(truth) if dropped else np.asarray(prediction) == et_label
            scores.append(dice(predicted, truth))
        rows.append({"threshold": float(threshold), "mean ET Dice": float(np.mean(scores)),
                     "cases changed": sum(0 < volume < threshold for volume in volumes)})
    return pd.DataFrame(rows)


def best_threshold(table: pd.DataFrame) -> float:
    """The threshold (mm³) of :func:`et_threshold_table`'s highest mean ET Dice; ties go to the smallest."""
    best = table["mean ET Dice"].max()
    return float(table.loc[table["mean ET Dice"] >= best - 1e-12, "threshold"].min())


def choose_et_threshold(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                        candidates: Sequence[float] | None = None, *,
                        voxel_volumes: Sequence[float] | None = None, et_label: int = ET_LABEL) -> float:
    """The threshold (mm³) with the highest mean ET Dice on these cases; ties go to the smallest.

    Choose it on out-of-fold or validation predictions, never on the cases it is reported on, or the gain
    is flattered.
    """
    return best_threshold(et_threshold_table(predictions, truths, candidates, voxel_volumes=voxel_volumes,
                                             et_label=et_label))


def threshold_record(table: pd.DataFrame, *, chosen_on: str, case_ids: Sequence[str]) -> dict:
    """The chosen threshold as JSON-ready data: ``min_volume_mm3``, what it was chosen on (e.g.
    ``"out-of-fold predictions of 5-fold cross-validation"`` or ``"validation cases"``), their case ids
    and the curve (:func:`et_threshold_table`) it came from."""
    return {"min_volume_mm3": best_threshold(table), "chosen_on": chosen_on, "case_ids": list(case_ids),
            "curve": table.to_dict("records")}
