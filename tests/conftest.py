"""Shared pytest fixtures: a hermetic environment, a tiny synthetic BraTS dataset, a data folder.

- ``hermetic_environment`` (autouse, before every test): every ``BRATS_*`` variable is removed except
  the ones the test command sets on purpose (:data:`KEPT_VARIABLES`), so a ``BRATS_ROOT`` or
  ``BRATS_SET`` on a developer's machine, or one that an earlier test's code set (``demo`` passes
  ``--set`` to its kernels through ``BRATS_SET``), never switches a test to other data or settings.
- ``synthetic_root``: a dataset written once per session. Tests must treat it as read-only input
  (as a Kaggle mount is); a test that needs to damage files copies a case first (``copy_case``).
- ``data_dir``: a private data and figures folder for one test module (config reads them at call time).

Markers: ``slow`` (torchrun runs, full-size volumes, trained models): ``make unit-fast`` skips them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from brats_utils.synthetic import write_synthetic_dataset

#: Set by the test command (the Makefile's TEST_ENV) to keep tests away from data/ and figures/.
KEPT_VARIABLES = ("BRATS_PROFILE", "BRATS_DATA_DIR", "BRATS_FIGURES_DIR")

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


@pytest.fixture(autouse=True)
def hermetic_environment():
    """Remove every ``BRATS_*`` variable but :data:`KEPT_VARIABLES` for one test (restored after)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("BRATS_") and name not in KEPT_VARIABLES]:
            patch.delenv(name)
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A private folder for this module: ``<root>/data`` as ``BRATS_DATA_DIR``, ``<root>/figures`` as
    ``BRATS_FIGURES_DIR``. Returns ``<root>``."""
    root = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BRATS_DATA_DIR", str(root / "data"))
        patch.setenv("BRATS_FIGURES_DIR", str(root / "figures"))
        yield root
