"""Synthetic BraTS 2020: phantom brains with tumours, written in the exact Kaggle layout.

Without internet (CI, a first look on a laptop) the series runs on this stand-in. It is
built to teach the same lessons as the real data:

* **layout**: the folders, file names, CSV files and quirks of the Kaggle copy
  ``awsaf49/brats20-dataset-training-validation`` (uncompressed ``.nii``, int16 images,
  uint8 labels, the real affine, validation cases without segmentation, one training
  segmentation misnamed as in case 355, one case stored as float32);
* **anatomy**: a head-shaped brain on an exactly-zero background, grey and white matter,
  CSF in the ventricles, the fissure and around the brain, each with the contrast it has
  in FLAIR, T1, T1ce and T2;
* **tumour**: nested regions with random size, shape and position: oedema (label 2, bright
  in FLAIR and T2) around a core of enhancing rim (label 4, bright in T1ce) and necrosis
  (label 1, dark in T1ce). Low-grade cases have a non-enhancing core (label 1) and no label 4;
* **scanner effects**: noise, a smooth multiplicative bias field and an arbitrary intensity
  scale per case and modality, so that intensity normalisation matters as it does for real
  scans.

Everything is vectorised numpy: smooth random fields are sums of a few low-frequency
cosines evaluated separably (three small matrix products), so a full 240x240x155 case
takes about half a second of CPU time.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_utils.config import TRAINING_DIR_NAME, VALIDATION_DIR_NAME
from brats_utils.errors import BratsError
from brats_utils.labels import MODALITIES

Shape3D = tuple[int, int, int]

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

# Relative tissue intensities (white matter of T1 = 1) per modality, in MODALITIES order.
# They follow the textbook contrasts: CSF dark in FLAIR/T1, bright in T2; oedema bright in
# FLAIR and T2; the enhancing rim bright only after contrast (T1ce); necrosis dark in T1/T1ce.
_TISSUES = ("wm", "gm", "csf", "oedema", "enhancing", "non_enhancing", "necrosis")
_CONTRAST = np.array(
    [  # wm    gm    csf   oed   enh   net   nec
        [0.60, 0.78, 0.12, 1.45, 1.05, 1.25, 0.55],  # flair
        [1.00, 0.72, 0.25, 0.58, 0.70, 0.55, 0.32],  # t1
        [1.00, 0.74, 0.25, 0.60, 1.75, 0.56, 0.30],  # t1ce
        [0.45, 0.66, 1.35, 1.10, 0.80, 1.05, 1.30],  # t2
    ],
    dtype=np.float32,
)
# Per-case scanner scale: the intensity of white matter, drawn log-uniformly per modality.
_WM_INTENSITY_RANGE = {"flair": (150, 500), "t1": (250, 900), "t1ce": (250, 1300), "t2": (300, 1600)}


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


def _normalised_grid(shape: Shape3D, centre: Sequence[float], semi_axes: Sequence[float]):
    """Open grids (x, y, z) measured from ``centre`` in units of ``semi_axes`` (all in voxels)."""
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    return [((a - c) / s).astype(np.float32) for a, c, s in zip(axes, centre, semi_axes, strict=True)]


def _box(lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, ...], Shape3D]:
    """Slices and shape of the box from corner ``lo`` (inclusive) to ``hi`` (exclusive)."""
    pairs = list(zip(lo.tolist(), hi.tolist(), strict=True))
    return tuple(slice(a, b) for a, b in pairs), tuple(b - a for a, b in pairs)


def _tumour(shape: Shape3D, brain_semi_axes: np.ndarray, brain_centre: np.ndarray,
            rng: np.random.Generator, has_enhancing: bool):
    """Soft weights (oedema, core, necrosis) of a random tumour inside a bounding box.

    Returns the box as slices and the three weight arrays on it. Distances are in voxels,
    so the soft edges are about one voxel wide at every image size.
    """
    scale = float(brain_semi_axes.min())
    oedema_radius = scale * rng.uniform(0.35, 0.6)
    core_radius = oedema_radius * rng.uniform(0.45, 0.7)
    necrosis_fraction = rng.uniform(0.5, 0.75)
    # the centre stays deep enough inside the brain that the core is mostly inside
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    centre = brain_centre + direction * rng.uniform(0.15, 0.5) * brain_semi_axes
    stretch_oedema = rng.uniform(0.75, 1.3, size=3)
    stretch_core = rng.uniform(0.8, 1.2, size=3)

    half = np.ceil(oedema_radius * stretch_oedema * 1.35 + 2).astype(int)
    lo = np.maximum(np.floor(centre).astype(int) - half, 0)
    hi = np.minimum(np.floor(centre).astype(int) + half + 1, shape)
    box, box_shape = _box(lo, hi)

    def distance(radius: float, stretch: np.ndarray, wobble: float) -> np.ndarray:
        """Ellipsoidal distance to the centre, in voxels, with a lumpy random outline."""
        x, y, z = _normalised_grid(box_shape, centre - lo, radius * stretch)
        r = np.sqrt(x * x + y * y + z * z)
        return radius * r / smooth_field(box_shape, rng, 4, amplitude=wobble, offset=1.0)

    d_oedema = distance(oedema_radius, stretch_oedema, 0.15)
    d_core = distance(core_radius, stretch_core, 0.12)
    oedema = _ramp((oedema_radius - d_oedema) / 1.5)
    core = _ramp((core_radius - d_core) / 1.5)
    necrosis = _ramp((core_radius * necrosis_fraction - d_core) / 1.5)
    if not has_enhancing and rng.random() < 0.5:
        necrosis = np.zeros_like(necrosis)  # many low-grade cores are solid
    # oedema surrounds the core by at least two voxels: the regions are nested
    oedema = np.maximum(oedema, _ramp((core_radius + 2.0 - d_core) / 1.5))
    return box, oedema, core, necrosis


def synthesize_case(
    shape: Shape3D = (240, 240, 155), seed: int = 0, *, has_enhancing: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic multi-modal MRI case with its tumour segmentation.

    Returns ``(image, labels)``: ``image`` float32 ``[4, H, W, D]`` in the order of
    ``config.MODALITIES`` with integer values in the int16 range (raw "scanner units",
    exactly 0 outside the brain, at least 1 inside), ``labels`` uint8 ``[H, W, D]`` with values
    in {0, 1, 2, 4}. ``has_enhancing=False`` draws a low-grade-like tumour without label 4.
    The same ``shape`` and ``seed`` always give the same case.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sides of at least 8 voxels, got {shape}")
    rng = np.random.default_rng(seed)
    dims = np.array(shape, dtype=np.float64)

    # --- head-shaped brain: an ellipsoid (x left-right, y front-back, z up) with a lumpy outline.
    # Everything is computed on the brain's bounding box only (about a third of the grid).
    semi_axes = dims * np.array([0.30, 0.37, 0.42]) * rng.uniform(0.92, 1.05, size=3)
    centre = dims * np.array([0.5, 0.5, 0.46]) + rng.uniform(-0.02, 0.02, size=3) * dims
    lo = np.maximum(np.floor(centre - 1.15 * semi_axes).astype(int), 0)
    hi = np.minimum(np.ceil(centre + 1.15 * semi_axes).astype(int) + 1, shape)
    head, grid = _box(lo, hi)
    centre = centre - lo
    x, y, z = _normalised_grid(grid, centre, semi_axes)
    radius = np.sqrt(x * x + (y * (1.0 - 0.08 * y)) ** 2 + z * z)  # wider at the back
    radius /= smooth_field(grid, rng, 4, amplitude=0.02, offset=1.0)
    brain = radius < 1.0

    # --- tissue weights: white matter inside, folded grey-matter ribbon, CSF
    cortex_inner_edge = smooth_field(grid, rng, 12, amplitude=0.06, offset=0.8)  # folds
    grey = _ramp((radius - cortex_inner_edge) / 0.05)
    for sx in (-0.2, 0.2):  # deep grey matter (thalamus / basal ganglia), one per hemisphere
        r = np.sqrt(((x - sx) / 0.13) ** 2 + ((y + 0.05) / 0.2) ** 2 + ((z + 0.05) / 0.16) ** 2)
        np.maximum(grey, _ramp((1.0 - r) / 0.15), out=grey)
    csf = _ramp((radius - 0.965) / 0.025)  # CSF around the brain
    csf += _ramp((0.025 - np.abs(x)) / 0.015) * _ramp((z + 0.25 * y * y - 0.2) / 0.1)  # fissure
    for sx in (-0.09, 0.09):  # lateral ventricles, curved like a banana
        r = np.sqrt(((x - sx) / 0.07) ** 2 + ((y - 0.02) / 0.38) ** 2
                    + ((z - 0.12 - 0.25 * (y - 0.02) ** 2) / 0.1) ** 2)
        csf += _ramp((1.0 - r) / 0.2)
    np.clip(csf, 0.0, 1.0, out=csf)

    # --- tumour (soft weights on its own bounding box), labels from the same weights
    box, oedema, core, necrosis = _tumour(grid, semi_axes, centre, rng, has_enhancing)
    box_labels = np.zeros(oedema.shape, dtype=np.uint8)
    box_labels[oedema > 0.5] = 2
    box_labels[core > 0.5] = 4 if has_enhancing else 1
    box_labels[necrosis > 0.5] = 1
    box_labels[~brain[box]] = 0
    labels = np.zeros(shape, dtype=np.uint8)
    labels[head][box] = box_labels

    # --- contrast per case: textbook values, slightly perturbed
    contrast = _CONTRAST * rng.uniform(0.93, 1.07, size=_CONTRAST.shape).astype(np.float32)
    core_column = _TISSUES.index("enhancing" if has_enhancing else "non_enhancing")
    texture = 1.0 + smooth_field(oedema.shape, rng, 6, amplitude=0.04) * np.maximum(oedema, core)
    white, grey_only, csf_only = (1 - grey) * (1 - csf), grey * (1 - csf), csf
    image = np.zeros((len(MODALITIES), *shape), dtype=np.float32)
    for m, modality in enumerate(MODALITIES):
        wm, gm, cs, oed, _, _, nec = contrast[m]
        tissue = wm * white + gm * grey_only + cs * csf_only
        sub = tissue[box]  # a view: the tumour is painted into `tissue` in place
        sub += (oed - sub) * oedema
        sub += (contrast[m, core_column] - sub) * core
        sub += (nec - sub) * necrosis
        sub *= texture
        tissue += rng.standard_normal(grid, dtype=np.float32) * np.float32(0.035)
        low, high = _WM_INTENSITY_RANGE[modality]
        scale = np.exp(rng.uniform(np.log(low), np.log(high)))  # this scanner's units
        tissue *= smooth_field(grid, rng, 3, amplitude=0.08 * scale, offset=scale)  # scale x bias field
        np.rint(tissue, out=tissue)
        np.clip(tissue, 1, np.iinfo(np.int16).max, out=tissue)
        tissue *= brain  # background exactly 0
        image[m][head] = tissue
    return image, labels


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


def _save_nifti(array: np.ndarray, path: Path, dtype: type, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(array.astype(dtype), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


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


def _write_training(folder: Path, n_train: int, shape: Shape3D, seed: int, affine: np.ndarray) -> None:
    rng = np.random.default_rng([seed, 0])
    mapping, survival = [], []
    alive_row = None
    for index in range(1, n_train + 1):
        case_id = f"BraTS20_Training_{index:03d}"
        low_grade = is_low_grade(index, n_train)
        image, labels = synthesize_case(shape, _case_seed(seed, 0, index), has_enhancing=not low_grade)
        case_dir = folder / case_id
        case_dir.mkdir()
        dtype = np.float32 if index == float32_case_index(n_train) else np.int16
        for m, modality in enumerate(MODALITIES):
            _save_nifti(image[m], case_dir / f"{case_id}_{modality}.nii", dtype, affine)
        seg_name = QUIRK_SEG_NAME if index == quirk_case_index(n_train) else f"{case_id}_seg.nii"
        _save_nifti(labels, case_dir / seg_name, np.float32 if dtype == np.float32 else np.uint8, affine)
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


def _write_validation(folder: Path, n_val: int, shape: Shape3D, seed: int, affine: np.ndarray) -> None:
    rng = np.random.default_rng([seed, 1])
    mapping, survival = [], []
    for index in range(1, n_val + 1):
        case_id = f"BraTS20_Validation_{index:03d}"
        image, _ = synthesize_case(shape, _case_seed(seed, 1, index), has_enhancing=rng.random() > 0.2)
        case_dir = folder / case_id
        case_dir.mkdir()
        for m, modality in enumerate(MODALITIES):
            _save_nifti(image[m], case_dir / f"{case_id}_{modality}.nii", np.int16, affine)
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
    root: str | Path, n_train: int, n_val: int, shape: Shape3D = (240, 240, 155), seed: int = 42
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
    of :func:`float32_case_index` is stored as float32. Deterministic for ``seed``.
    Idempotent: a complete dataset with the same parameters is left as it is. The dataset is
    written to a temporary sibling folder and moved into place when complete, so an
    interrupted run never leaves a half dataset behind.
    """
    root = Path(root)
    shape = tuple(int(n) for n in shape)
    params = {"n_train": int(n_train), "n_val": int(n_val), "shape": list(shape), "seed": int(seed)}
    if _is_complete(root, params):
        return root
    if root.exists() and any(root.iterdir()) and not (root / MARKER_NAME).is_file():
        raise BratsError("refusing to write a synthetic dataset into a folder that holds other files",
                         path=root, expected="a missing or empty folder, or one written by this function")
    if n_train < 1 or n_val < 0:
        raise ValueError(f"need at least one training case and no negative count, got {n_train}, {n_val}")

    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    affine = real_affine(shape)
    train_dir = tmp / "BraTS2020_TrainingData" / TRAINING_DIR_NAME
    val_dir = tmp / "BraTS2020_ValidationData" / VALIDATION_DIR_NAME
    train_dir.mkdir(parents=True)
    val_dir.mkdir(parents=True)
    try:
        _write_training(train_dir, n_train, shape, seed, affine)
        _write_validation(val_dir, n_val, shape, seed, affine)
        (tmp / MARKER_NAME).write_text(json.dumps(params))
        if _is_complete(root, params):  # another process wrote the same dataset meanwhile
            return root
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _is_complete(root, params):  # lost a race against an identical writer: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
