"""Synthetic BraTS 2020: real brain anatomy with hard tumours, written in the exact Kaggle layout.

Without internet (CI, a first look on a laptop) the series runs on this stand-in, and whatever the
project claims is judged on it. It is built to teach the same lessons as the real data, and to be
as hard to segment as the real data is for the reasons the real data is hard:

* **layout**: the folders, file names, CSV files and quirks of the Kaggle copy
  ``awsaf49/brats20-dataset-training-validation`` (uncompressed ``.nii``, int16 images, uint8
  labels, the real LPS affine, validation cases without segmentation, one training segmentation
  misnamed as in case 355, one case stored as float32). ``foreign=True`` writes instead the
  pitfalls of other copies: ``.nii.gz``, a RAS affine, scaled storage, a case whose modalities
  are not co-registered and a segmentation stored as float;
* **anatomy**: a real brain, nilearn's MNI152 (2009) templates (T1, grey- and white-matter
  probability maps; CSF is the brain mask minus both), placed on the BraTS grid (240 x 240 x 155,
  1 mm, LPS, skull-stripped, exactly 0 outside) and made unique per case by a random affine and a
  smooth random deformation. Smaller grids are the same anatomy resampled;
* **contrast**: each modality mixes the tissue fractions with textbook relative intensities
  (T1 white > grey > CSF, T2 CSF > grey > white, FLAIR grey > white with dark CSF) and adds the
  normal structures that look like tumour: white-matter hyperintensities (periventricular caps,
  scattered deep lesions) and, on T1ce, vessels, choroid plexus and dura;
* **tumour**: region volumes drawn from BraTS-like distributions (:func:`draw_volumes`, the
  targets and their source in ``docs/phantoms.md``) and met to a voxel by taking the voxels of
  highest "potential": lobed foci (thresholded smooth random fields), sometimes a satellite
  lesion, oedema that follows white matter and spares cortex, and mass effect that pushes the
  anatomy aside. High-grade cases have necrosis off centre inside an enhancing rim that is
  often incomplete; low-grade cases have no enhancing tumour (some enhance faintly, unlabelled;
  some have a cyst). Each sub-region copies, in all four contrasts at once, a normal tissue it
  is confused with on real scans (oedema: the white-matter hyperintensities; necrosis: CSF;
  enhancement: vessels, plexus, dura), so only shape and context tell them apart
  (:func:`threshold_baseline` and ``tests/benchmarks/bench_voxel_classifier.py`` measure it);
* **acquisition**: Rician noise, a smooth bias field, a per-case intensity scale and offset, and
  a few hot outlier voxels, so that intensity normalisation matters as it does for real scans.

Speed: the template is loaded and prepared once per process (and low-passed once per grid size);
a case then samples the template's brain mask on the brain's bounding box, interpolates four tissue
maps at the brain's voxels only, and does all intensity work on those voxels (a third of the box);
smooth random fields are sums of low-frequency cosines evaluated separably. A full-size case takes
about 1.5 s of CPU time.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from brats_utils.datasets import LAYOUTS, DatasetLayout
from brats_utils.errors import BratsError
from brats_utils.files import remove_stale_siblings, sibling_lock, temporary_sibling
from brats_utils.io import write_volume
from brats_utils.labels import MODALITIES, Shape3D

#: The real volumes' grid (1 mm voxels); smaller synthetic grids resample the same anatomy.
BRATS_SHAPE: Shape3D = (240, 240, 155)

#: Number of training / validation cases of the real release, used to place synthetic
#: cases on the real case numbering (grades, survival rows, the case-355 quirk).
REAL_TRAINING_CASES = 369
REAL_VALIDATION_CASES = 125
#: The real release numbers its cases HGG 001-259, LGG 260-335, HGG 336-369 (293 HGG, 76 LGG).
REAL_LGG_RANGE = range(260, 336)
#: The real training case whose segmentation is misnamed, and the name it has.
QUIRK_CASE = 355
QUIRK_SEG_NAME = "W39_1998.09.19_Segm.nii"

#: Marker written last at the dataset root (outside the Kaggle tree): its presence with the
#: same parameters means the dataset is complete and is not written again.
MARKER_NAME = ".brats_synthetic.json"
#: Recorded in the marker: a dataset written by an older generator is written again.
GENERATOR_VERSION = 3

# Relative intensities (white matter of T1 = 1) per modality, in MODALITIES order. Each tumour tissue
# copies, in all four contrasts at once, a normal tissue or mixture it is confused with on real
# scans (docs/phantoms.md): oedema and the non-enhancing core look like white-matter
# hyperintensities ("hyper": periventricular caps and scattered deep lesions, unlabelled), necrosis
# like CSF, enhancing tumour like the normal structures that enhance on T1ce ("bright": vessels,
# choroid plexus, dura). Only shape and context tell them apart.
_TISSUES = ("wm", "gm", "csf", "oedema", "enhancing", "necrosis", "non_enhancing", "bright", "hyper")
_CONTRAST = np.array(
    [  # wm    gm    csf   oed   enh   nec   net   bright hyper
        [0.60, 0.78, 0.12, 0.94, 0.84, 0.16, 1.00, 0.84, 0.94],  # flair
        [1.00, 0.72, 0.25, 0.64, 0.70, 0.28, 0.58, 0.70, 0.64],  # t1
        [1.00, 0.74, 0.25, 0.66, 1.55, 0.30, 0.60, 1.55, 0.66],  # t1ce
        [0.45, 0.66, 1.35, 1.00, 0.80, 1.25, 1.08, 0.80, 1.00],  # t2
    ],
    dtype=np.float32,
)
_C = {name: i for i, name in enumerate(_TISSUES)}
# Per-case scanner scale: the intensity of white matter, drawn log-uniformly per modality.
_WM_INTENSITY_RANGE = {"flair": (150, 500), "t1": (250, 900), "t1ce": (250, 1300), "t2": (300, 1600)}
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


def _ramp(x: np.ndarray) -> np.ndarray:
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
def _template_maps(zoom: tuple[float, ...]) -> np.ndarray:
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


def _linear(row: np.ndarray, offsets: Sequence[np.ndarray]) -> np.ndarray:
    """``row . (x, y, z)`` on the grid whose per-axis offsets are ``offsets`` (a 3D array)."""
    x, y, z = (o.astype(np.float32) for o in offsets)
    return row[0] * x[:, None, None] + row[1] * y[None, :, None] + row[2] * z[None, None, :]


@dataclass(frozen=True)
class _Geometry:
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


def _geometry(shape: Shape3D, rng: np.random.Generator, deform: bool) -> _Geometry:
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
        coords[i] = template.centre[i] + _linear(inverse[i], offsets)
        if deform:
            coords[i] += smooth_field(box_shape, rng, 5, amplitude=2.0)
    return _Geometry(box, mm, coords, forward, origin)


#: Target region volumes (mL), after the BraTS 2020 training labels (docs/phantoms.md): the whole
#: tumour log-normal with median ``WT_MEDIAN_ML`` and log-sd ``WT_LOG_SD``, kept within ``WT_RANGE_ML``.
WT_MEDIAN_ML = 100.0
WT_LOG_SD = 0.55
WT_RANGE_ML = (20.0, 250.0)
#: The tumour core's share of the whole tumour, high grade (HGG) and low grade (LGG).
TC_SHARE_HGG = (0.2, 0.55)
TC_SHARE_LGG = (0.08, 0.4)
#: The enhancing rim's share of a high-grade core (the rest is necrosis and non-enhancing tumour).
ET_SHARE_OF_TC = (0.45, 0.8)
#: How often a tumour has a small satellite lesion apart from the main mass.
SATELLITE_PROBABILITY = 0.25


@dataclass(frozen=True)
class TumourVolumes:
    """The volumes (mL) a tumour is drawn to have: whole tumour, tumour core, enhancing tumour (0 in LGG)."""

    whole: float
    core: float
    enhancing: float


def draw_volumes(rng: np.random.Generator, has_enhancing: bool) -> TumourVolumes:
    """Region volumes of one tumour, drawn from the BraTS-like target distributions above."""
    whole = float(np.clip(WT_MEDIAN_ML * np.exp(WT_LOG_SD * rng.standard_normal()), *WT_RANGE_ML))
    core = whole * rng.uniform(*(TC_SHARE_HGG if has_enhancing else TC_SHARE_LGG))
    enhancing = core * rng.uniform(*ET_SHARE_OF_TC) if has_enhancing else 0.0
    return TumourVolumes(whole, core, enhancing)


@dataclass
class _Tumour:
    """Potentials (higher: deeper inside) of one tumour on its box, and its drawn parameters.

    The regions are the voxels of highest potential, as many as the drawn volumes ask for:
    the core (``core``), the whole tumour (``oedema``, where the white matter lets it spread),
    and within a high-grade core the necrosis (``necrosis``, off centre), so that the enhancing
    tumour is the rim between necrosis and oedema; where ``gap`` is set the rim is broken (non-
    enhancing). ``cyst`` marks a low-grade core's necrotic part (label 1, CSF-like intensity).
    """

    box: tuple[slice, slice, slice]
    volumes: TumourVolumes
    core: np.ndarray
    oedema: np.ndarray
    necrosis: np.ndarray | None
    gap: np.ndarray | None
    faint: np.ndarray | None
    core_radius: float


def _tumour_box(geometry: _Geometry, centre: np.ndarray, half: float) -> tuple[slice, ...]:
    """Slices (relative to the brain box) covering ``centre +- half`` mm."""
    return tuple(slice(int(np.searchsorted(m, c - half)), int(np.searchsorted(m, c + half)))
                 for m, c in zip(geometry.mm, centre, strict=True))


def _distance(mm: Sequence[np.ndarray], centre: np.ndarray) -> np.ndarray:
    """Euclidean distance (mm) of the box's voxels to ``centre``."""
    d = [(m - c).astype(np.float32) for m, c in zip(mm, centre, strict=True)]
    return np.sqrt(d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2)


def _radius_mm(volume_ml: float) -> float:
    """The radius (mm) of a ball of ``volume_ml``."""
    return float(np.cbrt(3.0 * volume_ml * 1000.0 / (4.0 * np.pi)))


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    direction = rng.standard_normal(3)
    return direction / np.linalg.norm(direction)


def _draw_tumour(geometry: _Geometry, rng: np.random.Generator, zoom: float, has_enhancing: bool) -> _Tumour:
    """Draw a tumour and push the anatomy around it aside (mass effect, in ``geometry.coords``)."""
    template = mni_template()
    site = geometry.to_mm(template.tumour_sites[rng.integers(len(template.tumour_sites))])
    volumes = draw_volumes(rng, has_enhancing)
    core_radius = max(_radius_mm(volumes.core), 2.0 * zoom)
    oedema_ratio = max(_radius_mm(volumes.whole) / core_radius, 1.15)
    foci = int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12]))
    centres, radii = [site], [core_radius]
    for _ in range(foci - 1):  # lobes of the main mass
        centres.append(site + _random_direction(rng) * core_radius * rng.uniform(0.8, 1.5))
        radii.append(max(core_radius * rng.uniform(0.4, 0.7), 1.5 * zoom))
    if rng.random() < SATELLITE_PROBABILITY:  # a small lesion beyond the main mass's oedema
        centres.append(site + _random_direction(rng) * core_radius * oedema_ratio * rng.uniform(1.1, 1.6))
        radii.append(max(core_radius * rng.uniform(0.25, 0.4), 1.5 * zoom))
    reach = max(np.linalg.norm(c - site) + r for c, r in zip(centres, radii, strict=True))
    half = reach + 1.5 * oedema_ratio * core_radius
    box = _tumour_box(geometry, site, half)
    mm = [m[s] for m, s in zip(geometry.mm, box, strict=True)]
    shape = tuple(len(m) for m in mm)

    # mass effect: sample the template closer to the centre, so the anatomy moves outwards
    pushed = 1.6 * oedema_ratio * core_radius
    strength = rng.uniform(0.15, 0.35) * np.clip(1.0 - _distance(mm, site) ** 2 / pushed**2, 0.0, None) ** 2
    inverse = np.linalg.inv(geometry.forward)
    offsets = [m - c for m, c in zip(mm, site, strict=True)]
    for i in range(3):
        geometry.coords[i][box] -= strength * _linear(inverse[i], offsets)

    # lobed foci: 1 - distance / radius, the nearest focus wins, plus a smooth random field
    nearest = np.minimum.reduce([_distance(mm, c) / r for c, r in zip(centres, radii, strict=True)])
    core = 1.0 - nearest + smooth_field(shape, rng, 10, amplitude=0.25)
    oedema = 1.0 - nearest / oedema_ratio + smooth_field(shape, rng, 8, amplitude=0.2)
    necrosis = gap = faint = None
    if has_enhancing or rng.random() < 0.4:  # necrosis off centre (in LGG a cyst)
        off_centre = site + _random_direction(rng) * core_radius * rng.uniform(0.0, 0.25)
        necrosis = 1.0 - _distance(mm, off_centre) / core_radius + smooth_field(shape, rng, 6, amplitude=0.15)
    if has_enhancing and rng.random() < 0.6:  # an incomplete rim: broken where a smooth field is high
        gap = smooth_field(shape, rng, 4) > rng.uniform(0.8, 1.4)
    if not has_enhancing and rng.random() < 0.4:  # faint, patchy enhancement that is not labelled ET
        faint = np.clip(smooth_field(shape, rng, 5), 0.0, 1.0)
    return _Tumour(box, volumes, core, oedema, necrosis, gap, faint, core_radius)


def _above_top(values: np.ndarray, count: int) -> np.ndarray:
    """``values`` shifted so that its ``count`` largest entries are exactly the positive ones."""
    if count <= 0:
        return values - (values.max(initial=0.0) + 1.0)
    if count >= values.size:
        return values - (values.min() - 1.0)
    top = np.partition(values, values.size - count - 1)[values.size - count - 1:]
    return values - 0.5 * (top[0] + top[1:].min())


def _bright_structures(box_shape: Shape3D, inside: np.ndarray, brain: np.ndarray,
                       wm: np.ndarray, csf: np.ndarray, near: np.ndarray, peritumoral: np.ndarray,
                       rng: np.random.Generator, zoom: float) -> np.ndarray:
    """Weights of the normal structures that enhance on T1ce: vessels, choroid plexus, dura.

    ``wm``, ``csf``, ``near`` and ``peritumoral`` (0..1: the oedema, where vessels crowd around a
    tumour, labelled oedema) are values at the brain voxels ``inside`` (flat indices into the box
    ``brain``); so is the result.
    """
    a = smooth_field(box_shape, rng, 10).ravel()[inside]
    b = smooth_field(box_shape, rng, 10).ravel()[inside]
    # vessels: curves where two smooth fields both cross zero, running in the CSF spaces
    vessels = (_ramp((0.1 - np.maximum(np.abs(a), np.abs(b))) / 0.05)
               * np.clip(2 * csf + 0.3 * wm + peritumoral, 0, 1))
    plexus = (near > 0.9) * (csf > 0.5) * _ramp((a - 0.5) / 0.3)
    dura = ~ndimage.binary_erosion(brain, iterations=max(1, round(1.5 / zoom))).ravel()[inside]
    return np.maximum(np.maximum(vessels, plexus), dura * (b > -0.3))


def _hyperintensities(box_shape: Shape3D, inside: np.ndarray, wm: np.ndarray, near: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """Weights of normal white-matter hyperintensities: periventricular caps and scattered deep lesions.

    They look like oedema in all four contrasts (as the small-vessel lesions of older patients do),
    so only their shape and place (no tumour core nearby) tell them apart. Values at ``inside``.
    """
    caps = np.clip(1.6 * near - 0.3, 0.0, 1.0) * np.clip(1.5 * wm, 0.0, 1.0) * rng.uniform(0.5, 1.0)
    # lesions from punctate to confluent (blobs of 1-3 cm, some cases many of them)
    field = smooth_field(box_shape, rng, 8).ravel()[inside]
    lesions = _ramp((field - rng.uniform(0.9, 1.9)) / 0.3) * np.clip((wm - 0.4) / 0.3, 0.0, 1.0)
    return np.maximum(caps, lesions)


def synthesize_case(
    shape: Shape3D = BRATS_SHAPE, seed: int = 0, *, has_enhancing: bool = True, deform: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic multi-modal MRI case with its tumour segmentation.

    Returns ``(image, labels)``: ``image`` float32 ``[4, H, W, D]`` in the order of
    ``config.MODALITIES`` with integer values in the int16 range (raw "scanner units",
    exactly 0 outside the brain, at least 1 inside), ``labels`` uint8 ``[H, W, D]`` with values
    in {0, 1, 2, 4}. ``has_enhancing=False`` draws a low-grade-like tumour without label 4.
    ``deform=False`` places the template without the case's random affine and deformation (the
    tumour's mass effect remains). The same ``shape`` and ``seed`` always give the same case.
    The regions have the volumes of :func:`draw_volumes` (to a voxel, where the brain has room).

    All intensity work is done on the brain's voxels only (a third of its bounding box).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sides of at least 8 voxels, got {shape}")
    rng = np.random.default_rng(seed)
    zooms = tuple(float(z) for z in np.array(BRATS_SHAPE) / np.array(shape))
    zoom = float(np.mean(zooms))
    voxel_ml = float(np.prod(zooms)) / 1000.0

    geometry = _geometry(shape, rng, deform)
    tumour = _draw_tumour(geometry, rng, zoom, has_enhancing)
    maps = _template_maps(zooms)
    box_shape = geometry.coords.shape[1:]
    coords = geometry.coords.reshape(3, -1)
    brain = (ndimage.map_coordinates(maps[0], coords, order=0) > 0.5).reshape(box_shape)
    inside = np.flatnonzero(brain)
    points = coords[:, inside]
    wm, gm, csf, near = (ndimage.map_coordinates(m, points, order=1, prefilter=False) for m in maps[1:])

    # the tumour box's voxels that are brain voxels, as indices into the flat brain arrays
    position = np.full(box_shape, -1, dtype=np.int64)
    position.ravel()[inside] = np.arange(inside.size)
    in_tumour_box = position[tumour.box]
    valid = in_tumour_box >= 0
    at = in_tumour_box[valid]

    # labels: the voxels of highest potential, as many as the drawn volumes ask for; the oedema
    # follows white matter and spares the cortex, but always surrounds the core (a shell of 1.5 voxels)
    volumes = tumour.volumes
    core_potential = _above_top(tumour.core[valid], round(volumes.core / voxel_ml))
    in_core = core_potential > 0
    shell = core_potential > -1.5 * zoom / tumour.core_radius
    oedema_potential = tumour.oedema[valid] + 0.6 * (wm[at] - 0.5)
    ranked = np.where(gm[at] < 0.5, oedema_potential, -np.inf)
    ranked = np.where(shell, 5.0 + core_potential, ranked)  # the core first, then its shell
    whole_potential = _above_top(ranked, round(volumes.whole / voxel_ml))
    oedema_potential = np.minimum(whole_potential, 1.0)
    tumour_labels = np.where(whole_potential > 0, 2, 0).astype(np.uint8)
    tumour_labels[in_core] = 1
    necrosis = None
    if tumour.necrosis is not None:
        n_core = int(np.count_nonzero(in_core))
        n_necrosis = (n_core - max(round(volumes.enhancing / voxel_ml), 1) if has_enhancing
                      else round(n_core * rng.uniform(0.2, 0.5)))
        necrosis = _above_top(np.where(in_core, tumour.necrosis[valid], -np.inf), max(n_necrosis, 0))
    enhancing = np.zeros_like(in_core)
    if has_enhancing:
        enhancing = in_core & ~(necrosis > 0)
        if tumour.gap is not None:
            enhancing &= ~tumour.gap[valid]
        tumour_labels[enhancing] = 4
    flat_labels = np.zeros(inside.size, dtype=np.uint8)
    flat_labels[at] = tumour_labels

    # soft weights (about a voxel of partial volume); oedema fades towards its edge
    sharp = tumour.core_radius / zoom
    w_core = _ramp(core_potential * sharp)
    w_oedema = np.maximum(_ramp(oedema_potential * sharp) * np.clip(0.35 + 2.0 * oedema_potential, 0, 1),
                          _ramp(core_potential * sharp + 1.5))
    w_necrosis = None if necrosis is None else _ramp(necrosis * sharp) * w_core
    w_rim = enhancing.astype(np.float32)  # the core's voxels that enhance
    texture = 1.0 + smooth_field(tumour.core.shape, rng, 6, amplitude=0.12)[valid]
    peritumoral = np.zeros(inside.size, dtype=np.float32)
    peritumoral[at] = w_oedema * (1.0 - w_core)
    bright = _bright_structures(box_shape, inside, brain, wm, csf, near, peritumoral, rng, zoom)
    # oedema is not uniformly bright: where this field is low it is barely brighter than grey matter
    oedema_strength = 0.75 + smooth_field(tumour.core.shape, rng, 5, amplitude=0.25)[valid]
    hyper = _hyperintensities(box_shape, inside, wm, near, rng)

    contrast = _CONTRAST * rng.uniform(0.93, 1.07, size=_CONTRAST.shape).astype(np.float32)
    hot = rng.integers(0, inside.size, size=int(rng.integers(5, 40)))
    image = np.zeros((len(MODALITIES), *shape), dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    box_volume = np.zeros(box_shape, dtype=np.float32)
    box_volume.ravel()[inside] = flat_labels
    labels[geometry.box] = box_volume
    for m, modality in enumerate(MODALITIES):
        c = contrast[m]
        signal = c[_C["wm"]] * wm + c[_C["gm"]] * gm + c[_C["csf"]] * csf
        signal += (c[_C["hyper"]] - signal) * hyper
        part = signal[at]
        oedema_value = c[_C["gm"]] + (c[_C["oedema"]] - c[_C["gm"]]) * oedema_strength
        part += (oedema_value - part) * w_oedema
        non_enhancing = c[_C["non_enhancing"]]
        core_value = (non_enhancing + (c[_C["enhancing"]] - non_enhancing) * w_rim) * texture
        if modality == "t1ce" and tumour.faint is not None:  # faint, patchy, not labelled ET
            core_value *= 1.0 + 0.35 * tumour.faint[valid]
        part += (core_value - part) * w_core
        if w_necrosis is not None:
            part += (c[_C["necrosis"]] - part) * w_necrosis
        signal[at] = part
        signal += (c[_C["bright"]] - signal) * bright
        low, high = _WM_INTENSITY_RANGE[modality]
        scale = np.exp(rng.uniform(np.log(low), np.log(high)))  # this scanner's units
        signal *= smooth_field(box_shape, rng, 3, amplitude=0.15 * scale, offset=scale).ravel()[inside]
        signal += np.float32(scale * rng.uniform(0.0, 0.1))  # offset
        sigma = np.float32(0.035 * scale)  # Rician noise: the magnitude of a complex Gaussian signal
        signal = np.hypot(signal + sigma * rng.standard_normal(inside.size, dtype=np.float32),
                          sigma * rng.standard_normal(inside.size, dtype=np.float32))
        signal[hot] *= rng.uniform(2.0, 6.0, size=hot.size).astype(np.float32)  # heavy tails
        np.rint(signal, out=signal)
        np.clip(signal, 1, np.iinfo(np.int16).max, out=signal)
        box_volume[:] = 0  # background exactly 0
        box_volume.ravel()[inside] = signal
        image[m][geometry.box] = box_volume
    return image, labels


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


# --- the Kaggle layout --------------------------------------------------------------


def real_affine(shape: Shape3D) -> np.ndarray:
    """The BraTS 2020 affine ``[[-1,0,0,0],[0,-1,0,239],[0,0,1,0],[0,0,0,1]]`` for a grid.

    Real volumes are 240 voxels along y and the translation 239 = 240 - 1 maps voxel
    row 0 to world y = 239 (axis codes L, P, S). Smaller synthetic grids keep that
    convention: translation ``shape[1] - 1``, so the full size gives exactly the real affine.
    """
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def real_case_number(index: int, n_cases: int, n_real: int = REAL_TRAINING_CASES) -> int:
    """Where synthetic case ``index`` (1-based, of ``n_cases``) sits on the real numbering.

    Spreading the synthetic cases evenly over 1..369 gives them the real HGG/LGG mix.
    """
    return max(1, min(n_real, round(index * n_real / n_cases)))


def is_low_grade(index: int, n_train: int) -> bool:
    """Whether synthetic training case ``index`` is LGG (as its place in the real numbering)."""
    return real_case_number(index, n_train) in REAL_LGG_RANGE


def quirk_case_index(n_train: int) -> int:
    """The training case whose segmentation is misnamed ``W39_1998.09.19_Segm.nii``.

    Case 355 as in the real release when there are that many cases; otherwise the
    second-to-last case (the last one when there is only one), so that at least one case
    follows it, as in the real data, and a "sorted glob" pairing visibly goes wrong.
    """
    return min(QUIRK_CASE, max(1, n_train - 1))


def float32_case_index(n_train: int) -> int:
    """The training case stored as float32 (images and segmentation), as some real files are."""
    return min(2, n_train)


def misregistered_case_index(n_train: int) -> int:
    """The training case of a foreign dataset whose T2 is not co-registered (the last one)."""
    return n_train


#: Foreign datasets store int16 images scaled: value = FOREIGN_SCALING[0] * stored + FOREIGN_SCALING[1].
FOREIGN_SCALING = (2.0, 10.0)
#: How far (mm, along x) the T2 affine of the misregistered case of a foreign dataset is moved.
FOREIGN_SHIFT_MM = 3.0


class _Writer:
    """Writes volumes the Kaggle copy's way, or (``foreign``) the way other copies do.

    ``layout`` names the folders and files (the ``brats2020`` layout). Foreign files are ``.nii.gz``,
    in RAS voxel order with the matching affine (the same anatomy in the same place in world
    coordinates), and int16 images carry ``scl_slope``/``scl_inter``.
    """

    def __init__(self, shape: Shape3D, foreign: bool) -> None:
        self.foreign = foreign
        self.layout: DatasetLayout = dataclasses.replace(LAYOUTS["brats2020"], suffix=".nii.gz") if foreign \
            else LAYOUTS["brats2020"]
        self.affine = real_affine(shape)
        if foreign:  # voxel i of the flipped axis is voxel n - 1 - i of the Kaggle one
            flip = np.diag([-1.0, -1.0, 1.0, 1.0])
            flip[:2, 3] = np.array(shape[:2]) - 1
            self.affine = self.affine @ flip

    def save(self, array: np.ndarray, path: Path, dtype: type, *, shift_mm: float = 0.0) -> None:
        """Write ``array`` (Kaggle orientation) to ``path`` as ``dtype``."""
        affine = self.affine.copy()
        affine[0, 3] += shift_mm
        scaling = self.foreign and dtype == np.int16
        if self.foreign:
            array = array[::-1, ::-1]
        if scaling:
            array = np.rint((array - FOREIGN_SCALING[1]) / FOREIGN_SCALING[0])
        write_volume(array, path, affine, dtype, slope_inter=FOREIGN_SCALING if scaling else None)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _case_seed(seed: int, split: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, split, index]).generate_state(1)[0])


def _fake_ids(rng: np.random.Generator, index: int) -> tuple[str, str, str, str]:
    """Plausible earlier-release IDs (2017, 2018, TCGA, 2019) for one case."""
    site = rng.choice(["CBICA", "TCIA01", "TCIA02", "TCIA08", "TMC", "2013"])
    code = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), size=3))
    stem = f"{site}_{code}_1"
    if rng.random() < 0.2:  # cases new in 2020 have no earlier IDs
        return "", "", "", ""
    tcga = f"TCGA-{rng.integers(2, 99):02d}-{rng.integers(1, 9999):04d}" if site.startswith("TCIA") else "NA"
    return f"Brats17_{stem}", f"Brats18_{stem}", tcga, f"BraTS19_{stem}"


def _write_training(folder: Path, n_train: int, shape: Shape3D, seed: int, writer: _Writer) -> None:
    rng = np.random.default_rng([seed, 0])
    mapping, survival = [], []
    alive_row = None
    for index in range(1, n_train + 1):
        case_id = writer.layout.case_name(index - 1, "training")
        low_grade = is_low_grade(index, n_train)
        image, labels = synthesize_case(shape, _case_seed(seed, 0, index), has_enhancing=not low_grade)
        case_dir = folder / case_id
        case_dir.mkdir()
        dtype = np.float32 if index == float32_case_index(n_train) else np.int16
        misregistered = writer.foreign and index == misregistered_case_index(n_train)
        for m, modality in enumerate(MODALITIES):
            shift = FOREIGN_SHIFT_MM if misregistered and modality == "t2" else 0.0
            path = case_dir / writer.layout.image_name(case_id, modality)
            writer.save(image[m], path, dtype, shift_mm=shift)
        quirk = index == quirk_case_index(n_train)
        seg_name = QUIRK_SEG_NAME.removesuffix(".nii") + writer.layout.suffix if quirk \
            else writer.layout.seg_name(case_id)
        writer.save(labels, case_dir / seg_name, np.float32 if dtype == np.float32 else np.uint8)
        mapping.append(["LGG" if low_grade else "HGG", *_fake_ids(rng, index), case_id])
        if not low_grade:  # survival data exist for (most) high-grade cases only
            days: object = int(rng.integers(5, 1800))
            if alive_row is None:
                alive_row, days = len(survival), "ALIVE (361 days later)"
            resection = rng.choice(["GTR", "STR", ""], p=[0.45, 0.1, 0.45])
            survival.append([case_id, f"{rng.uniform(19, 87):.3f}", days, resection])
    _write_csv(folder / "name_mapping.csv",
               ["Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
                "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"], mapping)
    _write_csv(folder / "survival_info.csv", ["Brats20ID", "Age", "Survival_days", "Extent_of_Resection"],
               survival)


def _write_validation(folder: Path, n_val: int, shape: Shape3D, seed: int, writer: _Writer) -> None:
    rng = np.random.default_rng([seed, 1])
    mapping, survival = [], []
    for index in range(1, n_val + 1):
        case_id = writer.layout.case_name(index - 1, "validation")
        image, _ = synthesize_case(shape, _case_seed(seed, 1, index), has_enhancing=rng.random() > 0.2)
        case_dir = folder / case_id
        case_dir.mkdir()
        for m, modality in enumerate(MODALITIES):
            writer.save(image[m], case_dir / writer.layout.image_name(case_id, modality), np.int16)
        mapping.append([*_fake_ids(rng, index), case_id])
        survival.append([case_id, f"{rng.uniform(19, 87):.3f}", rng.choice(["GTR", "STR", "NA"])])
    _write_csv(folder / "name_mapping_validation_data.csv",
               ["BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
                "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"], mapping)
    _write_csv(folder / "survival_evaluation.csv", ["BraTS20ID", "Age", "ResectionStatus"], survival)


def _is_complete(root: Path, params: dict) -> bool:
    """Whether ``root`` holds a finished synthetic dataset written with ``params``."""
    marker = root / MARKER_NAME
    return marker.is_file() and json.loads(marker.read_text()) == params


def write_synthetic_dataset(
    root: str | Path, n_train: int, n_val: int, shape: Shape3D = BRATS_SHAPE, seed: int = 42, *,
    foreign: bool = False, wait: float = 3600.0,
) -> Path:
    """Write a synthetic BraTS 2020 dataset in the Kaggle layout under ``root``; return ``root``.

    The tree mirrors ``awsaf49/brats20-dataset-training-validation``::

        root/BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/
            BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii
            name_mapping.csv, survival_info.csv
        root/BraTS2020_ValidationData/MICCAI_BraTS2020_ValidationData/
            BraTS20_Validation_001/BraTS20_Validation_001_{flair,t1,t1ce,t2}.nii
            name_mapping_validation_data.csv, survival_evaluation.csv

    Grades follow the real numbering (see :func:`real_case_number`); the case of
    :func:`quirk_case_index` has its segmentation named ``W39_1998.09.19_Segm.nii``; the case
    of :func:`float32_case_index` is stored as float32 (its segmentation holds 0.0, 1.0, 2.0, 4.0).
    Deterministic for ``seed``.

    ``foreign=True`` writes the pitfalls of copies other than Kaggle's instead: ``.nii.gz`` files,
    a RAS instead of LPS affine (voxel order flipped along x and y), int16 images stored with
    ``scl_slope``/``scl_inter`` of :data:`FOREIGN_SCALING`, and the T2 of the case of
    :func:`misregistered_case_index` moved by :data:`FOREIGN_SHIFT_MM` (not co-registered).
    Idempotent: a complete dataset with the same parameters is left as it is. The dataset is
    written to a temporary sibling folder and moved into place when complete, so an
    interrupted run never leaves a half dataset behind; the temporary folder of a writer that
    was killed is removed at the next start. A second process writing the same ``root`` waits
    for the first (up to ``wait`` seconds, one line naming it), then finds the dataset complete.
    """
    root = Path(root)
    shape = tuple(int(n) for n in shape)
    params = {"n_train": int(n_train), "n_val": int(n_val), "shape": list(shape), "seed": int(seed),
              "foreign": bool(foreign), "generator": GENERATOR_VERSION}
    if _is_complete(root, params):
        return root
    if root.exists() and any(root.iterdir()) and not (root / MARKER_NAME).is_file():
        raise BratsError("refusing to write a synthetic dataset into a folder that holds other files",
                         path=root, expected="a missing or empty folder, or one written by this function")
    if n_train < 1 or n_val < 0:
        raise ValueError(f"need at least one training case and no negative count, got {n_train}, {n_val}")

    with sibling_lock(root, wait=wait):  # a second process waits for the first, then finds it complete
        if _is_complete(root, params):
            return root
        remove_stale_siblings(root)  # what a killed writer left behind
        tmp = temporary_sibling(root)
        _write_into(tmp, root, params, n_train, n_val, shape, seed, foreign)
    return root


def _write_into(tmp: Path, root: Path, params: dict, n_train: int, n_val: int, shape: Shape3D, seed: int,
                foreign: bool) -> None:
    """Write the dataset into ``tmp`` and move it to ``root`` (the caller holds ``root``'s lock)."""
    shutil.rmtree(tmp, ignore_errors=True)
    writer = _Writer(shape, foreign)
    train_dir = tmp / writer.layout.split_folders["training"]
    val_dir = tmp / writer.layout.split_folders["validation"]
    train_dir.mkdir(parents=True)
    val_dir.mkdir(parents=True)
    try:
        _write_training(train_dir, n_train, shape, seed, writer)
        _write_validation(val_dir, n_val, shape, seed, writer)
        (tmp / MARKER_NAME).write_text(json.dumps(params))
        if _is_complete(root, params):  # another process wrote the same dataset meanwhile
            return
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _is_complete(root, params):  # lost a race against an identical writer: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
