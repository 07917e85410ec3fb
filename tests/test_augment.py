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
    apply_dihedral,
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
