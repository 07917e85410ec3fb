"""Loading cases with every check, and writing segmentations in the BraTS submission format."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_utils import io
from brats_utils.datasets import case_from_folder, find_dataset
from brats_utils.errors import (
    LabelValueError,
    MissingModalityError,
    NonFiniteError,
    NotAVolumeError,
    NotCoregisteredError,
    ShapeMismatchError,
    UnreadableFileError,
)
from brats_utils.io import LoadedCase, load_case, save_segmentation
from brats_utils.labels import MODALITIES
from brats_utils.synthetic import FOREIGN_SCALING, real_affine, write_synthetic_dataset


def _fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_load_case_matches_nibabel_and_never_writes(synthetic_root: Path,
                                                    synthetic_shape: tuple[int, int, int]) -> None:
    before = _fingerprint(synthetic_root)
    for case in find_dataset(synthetic_root) + find_dataset(synthetic_root, "validation"):
        loaded = load_case(case)
        assert isinstance(loaded, LoadedCase) and loaded.case_id == case.case_id
        assert loaded.image.shape == (4, *synthetic_shape) and loaded.image.dtype == np.float32
        for channel, modality in enumerate(MODALITIES):  # channel order flair, t1, t1ce, t2
            reference = nib.load(case.modalities[modality]).get_fdata()
            np.testing.assert_array_equal(loaded.image[channel], reference)
        np.testing.assert_array_equal(loaded.affine, real_affine(synthetic_shape))
        assert isinstance(loaded.header, nib.Nifti1Header)
        if case.seg is None:
            assert loaded.labels is None
        else:
            assert loaded.labels.dtype == np.uint8 and set(np.unique(loaded.labels)) <= {0, 1, 2, 4}
            np.testing.assert_array_equal(loaded.labels, nib.load(case.seg).get_fdata())
    assert _fingerprint(synthetic_root) == before


def test_float32_stored_case_loads_like_the_others(synthetic_root: Path) -> None:
    case = find_dataset(synthetic_root)[1]
    assert nib.load(case.modalities["t1"]).get_data_dtype() == np.float32
    assert nib.load(case.seg).get_data_dtype() == np.float32
    loaded = load_case(case)
    assert loaded.image.dtype == np.float32 and loaded.labels.dtype == np.uint8
    assert 4 in loaded.labels


def _resave(path: Path, data: np.ndarray) -> None:
    reference = nib.load(path)
    nib.save(nib.Nifti1Image(data, reference.affine), path)


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).copy()


def _expect(error: type, match: str, case, path: Path) -> None:
    with pytest.raises(error, match=match) as info:
        load_case(case)
    message = str(info.value)
    assert case.case_id in message and path.name in message and "expected" in message


def test_missing_modality(copy_case) -> None:
    folder = copy_case("BraTS20_Training_001")
    case = case_from_folder(folder)
    case.modalities["t2"].unlink()
    _expect(MissingModalityError, "no t2 file", case, case.modalities["t2"])


def test_modalities_of_different_shapes(copy_case) -> None:
    case = case_from_folder(copy_case("BraTS20_Training_001"))
    _resave(case.modalities["t1ce"], _data(case.modalities["t1ce"])[:, :, :-2])
    _expect(ShapeMismatchError, r"t1ce has shape \(40, 40, 22\)", case, case.modalities["t1ce"])


def test_segmentation_of_another_shape(copy_case) -> None:
    case = case_from_folder(copy_case("BraTS20_Training_004"))
    _resave(case.seg, _data(case.seg)[1:])
    _expect(ShapeMismatchError, r"segmentation has shape \(39, 40, 24\)", case, case.seg)


@pytest.mark.parametrize(("value", "dtype", "shown"), [(3, np.uint8, "3"), (-1, np.int16, "-1"),
                                                       (1.5, np.float32, "1.5"), (255, np.uint8, "255")])
def test_label_values_outside_the_brats_set(copy_case, value, dtype, shown) -> None:
    case = case_from_folder(copy_case("BraTS20_Training_001"))
    labels = _data(case.seg).astype(dtype)
    labels[5, 5, 5] = value
    _resave(case.seg, labels)
    _expect(LabelValueError, rf"unexpected label values \[{shown}\]", case, case.seg)


def test_training_labels_are_not_file_labels(copy_case) -> None:
    """A mask saved with training labels (ET = 3) is caught, not silently mis-read."""
    case = case_from_folder(copy_case("BraTS20_Training_001"))
    labels = _data(case.seg)
    labels[labels == 4] = 3
    _resave(case.seg, labels)
    with pytest.raises(LabelValueError, match=r"\{0, 1, 2, 4\}"):
        load_case(case)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(copy_case, bad) -> None:
    case = case_from_folder(copy_case("BraTS20_Training_002"))  # stored as float32
    data = _data(case.modalities["flair"])
    data[3, 4, 5] = bad
    data[6, 7, 8] = bad
    _resave(case.modalities["flair"], data)
    _expect(NonFiniteError, "2 NaN or infinite voxels", case, case.modalities["flair"])


def test_truncated_file(copy_case) -> None:
    case = case_from_folder(copy_case("BraTS20_Training_001"))
    path = case.modalities["t1"]
    path.write_bytes(path.read_bytes()[:20_000])  # header intact, voxels cut off
    _expect(UnreadableFileError, "could not read the voxel data", case, path)


def test_truncated_gz_file(copy_case) -> None:
    case = case_from_folder(copy_case("BraTS20_Training_001"))
    gz = case.modalities["t1"].with_name(case.modalities["t1"].name + ".gz")
    gz.write_bytes(gzip.compress(case.modalities["t1"].read_bytes())[:6000])
    case.modalities["t1"].unlink()
    case = case_from_folder(case.folder)
    assert case.modalities["t1"] == gz
    _expect(UnreadableFileError, "could not read the voxel data", case, gz)


def test_not_a_nifti_file(copy_case) -> None:
    case = case_from_folder(copy_case("BraTS20_Training_001"))
    case.modalities["flair"].write_text("this is not an image")
    _expect(UnreadableFileError, "not a readable NIfTI image", case, case.modalities["flair"])


@pytest.mark.parametrize("shape", [(40, 40), (40, 40, 24, 2)])
def test_not_a_3d_volume(copy_case, shape) -> None:
    case = case_from_folder(copy_case("BraTS20_Training_001"))
    nib.save(nib.Nifti1Image(np.ones(shape, np.int16), np.eye(4)), case.modalities["t2"])
    _expect(NotAVolumeError, "holds an array of shape", case, case.modalities["t2"])


def test_trailing_singleton_axis_is_a_volume(copy_case) -> None:
    case = case_from_folder(copy_case("BraTS20_Training_001"))
    data = _data(case.modalities["t2"])
    _resave(case.modalities["t2"], data[..., None])
    loaded = load_case(case)
    np.testing.assert_array_equal(loaded.image[3], data)


def test_validation_case_has_no_labels(synthetic_root: Path) -> None:
    assert load_case(find_dataset(synthetic_root, "validation")[0]).labels is None


# --- writing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["BraTS20_Training_001.nii.gz", "BraTS20_Training_001.nii"])
def test_save_and_load_round_trip(synthetic_root: Path, tmp_path: Path, name: str) -> None:
    loaded = load_case(find_dataset(synthetic_root)[0])
    out = save_segmentation(loaded.labels, tmp_path / "predictions" / name, affine=loaded.affine,
                            header=loaded.header)
    assert out == tmp_path / "predictions" / name
    assert [p.name for p in out.parent.iterdir()] == [name]  # no temporary file left behind
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), loaded.labels)
    np.testing.assert_array_equal(written.affine, loaded.affine)
    assert written.header.get_zooms() == loaded.header.get_zooms()
    assert nib.aff2axcodes(written.affine) == ("L", "P", "S")
    assert (out.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    reread, _ = io.read_labels(out)
    np.testing.assert_array_equal(reread, loaded.labels)


def test_save_without_header_overwrites_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.zeros((8, 8, 8), np.int64)
    labels[2:4, 2:4, 2:4] = 4
    path = save_segmentation(labels, tmp_path / "seg.nii.gz", affine=real_affine((8, 8, 8)))
    first = path.read_bytes()

    def crash(image, filename):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_segmentation(np.zeros((8, 8, 8), np.uint8), path, affine=np.eye(4))
    assert path.read_bytes() == first  # the old file survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_save_rejects_bad_input(tmp_path: Path) -> None:
    training_labels = np.zeros((8, 8, 8), np.uint8)
    training_labels[0, 0, 0] = 3
    with pytest.raises(LabelValueError, match=r"\[3\].*3 -> 4"):
        save_segmentation(training_labels, tmp_path / "a.nii.gz", affine=np.eye(4))
    with pytest.raises(NotAVolumeError):
        save_segmentation(np.zeros((8, 8), np.uint8), tmp_path / "a.nii.gz", affine=np.eye(4))
    with pytest.raises(ValueError, match=r"\.nii"):
        save_segmentation(np.zeros((8, 8, 8), np.uint8), tmp_path / "a.npy", affine=np.eye(4))
    assert list(tmp_path.iterdir()) == []


# --- other copies' pitfalls: the foreign synthetic dataset ------------------------------------


@pytest.fixture(scope="module")
def foreign_root(tmp_path_factory: pytest.TempPathFactory, synthetic_shape) -> Path:
    """The session dataset's cases (same seed and shape) written the way other copies are."""
    root = tmp_path_factory.mktemp("foreign") / "dataset"
    return write_synthetic_dataset(root, 4, 1, synthetic_shape, seed=7, foreign=True)


def test_foreign_files_carry_the_pitfalls(foreign_root: Path) -> None:
    cases = find_dataset(foreign_root)
    assert len(cases) == 4 and cases[2].seg.name == "W39_1998.09.19_Segm.nii.gz"
    for case in cases:
        for path in [*case.modalities.values(), case.seg]:
            assert path.name.endswith(".nii.gz")
            image = nib.load(path)
            assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
            if image.get_data_dtype() == np.int16:
                assert (image.dataobj.slope, image.dataobj.inter) == FOREIGN_SCALING
    assert nib.load(cases[1].seg).get_data_dtype() == np.float32
    assert set(np.unique(nib.load(cases[1].seg).get_fdata()).tolist()) == {0.0, 1.0, 2.0, 4.0}


@pytest.mark.parametrize("index", [0, 1, 2])
def test_foreign_case_loads_like_the_kaggle_one(foreign_root: Path, synthetic_root: Path, index: int) -> None:
    """Orientation brought to the Kaggle files' LPS, scaling applied, float labels read as labels."""
    foreign = load_case(find_dataset(foreign_root)[index])
    kaggle = load_case(find_dataset(synthetic_root)[index])
    np.testing.assert_array_equal(foreign.affine, kaggle.affine)
    np.testing.assert_array_equal(foreign.labels, kaggle.labels)
    assert foreign.labels.dtype == np.uint8
    # scaled int16 storage keeps every value to within half its slope
    assert np.abs(foreign.image - kaggle.image).max() <= FOREIGN_SCALING[0] / 2
    assert (foreign.image[:, kaggle.image[0] == 0] == 0).all()  # background still exactly 0


def test_prediction_goes_back_in_the_inputs_orientation(foreign_root: Path, tmp_path: Path) -> None:
    case = find_dataset(foreign_root)[0]
    loaded = load_case(case)
    out = save_segmentation(loaded.labels, tmp_path / "seg.nii.gz", affine=loaded.affine,
                            header=loaded.header)
    written, source = nib.load(out), nib.load(case.seg)
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(source.dataobj))
    assert written.get_data_dtype() == np.uint8 and written.dataobj.slope == 1.0


def test_modalities_not_coregistered(foreign_root: Path) -> None:
    case = find_dataset(foreign_root)[3]
    _expect(NotCoregisteredError, "t2 has another affine than", case, case.modalities["t2"])


def test_segmentation_not_coregistered_and_small_differences_tolerated(copy_case) -> None:
    case = case_from_folder(copy_case("BraTS20_Training_001"))
    reference = nib.load(case.modalities["t1"])
    nudged = reference.affine.copy()
    nudged[:3, 3] += 1e-5  # rounding in another tool's header: still one grid
    nib.save(nib.Nifti1Image(_data(case.modalities["t1"]), nudged), case.modalities["t1"])
    assert load_case(case).image.shape[0] == 4
    moved = reference.affine.copy()
    moved[2, 3] += 1.0
    nib.save(nib.Nifti1Image(_data(case.seg), moved), case.seg)
    _expect(NotCoregisteredError, "the segmentation has another affine", case, case.seg)
