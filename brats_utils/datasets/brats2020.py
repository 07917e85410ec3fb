"""The Kaggle copy of BraTS 2020: where it comes from, its split folders, and the cases in them.

The copy the paper used, ``awsaf49/brats20-dataset-training-validation``, holds
``.../MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii``
and the same for validation (no ``seg``). Its split folders are found at any depth below a
folder (the kagglehub cache, a Kaggle mount or a manual unzip), and each case folder is paired
by :func:`~brats_utils.datasets.pairing.case_from_folder`.
"""

from __future__ import annotations

from pathlib import Path

from brats_utils.datasets.pairing import SEARCH_DEPTH, case_from_folder, nifti_folders
from brats_utils.errors import DatasetNotFoundError
from brats_utils.io import Case

#: The Kaggle copy of BraTS 2020 the paper used, version-pinned so a cached copy works offline.
KAGGLE_HANDLE = "awsaf49/brats20-dataset-training-validation/versions/1"
#: The Kaggle copy of BraTS 2021 (Task 1, 1251 training cases, packed as one tar inside the dataset).
BRATS2021_KAGGLE_HANDLE = "dschettler8845/brats-2021-task1"
TRAINING_DIR_NAME = "MICCAI_BraTS2020_TrainingData"
VALIDATION_DIR_NAME = "MICCAI_BraTS2020_ValidationData"
#: The split folders of the Kaggle copy, below its root (the names above, one folder deeper).
SPLIT_FOLDERS = {"training": f"BraTS2020_TrainingData/{TRAINING_DIR_NAME}",
                 "validation": f"BraTS2020_ValidationData/{VALIDATION_DIR_NAME}"}
SPLIT_DIR_NAMES = {split: Path(folder).name for split, folder in SPLIT_FOLDERS.items()}


def find_split_dirs(root: str | Path, *, max_depth: int = SEARCH_DEPTH) -> dict[str, Path]:
    """The training and validation folders at or below ``root``.

    Returns ``{"training": ..., "validation": ...}`` with the folders found (a missing split
    is omitted). The search is breadth-first, so the shallowest match wins, and it never
    enters case folders. Works on the kagglehub cache, a Kaggle mount or a manual unzip.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError("dataset folder does not exist", path=root,
                                   expected=f"a folder containing {TRAINING_DIR_NAME}")
    found: dict[str, Path] = {}
    level = [root]
    for _ in range(max_depth + 1):
        below: list[Path] = []
        for folder in level:
            split = next((s for s, name in SPLIT_DIR_NAMES.items() if folder.name == name), None)
            if split is not None:
                found.setdefault(split, folder)
                continue
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:  # unreadable folder: not ours to judge
                continue
            below.extend(p for p in children if not p.name.startswith("BraTS20_"))
        if len(found) == len(SPLIT_DIR_NAMES) or not below:
            break
        level = below
    return found


def find_brats2020(root: str | Path, split: str = "training") -> list[Case]:
    """All cases of one split (``"training"`` or ``"validation"``) below ``root``, sorted by id.

    Raises :class:`DatasetNotFoundError` when the split folder is not found and the errors of
    :func:`~brats_utils.datasets.pairing.case_from_folder` for a case folder that cannot be paired.
    """
    if split not in SPLIT_DIR_NAMES:
        raise ValueError(f"split must be one of {list(SPLIT_DIR_NAMES)}, got {split!r}")
    split_dir = find_split_dirs(root).get(split)
    if split_dir is None:
        raise DatasetNotFoundError(f"no {split} folder found", path=root,
                                   expected=f"a folder named {SPLIT_DIR_NAMES[split]} at most "
                                            f"{SEARCH_DEPTH} levels below")
    return [case_from_folder(folder) for folder in nifti_folders(split_dir)]
