"""The brain of a phantom: nilearn's MNI152 tissue maps placed on the BraTS grid, unique per case.

The template (:func:`mni_template`: brain mask, white and grey matter, CSF, the ventricles'
neighbourhood, the sites where a tumour may start) is loaded and prepared once per process and
low-passed once per grid size (:func:`template_maps`); :func:`case_geometry` is one case's random
affine and smooth deformation on the brain's bounding box. :func:`smooth_field` (a sum of
low-frequency cosines, evaluated separably) is the random field every part of a phantom draws from.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from brats_utils.labels import Shape3D

#: The real volumes' grid (1 mm voxels); smaller synthetic grids resample the same anatomy.
BRATS_SHAPE: Shape3D = (240, 240, 155)


#: The template is shrunk by this factor onto the BraTS grid: the MNI brain (145 x 181 x 155 mm with
#: the brain stem) then has about the extent of a BraTS brain in SRI24 space.
_TEMPLATE_SCALE = 0.9
#: Where the brain's bounding-box centre sits on the BraTS grid (voxel coordinates at 1 mm).
_BRAIN_CENTRE = np.array([119.5, 119.5, 75.0])


def _cosine_basis(n: int, k: int) -> np.ndarray:
    """``[n, k]`` matrix of the first ``k`` DCT-II cosines sampled on ``n`` points."""
    i = (np.arange(n, dtype=np.float32) + 0.5) / n
    return np.cos(np.pi * i[:, None] * np.arange(k, dtype=np.float32)[None, :]).astype(np.float32)


def smooth_field(
    shape: Shape3D, rng: np.random.Generator, frequencies: int = 4, *, amplitude: float = 1.0,
    offset: float = 0.0,
) -> np.ndarray:
    """A smooth random 3D field ``offset + amplitude * f`` (float32, ``shape``).

    ``f`` has zero mean and unit root-mean-square: a sum of the lowest ``frequencies``
    cosines per axis with random coefficients decaying with frequency, evaluated separably
    (three small matrix products instead of a 3D interpolation). Scaling and offset are folded
    into the coefficients, so they cost nothing.
    """
    k = frequencies
    freq = np.add.outer(np.add.outer(np.arange(k), np.arange(k)), np.arange(k))
    coeff = rng.standard_normal((k, k, k)) / (1.0 + freq) ** 1.5
    coeff[0, 0, 0] = 0.0
    # mean of cos^2 over the grid is 1 for the constant and 1/2 for every other cosine
    weight = np.where(np.arange(k) == 0, 1.0, 0.5)
    power = np.einsum("abc,a,b,c->", coeff**2, weight, weight, weight)
    coeff *= amplitude / np.sqrt(power)
    coeff[0, 0, 0] = offset
    coeff = coeff.astype(np.float32)
    bx, by, bz = (_cosine_basis(n, k) for n in shape)
    field = np.einsum("abc,xa->xbc", coeff, bx)
    field = np.einsum("xbc,yb->xyc", field, by)
    return (field.reshape(-1, k) @ bz.T).reshape(shape)


def ramp(x: np.ndarray) -> np.ndarray:
    """Soft step from 0 to 1 over ``x`` in [-0.5, 0.5]: partial-volume edges, cheaply."""
    return np.clip(x + 0.5, 0.0, 1.0)


# --- the template ---------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """MNI152 (2009, 1 mm) tissue maps in LPS voxel order, ready to be resampled.

    ``maps`` is ``[5, X, Y, Z]`` float32: the brain mask, white matter, grey matter, CSF (the mask
    minus both) and ``near_ventricles`` (1 inside the lateral ventricles, decaying over a few mm
    around them).
    ``box`` is the brain's bounding box (``[lo, hi]`` voxel corners) and ``tumour_sites`` deep
    white-matter voxels where a tumour may start.
    """

    maps: np.ndarray
    box: np.ndarray
    tumour_sites: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        """The centre of the brain's bounding box (voxels)."""
        return self.box.mean(axis=0)


def _load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1, grey- and white-matter maps of nilearn's MNI152 2009 templates, float32, LPS order."""
    try:
        from nilearn import datasets
    except ImportError as err:
        raise ImportError("the synthetic brains are built from nilearn's MNI152 templates: "
                          "install it with  pip install 'nilearn>=0.10'") from err
    volumes = []
    for load in (datasets.load_mni152_template, datasets.load_mni152_gm_template,
                 datasets.load_mni152_wm_template):
        image = nib.as_closest_canonical(load(resolution=1))  # RAS
        volumes.append(np.asarray(image.get_fdata(dtype=np.float32))[::-1, ::-1].copy())  # RAS -> LPS
    return tuple(volumes)


@functools.lru_cache(maxsize=1)
def mni_template() -> Template:
    """The prepared template, loaded once per process (a few seconds, no network)."""
    t1, gm, wm = _load_mni152()
    mask = t1 > 0
    gm *= mask
    wm *= mask
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    depth = ndimage.distance_transform_edt(mask)
    # lateral ventricles: large CSF components deep inside the brain, near the midline
    box = np.array([(i.min(), i.max()) for i in np.nonzero(mask)], dtype=np.float64).T
    centre = box.mean(axis=0)
    deep_csf = (csf > 0.6) & (depth > 10)
    deep_csf[: int(centre[0]) - 30] = False
    deep_csf[int(centre[0]) + 30:] = False
    components, n = ndimage.label(deep_csf)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    ventricles = np.isin(components, np.flatnonzero(sizes > 2000))
    near_ventricles = np.exp(-ndimage.distance_transform_edt(~ventricles) / 4.0).astype(np.float32)
    maps = np.stack([mask.astype(np.float32), wm, gm, csf, near_ventricles * mask])
    sites = np.argwhere((wm > 0.7) & (depth > 18) & (near_ventricles < 0.05))[::97].astype(np.float64)
    return Template(maps, box, sites)


@functools.lru_cache(maxsize=4)
def template_maps(zoom: tuple[float, ...]) -> np.ndarray:
    """The template's maps low-passed for a grid of ``zoom`` mm voxels (no aliasing on small grids)."""
    maps = mni_template().maps
    sigma = [max(0.0, 0.5 * (z / _TEMPLATE_SCALE - 1.0)) for z in zoom]
    if max(sigma) < 0.2:
        return maps
    return np.stack([ndimage.gaussian_filter(m, sigma, mode="constant") for m in maps])


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix for small angles (radians) about x, y and z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def linear_on_grid(row: np.ndarray, offsets: Sequence[np.ndarray]) -> np.ndarray:
    """``row . (x, y, z)`` on the grid whose per-axis offsets are ``offsets`` (a 3D array)."""
    x, y, z = (o.astype(np.float32) for o in offsets)
    return row[0] * x[:, None, None] + row[1] * y[None, :, None] + row[2] * z[None, None, :]


@dataclass(frozen=True)
class Geometry:
    """Where one case's output voxels sample the template.

    ``coords`` ``[3, *box]`` are template voxel coordinates for the output voxels in ``box``
    (slices of the output grid); ``mm`` are the BraTS-grid positions (mm) of the box's voxels
    along each axis; ``forward`` maps a template offset from its centre to millimetres and
    ``origin`` is where the template centre lands (mm).
    """

    box: tuple[slice, slice, slice]
    mm: list[np.ndarray]
    coords: np.ndarray
    forward: np.ndarray
    origin: np.ndarray

    def to_mm(self, voxel: np.ndarray) -> np.ndarray:
        """A template voxel's position on the BraTS grid (mm), ignoring the smooth deformation."""
        return self.origin + self.forward @ (voxel - mni_template().centre)


def case_geometry(shape: Shape3D, rng: np.random.Generator, deform: bool) -> Geometry:
    """The case's random affine and smooth deformation, on the brain's bounding box."""
    template = mni_template()
    zoom = np.array(BRATS_SHAPE, dtype=np.float64) / np.array(shape)
    if deform:
        rotation = _rotation(np.deg2rad(rng.uniform(-4.0, 4.0, size=3)))
        scale = rng.uniform(0.9, 1.1) * rng.uniform(0.97, 1.03, size=3)
        shift = rng.uniform(-4.0, 4.0, size=3)
    else:
        rotation, scale, shift = np.eye(3), np.ones(3), np.zeros(3)
    forward = _TEMPLATE_SCALE * scale[:, None] * rotation
    origin = _BRAIN_CENTRE + shift
    inverse = np.linalg.inv(forward)
    # the output box: the template's brain box mapped onto the grid, plus room for the deformation
    corners = np.array(np.meshgrid(*template.box.T, indexing="ij")).reshape(3, -1)
    corners_mm = origin[:, None] + forward @ (corners - template.centre[:, None])
    margin = 8.0
    lo = np.floor((corners_mm.min(axis=1) - margin + 0.5) / zoom - 0.5).astype(int)
    hi = np.ceil((corners_mm.max(axis=1) + margin + 0.5) / zoom - 0.5).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
    box = tuple(slice(a, b) for a, b in zip(lo.tolist(), hi.tolist(), strict=True))
    box_shape = tuple((hi - lo).tolist())
    mm = [((np.arange(a, b) + 0.5) * z - 0.5) for a, b, z in zip(lo, hi, zoom, strict=True)]
    offsets = [m - o for m, o in zip(mm, origin, strict=True)]
    coords = np.empty((3, *box_shape), dtype=np.float32)
    for i in range(3):
        coords[i] = template.centre[i] + linear_on_grid(inverse[i], offsets)
        if deform:
            coords[i] += smooth_field(box_shape, rng, 5, amplitude=2.0)
    return Geometry(box, mm, coords, forward, origin)
