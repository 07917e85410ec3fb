"""3D augmentation of ``[C, X, Y, Z]`` patches with ``[X, Y, Z]`` labels, in numpy and torch, at any depth.

Every transform is called as ``transform(image, labels, rng=np.random.Generator)`` and
returns new ``(image, labels)`` arrays; all its randomness comes from ``rng``, so
``PatchDataset``'s per-item ``default_rng([seed, index])`` makes it reproducible.

**Flips and quarter turns** (:class:`Dihedral`, :func:`make_dihedral`): ``np.flip`` and
``np.rot90``, so every voxel is copied exactly and there is no channel limit. The
albumentations path it replaces passed the z slices as OpenCV channels, and OpenCV 5
(what a fresh ``pip install`` brings) refuses more than 128 of them in ``cv2.flip``: every
crop deeper than 128 slices crashed. Two settings:

=============================  =========================  ==================================
setting                        training draws             consistent TTA flips
=============================  =========================  ==================================
:data:`IN_PLANE` (the paper)   flip x, flip y, rot90 X-Y  the 4 subsets of {x, y}
:data:`MIRROR_ALL`             flip x, y, z, rot90 X-Y    all 8 (``inference.ALL_FLIPS``)
=============================  =========================  ==================================

:func:`tta_flips` computes the set for any setting (in ``[B, C, X, Y, Z]`` dims, the
form ``predict_volume`` takes), so training and test-time augmentation can be paired:
with :data:`IN_PLANE` the 8-flip TTA feeds the network z-flipped brains it never saw.

**Stronger augmentation** (:class:`StrongAugmentation`, :func:`make_strong_augmentation`),
the paper's future work: 3D rotation, scaling and elastic deformation composed into one
sampling grid and resampled once (image linear, labels nearest, so they stay labels), then
gamma, per-channel contrast and brightness, and Gaussian noise inside the brain.

Why torch's ``grid_sample`` and not a library: ``tests/benchmarks/bench_augment.py``
runs comparable pipelines (rotation, scaling, elastic, gamma, contrast/brightness, noise,
all firing) side by side on a 4 x 128 x 128 x 128 float32 patch, one torch thread as in a
loader worker (2-core machine; three runs gave the same order):

====================================  =========  ========  ==========================================
candidate                             patches/s  vs torch  correctness on [C, X, Y, Z]
====================================  =========  ========  ==========================================
torch ``grid_sample`` (this module)   2.03       1.00x     labels ok, block/image Dice 0.995, 3D
``scipy.ndimage.map_coordinates``     0.98       0.48x     identical output (same grid), 3D
TorchIO 1.2.1 (SimpleITK)             0.13       0.06x     labels ok (cast: its LabelMap comes back
                                                           float32), Dice 0.981 (two resamplings), 3D
albumentations 2.0.8                  1.12       0.55x     wrong: clips float images to [0, 1] and
                                                           its gamma gives NaN on negative z-scores
                                                           (Dice 0); spatial in-plane only
====================================  =========  ========  ==========================================

TorchIO is the field's 3D library and is correct, but it is 16x slower here (SimpleITK
resamplers, affine and elastic one after the other), adds about 260 MB (SimpleITK) and
seven more packages (it leaves torch alone: it asks for ``torch>=1.9``), and draws from
torch's global generator instead of an explicit ``rng``. albumentations 2.0.8 has no 3D
rotation or 3D elastic field and needs two full transposes (its ``volume`` target is
depth first, channels last; with only ``volume=`` its intensity transforms raise
``KeyError: 'images'``). scipy gives the same result as torch at half the speed. So the
resampling is torch's (already a dependency), on a grid built here; no new dependency.
The flips: numpy 92 (in-plane) and 71 (all three axes) patches/s at depth 128, 73 and 55
at depth 155; albumentations 131 at depth 128 and an OpenCV error at 155. The default
strong pipeline (:class:`StrongAugmentation` defaults) ran at 2.5 patches/s per worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from brats_utils.errors import ProfileError

SPATIAL_AXES = (0, 1, 2)  # x, y, z of the labels; the image's are these + 1


# --- dihedral: flips and rot90, exact, no channel limit --------------------------------


@dataclass(frozen=True)
class Dihedral:
    """Random flips along ``flip_axes`` (each with probability ``p_flip``) and an in-plane rot90.

    ``flip_axes`` are spatial axes (0 = x, 1 = y, 2 = z). Each axis gets its own uniform
    draw, and three are drawn whatever ``flip_axes`` holds, so for one seed the
    :data:`IN_PLANE` and :data:`MIRROR_ALL` settings make the same x and y decisions (and
    the same rotation); the second one only adds z. With ``rot90`` a quarter-turn count
    ``k`` in 0..3 (uniform) rotates the X-Y plane (``np.rot90(..., axes=(x, y))``, after
    the flips). A non-square X-Y plane has its X and Y sizes swapped by an odd ``k``;
    ``keep_shape=True`` (the default) then uses ``k - 1`` (a half turn or none) so the
    shape never changes. Image and labels move together, by ``np.flip``/``np.rot90``:
    every voxel is copied, none is interpolated.

    Which test-time flips this is consistent with (the flips whose flipped brains the
    network saw in training): :func:`tta_flips`.
    """

    flip_axes: tuple[int, ...] = (0, 1)
    rot90: bool = True
    p_flip: float = 0.5
    keep_shape: bool = True

    def __post_init__(self) -> None:
        axes = tuple(sorted({int(a) for a in self.flip_axes}))
        if any(a not in SPATIAL_AXES for a in axes):
            raise ValueError(f"flip_axes must be spatial axes among {SPATIAL_AXES}, got {self.flip_axes}")
        if not 0.0 <= self.p_flip <= 1.0:
            raise ValueError(f"p_flip must be in [0, 1], got {self.p_flip}")
        object.__setattr__(self, "flip_axes", axes)

    def draw(self, rng: np.random.Generator,
             shape: Sequence[int] | None = None) -> tuple[tuple[int, ...], int]:
        """The random parameters: (spatial axes to flip, quarter turns ``k``) for a patch of ``shape``."""
        u = rng.random(3)  # one draw per spatial axis, always three: settings share the stream
        flips = tuple(a for a in self.flip_axes if u[a] < self.p_flip)
        k = int(rng.integers(4)) if self.rot90 else 0
        if self.keep_shape and k % 2 and shape is not None and shape[-3] != shape[-2]:
            k -= 1
        return flips, k

    def __call__(self, image: np.ndarray, labels: np.ndarray | None = None, *,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """Transform image ``[C, X, Y, Z]`` (or ``[X, Y, Z]``) and labels ``[X, Y, Z]`` with one draw."""
        flips, k = self.draw(rng, image.shape)
        return apply_dihedral(image, flips, k), (None if labels is None else apply_dihedral(labels, flips, k))


#: The paper's setting: flip x, flip y, rot90 in the axial plane. TTA: the 4 in-plane flips.
IN_PLANE = Dihedral(flip_axes=(0, 1), rot90=True)
#: Mirror along all three axes, plus rot90 in the axial plane. TTA: all 8 flips.
MIRROR_ALL = Dihedral(flip_axes=(0, 1, 2), rot90=True)


def apply_dihedral(array: np.ndarray, flips: Sequence[int], k: int) -> np.ndarray:
    """Flip the spatial axes ``flips`` (0..2 of the last three axes), then rotate X-Y by ``k`` quarter turns.

    Works on ``[X, Y, Z]`` and ``[C, X, Y, Z]`` alike (the last three axes are spatial);
    returns a C-contiguous copy.
    """
    offset = array.ndim - 3
    out = array
    if flips:
        out = np.flip(out, axis=tuple(offset + a for a in flips))
    if k % 4:
        out = np.rot90(out, k=k, axes=(offset, offset + 1))
    return np.array(out, order="C")  # a copy even for the identity: the caller may write into it


def _matrix(flips: Sequence[int], k: int) -> np.ndarray:
    """The signed permutation (3x3 integer matrix) of ``apply_dihedral(., flips, k)`` on voxel offsets."""
    flip = np.diag([-1 if a in flips else 1 for a in SPATIAL_AXES])
    # np.rot90(m, axes=(0, 1)) maps the element at (i, j) to (n - 1 - j, i): the offset (a, b) -> (-b, a)
    quarter = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    return np.linalg.matrix_power(quarter, k % 4) @ flip


def tta_flips(augmentation: Dihedral | StrongAugmentation | None, *,
              tensor_dims: bool = True) -> tuple[tuple[int, ...], ...]:
    """The test-time flip set consistent with a training ``augmentation``.

    A flip (a set of axes) is consistent when the training transform produced exactly
    that transform of the brain: these inputs are the ones the network learnt to segment.
    The answer is every pure flip among the transforms :class:`Dihedral` can draw: the
    subsets of ``flip_axes``, and with ``rot90`` each of them composed with the half turn
    (which flips x and y together). So :data:`IN_PLANE` gives the 4 flips of x and y,
    :data:`MIRROR_ALL` gives all 8 (``inference.ALL_FLIPS``), ``Dihedral(flip_axes=(),
    rot90=True)`` gives the identity and the x-y flip, and ``None`` (no augmentation)
    only the identity. With ``tensor_dims`` (the default) the axes are numbered as dims of
    a ``[B, C, X, Y, Z]`` batch (x = 2), the form ``inference.predict_volume`` uses;
    otherwise as spatial axes (x = 0). The order is that of ``ALL_FLIPS``: by size, then
    lexicographic, the identity ``()`` first. A :class:`StrongAugmentation` counts by its
    ``dihedral`` (its small rotations never produce an exact flip).
    """
    if isinstance(augmentation, StrongAugmentation):
        augmentation = augmentation.dihedral
    if augmentation is None:
        found = {()}
    else:
        subsets = [c for n in range(len(augmentation.flip_axes) + 1)
                   for c in itertools.combinations(augmentation.flip_axes, n)]
        turns = range(4) if augmentation.rot90 else (0,)
        found = set()
        for flips, k in itertools.product(subsets, turns):
            matrix = _matrix(flips, k)
            if np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0:  # diagonal: a pure flip
                found.add(tuple(a for a in SPATIAL_AXES if matrix[a, a] < 0))
    shift = 2 if tensor_dims else 0
    ordered = sorted(found, key=lambda c: (len(c), c))
    return tuple(tuple(a + shift for a in c) for c in ordered)


def make_dihedral(*, mirror_all: bool = False, rot90: bool = True, p_flip: float = 0.5) -> Dihedral:
    """The flips-and-rot90 augmentation from explicit settings.

    ``mirror_all=False``: flip x and y (the paper's in-plane setting), consistent with
    the TTA flips ``tta_flips(...)`` = the 4 subsets of {x, y}. ``mirror_all=True``: flip
    x, y and z, consistent with all 8 flips (``inference.ALL_FLIPS``, what
    ``predict_volume(tta=True)`` uses).
    """
    return Dihedral(flip_axes=(0, 1, 2) if mirror_all else (0, 1), rot90=rot90, p_flip=p_flip)


# --- stronger augmentation: 3D spatial (one resampling) and intensity ---------------------


def _rotation(angles_rad: Sequence[float]) -> np.ndarray:
    """3x3 rotation about x, then y, then z (angles in radians)."""
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sampling_grid(shape: Sequence[int], matrix: np.ndarray | None = None,
                  control_displacements: np.ndarray | None = None) -> np.ndarray:
    """Source voxel coordinates ``[3, X, Y, Z]`` (float32) of every output voxel of a patch of ``shape``.

    ``source = centre + matrix @ (p - centre) + d(p)``: ``matrix`` (3x3, default identity)
    rotates/scales about the patch centre; ``control_displacements`` ``[3, n, n, n]`` (in
    voxels) are displacements on a coarse control grid spanning the patch, interpolated
    trilinearly to every voxel (an elastic deformation; with displacements below half
    the control spacing it cannot fold). Shared by every backend, so they differ only in
    how they resample.
    """
    import torch
    import torch.nn.functional as F

    shape = tuple(int(s) for s in shape)
    centre = (np.asarray(shape, np.float32) - 1) / 2
    axes = [np.arange(n, dtype=np.float32) - c for n, c in zip(shape, centre, strict=True)]
    matrix = np.eye(3, dtype=np.float32) if matrix is None else np.asarray(matrix, np.float32)
    # (matrix @ offset)[i] = sum_j matrix[i, j] * axes[j]: broadcast instead of a full meshgrid product
    coords = np.empty((3, *shape), np.float32)
    for i in range(3):
        coords[i] = (matrix[i, 0] * axes[0][:, None, None] + matrix[i, 1] * axes[1][None, :, None]
                     + matrix[i, 2] * axes[2][None, None, :] + centre[i])
    if control_displacements is not None:
        coarse = torch.from_numpy(np.ascontiguousarray(control_displacements, dtype=np.float32))[None]
        coords += F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0].numpy()
    return coords


def resample_torch(image: np.ndarray, labels: np.ndarray | None,
                   coords: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample image ``[C, X, Y, Z]`` (linear) and labels ``[X, Y, Z]`` (nearest) at ``coords``; 0 outside.

    With ``torch.nn.functional.grid_sample``: its grid holds ``(z, y, x)`` normalised to
    [-1, 1] (``align_corners=True``: -1 and 1 are the centres of the first and last voxel).
    """
    import torch
    import torch.nn.functional as F

    shape = image.shape[-3:]
    scale = np.array([2.0 / max(n - 1, 1) for n in shape], np.float32)
    grid = np.stack([coords[axis] * scale[axis] - 1.0 for axis in (2, 1, 0)], axis=-1)  # [X, Y, Z, (z, y, x)]
    grid = torch.from_numpy(grid)[None]
    out = F.grid_sample(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None], grid,
                        mode="bilinear", padding_mode="zeros", align_corners=True)[0].numpy()
    if labels is None:
        return out, None
    lab = torch.from_numpy(labels.astype(np.float32))[None, None]
    lab = F.grid_sample(lab, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
    return out, lab.numpy().astype(labels.dtype)


@dataclass(frozen=True)
class StrongAugmentation:
    """Flips/rot90, then 3D rotation, scaling and elastic deformation in one resampling, then intensity.

    Spatial (each with its own probability): rotation about each axis by up to
    ``rotation_degrees`` (x, y, z), isotropic scaling by a factor in ``scale``, elastic
    deformation (random displacements up to ``elastic_displacement`` voxels on an
    ``elastic_control_points``\\ :sup:`3` grid). Whatever fires is composed into one
    sampling grid (:func:`sampling_grid`) and the patch is resampled once with torch's
    ``grid_sample``: trilinear for the image, nearest-neighbour for the labels (so they stay
    in the label set), 0 outside (the background value after preprocessing).

    Intensity, per modality, only inside the brain (voxels where any modality is non-zero;
    the background stays exactly 0 as preprocessing left it): gamma (``gamma`` range, drawn
    log-uniformly; applied to the brain's min-max range and then re-standardised to the
    channel's mean and std, so the z-score survives), contrast (multiplied by a factor in
    ``multiplicative``) and brightness (plus an offset in ``additive``, z-score units),
    Gaussian noise with a standard deviation drawn in ``noise_std``.

    Call with ``(image [C, X, Y, Z], labels [X, Y, Z], rng=np.random.Generator)``; all the
    randomness comes from ``rng``, so a seed fixes the result. Returns new arrays (float32
    image, labels with their dtype); the inputs are not modified.
    """

    dihedral: Dihedral | None = IN_PLANE
    p_rotation: float = 0.2
    rotation_degrees: tuple[float, float, float] = (10.0, 10.0, 15.0)
    p_scale: float = 0.2
    scale: tuple[float, float] = (0.9, 1.1)
    p_elastic: float = 0.2
    elastic_displacement: float = 4.0
    elastic_control_points: int = 5
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_brightness_contrast: float = 0.3
    multiplicative: tuple[float, float] = (0.9, 1.1)
    additive: tuple[float, float] = (-0.1, 0.1)
    p_noise: float = 0.15
    noise_std: tuple[float, float] = (0.0, 0.1)

    def __post_init__(self) -> None:
        for name in ("p_rotation", "p_scale", "p_elastic", "p_gamma", "p_brightness_contrast", "p_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if min(self.scale) <= 0 or min(self.gamma) <= 0:
            raise ValueError(f"scale and gamma ranges must be positive, got {self.scale}, {self.gamma}")
        if self.elastic_control_points < 2:
            raise ValueError(f"elastic_control_points must be >= 2, got {self.elastic_control_points}")

    # spatial ------------------------------------------------------------------------

    def draw_spatial(self, rng: np.random.Generator,
                     shape: Sequence[int]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(3x3 matrix or None, control displacements ``[3, n, n, n]`` or None) for one patch."""
        matrix = None
        if rng.random() < self.p_rotation:
            limits = np.radians(np.asarray(self.rotation_degrees, float))
            matrix = _rotation(rng.uniform(-limits, limits))
        if rng.random() < self.p_scale:
            zoom = rng.uniform(*self.scale)  # > 1 enlarges the brain: sample closer source points
            matrix = (np.eye(3) if matrix is None else matrix) / zoom
        displacements = None
        if rng.random() < self.p_elastic and self.elastic_displacement > 0:
            n = self.elastic_control_points
            displacements = rng.uniform(-self.elastic_displacement, self.elastic_displacement, (3, n, n, n))
        return matrix, displacements

    def spatial(self, image: np.ndarray, labels: np.ndarray | None, *,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """Only the 3D rotation/scaling/elastic part (one resampling, or none when nothing fires)."""
        matrix, displacements = self.draw_spatial(rng, image.shape[-3:])
        if matrix is None and displacements is None:
            return image, labels
        return resample_torch(image, labels, sampling_grid(image.shape[-3:], matrix, displacements))

    # intensity ----------------------------------------------------------------------

    def intensity(self, image: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Only the intensity part, on a float32 ``[C, X, Y, Z]`` image (modified in place and returned)."""
        brain = np.any(image != 0, axis=0)
        if not brain.any():
            return image
        fire = rng.random(3) < (self.p_gamma, self.p_brightness_contrast, self.p_noise)
        if not fire.any():
            return image
        inside = brain.astype(np.float32)  # multiplying by it keeps the background exactly 0
        if fire[0]:  # needs the brain's statistics: gather and scatter that channel's brain voxels
            gammas = np.exp(rng.uniform(*np.log(self.gamma), size=len(image)))
            for channel, g in zip(image, gammas, strict=True):
                v = channel[brain]
                lo, hi, mean, std = v.min(), v.max(), v.mean(), v.std()
                if hi > lo:
                    v = np.power((v - lo) / (hi - lo), g, dtype=np.float32)
                    new_mean, new_std = v.mean(), v.std()
                    channel[brain] = (v - new_mean) * (std / new_std) + mean if new_std > 0 else mean
        if fire[1]:
            factors = rng.uniform(*self.multiplicative, size=len(image)).astype(np.float32)
            offsets = rng.uniform(*self.additive, size=len(image)).astype(np.float32)
            for channel, factor, offset in zip(image, factors, offsets, strict=True):
                channel *= factor
                channel += offset * inside
        if fire[2]:
            noise = rng.standard_normal(image.shape, dtype=np.float32)
            noise *= np.float32(rng.uniform(*self.noise_std))
            noise *= inside
            image += noise
        return image

    def __call__(self, image: np.ndarray, labels: np.ndarray | None = None, *,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        if self.dihedral is not None:
            image, labels = self.dihedral(image, labels, rng=rng)  # copies
        else:
            image = np.array(image, dtype=np.float32)
            labels = None if labels is None else np.array(labels)
        image, labels = self.spatial(image, labels, rng=rng)
        image = self.intensity(np.asarray(image, dtype=np.float32), rng=rng)
        return image, labels


def make_strong_augmentation(*, mirror_all: bool = False,
                             rotation_degrees: float | Sequence[float] = (10, 10, 15),
                             scale: tuple[float, float] = (0.9, 1.1), elastic_displacement: float = 4.0,
                             gamma: tuple[float, float] = (0.7, 1.5),
                             multiplicative: tuple[float, float] = (0.9, 1.1),
                             additive: tuple[float, float] = (-0.1, 0.1),
                             noise_std: tuple[float, float] = (0.0, 0.1),
                             p_spatial: float = 0.2, p_intensity: float = 0.3,
                             p_noise: float = 0.15) -> StrongAugmentation:
    """The stronger augmentation from explicit arguments (see :class:`StrongAugmentation`).

    ``mirror_all`` chooses the flips (:func:`make_dihedral`) and so the consistent TTA
    flip set (``tta_flips(aug.dihedral)``). ``p_spatial`` is the probability of each of
    rotation, scaling and elastic deformation; ``p_intensity`` of gamma and of
    brightness/contrast; a probability of 0 (or a zero range) switches a part off.
    """
    degrees = (rotation_degrees,) * 3 if np.isscalar(rotation_degrees) else tuple(rotation_degrees)
    return StrongAugmentation(
        dihedral=make_dihedral(mirror_all=mirror_all), p_rotation=p_spatial,
        rotation_degrees=tuple(float(d) for d in degrees), p_scale=p_spatial, scale=tuple(scale),
        p_elastic=p_spatial, elastic_displacement=float(elastic_displacement), p_gamma=p_intensity,
        gamma=tuple(gamma), p_brightness_contrast=p_intensity, multiplicative=tuple(multiplicative),
        additive=tuple(additive), p_noise=p_noise, noise_std=tuple(noise_std))


#: The training augmentations by the name a profile's ``augmentation`` gives: each entry builds the
#: transform (None: no augmentation). ``"none"``: the authors' final run; ``"in_plane"``: the paper's
#: flips of x and y and quarter turns in the axial plane (:data:`IN_PLANE`); ``"mirror"``: flips along
#: all three axes as well (:data:`MIRROR_ALL`), consistent with 8-flip test-time augmentation;
#: ``"strong"``: :func:`make_strong_augmentation` on top of ``"mirror"``. Adding one is one entry here.
AUGMENTATIONS: dict[str, Callable[[], Dihedral | StrongAugmentation | None]] = {
    "none": lambda: None,
    "in_plane": lambda: IN_PLANE,
    "mirror": lambda: MIRROR_ALL,
    "strong": lambda: make_strong_augmentation(mirror_all=True),
}


def augmentation_for(name: str) -> Dihedral | StrongAugmentation | None:
    """The transform a profile's ``augmentation`` names (:data:`AUGMENTATIONS`); pair test-time flips
    with :func:`tta_flips` of the result. Raises :class:`~brats_utils.errors.ProfileError` naming the
    known augmentations for an unknown name.
    """
    try:
        build = AUGMENTATIONS[name]
    except KeyError:
        raise ProfileError(f"unknown augmentation {name!r}",
                           expected="one of " + ", ".join(AUGMENTATIONS)) from None
    return build()
