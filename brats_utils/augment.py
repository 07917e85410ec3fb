"""3D augmentation of ``[C, X, Y, Z]`` patches with ``[X, Y, Z]`` labels, in numpy (and torch), any depth.

DIHEDRAL_PLACEHOLDER
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
    return np.ascontiguousarray(out)


def _matrix(flips: Sequence[int], k: int) -> np.ndarray:
    """The signed permutation (3x3 integer matrix) of ``apply_dihedral(., flips, k)`` on voxel offsets."""
    flip = np.diag([-1 if a in flips else 1 for a in SPATIAL_AXES])
    # np.rot90(m, axes=(0, 1)) maps the element at (i, j) to (n - 1 - j, i): the offset (a, b) -> (-b, a)
    quarter = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    return np.linalg.matrix_power(quarter, k % 4) @ flip


def tta_flips(augmentation: Dihedral | None, *, tensor_dims: bool = True) -> tuple[tuple[int, ...], ...]:
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
    lexicographic, the identity ``()`` first.
    """
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
