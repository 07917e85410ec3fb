"""The synthetic stand-in against the facts of the real Kaggle copy (shared/DATA-FACTS.md)."""

from __future__ import annotations

import csv
import glob
import hashlib
import sys
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
    # oedema around most of the core (1 and 4), the enhancing rim around most of the necrosis
    core, necrosis = np.isin(labels, (1, 4)), labels == 1
    core_shell = ndimage.binary_dilation(core) & ~core & brain
    assert (labels[core_shell] == 2).mean() > 0.8
    necrosis_shell = ndimage.binary_dilation(necrosis) & ~necrosis
    assert (labels[necrosis_shell] == 4).mean() > 0.5


def _median(image: np.ndarray, mask: np.ndarray, modality: str) -> float:
    return float(np.median(image[MODS.index(modality)][mask]))


@pytest.mark.parametrize("seed", [3, 4])
def test_tumour_contrasts_overlap_normal_tissue(seed: int) -> None:
    image, labels = synthesize_case((96, 96, 64), seed=seed)
    healthy = (image[0] > 0) & (labels == 0)
    oedema, enhancing, necrosis = labels == 2, labels == 4, labels == 1
    for modality in ("flair", "t2"):  # oedema brighter than healthy tissue in FLAIR and T2 ...
        assert _median(image, oedema, modality) > 1.1 * _median(image, healthy, modality)
    # ... but not so bright that one threshold finds the tumour
    scores = synthetic.threshold_baseline(image, labels)
    assert scores["wt_flair"] < 0.9 and scores["wt_t2"] < 0.9 and scores["et_t1ce"] < 0.8
    # the enhancing rim lights up after contrast, around a dark necrotic core
    assert _median(image, enhancing, "t1ce") > 1.5 * _median(image, healthy, "t1ce")
    assert _median(image, enhancing, "t1ce") > 2 * _median(image, necrosis, "t1ce")
    assert _median(image, necrosis, "t1ce") < _median(image, healthy, "t1ce")
    # T1 without contrast does not show the rim; normal structures enhance as brightly on T1ce
    def contrast(modality: str) -> float:
        return _median(image, enhancing, modality) / _median(image, healthy, modality)

    assert contrast("t1") < 1.2 < 1.5 < contrast("t1ce")
    assert (image[2][healthy] >= _median(image, enhancing, "t1ce")).sum() > 0.2 * enhancing.sum()


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(mask))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _fit_to(volume: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """``volume`` cropped to its brain and resampled onto ``box`` (bounding boxes aligned)."""
    crop = volume[_bbox(volume > 0.5)].astype(np.float32)
    size = [s.stop - s.start for s in box]
    return ndimage.zoom(crop, [n / m for n, m in zip(size, crop.shape, strict=True)], order=1, grid_mode=True,
                        mode="grid-constant")


SHAPE = (120, 120, 78)


@pytest.fixture(scope="module")
def undeformed() -> tuple[np.ndarray, np.ndarray]:
    return synthesize_case(SHAPE, seed=11, deform=False)


def test_anatomy_is_the_mni_template(undeformed) -> None:
    from nilearn import datasets

    image, _ = undeformed
    brain = image.any(axis=0)
    template = nib.as_closest_canonical(datasets.load_mni152_template(resolution=1))  # RAS
    mask = np.asarray(template.get_fdata())[::-1, ::-1] > 0  # the Kaggle files' LPS voxel order
    box = _bbox(brain)
    assert _dice(brain[box], _fit_to(mask, box) > 0.5) >= 0.9
    # placed like a BraTS brain: centred in x and y, filling most of the height, not cut at the sides
    centre = [(s.start + s.stop - 1) / 2 / n for s, n in zip(box, SHAPE, strict=True)]
    assert abs(centre[0] - 0.5) < 0.05 and abs(centre[1] - 0.5) < 0.05
    extent = [(s.stop - s.start) / n for s, n in zip(box, SHAPE, strict=True)]
    assert 0.5 < extent[0] < 0.65 and 0.6 < extent[1] < 0.75 and 0.85 < extent[2] <= 1.0


def test_contrast_orderings_per_modality(undeformed) -> None:
    image, labels = undeformed
    brain = image.any(axis=0)
    box = _bbox(brain)
    far_from_tumour = ~ndimage.binary_dilation(labels > 0, iterations=6)[box]
    tissue = {name: _fit_to(m, box) for name, m in
              zip(("wm", "gm", "csf"), synthetic.mni_template().maps[1:4], strict=True)}
    pure = {name: (t > 0.9) & far_from_tumour & brain[box] for name, t in tissue.items()}
    median = {(modality, name): float(np.median(image[MODS.index(modality)][box][mask]))
              for modality in MODS for name, mask in pure.items()}
    assert median["t1", "wm"] > median["t1", "gm"] > median["t1", "csf"]
    assert median["t2", "csf"] > median["t2", "gm"] > median["t2", "wm"]
    assert median["flair", "gm"] > median["flair", "wm"] > median["flair", "csf"]
    assert median["t1ce", "wm"] > median["t1ce", "gm"] > median["t1ce", "csf"]


def test_every_case_has_its_own_brain(undeformed) -> None:
    brains = [synthesize_case(SHAPE, seed=s)[0].any(axis=0) for s in (11, 12)]
    reference = undeformed[0].any(axis=0)
    for brain in brains:
        assert 0.75 < _dice(brain, reference) < 0.97  # the same anatomy, moved and deformed
    assert _dice(*brains) < 0.97


def test_multifocal_and_enhancement_free_cases_occur() -> None:
    foci, enhancing = [], []
    for seed in range(12):
        _, labels = synthesize_case((48, 48, 32), seed=seed, has_enhancing=seed % 3 != 0)
        core = np.isin(labels, (1, 4))
        sizes = np.bincount(ndimage.label(core)[0].ravel())[1:]
        foci.append(int((sizes >= 3).sum()))
        enhancing.append(4 in labels)
    assert max(foci) >= 2 and min(foci) >= 1
    assert enhancing == [seed % 3 != 0 for seed in range(12)]


def test_threshold_baseline() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:5, 2:5, 2:5] = 2
    labels[3, 3, 3] = 4
    image = rng.integers(1, 100, size=(4, 10, 10, 10)).astype(np.float32)
    image[0][labels > 0] = 500  # FLAIR separates the tumour perfectly
    image[2][labels == 4] = 400  # so does T1ce the enhancing voxel
    scores = synthetic.threshold_baseline(image, labels)
    assert scores["wt_flair"] == 1.0 and scores["et_t1ce"] == 1.0 and scores["wt_t2"] < 0.5
    assert np.isnan(synthetic.threshold_baseline(image, np.minimum(labels, 2))["et_t1ce"])


def test_missing_nilearn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nilearn", None)
    with pytest.raises(ImportError, match=r"pip install 'nilearn"):
        synthetic.anatomy._load_mni152()


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
    monkeypatch.setattr(synthetic.kaggle, "synthesize_case", lambda *a, **k: pytest.fail("regenerated"))
    assert write_synthetic_dataset(a, 2, 1, (24, 24, 16), seed=3) == a
    monkeypatch.undo()
    # other parameters: rewritten in place, no temporary folder left behind (the empty lock files stay)
    write_synthetic_dataset(a, 3, 1, (24, 24, 16), seed=3)
    assert (a / TRAIN / "BraTS20_Training_003").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.lock", ".b.lock", ".c.lock", "a", "b", "c"]


def test_refuses_to_write_into_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BratsError, match="refusing"):
        write_synthetic_dataset(tmp_path, 1, 0, (24, 24, 16))
    assert (tmp_path / "notes.txt").read_text() == "mine"
