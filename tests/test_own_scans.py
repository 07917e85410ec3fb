"""Own scans: which files of a folder form a four-modality scan set (:func:`brats_utils.datasets.scan_sets`),
and, where the BrainLesion preprocessing package is installed, the call docs/own-scans.md shows for it.

``predict`` on such folders, compared with the Kaggle layout, is in tests/test_cli.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_utils.datasets import find_dataset, scan_sets
from brats_utils.errors import DatasetNotFoundError
from brats_utils.labels import BRATS2020, BRATS2023, MODALITIES


def _touch_scans(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), folder / name)


def test_a_flat_folder_groups_files_by_the_name_before_the_modality(tmp_path):
    _touch_scans(tmp_path, ["Anna_T1.nii.gz", "Anna_t1ce.nii.gz", "Anna_t2.nii.gz", "Anna_FLAIR.nii.gz",
                            "Anna_seg.nii.gz", "bob_flair.nii", "bob_t1.nii", "bob_t1ce.nii", "bob_t2.nii",
                            "mask.nii.gz"])
    (tmp_path / "notes.txt").write_text("not a scan")
    anna, bob = scan_sets(tmp_path)
    assert (anna.case_id, bob.case_id) == ("Anna", "bob")
    names = {modality: path.name for modality, path in anna.modalities.items()}
    assert names == {"flair": "Anna_FLAIR.nii.gz", "t1": "Anna_T1.nii.gz", "t1ce": "Anna_t1ce.nii.gz",
                     "t2": "Anna_t2.nii.gz"}
    assert anna.seg.name == "Anna_seg.nii.gz" and bob.seg is None
    assert list(bob.modalities) == list(MODALITIES) and anna.scheme is BRATS2020


def test_brats2023_names_give_brats2023_labels_and_bare_names_the_folder_name(tmp_path):
    _touch_scans(tmp_path / "gli", ["x-t2f.nii.gz", "x-t1n.nii.gz", "x-t1c.nii.gz", "x-t2w.nii.gz"])
    (case,) = scan_sets(tmp_path / "gli")
    assert case.scheme is BRATS2023 and case.modalities["t1ce"].name == "x-t1c.nii.gz"
    _touch_scans(tmp_path / "patient7", ["flair.nii", "t1.nii", "t1ce.nii", "t2.nii"])
    (case,) = scan_sets(tmp_path / "patient7")
    assert case.case_id == "patient7" and case.modalities["t1"].name == "t1.nii"


def test_folders_without_scan_sets_are_left_to_the_layouts(synthetic_root, tmp_path):
    assert scan_sets(synthetic_root) == []  # a Kaggle dataset root: no NIfTI file directly in it
    assert scan_sets(tmp_path / "missing") == []
    _touch_scans(tmp_path / "labels", ["case1_seg.nii.gz", "BRATS_001.nii.gz"])  # labels alone, MSD names
    assert scan_sets(tmp_path / "labels") == []


def test_one_case_folder_of_the_kaggle_layout_is_its_own_scan_set(synthetic_root):
    case_id = "BraTS20_Training_001"
    (expected,) = [case for case in find_dataset(synthetic_root) if case.case_id == case_id]
    (case,) = scan_sets(expected.folder)
    assert (case.case_id, case.modalities, case.seg) == (expected.case_id, expected.modalities, expected.seg)


def test_a_case_folder_given_as_a_dataset_says_it_is_one_case(synthetic_root):
    """Before: "no BraTS 2020 training cases found; the folder holds BraTS 2020", which contradicts itself."""
    folder = next(synthetic_root.rglob("BraTS20_Training_001"))
    with pytest.raises(DatasetNotFoundError, match="the folder is one BraTS 2020 case, not a dataset"):
        find_dataset(folder)


# --- the BrainLesion preprocessing package (optional) ---------------------------------------------


def test_brainles_preprocessing_coregisters_and_registers_to_an_atlas_as_docs_own_scans_shows(synthetic_root,
                                                                                              tmp_path):
    """The Python calls of docs/own-scans.md, run as far as they go offline: co-registration of the three
    other modalities to T1ce, then the T1ce to an atlas (a stand-in here: the package downloads SRI24 on first
    use, and HD-BET's weights for skull-stripping) and the others carried along. Needs
    ``pip install brainles-preprocessing``, which this project never requires."""
    pytest.importorskip("brainles_preprocessing", reason="optional: pip install brainles-preprocessing "
                        "(docs/own-scans.md); not a dependency of this project")
    from brainles_preprocessing.modality import CenterModality, Modality
    from brainles_preprocessing.preprocessor import AtlasCentricPreprocessor
    from brainles_preprocessing.registration import ANTsRegistrator

    case = next(c for c in find_dataset(synthetic_root) if c.case_id == "BraTS20_Training_001")
    atlas_image = nib.load(case.modalities["t1"])
    atlas_path = tmp_path / "atlas.nii.gz"  # the T1 itself, moved by 5 mm: a target with another affine
    shifted = atlas_image.affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(atlas_image.dataobj, np.float32), shifted), atlas_path)
    scans = tmp_path / "scans"
    scans.mkdir()
    for modality, path in case.modalities.items():
        shutil.copy(path, scans / f"{modality}.nii")

    out = tmp_path / "preprocessed"
    center = CenterModality("t1c", scans / "t1ce.nii", raw_skull_output_path=out / "t1ce.nii.gz",
                            atlas_correction=False)
    moving = [Modality(name, scans / f"{name}.nii", raw_skull_output_path=out / f"{name}.nii.gz",
                       atlas_correction=False) for name in ("t1", "t2", "flair")]
    preprocessor = AtlasCentricPreprocessor(center, moving, registrator=ANTsRegistrator(),
                                            atlas_image_path=atlas_path, temp_folder=tmp_path / "work",
                                            use_gpu=False)
    preprocessor.run_coregistration(save_dir_coregistration=tmp_path / "coregistration")
    preprocessor.run_atlas_registration(save_dir_atlas_registration=tmp_path / "atlas-space")
    written = {path.name for path in (tmp_path / "atlas-space").glob("*.nii.gz")}
    assert {f"atlas__{name}.nii.gz" for name in ("t1c", "t1", "t2", "flair")} <= written
    registered = nib.load(tmp_path / "atlas-space" / "atlas__t1c.nii.gz")
    assert registered.shape == atlas_image.shape and np.allclose(registered.affine, shifted, atol=1e-3)
