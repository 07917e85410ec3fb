"""The synthetic stand-in against the facts of the real Kaggle copy (shared/DATA-FACTS.md)."""

from __future__ import annotations

import csv
import glob
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brats_utils import synthetic
from brats_utils.errors import BratsError
from brats_utils.synthetic import (
    QUIRK_SEG_NAME,
    is_low_grade,
    quirk_case_index,
    real_affine,
    synthesize_case,
    write_synthetic_dataset,
)

TRAIN = "BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData"
VAL = "BraTS2020_ValidationData/MICCAI_BraTS2020_ValidationData"
MODS = ("flair", "t1", "t1ce", "t2")


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def _csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_layout_matches_the_kaggle_copy(synthetic_root: Path) -> None:
    expected = {f"{TRAIN}/name_mapping.csv", f"{TRAIN}/survival_info.csv",
                f"{VAL}/name_mapping_validation_data.csv", f"{VAL}/survival_evaluation.csv"}
    for i in range(1, 5):
        case = f"BraTS20_Training_{i:03d}"
        expected |= {f"{TRAIN}/{case}/{case}_{m}.nii" for m in MODS}
        # the case-355 quirk sits on case 003 of 4 (second to last)
        expected.add(f"{TRAIN}/{case}/" + ("W39_1998.09.19_Segm.nii" if i == 3 else f"{case}_seg.nii"))
    for i in range(1, 3):
        case = f"BraTS20_Validation_{i:03d}"
        expected |= {f"{VAL}/{case}/{case}_{m}.nii" for m in MODS}  # no segmentation
    assert _files(synthetic_root) == expected


def test_files_are_uncompressed_nifti1(synthetic_root: Path) -> None:
    for path in synthetic_root.rglob("*.nii"):
        head = path.read_bytes()[:348]
        assert head[:2] != b"\x1f\x8b"  # not gzip
        assert head[344:348] == b"n+1\x00"  # single-file NIfTI-1 magic


def test_csv_headers_and_values_are_the_real_ones(synthetic_root: Path) -> None:
    mapping = _csv(synthetic_root / TRAIN / "name_mapping.csv")
    assert mapping[0] == ["Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
                          "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"]
    assert [row[5] for row in mapping[1:]] == [f"BraTS20_Training_{i:03d}" for i in range(1, 5)]
    grades = {row[5]: row[0] for row in mapping[1:]}
    assert set(grades.values()) == {"HGG", "LGG"}

    survival = _csv(synthetic_root / TRAIN / "survival_info.csv")
    assert survival[0] == ["Brats20ID", "Age", "Survival_days", "Extent_of_Resection"]
    days = [row[2] for row in survival[1:]]
    assert "ALIVE (361 days later)" in days
    assert all(d.isdigit() for d in days if not d.startswith("ALIVE"))
    assert all(grades[row[0]] == "HGG" for row in survival[1:])  # survival data are for HGG cases
    assert {row[3] for row in survival[1:]} <= {"GTR", "STR", ""}
    assert all(0 < float(row[1]) < 100 for row in survival[1:])

    val_mapping = _csv(synthetic_root / VAL / "name_mapping_validation_data.csv")
    assert val_mapping[0][-1] == "BraTS_2020_subject_ID" and "Grade" not in val_mapping[0]
    assert [row[-1] for row in val_mapping[1:]] == ["BraTS20_Validation_001", "BraTS20_Validation_002"]
    val_survival = _csv(synthetic_root / VAL / "survival_evaluation.csv")
    assert val_survival[0] == ["BraTS20ID", "Age", "ResectionStatus"]


def test_dtypes_affine_and_label_values(synthetic_root: Path, synthetic_shape: tuple[int, int, int]) -> None:
    real = np.array([[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_array_equal(real_affine((240, 240, 155)), real)
    for path in sorted((synthetic_root / TRAIN).rglob("*.nii")):
        image = nib.load(path)
        assert image.shape == synthetic_shape
        np.testing.assert_array_equal(image.affine, real_affine(synthetic_shape))
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        assert image.header.get_zooms() == (1.0, 1.0, 1.0)
        is_seg = not path.stem.endswith(MODS)
        stored_as_float = path.parent.name == "BraTS20_Training_002"
        expected = np.float32 if stored_as_float else (np.uint8 if is_seg else np.int16)
        assert image.get_data_dtype() == expected, path.name
        data = np.asanyarray(image.dataobj)
        if is_seg:
            assert set(np.unique(data)) <= {0, 1, 2, 4}


def test_grades_follow_the_real_release() -> None:
    # mapped onto all 369 cases, the synthetic grades are exactly the release's 293 HGG / 76 LGG
    low = [i for i in range(1, 370) if is_low_grade(i, 369)]
    assert len(low) == 76 and low[0] == 260 and low[-1] == 335


def test_quirk_case_index() -> None:
    assert quirk_case_index(369) == 355
    assert quirk_case_index(400) == 355
    assert quirk_case_index(4) == 3
    assert quirk_case_index(1) == 1


def test_sorted_glob_pairing_goes_wrong_but_the_quirk_case_keeps_its_files(synthetic_root: Path) -> None:
    """Why the project pairs files inside case folders: the naive recipe shifts masks."""
    flairs = sorted(glob.glob(str(synthetic_root / TRAIN / "*" / "*_flair.nii")))
    segs = sorted(glob.glob(str(synthetic_root / TRAIN / "*" / "*seg.nii")))
    assert len(segs) == len(flairs) - 1
    naive = {Path(f).parent.name: Path(s).parent.name for f, s in zip(flairs, segs, strict=False)}
    assert naive["BraTS20_Training_003"] == "BraTS20_Training_004"  # wrong mask
    assert (synthetic_root / TRAIN / "BraTS20_Training_003" / QUIRK_SEG_NAME).is_file()


def test_low_grade_cases_have_no_enhancing_tumour(synthetic_root: Path) -> None:
    mapping = {row[5]: row[0] for row in _csv(synthetic_root / TRAIN / "name_mapping.csv")[1:]}
    for case_id, grade in mapping.items():
        seg = next(p for p in (synthetic_root / TRAIN / case_id).iterdir() if not p.stem.endswith(MODS))
        labels = set(np.unique(np.asanyarray(nib.load(seg).dataobj)).tolist())
        assert (4 in labels) == (grade == "HGG"), case_id
        assert {0, 2} <= labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_values_and_tumour(seed: int) -> None:
    image, labels = synthesize_case((64, 64, 40), seed=seed)
    assert image.shape == (4, 64, 64, 40) and image.dtype == np.float32
    assert labels.shape == (64, 64, 40) and labels.dtype == np.uint8
    np.testing.assert_array_equal(image, np.rint(image))
    assert image.min() == 0 and image.max() <= np.iinfo(np.int16).max
    nonzero = image > 0
    brain = nonzero.any(axis=0)
    np.testing.assert_array_equal(nonzero.all(axis=0), brain)  # same brain in every modality
    assert 0.05 < brain.mean() < 0.4  # a head in the middle, zero around it
    assert not brain[0].any() and not brain[:, 0].any()
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    assert not labels[~brain].any()  # tumour inside the brain only
    assert 0.002 < (labels > 0).mean() < 0.1
    # nested regions: oedema all around the core (1 and 4), the enhancing rim around the necrosis
    core, necrosis = np.isin(labels, (1, 4)), labels == 1
    core_shell = ndimage.binary_dilation(core) & ~core & brain
    assert (labels[core_shell] == 2).all()
    necrosis_shell = ndimage.binary_dilation(necrosis) & ~necrosis
    assert (labels[necrosis_shell] == 4).all()


def _median(image: np.ndarray, mask: np.ndarray, modality: str) -> float:
    return float(np.median(image[MODS.index(modality)][mask]))


@pytest.mark.parametrize("seed", [3, 4])
def test_phantom_contrasts_are_the_textbook_ones(seed: int) -> None:
    image, labels = synthesize_case((96, 96, 64), seed=seed)
    healthy = (image[0] > 0) & (labels == 0)
    oedema, enhancing, necrosis = labels == 2, labels == 4, labels == 1
    for modality in ("flair", "t2"):  # oedema bright in FLAIR and T2
        assert _median(image, oedema, modality) > 1.3 * _median(image, healthy, modality)
    # the enhancing rim lights up after contrast, around a dark necrotic core
    assert _median(image, enhancing, "t1ce") > 1.5 * _median(image, healthy, "t1ce")
    assert _median(image, enhancing, "t1ce") > 2 * _median(image, necrosis, "t1ce")
    assert _median(image, necrosis, "t1ce") < _median(image, healthy, "t1ce")
    # T1 without contrast does not show the rim
    assert _median(image, enhancing, "t1") < _median(image, healthy, "t1")


def test_intensity_scale_differs_per_case() -> None:
    medians = [float(np.median(img[1][img[1] > 0])) for img, _ in
               (synthesize_case((48, 48, 32), seed=s) for s in range(6))]
    assert max(medians) / min(medians) > 1.5  # raw units vary: normalisation matters


def test_low_grade_option_and_determinism() -> None:
    image, labels = synthesize_case((48, 48, 32), seed=5, has_enhancing=False)
    assert 4 not in labels and 2 in labels and 1 in labels
    again = synthesize_case((48, 48, 32), seed=5, has_enhancing=False)
    np.testing.assert_array_equal(image, again[0])
    np.testing.assert_array_equal(labels, again[1])
    other, _ = synthesize_case((48, 48, 32), seed=6, has_enhancing=False)
    assert not np.array_equal(image, other)


def test_shape_is_validated() -> None:
    with pytest.raises(ValueError, match="shape"):
        synthesize_case((4, 40, 40))


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_is_deterministic_and_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_synthetic_dataset(tmp_path / "a", 2, 1, (24, 24, 16), seed=3)
    b = write_synthetic_dataset(tmp_path / "b", 2, 1, (24, 24, 16), seed=3)
    assert _digest(a) == _digest(b)
    c = write_synthetic_dataset(tmp_path / "c", 2, 1, (24, 24, 16), seed=4)
    assert _digest(a) != _digest(c)
    # a complete dataset with the same parameters is not written again
    monkeypatch.setattr(synthetic, "synthesize_case", lambda *a, **k: pytest.fail("regenerated"))
    assert write_synthetic_dataset(a, 2, 1, (24, 24, 16), seed=3) == a
    monkeypatch.undo()
    # other parameters: rewritten in place, no temporary folder left behind
    write_synthetic_dataset(a, 3, 1, (24, 24, 16), seed=3)
    assert (a / TRAIN / "BraTS20_Training_003").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_refuses_to_write_into_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BratsError, match="refusing"):
        write_synthetic_dataset(tmp_path, 1, 0, (24, 24, 16))
    assert (tmp_path / "notes.txt").read_text() == "mine"
