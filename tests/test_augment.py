"""augment: exact dihedral flips/rot90 at any depth, TTA pairing, stronger 3D augmentation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from brats_utils.augment import (
    IN_PLANE,
    MIRROR_ALL,
    Dihedral,
    StrongAugmentation,
    apply_dihedral,
    make_dihedral,
    make_strong_augmentation,
    resample_torch,
    sampling_grid,
    tta_flips,
)
from brats_utils.inference import ALL_FLIPS

FLIP_SETS = [c for n in range(4) for c in itertools.combinations((0, 1, 2), n)]


def reference_dihedral(image: np.ndarray, flips, k: int) -> np.ndarray:
    """Independent reference by explicit index arithmetic on ``[C, X, Y, Z]``.

    Output voxel (x, y, z) after "flip, then rotate X-Y by k quarter turns" reads the
    input at the position found by undoing the rotation, then the flips.
    """
    c, nx, ny, nz = image.shape
    # shape after the rotation: odd k swaps X and Y
    ox, oy = (ny, nx) if k % 2 else (nx, ny)
    x, y, z = np.meshgrid(np.arange(ox), np.arange(oy), np.arange(nz), indexing="ij")
    # undo the rotation: np.rot90 (k=1) puts input (i, j) at (ny - 1 - j, i), so output (x, y) <- (y, ny-1-x)
    sx, sy = x, y
    wx, wy = ox, oy  # extents of the grid being un-rotated
    for _ in range(k % 4):
        sx, sy = sy, wx - 1 - sx
        wx, wy = wy, wx
    sz = z
    if 0 in flips:
        sx = nx - 1 - sx
    if 1 in flips:
        sy = ny - 1 - sy
    if 2 in flips:
        sz = nz - 1 - sz
    return image[:, sx, sy, sz]


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flips", FLIP_SETS)
def test_dihedral_matches_index_arithmetic_and_torch(flips, k):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 5, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 4, size=(5, 5, 7), dtype=np.uint8)
    out = apply_dihedral(image, flips, k)
    np.testing.assert_array_equal(out, reference_dihedral(image, flips, k))
    np.testing.assert_array_equal(apply_dihedral(labels, flips, k),
                                  reference_dihedral(labels[None], flips, k)[0])
    # and torch (a second independent implementation)
    expected = torch.from_numpy(image)
    if flips:
        expected = expected.flip([a + 1 for a in flips])
    expected = torch.rot90(expected, k, dims=(1, 2))
    np.testing.assert_array_equal(out, expected.numpy())
    assert out.flags.c_contiguous and out.dtype == image.dtype


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flips", FLIP_SETS)
def test_dihedral_on_a_non_square_plane_matches_the_reference(flips, k):
    image = np.arange(3 * 4 * 6 * 5, dtype=np.float32).reshape(3, 4, 6, 5)
    np.testing.assert_array_equal(apply_dihedral(image, flips, k), reference_dihedral(image, flips, k))


def test_every_combination_is_drawn_and_applied_as_drawn():
    image = np.arange(2 * 6 * 6 * 8, dtype=np.float32).reshape(2, 6, 6, 8)
    labels = (np.arange(6 * 6 * 8) % 4).astype(np.uint8).reshape(6, 6, 8)
    seen = set()
    for seed in range(300):
        flips, k = MIRROR_ALL.draw(np.random.default_rng(seed), image.shape)
        out, out_labels = MIRROR_ALL(image, labels, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(out, reference_dihedral(image, flips, k))
        np.testing.assert_array_equal(out_labels, reference_dihedral(labels[None], flips, k)[0])
        seen.add((flips, k))
    assert len(seen) == 8 * 4  # all 8 flip sets x 4 rotations occur


def marker_patch(shape=(4, 64, 64, 155)):
    """Image with a distinct marker voxel per channel in a corner region and labels with 3 at that voxel."""
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape[1:], np.uint8)
    image[:, 3, 10, 140] = np.arange(1, shape[0] + 1)
    labels[3, 10, 140] = 3
    labels[3:6, 10:13, 100:104] = 1  # an asymmetric block of another label
    image[0, 3:6, 10:13, 100:104] = -1
    return image, labels


@pytest.mark.parametrize("augmentation", [IN_PLANE, MIRROR_ALL], ids=["in_plane", "mirror_all"])
def test_a_155_slice_crop_passes_and_stays_aligned(augmentation):
    """The crash that OpenCV 5's 128-channel limit caused: depth 155, not a multiple of anything."""
    image, labels = marker_patch()
    for seed in range(12):
        out, out_labels = augmentation(image, labels, rng=np.random.default_rng(seed))
        assert out.shape == image.shape and out_labels.shape == labels.shape
        assert out_labels.dtype == np.uint8 and set(np.unique(out_labels)) <= {0, 1, 3}
        marker = np.argwhere(out_labels == 3)
        assert len(marker) == 1
        np.testing.assert_array_equal(out[:, marker[0][0], marker[0][1], marker[0][2]], [1, 2, 3, 4])
        np.testing.assert_array_equal(out_labels == 1, out[0] == -1)
        assert np.count_nonzero(out) == np.count_nonzero(image)


def test_depth_155_is_augmented_with_no_opencv_involved():
    """The albumentations path passed z as OpenCV channels; OpenCV 5 refuses more than 128 (bench_augment)."""
    image, labels = marker_patch()
    assert image.shape[-1] == 155
    out, out_labels = MIRROR_ALL(image, labels, rng=np.random.default_rng(0))
    assert out.shape == image.shape and out_labels.shape == labels.shape


def test_in_plane_never_flips_z_and_mirror_all_does():
    image, labels = marker_patch((1, 16, 16, 155))
    z_of = {}
    for name, augmentation in [("in_plane", IN_PLANE), ("mirror_all", MIRROR_ALL)]:
        outs = [augmentation(image, labels, rng=np.random.default_rng(s))[1] for s in range(200)]
        z_of[name] = [int(np.argwhere(out == 3)[0][2]) for out in outs]
    assert set(z_of["in_plane"]) == {140}
    assert set(z_of["mirror_all"]) == {140, 155 - 1 - 140}
    assert 0.4 < np.mean(np.array(z_of["mirror_all"]) == 14) < 0.6  # p = 0.5
    # same seed, same x/y decisions and rotation: the settings differ only by the z flip
    for s in range(50):
        a = IN_PLANE(image, labels, rng=np.random.default_rng(s))[1]
        b = MIRROR_ALL(image, labels, rng=np.random.default_rng(s))[1]
        assert np.array_equal(a, b) or np.array_equal(a, b[..., ::-1])


def test_flip_axes_are_independent():
    """Each axis is seeded on its own (albumentations 2.0.8's Compose made flips fire together)."""
    flips = [MIRROR_ALL.draw(np.random.default_rng(s))[0] for s in range(2000)]
    draws = np.array([[a in f for a in range(3)] for f in flips])
    assert np.all(np.abs(draws.mean(axis=0) - 0.5) < 0.05)
    both = np.mean(draws[:, 0] & draws[:, 1])
    assert abs(both - 0.25) < 0.04


def test_dihedral_is_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    image = rng.normal(size=(4, 16, 16, 20)).astype(np.float32)
    labels = rng.integers(0, 4, size=(16, 16, 20), dtype=np.uint8)
    first = [MIRROR_ALL(image, labels, rng=np.random.default_rng([9, i])) for i in range(10)]
    again = [MIRROR_ALL(image, labels, rng=np.random.default_rng([9, i])) for i in range(10)]
    for (a, al), (b, bl) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(al, bl)
    assert len({a.tobytes() for a, _ in first}) > 3


def test_non_square_planes_keep_their_shape_unless_asked():
    image = np.zeros((1, 4, 6, 5), np.float32)
    shapes = {Dihedral()(image, rng=np.random.default_rng(s))[0].shape for s in range(40)}
    assert shapes == {(1, 4, 6, 5)}
    free = Dihedral(keep_shape=False)
    shapes = {free(image, rng=np.random.default_rng(s))[0].shape for s in range(40)}
    assert shapes == {(1, 4, 6, 5), (1, 6, 4, 5)}


def test_dihedral_refuses_bad_settings():
    with pytest.raises(ValueError):
        Dihedral(flip_axes=(3,))
    with pytest.raises(ValueError):
        Dihedral(p_flip=1.5)


# --- TTA pairing ---------------------------------------------------------------------


def test_tta_flip_sets_pair_with_the_settings():
    assert tta_flips(MIRROR_ALL) == ALL_FLIPS
    assert tta_flips(IN_PLANE) == ((), (2,), (3,), (2, 3))
    assert tta_flips(IN_PLANE, tensor_dims=False) == ((), (0,), (1,), (0, 1))
    assert tta_flips(Dihedral(flip_axes=(), rot90=True)) == ((), (2, 3))
    assert tta_flips(Dihedral(flip_axes=(2,), rot90=False)) == ((), (4,))
    assert tta_flips(Dihedral(flip_axes=(0,), rot90=True)) == ((), (2,), (3,), (2, 3))
    assert tta_flips(None) == ((),)


@pytest.mark.parametrize("augmentation", [IN_PLANE, MIRROR_ALL, Dihedral(flip_axes=(0,), rot90=False),
                                          Dihedral(flip_axes=(1, 2), rot90=True)])
def test_tta_flips_are_exactly_the_flips_training_produces(augmentation):
    """Empirically: the pure flips among many drawn transforms of a fully asymmetric volume."""
    image = np.random.default_rng(0).normal(size=(1, 5, 5, 6))
    flipped = {apply_dihedral(image, f, 0).tobytes(): f for f in FLIP_SETS}
    produced = set()
    for seed in range(400):
        out, _ = augmentation(image, rng=np.random.default_rng(seed))
        if out.tobytes() in flipped:
            produced.add(flipped[out.tobytes()])
    assert tuple(sorted(produced, key=lambda c: (len(c), c))) == tta_flips(augmentation, tensor_dims=False)


def test_make_dihedral_chooses_the_setting_and_its_tta():
    assert make_dihedral() == IN_PLANE and make_dihedral(mirror_all=True) == MIRROR_ALL
    assert tta_flips(make_strong_augmentation(mirror_all=True)) == ALL_FLIPS
    assert tta_flips(make_strong_augmentation()) == tta_flips(IN_PLANE)
    assert tta_flips(StrongAugmentation(dihedral=None)) == ((),)


# --- stronger augmentation -----------------------------------------------------------

SPATIAL_ONLY = dict(p_gamma=0, p_brightness_contrast=0, p_noise=0, dihedral=None)
NO_SPATIAL = dict(p_rotation=0, p_scale=0, p_elastic=0, dihedral=None)


def block_patch(shape=(4, 40, 44, 36), seed=0):
    """Brain (noise in an ellipsoid, 0 outside), an off-centre labelled block, 5 in channel 0; labels 0..3."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[1:]], indexing="ij")
    brain = sum(g**2 for g in grid) < 0.9
    image = (rng.normal(size=shape) * brain).astype(np.float32)
    labels = np.zeros(shape[1:], np.uint8)
    image[0] = 0
    labels[8:18, 12:26, 20:28] = 2
    image[0, 8:18, 12:26, 20:28] = 5
    labels[22:26, 20:24, 10:14] = 1
    labels[24:28, 28:30, 14:18] = 3
    return image, labels


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_sampling_axes_match_numpy_indexing():
    """A constant displacement of +1 voxel along one axis reads the next voxel along that axis only."""
    image = np.random.default_rng(1).normal(size=(2, 6, 7, 8)).astype(np.float32)
    labels = np.random.default_rng(2).integers(0, 4, size=(6, 7, 8)).astype(np.uint8)
    for axis in range(3):
        shift = np.zeros((3, 2, 2, 2))
        shift[axis] = 1.0
        out, out_labels = resample_torch(image, labels, sampling_grid(image.shape[1:], None, shift))
        inside = [slice(None)] * 3
        inside[axis] = slice(0, -1)
        source = [slice(None)] * 3
        source[axis] = slice(1, None)
        np.testing.assert_allclose(out[(slice(None), *inside)], image[(slice(None), *source)], atol=1e-5)
        np.testing.assert_array_equal(out_labels[tuple(inside)], labels[tuple(source)])
        last = [slice(None)] * 3
        last[axis] = -1
        assert not out[(slice(None), *last)].any() and not out_labels[tuple(last)].any()  # 0 outside


def test_a_quarter_turn_about_z_equals_rot90():
    image = np.random.default_rng(3).normal(size=(2, 9, 9, 5)).astype(np.float32)
    labels = np.random.default_rng(4).integers(0, 4, size=(9, 9, 5)).astype(np.uint8)
    quarter = np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]])  # source = c + R (p - c)
    out, out_labels = resample_torch(image, labels, sampling_grid(image.shape[1:], quarter))
    np.testing.assert_allclose(out, np.rot90(image, 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_array_equal(out_labels, np.rot90(labels, 1, axes=(0, 1)))


def test_resampling_matches_scipy_map_coordinates():
    import scipy.ndimage as ndi

    aug = StrongAugmentation(**SPATIAL_ONLY, p_rotation=1, p_scale=1, p_elastic=1)
    image, labels = block_patch()
    matrix, displacements = aug.draw_spatial(np.random.default_rng(0), image.shape[1:])
    coords = sampling_grid(image.shape[1:], matrix, displacements)
    out, out_labels = resample_torch(image, labels, coords)
    expected = np.stack([ndi.map_coordinates(c, coords, order=1, mode="constant", cval=0) for c in image])
    np.testing.assert_allclose(out, expected, atol=1e-4)
    expected_labels = ndi.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
    assert np.mean(out_labels == expected_labels) > 0.999  # nearest: ties at exact .5 may round either way


@pytest.mark.parametrize("part", ["rotation", "scale", "elastic", "all"])
def test_spatial_transforms_keep_image_and_labels_aligned(part):
    on = {"rotation": dict(p_rotation=1), "scale": dict(p_scale=1), "elastic": dict(p_elastic=1),
          "all": dict(p_rotation=1, p_scale=1, p_elastic=1)}[part]
    aug = StrongAugmentation(**{**SPATIAL_ONLY, **on}, rotation_degrees=(15, 15, 15), elastic_displacement=3)
    image, labels = block_patch()
    for seed in range(4):
        out, out_labels = aug(image, labels, rng=np.random.default_rng(seed))
        assert out.shape == image.shape and out_labels.shape == labels.shape
        assert out_labels.dtype == np.uint8 and set(np.unique(out_labels)) <= {0, 1, 2, 3}
        assert not np.array_equal(out_labels, labels)  # it did move something
        assert dice(out[0] > 2.5, out_labels == 2) > 0.95
        assert dice(out_labels == 2, labels == 2) > 0.3  # a small transform, not a scramble


def test_rotations_are_3d_and_move_labels_through_the_plane():
    aug = StrongAugmentation(**SPATIAL_ONLY, p_rotation=1, rotation_degrees=(15, 15, 0))
    image, labels = block_patch()
    z_slices = set(np.flatnonzero((labels == 2).any(axis=(0, 1))))
    moved = [set(np.flatnonzero((aug(image, labels, rng=np.random.default_rng(s))[1] == 2).any(axis=(0, 1))))
             != z_slices for s in range(5)]
    assert any(moved)


def test_a_155_slice_crop_passes_the_strong_augmentation():
    image, labels = block_patch((4, 64, 64, 155))
    aug = make_strong_augmentation(mirror_all=True, p_spatial=1, p_intensity=1, p_noise=1)
    out, out_labels = aug(image, labels, rng=np.random.default_rng(0))
    assert out.shape == (4, 64, 64, 155) and out.dtype == np.float32 and np.isfinite(out).all()
    assert out_labels.shape == (64, 64, 155) and out_labels.dtype == np.uint8
    assert set(np.unique(out_labels)) <= {0, 1, 2, 3} and 2 in out_labels


def test_intensity_stays_in_the_brain_and_leaves_labels_alone():
    image, labels = block_patch()
    brain = np.any(image != 0, axis=0)
    aug = StrongAugmentation(**NO_SPATIAL, p_gamma=1, p_brightness_contrast=1, p_noise=1)
    out, out_labels = aug(image, labels, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out_labels, labels)
    assert not out[:, ~brain].any()  # background exactly 0 still
    assert np.all(np.abs(out[:, brain] - image[:, brain]).mean(axis=1) > 0)


def test_gamma_keeps_each_channels_brain_mean_and_std():
    image, labels = block_patch()
    brain = np.any(image != 0, axis=0)
    aug = StrongAugmentation(**NO_SPATIAL, p_gamma=1, gamma=(0.5, 0.6), p_brightness_contrast=0, p_noise=0)
    out, _ = aug(image, labels, rng=np.random.default_rng(0))
    for c in range(4):
        before, after = image[c][brain], out[c][brain]
        assert after.mean() == pytest.approx(before.mean(), abs=1e-4)
        assert after.std() == pytest.approx(before.std(), rel=1e-4)
        assert c == 0 or not np.allclose(before, after)  # channel 0 has two levels: a gamma keeps them
        assert np.all(np.diff(after[np.argsort(before)]) >= -1e-5)  # monotone: the order of intensities stays


def test_contrast_and_brightness_are_affine_per_channel_within_the_ranges():
    image, labels = block_patch()
    brain = np.any(image != 0, axis=0)
    aug = StrongAugmentation(**NO_SPATIAL, p_gamma=0, p_brightness_contrast=1, p_noise=0)
    factors = set()
    for seed in range(3):
        out, _ = aug(image, labels, rng=np.random.default_rng(seed))
        for c in range(1, 4):
            slope, intercept = np.polyfit(image[c][brain], out[c][brain], 1)
            np.testing.assert_allclose(out[c][brain], slope * image[c][brain] + intercept, atol=1e-4)
            assert 0.9 <= slope <= 1.1 and -0.1 <= intercept <= 0.1
            factors.add(round(slope, 6))
    assert len(factors) == 9  # a factor per channel and draw


def test_noise_has_the_drawn_standard_deviation():
    image, labels = block_patch()
    brain = np.any(image != 0, axis=0)
    aug = StrongAugmentation(**NO_SPATIAL, p_gamma=0, p_brightness_contrast=0, p_noise=1,
                             noise_std=(0.2, 0.2))
    out, _ = aug(image, labels, rng=np.random.default_rng(0))
    difference = (out - image)[:, brain]
    assert difference.std() == pytest.approx(0.2, rel=0.05) and abs(difference.mean()) < 0.01


def test_strong_augmentation_is_deterministic_and_leaves_its_inputs_alone():
    image, labels = block_patch()
    kept = image.copy(), labels.copy()
    aug = make_strong_augmentation(mirror_all=True, p_spatial=0.7, p_intensity=0.7, p_noise=0.5)
    first = [aug(image, labels, rng=np.random.default_rng([3, i])) for i in range(6)]
    again = [aug(image, labels, rng=np.random.default_rng([3, i])) for i in range(6)]
    for (a, al), (b, bl) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(al, bl)
    assert len({a.tobytes() for a, _ in first}) == 6
    np.testing.assert_array_equal(image, kept[0])
    np.testing.assert_array_equal(labels, kept[1])


def test_nothing_firing_is_the_identity():
    image, labels = block_patch()
    aug = StrongAugmentation(**NO_SPATIAL, p_gamma=0, p_brightness_contrast=0, p_noise=0)
    out, out_labels = aug(image, labels, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(out_labels, labels)
    assert out is not image


def test_strong_augmentation_refuses_bad_settings():
    with pytest.raises(ValueError):
        StrongAugmentation(p_noise=2)
    with pytest.raises(ValueError):
        StrongAugmentation(scale=(0.0, 1.1))
    with pytest.raises(ValueError):
        StrongAugmentation(elastic_control_points=1)


def test_augmentations_travel_to_loader_workers():
    import pickle

    image, labels = block_patch()
    for aug in (MIRROR_ALL, make_strong_augmentation(p_spatial=1, p_intensity=1)):
        copy = pickle.loads(pickle.dumps(aug))
        assert copy == aug
        a = aug(image, labels, rng=np.random.default_rng(0))
        b = copy(image, labels, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
