"""The voxel-classifier baseline: its features, what it can learn and what it cannot."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from brats_utils.baselines import fit_voxel_classifier, predict_voxels, voxel_features
from brats_utils.metrics import dice
from brats_utils.preprocess import brain_mask


def _case(seed: int, *, tumour_brighter: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 2-channel 24³ 'brain' (a ball, zero outside) with a cube of label 1 inside it.

    ``tumour_brighter``: the cube is 3 units brighter in channel 0 (intensity gives it away); otherwise
    the cube has the brain's intensity distribution exactly and only its position marks it."""
    rng = np.random.default_rng(seed)
    grid = np.indices((24, 24, 24)) - 11.5
    brain = (grid**2).sum(axis=0) < 11**2
    image = rng.normal(0.0, 1.0, (2, 24, 24, 24)).astype(np.float32)
    labels = np.zeros((24, 24, 24), np.int64)
    start = rng.integers(6, 11, size=3)
    cube = tuple(slice(s, s + 6) for s in start)
    labels[cube] = 1
    if tumour_brighter:
        image[0][cube] += 3.0
    image[:, ~brain] = 0.0
    return image, labels * brain


def test_features_are_the_channels_then_their_gaussian_copies():
    image = np.random.default_rng(0).normal(size=(4, 10, 9, 8)).astype(np.float32)
    features = voxel_features(image, sigmas=(1.0, 3.0))
    assert features.shape == (10, 9, 8, 12)
    np.testing.assert_array_equal(features[..., :4], np.moveaxis(image, 0, -1))
    for k, (sigma, channel) in enumerate([(s, c) for s in (1.0, 3.0) for c in range(4)]):
        expected = ndimage.gaussian_filter(image[channel], sigma)
        np.testing.assert_allclose(features[..., 4 + k], expected, rtol=1e-6)


def test_a_tumour_that_intensity_gives_away_is_found_voxel_by_voxel_and_context_helps():
    """3 noise SDs brighter: one raw intensity separates most voxels (their noise overlaps at the
    edges of the two distributions); the blurred copies average the noise away."""
    train = [_case(seed, tumour_brighter=True) for seed in range(3)]
    image, labels = _case(10, tumour_brighter=True)
    scores = {}
    for kind in ("boosted", "logistic"):
        predicted = predict_voxels(fit_voxel_classifier(train, kind=kind, n_voxels=20_000, seed=0), image)
        scores[kind] = dice(predicted == 1, labels == 1)
        assert not predicted[~brain_mask(image)].any()  # background outside the brain
    assert scores["logistic"] > 0.5 and scores["boosted"] > 0.85
    assert scores["boosted"] > scores["logistic"] + 0.1


def test_a_tumour_marked_only_by_its_shape_is_missed_voxel_by_voxel():
    """Same intensities inside and outside the cube: no per-voxel feature can tell them apart."""
    train = [_case(seed, tumour_brighter=False) for seed in range(3)]
    image, labels = _case(10, tumour_brighter=False)
    predicted = predict_voxels(fit_voxel_classifier(train, n_voxels=20_000, seed=0), image)
    assert dice(predicted == 1, labels == 1) < 0.3


def test_the_fit_is_reproducible_and_draws_at_most_the_voxels_it_has():
    train = [_case(seed, tumour_brighter=True) for seed in range(2)]
    first = fit_voxel_classifier(train, n_voxels=5_000, seed=3)
    second = fit_voxel_classifier(train, n_voxels=5_000, seed=3)
    image, _ = _case(7, tumour_brighter=True)
    np.testing.assert_array_equal(predict_voxels(first, image), predict_voxels(second, image))
    everything = fit_voxel_classifier(train, n_voxels=10**9, seed=3)
    assert everything.voxels == sum(int(brain_mask(image).sum()) for image, _ in train)


def test_unknown_kinds_and_empty_training_sets_are_refused():
    with pytest.raises(ValueError, match="kind 'forest'"):
        fit_voxel_classifier([_case(0, tumour_brighter=True)], kind="forest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one training case"):
        fit_voxel_classifier([])
