"""Shared pytest fixtures: a tiny synthetic BraTS dataset in the Kaggle layout.

The dataset is written once per test session. Tests must treat it as read-only input
(as a Kaggle mount is); a test that needs to damage files copies a case first
(see ``copy_case``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from brats_utils.synthetic import write_synthetic_dataset

#: Small enough for fast tests, large enough for a brain, a tumour and a 32^3 patch.
SYNTHETIC_SHAPE = (40, 40, 24)
SYNTHETIC_TRAIN = 4
SYNTHETIC_VAL = 2
SYNTHETIC_SEED = 7


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a synthetic dataset: 4 training + 2 validation cases of 40x40x24 voxels.

    Training case 003 carries the case-355 quirk (segmentation named
    ``W39_1998.09.19_Segm.nii``), training case 002 is stored as float32 and case 003 is LGG
    (no label 4); see ``brats_utils.synthetic``.
    """
    root = tmp_path_factory.mktemp("synthetic") / "dataset"
    return write_synthetic_dataset(root, SYNTHETIC_TRAIN, SYNTHETIC_VAL, SYNTHETIC_SHAPE, seed=SYNTHETIC_SEED)


@pytest.fixture(scope="session")
def synthetic_shape() -> tuple[int, int, int]:
    """Volume shape of every case of ``synthetic_root``."""
    return SYNTHETIC_SHAPE


@pytest.fixture
def copy_case(synthetic_root: Path, tmp_path: Path):
    """Factory: ``copy_case("BraTS20_Training_001")`` copies a case folder into ``tmp_path``.

    Returns the copied folder, which the test may modify freely.
    """

    def _copy(case_id: str = "BraTS20_Training_001") -> Path:
        split = "Training" if "_Training_" in case_id else "Validation"
        source = synthetic_root / f"BraTS2020_{split}Data" / f"MICCAI_BraTS2020_{split}Data" / case_id
        target = tmp_path / case_id
        shutil.copytree(source, target)
        return target

    return _copy
