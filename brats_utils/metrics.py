"""Scoring segmentations the way BraTS 2020 does, and the way the paper did.

Two families of numbers, which must not be confused:

* **BraTS regions** (what the challenge ranks): Dice, HD95, sensitivity and specificity
  of the nested regions WT = {1,2,4}, TC = {1,4} and ET = {4}, with the challenge's
  empty-mask rules (both empty: Dice 1, HD95 0; exactly one empty: Dice 0, HD95
  373.12866 mm, the diagonal of the 240 x 240 x 155 volume).
* **The paper's metric**: a hard (argmax) Dice for each of the four training labels
  *including background*, smoothed by 1e-6, averaged over the labels. Background
  scores about 0.999 on every case, which is why it lifts the average (0.79).

Every count-based score is computed from one confusion matrix of (truth, prediction)
label pairs, and one set of small rule functions turns counts into scores. The numpy
path (:func:`case_metrics`) and the torch path used during training
(:func:`region_dice_torch`) differ only in how they count.

HD95 follows medpy's ``hd95``, which CBICA's standalone Hausdorff95 tool for BraTS calls (that
the 2020 evaluation portal scored exactly this way is not confirmed): the surface of a mask is the mask
minus its binary erosion with connectivity 1; the distances from each surface voxel to
the nearest voxel of the other surface, both directions pooled into one list; the 95th
percentile (linear interpolation) of that list, in mm (spacing 1 mm).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage

from brats_utils.errors import BratsError, ShapeMismatchError
from brats_utils.files import write_csv_atomic
from brats_utils.io import read_labels
from brats_utils.labels import BRATS2020, REGIONS, TRAIN_LABELS, TRAIN_REGIONS, LabelScheme, to_train_labels

if TYPE_CHECKING:  # torch is needed only by region_dice_torch's callers, who have it loaded
    import torch

#: HD95 of a region present in exactly one of prediction and truth: the volume diagonal in mm.
HD95_PENALTY = 373.12866
#: Smoothing of the paper's Dice (a label absent from both prediction and truth scores 1).
PAPER_SMOOTH = 1e-6
#: Row names of the summary table, as in the challenge's statistics file.
SUMMARY_ROWS = ("Mean", "StdDev", "Median", "25quantile", "75quantile")

#: Tumour labels scored one by one, named as in labels.LABEL_NAMES, in training labels.
TRAIN_TUMOUR_LABELS: dict[str, int] = {BRATS2020.names[v]: t for v, t in BRATS2020.to_train.items() if v}
#: Columns of the per-case table: the challenge's four scores per region, then per-label Dice
#: (``Dice_ET`` is both the region and label 4) and the paper's metric.
COLUMNS: tuple[str, ...] = (
    *(f"{score}_{region}" for score in ("Dice", "Hausdorff95", "Sensitivity", "Specificity")
      for region in REGIONS),
    *(f"Dice_{name}" for name in ("background", *TRAIN_TUMOUR_LABELS) if name not in REGIONS),
    "PaperDice",
)


# --- rules: counts -> scores (the single definition used everywhere) ------------------


def dice_from_counts(true_positives: float, predicted: float, actual: float) -> float:
    """BraTS Dice from counts: ``2 TP / (|P| + |T|)``; 1.0 when both masks are empty.

    When exactly one mask is empty, TP is 0 and the formula gives 0, as the rules demand.
    """
    total = predicted + actual
    return 1.0 if total == 0 else float(2.0 * true_positives / total)


def sensitivity_from_counts(true_positives: float, actual: float, predicted: float) -> float:
    """``TP / |T|``; with an empty truth: 1.0 if the prediction is empty too, else 0.0.

    An empty truth leaves sensitivity undefined; this project scores it like Dice so that
    correctly predicting "no enhancing tumour" is rewarded and a false alarm is not.
    """
    if actual == 0:
        return 1.0 if predicted == 0 else 0.0
    return float(true_positives / actual)


def specificity_from_counts(true_negatives: float, false_positives: float) -> float:
    """``TN / (TN + FP)``; 1.0 when the truth has no negative voxel at all."""
    negatives = true_negatives + false_positives
    return 1.0 if negatives == 0 else float(true_negatives / negatives)


def paper_dice_from_counts(
    true_positives: Sequence[float], predicted: Sequence[float], actual: Sequence[float]
) -> float:
    """The paper's metric: mean over labels of ``(2 TP + s) / (|P| + |T| + s)``, s = 1e-6."""
    tp, p, t = (np.asarray(x, dtype=np.float64) for x in (true_positives, predicted, actual))
    return float(np.mean((2.0 * tp + PAPER_SMOOTH) / (p + t + PAPER_SMOOTH)))


def scores_from_confusion(confusion: np.ndarray) -> dict[str, float]:
    """Every count-based score of one case from its confusion matrix.

    ``confusion[t, p]`` counts voxels with training label ``t`` in the truth and ``p`` in
    the prediction (training labels 0..3). Returns Dice, sensitivity and specificity of
    the regions WT, TC, ET, Dice of each tumour label and of background, and the paper's
    4-label Dice (key ``PaperDice``).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    scores: dict[str, float] = {}
    for name, labels in TRAIN_REGIONS.items():
        idx = list(labels)
        tp = confusion[np.ix_(idx, idx)].sum()
        actual = confusion[idx, :].sum()
        predicted = confusion[:, idx].sum()
        fp = predicted - tp
        tn = total - actual - fp
        scores[f"Dice_{name}"] = dice_from_counts(tp, predicted, actual)
        scores[f"Sensitivity_{name}"] = sensitivity_from_counts(tp, actual, predicted)
        scores[f"Specificity_{name}"] = specificity_from_counts(tn, fp)
    tp, predicted, actual = np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)
    for name, label in {"background": 0, **TRAIN_TUMOUR_LABELS}.items():
        scores[f"Dice_{name}"] = dice_from_counts(tp[label], predicted[label], actual[label])
    scores["PaperDice"] = paper_dice_from_counts(tp, predicted, actual)
    return scores


# --- numpy: masks and label maps -------------------------------------------------------


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean WT, TC and ET masks of a file-label map {0,1,2,4}."""
    return {name: np.isin(labels, values) for name, values in REGIONS.items()}


def _mask_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, |P|, |T|, total voxels) of two boolean masks of one shape."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ShapeMismatchError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}",
                                 expected="masks of one shape")
    return (int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred)),
            int(np.count_nonzero(truth)), pred.size)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks with the BraTS empty rules (both empty: 1; one empty: 0)."""
    tp, predicted, actual, _ = _mask_counts(pred, truth)
    return dice_from_counts(tp, predicted, actual)


def sensitivity(pred: np.ndarray, truth: np.ndarray) -> float:
    """True-positive rate of two boolean masks (empty truth: see :func:`sensitivity_from_counts`)."""
    tp, predicted, actual, _ = _mask_counts(pred, truth)
    return sensitivity_from_counts(tp, actual, predicted)


def specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    """True-negative rate of two boolean masks."""
    tp, predicted, actual, total = _mask_counts(pred, truth)
    fp = predicted - tp
    return specificity_from_counts(total - actual - fp, fp)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` removed by one binary erosion with connectivity 1 (medpy's border)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th percentile of the pooled symmetric surface distances, in mm (medpy ``hd95``).

    Both empty: 0. Exactly one empty: :data:`HD95_PENALTY`. The work is done inside the
    bounding box of both masks grown by one voxel, which gives the same surfaces (erosion
    treats the outside as empty, as at the volume border) and the same distances (every
    surface voxel lies inside the box) at a fraction of the cost.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    _mask_counts(pred, truth)  # shape check
    has_pred, has_truth = pred.any(), truth.any()
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return HD95_PENALTY
    (box,) = ndimage.find_objects((pred | truth).astype(np.uint8))
    box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, pred.shape, strict=True))
    pred_surface, truth_surface = _surface(pred[box]), _surface(truth[box])
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[truth_surface]
    return float(np.percentile(np.concatenate([to_truth, to_pred]), 95))


def confusion_matrix(pred_train_labels: np.ndarray, true_train_labels: np.ndarray,
                     num_classes: int = len(TRAIN_LABELS)) -> np.ndarray:
    """``[num_classes, num_classes]`` counts of (truth, prediction) training-label pairs."""
    pred = np.asarray(pred_train_labels).astype(np.int64, copy=False).ravel()
    truth = np.asarray(true_train_labels).astype(np.int64, copy=False).ravel()
    if pred.shape != truth.shape:
        raise ShapeMismatchError(f"prediction has {pred.size} voxels, truth {truth.size}",
                                 expected="label maps of one shape")
    return np.bincount(truth * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def paper_dice(pred_train_labels: np.ndarray, true_train_labels: np.ndarray, num_classes: int = 4) -> float:
    """The paper's Dice of one volume: smoothed hard Dice per training label (background too), averaged."""
    confusion = confusion_matrix(pred_train_labels, true_train_labels, num_classes)
    return paper_dice_from_counts(np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1))


def case_metrics(pred_file_labels: np.ndarray, true_file_labels: np.ndarray,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                 case_id: str | None = None, scheme: LabelScheme = BRATS2020) -> dict[str, float]:
    """All scores of one case from two file-label maps of ``scheme`` (BraTS 2020: {0,1,2,4}) on one grid.

    Keys: ``Dice_<R>``, ``Sensitivity_<R>``, ``Specificity_<R>``, ``Hausdorff95_<R>`` for
    R in WT, TC, ET (the challenge's columns), ``Dice_<label>`` for background, NCR/NET,
    ED and ET (label 4 is the ET region, so ``Dice_ET`` is both), and ``PaperDice``.
    The labels are scored as training labels, so every scheme gets the same columns.
    """
    pred = to_train_labels(pred_file_labels, scheme=scheme, case_id=case_id)
    truth = to_train_labels(true_file_labels, scheme=scheme, case_id=case_id)
    return region_scores(pred, truth, spacing, case_id=case_id)


def region_scores(pred_train_labels: np.ndarray, true_train_labels: np.ndarray,
                  spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                  case_id: str | None = None) -> dict[str, float]:
    """:func:`case_metrics` from two *training*-label maps (0..3): the ``brats2020`` protocol's scorer."""
    pred, truth = np.asarray(pred_train_labels), np.asarray(true_train_labels)
    if pred.shape != truth.shape:
        raise ShapeMismatchError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}",
                                 case_id=case_id, expected="the ground truth's grid")
    scores = scores_from_confusion(confusion_matrix(pred, truth))
    for name, labels in TRAIN_REGIONS.items():
        scores[f"Hausdorff95_{name}"] = hd95(np.isin(pred, labels), np.isin(truth, labels), spacing)
    return {column: scores[column] for column in COLUMNS}


# --- torch: fast validation during training --------------------------------------------


def region_dice_torch(pred_train_labels: torch.Tensor, true_train_labels: torch.Tensor,
                      num_classes: int = 4) -> dict[str, float]:
    """Region Dice (WT, TC, ET) and the paper's Dice from argmax label tensors, on their device.

    Accepts ``[X, Y, Z]`` or a batch ``[B, X, Y, Z]`` of training labels (0..3); a batch is
    scored volume by volume and averaged, as the challenge and the paper average over cases.
    Only the counting runs in torch (one ``bincount`` per volume); the rules are the same
    functions :func:`case_metrics` uses. Returns keys ``Dice_WT``, ``Dice_TC``, ``Dice_ET``
    and ``PaperDice``.
    """
    if pred_train_labels.shape != true_train_labels.shape:
        raise ShapeMismatchError(f"prediction shape {tuple(pred_train_labels.shape)} differs from "
                                 f"truth shape {tuple(true_train_labels.shape)}",
                                 expected="label maps of one shape")
    pred = pred_train_labels.reshape(-1, *pred_train_labels.shape[-3:]).flatten(1).long()
    truth = true_train_labels.reshape(-1, *true_train_labels.shape[-3:]).flatten(1).long()
    keys = (*(f"Dice_{name}" for name in TRAIN_REGIONS), "PaperDice")
    totals = dict.fromkeys(keys, 0.0)
    for p, t in zip(pred, truth, strict=True):
        counts = (t * num_classes + p).bincount(minlength=num_classes**2)
        scores = scores_from_confusion(counts.reshape(num_classes, num_classes).cpu().numpy())
        for key in keys:
            totals[key] += scores[key]
    return {key: value / len(pred) for key, value in totals.items()}


# --- folders of predictions -------------------------------------------------------------


@dataclass(frozen=True)
class MetricsProtocol:
    """A way of scoring one case: a name and a scorer of two training-label maps.

    ``score(pred, truth, spacing, case_id=...)`` takes training labels 0..3 (whatever the
    dataset's file labels) and returns the case's row. :data:`BRATS2020_PROTOCOL` is defined
    here; the lesion-wise one of BraTS 2023 in :mod:`brats_utils.lesion_metrics`, which also
    holds the table of both by name (``lesion_metrics.PROTOCOLS``).
    """

    name: str
    score: Callable[..., dict[str, float]]
    description: str = ""


#: BraTS 2015-2021: one Dice, HD95, sensitivity and specificity per region and case.
BRATS2020_PROTOCOL = MetricsProtocol(
    "brats2020", region_scores, "per-region Dice / HD95 / sensitivity / specificity (BraTS 2015-2021)")


def summarize(per_case: pd.DataFrame) -> pd.DataFrame:
    """Mean, StdDev (sample), Median, 25quantile and 75quantile of every score column."""
    scores = per_case.select_dtypes("number")
    return pd.DataFrame(
        [scores.mean(), scores.std(), scores.median(), scores.quantile(0.25), scores.quantile(0.75)],
        index=list(SUMMARY_ROWS),
    )


def prediction_path(pred_dir: Path, case_id: str) -> Path | None:
    """``<pred_dir>/<case_id>.nii.gz`` (or ``.nii``), or None when there is no prediction."""
    for suffix in (".nii.gz", ".nii"):
        path = pred_dir / f"{case_id}{suffix}"
        if path.exists():
            return path
    return None


def evaluate(pred_dir: str | Path, cases: Sequence, out_csv: str | Path | None = None, *,
             progress: bool = True,
             protocol: MetricsProtocol = BRATS2020_PROTOCOL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every prediction ``<pred_dir>/<case_id>.nii.gz`` against its ground truth.

    ``cases`` is a list of ``io.Case`` records (a dataset folder's: ``datasets.find_dataset``;
    ``pipeline.evaluate_folder`` takes a profile's split). Prediction and truth are read
    in the case's own label scheme and scored as training labels by ``protocol``
    (:data:`BRATS2020_PROTOCOL`, or ``lesion_metrics.LESIONWISE_PROTOCOL`` for BraTS 2023's
    lesion-wise scores). Cases without a prediction file or without a segmentation are
    skipped, so a folder holding only the validation split's predictions is scored on
    exactly those. Returns the per-case table (index ``case_id``) and its summary; with
    ``out_csv`` both are written atomically: the table to ``out_csv`` and the summary,
    laid out like the challenge's statistics file, to ``<stem>_summary.csv`` beside it.
    """
    from tqdm.auto import tqdm

    pred_dir = Path(pred_dir)
    pairs = [(case, prediction_path(pred_dir, case.case_id)) for case in cases if case.seg is not None]
    pairs = [(case, path) for case, path in pairs if path is not None]
    if not pairs:
        raise BratsError("no prediction matches a case with ground truth", path=pred_dir,
                         expected="files named <case_id>.nii.gz for cases that have a segmentation")

    def volumes() -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]]:
        for case, path in tqdm(pairs, desc="evaluate", unit="case", disable=not progress):
            truth, truth_image = read_labels(case.seg, case_id=case.case_id, scheme=case.scheme)
            pred, _ = read_labels(path, case_id=case.case_id, scheme=case.scheme)
            spacing = tuple(float(z) for z in truth_image.header.get_zooms()[:3])
            yield (case.case_id, to_train_labels(pred, scheme=case.scheme, case_id=case.case_id),
                   to_train_labels(truth, scheme=case.scheme, case_id=case.case_id), spacing)

    return score_volumes(volumes(), out_csv=out_csv, protocol=protocol)


def score_volumes(volumes: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[float]]],
                  out_csv: str | Path | None = None, *,
                  protocol: MetricsProtocol = BRATS2020_PROTOCOL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score ``(case_id, prediction, truth, spacing)`` training-label volumes with ``protocol``.

    The scoring half of :func:`evaluate` (which reads the files), also used on ground truth from a
    cache; returns and writes what :func:`evaluate` does.
    """
    rows = [{"case_id": case_id, **protocol.score(pred, truth, tuple(spacing), case_id=case_id)}
            for case_id, pred, truth, spacing in volumes]
    per_case = pd.DataFrame(rows).set_index("case_id")
    summary = summarize(per_case)
    if out_csv is not None:
        out_csv = Path(out_csv)
        write_csv_atomic(per_case, out_csv, index=True)
        write_csv_atomic(summary, out_csv.with_name(f"{out_csv.name.removesuffix('.csv')}_summary.csv"),
                         index=True)
    return per_case, summary
