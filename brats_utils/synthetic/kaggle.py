"""The synthetic dataset written in the exact Kaggle layout of BraTS 2020 (:func:`write_synthetic_dataset`).

The cases sit on the real release's numbering (grades, survival rows, the misnamed segmentation of
case 355, one case stored as float32), with the CSV files of the Kaggle copy; ``foreign=True`` writes
instead the pitfalls of other copies. Folders and file names come from the ``brats2020`` layout of
:mod:`brats_utils.datasets`, the volumes are written by :func:`brats_utils.io.write_volume`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brats_utils.datasets import LAYOUTS, DatasetLayout
from brats_utils.errors import BratsError
from brats_utils.files import remove_stale_siblings, sibling_lock, temporary_sibling
from brats_utils.io import write_volume
from brats_utils.labels import MODALITIES, Shape3D
from brats_utils.synthetic.anatomy import BRATS_SHAPE
from brats_utils.synthetic.phantom import synthesize_case

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
GENERATOR_VERSION = 4


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


def case_seed(seed: int, split: int, index: int) -> int:
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
        image, labels = synthesize_case(shape, case_seed(seed, 0, index), has_enhancing=not low_grade)
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
        image, _ = synthesize_case(shape, case_seed(seed, 1, index), has_enhancing=rng.random() > 0.2)
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
