"""One synthetic case (:func:`synthesize_case`): anatomy and tumour in four contrasts, then the scanner.

Each modality mixes the tissue fractions with textbook relative intensities (``_CONTRAST``), adds the
normal structures that look like tumour (white-matter hyperintensities; on T1ce vessels, choroid
plexus and dura), gives each tumour sub-region the intensities of the normal tissue it is confused
with, and ends with the acquisition: a per-case scale and offset, a smooth bias field, Rician noise
and a few hot voxels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from brats_utils.labels import MODALITIES, Shape3D
from brats_utils.synthetic.anatomy import BRATS_SHAPE, case_geometry, ramp, smooth_field, template_maps
from brats_utils.synthetic.tumour import above_top, draw_tumour

# Relative intensities (white matter of T1 = 1) per modality, in MODALITIES order. Each tumour tissue
# copies, in all four contrasts at once, a normal tissue or mixture it is confused with on real
# scans (docs/phantoms.md): oedema looks like white-matter hyperintensities ("hyper":
# periventricular caps and scattered deep lesions, unlabelled), and the non-enhancing core exactly
# like the oedema at its brightest; necrosis like CSF (or, per case, part way towards the oedema:
# proteinaceous fluid); enhancing tumour like the normal structures that enhance on T1ce ("bright":
# vessels, choroid plexus, dura). Only shape and context tell them apart.
_TISSUES = ("wm", "gm", "csf", "oedema", "enhancing", "necrosis", "bright", "hyper")
_CONTRAST = np.array(
    [  # wm    gm    csf   oed   enh   nec   bright hyper
        [0.60, 0.78, 0.12, 0.94, 0.84, 0.16, 0.84, 0.94],  # flair
        [1.00, 0.72, 0.25, 0.64, 0.70, 0.28, 0.70, 0.64],  # t1
        [1.00, 0.74, 0.25, 0.66, 1.55, 0.30, 1.55, 0.66],  # t1ce
        [0.45, 0.66, 1.35, 1.00, 0.80, 1.25, 0.80, 1.00],  # t2
    ],
    dtype=np.float32,
)
#: How far a case's necrosis moves from CSF-like fluid towards the oedema (0: CSF; drawn per case).
NECROSIS_TOWARDS_OEDEMA = (0.0, 0.8)
_C = {name: i for i, name in enumerate(_TISSUES)}
# Per-case scanner scale: the intensity of white matter, drawn log-uniformly per modality.
_WM_INTENSITY_RANGE = {"flair": (150, 500), "t1": (250, 900), "t1ce": (250, 1300), "t2": (300, 1600)}


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
    # vessels: tubes (one to two voxels across) where two smooth fields both cross zero, mostly in the CSF
    vessels = (ramp((0.22 - np.maximum(np.abs(a), np.abs(b))) / 0.05)
               * np.clip(2 * csf + 0.3 * wm + peritumoral, 0, 1))
    # choroid plexus: tufts inside the ventricles, next to CSF and the periventricular caps (as a rim is
    # next to necrosis and oedema)
    plexus = (near > 0.6) * (csf > 0.3) * ramp((a + 0.3) / 0.3)
    dura = ~ndimage.binary_erosion(brain, iterations=max(1, round(1.5 / zoom))).ravel()[inside]
    return np.maximum(np.maximum(vessels, plexus), dura * (b > -0.3))


def _hyperintensities(box_shape: Shape3D, inside: np.ndarray, wm: np.ndarray, near: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """Weights of normal white-matter hyperintensities: periventricular caps and scattered deep lesions.

    They look like oedema in all four contrasts (as the small-vessel lesions of older patients do),
    so only their shape and place (no tumour core nearby) tell them apart. Values at ``inside``.
    """
    caps = np.clip(1.6 * near - 0.3, 0.0, 1.0) * np.clip(1.5 * wm, 0.0, 1.0) * rng.uniform(0.5, 1.0)
    # lesions from punctate to confluent (blobs of 1-3 cm, many of them in most cases)
    field = smooth_field(box_shape, rng, 8).ravel()[inside]
    lesions = ramp((field - rng.uniform(0.2, 0.9)) / 0.3) * np.clip((wm - 0.4) / 0.3, 0.0, 1.0)
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

    geometry = case_geometry(shape, rng, deform)
    tumour = draw_tumour(geometry, rng, zoom, has_enhancing)
    maps = template_maps(zooms)
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
    core_potential = above_top(tumour.core[valid], round(volumes.core / voxel_ml))
    in_core = core_potential > 0
    shell = core_potential > -1.5 * zoom / tumour.core_radius
    oedema_potential = tumour.oedema[valid] + 0.6 * (wm[at] - 0.5)
    ranked = np.where(gm[at] < 0.5, oedema_potential, -np.inf)
    ranked = np.where(shell, 5.0 + core_potential, ranked)  # the core first, then its shell
    whole_potential = above_top(ranked, round(volumes.whole / voxel_ml))
    oedema_potential = np.minimum(whole_potential, 1.0)
    tumour_labels = np.where(whole_potential > 0, 2, 0).astype(np.uint8)
    tumour_labels[in_core] = 1
    necrosis = None
    if tumour.necrosis is not None:
        n_core = int(np.count_nonzero(in_core))
        n_necrosis = (n_core - max(round(volumes.enhancing / voxel_ml), 1) if has_enhancing
                      else round(n_core * rng.uniform(0.2, 0.5)))
        necrosis = above_top(np.where(in_core, tumour.necrosis[valid], -np.inf), max(n_necrosis, 0))
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
    w_core = ramp(core_potential * sharp)
    w_oedema = np.maximum(ramp(oedema_potential * sharp) * np.clip(0.35 + 2.0 * oedema_potential, 0, 1),
                          ramp(core_potential * sharp + 1.5))
    w_necrosis = None if necrosis is None else ramp(necrosis * sharp) * w_core
    w_rim = enhancing.astype(np.float32)  # the core's voxels that enhance
    texture = 1.0 + smooth_field(tumour.core.shape, rng, 6, amplitude=0.12)[valid]
    peritumoral = np.zeros(inside.size, dtype=np.float32)
    peritumoral[at] = w_oedema * (1.0 - w_core)
    bright = _bright_structures(box_shape, inside, brain, wm, csf, near, peritumoral, rng, zoom)
    # oedema is not uniformly bright: where this field is low it is barely brighter than grey matter
    oedema_strength = 0.75 + smooth_field(tumour.core.shape, rng, 5, amplitude=0.25)[valid]
    hyper = _hyperintensities(box_shape, inside, wm, near, rng)

    necrosis_mix = rng.uniform(*NECROSIS_TOWARDS_OEDEMA)
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
        non_enhancing = c[_C["oedema"]]  # the non-enhancing core: the oedema at its brightest
        core_value = (non_enhancing + (c[_C["enhancing"]] - non_enhancing) * w_rim) * texture
        if modality == "t1ce" and tumour.faint is not None:  # faint, patchy, not labelled ET
            core_value *= 1.0 + 0.35 * tumour.faint[valid]
        part += (core_value - part) * w_core
        if w_necrosis is not None:
            necrosis_value = c[_C["necrosis"]] + (c[_C["oedema"]] - c[_C["necrosis"]]) * necrosis_mix
            part += (necrosis_value - part) * w_necrosis
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
