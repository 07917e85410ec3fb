"""How far one threshold gets (:func:`threshold_baseline`): a data set that a threshold segments needs
no network; real BraTS does (``tests/benchmarks/bench_phantom_difficulty.py`` measures it)."""

from __future__ import annotations

import numpy as np

from brats_utils.labels import MODALITIES


def _best_threshold_dice(values: np.ndarray, target: np.ndarray) -> float:
    """The best Dice of ``values > t`` against ``target`` over every threshold ``t`` (NaN if empty)."""
    positives = int(np.count_nonzero(target))
    if positives == 0:
        return float("nan")
    levels, inverse = np.unique(values, return_inverse=True)
    selected = np.bincount(inverse, minlength=len(levels))[::-1].cumsum()  # voxels above each level
    hits = np.bincount(inverse, weights=target, minlength=len(levels))[::-1].cumsum()
    return float((2 * hits / (selected + positives)).max())


def threshold_baseline(image: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """How far one threshold gets: the best single-modality threshold, chosen with hindsight.

    For the brain voxels of one case (``image [4, H, W, D]`` in ``MODALITIES`` order, file
    labels), the Dice of "brighter than t" with the best ``t`` for the whole tumour on FLAIR
    (``wt_flair``) and T2 (``wt_t2``), and for the enhancing tumour on T1ce (``et_t1ce``, NaN
    without label 4). A data set that a threshold segments needs no network; real BraTS does.
    """
    brain = image.any(axis=0)
    whole, enhancing = labels[brain] > 0, labels[brain] == 4
    channel = {m: i for i, m in enumerate(MODALITIES)}
    return {"wt_flair": _best_threshold_dice(image[channel["flair"]][brain], whole),
            "wt_t2": _best_threshold_dice(image[channel["t2"]][brain], whole),
            "et_t1ce": _best_threshold_dice(image[channel["t1ce"]][brain], enhancing)}
