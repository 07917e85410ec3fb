"""A skeptic's baseline: label every voxel from its own intensities and a little blurred context.

If a classifier that looks at one voxel at a time (its four intensities, and the same four blurred over
a few voxels) scored as well as a U-Net, the data would not need a U-Net. On real BraTS it does not: the
oedema, the necrosis and the enhancement each overlap normal tissue in all four contrasts at once, and
only shape and context tell them apart. On a stand-in dataset the gap between the two measures how much
of that the phantoms imitate.

:func:`fit_voxel_classifier` fits scikit-learn's histogram gradient boosting (or, with
``kind="logistic"``, a logistic regression on the raw intensities alone) on voxels drawn uniformly from
the brains of the training cases; :func:`predict_voxels` labels a whole case, background outside its
brain. Images are ``[C, X, Y, Z]`` arrays as the preprocessing cache holds them (z-scored inside the
brain, zero outside); labels are in the scheme the classifier was trained on. Notebook 06 and
``make bench ONLY=voxel_classifier`` set it beside the U-Net on the same cases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from brats_utils.preprocess import brain_mask

#: Gaussian widths (voxels) of the blurred copies: 1 and 3 voxels, 2.5 and 7.5 mm at the demo's size.
SIGMAS: tuple[float, ...] = (1.0, 3.0)
#: Brain voxels drawn from the training cases to fit on: plenty for a classifier of 12 features.
TRAINING_VOXELS = 150_000
VoxelClassifierKind = Literal["boosted", "logistic"]


@dataclass(frozen=True)
class VoxelClassifier:
    """A fitted per-voxel classifier and the features it reads.

    ``model``: the scikit-learn estimator; ``kind``: ``"boosted"`` (every feature of
    :func:`voxel_features`) or ``"logistic"`` (the raw intensities only); ``sigmas``: the blur widths
    its features were computed with; ``columns``: the feature columns it reads; ``voxels``: how many
    training voxels it was fitted on.
    """

    model: Any
    kind: VoxelClassifierKind
    sigmas: tuple[float, ...]
    columns: slice
    voxels: int


def voxel_features(image: np.ndarray, sigmas: Sequence[float] = SIGMAS) -> np.ndarray:
    """``[X, Y, Z, C × (1 + len(sigmas))]`` float32: each channel, then its Gaussian-blurred copies.

    The columns are the ``C`` intensities first, then for each sigma (in voxels) the ``C`` blurred
    channels: with the default sigmas and four contrasts, 12 features per voxel.
    """
    image = np.asarray(image, dtype=np.float32)
    blurred = [ndimage.gaussian_filter(channel, sigma) for sigma in sigmas for channel in image]
    return np.stack([*image, *blurred], axis=-1)


def fit_voxel_classifier(cases: Iterable[tuple[np.ndarray, np.ndarray]], *,
                         kind: VoxelClassifierKind = "boosted", n_voxels: int = TRAINING_VOXELS,
                         sigmas: Sequence[float] = SIGMAS, seed: int = 0) -> VoxelClassifier:
    """Fit a per-voxel classifier on ``n_voxels`` brain voxels drawn uniformly from ``cases``.

    ``cases``: ``(image [C, X, Y, Z], labels [X, Y, Z])`` pairs, the training cases only. All of their
    brain voxels are pooled and ``n_voxels`` of them drawn without replacement (all, if fewer), with
    ``seed``; the fit is seeded too, so the same cases give the same classifier.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier  # scikit-learn: imported when fitting
    from sklearn.linear_model import LogisticRegression

    if kind not in ("boosted", "logistic"):
        raise ValueError(f"unknown voxel classifier kind {kind!r}; use 'boosted' or 'logistic'")
    features, targets = [], []
    for image, labels in cases:
        brain = brain_mask(image)
        features.append(voxel_features(image, sigmas)[brain])
        targets.append(np.asarray(labels)[brain])
    if not features:
        raise ValueError("fit_voxel_classifier needs at least one training case")
    x, y = np.concatenate(features), np.concatenate(targets)
    chosen = np.random.default_rng(seed).choice(len(y), size=min(n_voxels, len(y)), replace=False)
    x, y = x[chosen], y[chosen]
    channels = x.shape[1] // (1 + len(sigmas))
    columns = slice(0, channels) if kind == "logistic" else slice(None)  # raw intensities, or every feature
    model = (HistGradientBoostingClassifier(random_state=seed) if kind == "boosted"
             else LogisticRegression(max_iter=1000))
    return VoxelClassifier(model=model.fit(x[:, columns], y), kind=kind, sigmas=tuple(sigmas),
                           columns=columns, voxels=len(y))


def predict_voxels(classifier: VoxelClassifier, image: np.ndarray) -> np.ndarray:
    """``[X, Y, Z]`` int64 labels of a ``[C, X, Y, Z]`` image: the classifier inside the brain, 0 outside."""
    brain = brain_mask(image)
    labels = np.zeros(brain.shape, dtype=np.int64)
    if brain.any():
        features = voxel_features(image, classifier.sigmas)[brain]
        labels[brain] = classifier.model.predict(features[:, classifier.columns])
    return labels
