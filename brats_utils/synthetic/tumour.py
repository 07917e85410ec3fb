"""The tumour of a phantom: region volumes drawn from BraTS-like distributions, and its shape.

:func:`draw_volumes` draws the whole tumour, core and enhancing volumes (the targets and their source
in ``docs/phantoms.md``); :func:`draw_tumour` draws lobed foci, sometimes a satellite lesion, oedema,
necrosis off centre inside an often incomplete rim (a cyst in some low-grade cases), and pushes the
anatomy aside (mass effect). Each region is then the voxels of highest "potential", as many as its
volume asks for (:func:`above_top`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from brats_utils.synthetic.anatomy import Geometry, linear_on_grid, mni_template, smooth_field

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


def _tumour_box(geometry: Geometry, centre: np.ndarray, half: float) -> tuple[slice, ...]:
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


def draw_tumour(geometry: Geometry, rng: np.random.Generator, zoom: float, has_enhancing: bool) -> _Tumour:
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
        geometry.coords[i][box] -= strength * linear_on_grid(inverse[i], offsets)

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


def above_top(values: np.ndarray, count: int) -> np.ndarray:
    """``values`` shifted so that its ``count`` largest entries are exactly the positive ones."""
    if count <= 0:
        return values - (values.max(initial=0.0) + 1.0)
    if count >= values.size:
        return values - (values.min() - 1.0)
    top = np.partition(values, values.size - count - 1)[values.size - count - 1:]
    return values - 0.5 * (top[0] + top[1:].min())
