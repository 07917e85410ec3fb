"""Finding, pairing, downloading (up to the network boundary) and verifying datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import kagglehub
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import requests

from brats_utils import config, download
from brats_utils.config import get_profile
from brats_utils.datasets import KAGGLE_HANDLE, case_from_folder, find_brats2020, find_split_dirs
from brats_utils.download import download_brats2020, verify_dataset
from brats_utils.errors import BratsError, DatasetNotFoundError, DownloadError, MissingModalityError
from brats_utils.io import Case
from brats_utils.labels import MODALITIES
from brats_utils.pipeline import ensure_dataset

TRAIN = Path("BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData")
VAL = Path("BraTS2020_ValidationData/MICCAI_BraTS2020_ValidationData")


@pytest.fixture
def offline_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No BRATS_ROOT, no Kaggle mount, an empty kagglehub cache, and a network that must not be used."""
    monkeypatch.delenv(config.ROOT_ENV, raising=False)
    monkeypatch.setattr(download, "KAGGLE_INPUT", tmp_path / "kaggle-input")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub-cache"))

    def no_network(*args, **kwargs):
        pytest.fail("the network was used")

    monkeypatch.setattr(kagglehub, "dataset_download", no_network)
    return tmp_path


@pytest.fixture
def dataset_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    """A copy of the session dataset that a test may damage."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "copy"))


# --- finding folders and pairing files -----------------------------------------------------


def test_find_split_dirs_below_any_level(synthetic_root: Path, tmp_path: Path) -> None:
    expected = {"training": synthetic_root / TRAIN, "validation": synthetic_root / VAL}
    assert find_split_dirs(synthetic_root) == expected
    assert find_split_dirs(synthetic_root / TRAIN) == {"training": synthetic_root / TRAIN}
    # deep below, as in the kagglehub cache: datasets/<owner>/<slug>/versions/1/...
    nested = tmp_path / "datasets" / "awsaf49" / "brats20-dataset-training-validation" / "versions"
    nested.mkdir(parents=True)
    (nested / "1").symlink_to(synthetic_root, target_is_directory=True)
    assert find_split_dirs(tmp_path) == {k: nested / "1" / v.relative_to(synthetic_root)
                                         for k, v in expected.items()}
    assert find_split_dirs(tmp_path / "datasets") != {}
    assert find_split_dirs(tmp_path, max_depth=2) == {}
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        find_split_dirs(tmp_path / "nowhere")


def test_find_brats2020_pairs_every_case_inside_its_folder(synthetic_root: Path) -> None:
    cases = find_brats2020(synthetic_root)
    assert [c.case_id for c in cases] == [f"BraTS20_Training_{i:03d}" for i in range(1, 5)]
    for case in cases:
        assert list(case.modalities) == list(MODALITIES)
        for modality, path in case.modalities.items():
            assert path.parent == case.folder and path.name == f"{case.case_id}_{modality}.nii"
        assert case.seg is not None and case.seg.parent == case.folder
    assert cases[2].seg.name == "W39_1998.09.19_Segm.nii"  # the case-355 quirk, found by elimination
    validation = find_brats2020(synthetic_root, "validation")
    assert [c.case_id for c in validation] == ["BraTS20_Validation_001", "BraTS20_Validation_002"]
    assert all(c.seg is None for c in validation)


def test_find_brats2020_errors(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        find_brats2020(synthetic_root, "test")
    with pytest.raises(DatasetNotFoundError, match="no validation folder"):
        find_brats2020(synthetic_root / TRAIN, "validation")


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_pairing_accepts_gz_any_case_and_ignores_stray_files(tmp_path: Path) -> None:
    folder = tmp_path / "BraTS20_Training_010"
    _touch(folder, "BraTS20_Training_010_FLAIR.nii.gz", "BraTS20_Training_010_t1.nii.gz",
           "BraTS20_Training_010_t1ce.nii", "BraTS20_Training_010_T2.NII.GZ",
           "BraTS20_Training_010_seg.nii.gz", "notes.txt", "survival_info.csv", ".DS_Store", "thumbnail.png")
    (folder / "subfolder").mkdir()
    case = case_from_folder(folder)
    assert case == Case("BraTS20_Training_010",
                        {"flair": folder / "BraTS20_Training_010_FLAIR.nii.gz",
                         "t1": folder / "BraTS20_Training_010_t1.nii.gz",
                         "t1ce": folder / "BraTS20_Training_010_t1ce.nii",
                         "t2": folder / "BraTS20_Training_010_T2.NII.GZ"},
                        folder / "BraTS20_Training_010_seg.nii.gz", folder)


def test_pairing_finds_a_misnamed_segmentation_by_elimination(tmp_path: Path) -> None:
    folder = tmp_path / "BraTS20_Training_355"
    _touch(folder, *(f"BraTS20_Training_355_{m}.nii" for m in MODALITIES), "W39_1998.09.19_Segm.nii")
    assert case_from_folder(folder).seg == folder / "W39_1998.09.19_Segm.nii"
    # a properly named segmentation wins over a stray extra NIfTI file
    _touch(folder, "BraTS20_Training_355_seg.nii")
    assert case_from_folder(folder).seg == folder / "BraTS20_Training_355_seg.nii"


def test_pairing_errors_name_case_and_expectation(tmp_path: Path) -> None:
    folder = tmp_path / "BraTS20_Training_020"
    _touch(folder, "BraTS20_Training_020_flair.nii", "BraTS20_Training_020_t1.nii",
           "BraTS20_Training_020_t2.nii", "BraTS20_Training_020_seg.nii")
    with pytest.raises(MissingModalityError, match="no t1ce file, case BraTS20_Training_020") as info:
        case_from_folder(folder)
    assert info.value.case_id == "BraTS20_Training_020" and "_t1ce.nii" in info.value.expected
    _touch(folder, "BraTS20_Training_020_t1ce.nii", "BraTS20_Training_020_t1ce.nii.gz")
    with pytest.raises(BratsError, match="2 t1ce files"):
        case_from_folder(folder)
    (folder / "BraTS20_Training_020_t1ce.nii.gz").unlink()
    (folder / "BraTS20_Training_020_seg.nii").unlink()
    _touch(folder, "mask_a.nii", "mask_b.nii")
    with pytest.raises(BratsError, match="cannot tell the segmentation"):
        case_from_folder(folder)


# --- getting the data: local copies first, the network only when asked ----------------------


def test_offline_download_says_what_happened_and_how_to_proceed(offline_world: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(handle, path=None, *, force_download=False, output_dir=None):
        calls.append(handle)
        raise requests.exceptions.ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(DownloadError) as info:
        download_brats2020()
    message = str(info.value)
    assert calls == [KAGGLE_HANDLE] and KAGGLE_HANDLE.endswith("/versions/1")  # pinned version
    assert "offline" in message and "Failed to resolve" in message
    for remedy in ("BRATS_ROOT", "Add Input", "synthetic", "python -m brats_utils synth"):
        assert remedy in message
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)


def test_refused_access_mentions_login(offline_world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    response = requests.Response()
    response.status_code = 403

    def refused(*args, **kwargs):
        raise requests.exceptions.HTTPError("403 Forbidden", response=response)

    monkeypatch.setattr(kagglehub, "dataset_download", refused)
    with pytest.raises(DownloadError, match="403.*kagglehub.login"):
        download_brats2020()


def test_download_returns_the_dataset_root(offline_world: Path, synthetic_root: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    forced = []

    def fake_download(handle, path=None, *, force_download=False, output_dir=None):
        forced.append(force_download)
        return str(synthetic_root)

    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    assert download_brats2020() == synthetic_root
    assert download_brats2020(force=True) == synthetic_root
    assert forced == [False, True]
    monkeypatch.setattr(kagglehub, "dataset_download", lambda *a, **k: str(offline_world))
    with pytest.raises(DatasetNotFoundError, match="holds no BraTS 2020 training folder"):
        download_brats2020()


def test_local_copies_are_used_without_network(offline_world: Path, synthetic_root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # 1. the kagglehub cache of the pinned version
    cache = offline_world / "kagglehub-cache" / "datasets" / KAGGLE_HANDLE
    cache.parent.mkdir(parents=True)
    cache.symlink_to(synthetic_root, target_is_directory=True)
    assert download.find_local_brats2020() == cache
    assert download_brats2020() == cache
    # 2. a dataset attached to a Kaggle notebook wins over the cache
    mount = offline_world / "kaggle-input" / "datasets" / "awsaf49" / "brats20-dataset-training-validation"
    mount.parent.mkdir(parents=True)
    mount.symlink_to(synthetic_root, target_is_directory=True)
    assert download_brats2020() == mount
    # 3. your own copy ($BRATS_ROOT, read by config.brats_root) wins over both, and a wrong one is an
    # error, not silently ignored
    monkeypatch.setenv("BRATS_ROOT", str(synthetic_root / "BraTS2020_TrainingData"))
    assert config.brats_root() == synthetic_root / "BraTS2020_TrainingData"
    assert download_brats2020(config.brats_root()) == synthetic_root / TRAIN
    assert download_brats2020() == mount  # the folder is an argument: nothing below config reads the variable
    (offline_world / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="BRATS_ROOT"):
        download_brats2020(offline_world / "empty")
    with pytest.raises(DatasetNotFoundError, match="BRATS_ROOT names a folder that does not exist"):
        download_brats2020(offline_world / "typo")


def test_ensure_dataset_synthetic_profile_never_touches_the_network(
    offline_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRATS_DATA_DIR", str(offline_world / "data"))
    profile = get_profile("ci").with_overrides(synthetic_train_cases=2, synthetic_val_cases=1,
                                               synthetic_shape=(24, 24, 16), seed=5)
    root = ensure_dataset(profile)
    assert root == offline_world / "data" / "synthetic" / "ci-24x24x16-seed5"
    assert [c.case_id for c in find_brats2020(root)] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert ensure_dataset(profile) == root  # second call: already there


def test_ensure_dataset_real_profile_or_brats_root(offline_world: Path, synthetic_root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kagglehub, "dataset_download", lambda *a, **k: str(synthetic_root))
    assert ensure_dataset(get_profile("gpu")) == synthetic_root
    monkeypatch.setattr(kagglehub, "dataset_download", lambda *a, **k: pytest.fail("network"))
    monkeypatch.setenv("BRATS_ROOT", str(synthetic_root))
    assert ensure_dataset(get_profile("ci")) == synthetic_root


# --- verification ----------------------------------------------------------------------------


def test_verify_a_clean_dataset(synthetic_root: Path) -> None:
    table, summary = verify_dataset(synthetic_root, progress=False)
    assert list(table["case_id"]) == [f"BraTS20_Training_{i:03d}" for i in range(1, 5)] + [
        "BraTS20_Validation_001", "BraTS20_Validation_002"]
    assert table[list(MODALITIES)].all().all()
    assert (table["problems"] == "").all()
    assert (table["shape"] == "40x40x24").all()
    quirk = table.set_index("case_id").loc["BraTS20_Training_003"]
    assert quirk["seg"] == "W39_1998.09.19_Segm.nii" and "misnamed" in quirk["notes"]
    assert table.set_index("case_id").loc["BraTS20_Training_002", "image_dtype"] == "float32"
    assert set(table["labels"]) == {"{0,1,2,4}", "{0,1,2}", ""}
    assert summary.loc["training", "cases"] == 4 and summary.loc["validation", "cases"] == 2
    assert list(summary["with_segmentation"]) == [4, 0]
    grades = pd.read_csv(synthetic_root / TRAIN / "name_mapping.csv")["Grade"].value_counts()
    assert (summary.loc["training", "HGG"], summary.loc["training", "LGG"]) == (grades["HGG"], grades["LGG"])
    assert (summary["checks"] == "ok").all()


def test_verify_reports_problems_per_case(dataset_copy: Path) -> None:
    train = dataset_copy / TRAIN
    (train / "BraTS20_Training_001" / "BraTS20_Training_001_t1ce.nii").unlink()
    seg = train / "BraTS20_Training_004" / "BraTS20_Training_004_seg.nii"
    image = nib.load(seg)
    labels = np.asanyarray(image.dataobj).copy()
    labels[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(labels, image.affine), seg)
    flair = train / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii"
    nib.save(nib.Nifti1Image(np.ones((40, 40, 20), np.int16), np.eye(4)), flair)
    shutil.rmtree(dataset_copy / VAL / "BraTS20_Validation_002")

    table, summary = verify_dataset(dataset_copy, progress=False)
    problems = table.set_index("case_id")["problems"]
    assert "no t1ce file" in problems["BraTS20_Training_001"]
    assert not table.set_index("case_id").loc["BraTS20_Training_001", "t1ce"]
    assert "unexpected label values [3]" in problems["BraTS20_Training_004"]
    assert "shapes differ: 40x40x20 vs 40x40x24" in problems["BraTS20_Training_002"]
    assert problems["BraTS20_Training_003"] == ""
    assert summary.loc["training", "cases_with_problems"] == 3
    assert "3 case(s) with problems" in summary.loc["training", "checks"]
    assert "1 case(s) of name_mapping_validation_data.csv missing, e.g. BraTS20_Validation_002" \
        in summary.loc["validation", "checks"]


def test_verify_checks_release_counts_when_the_full_csv_is_there(dataset_copy: Path) -> None:
    # a name_mapping.csv of the full release (369 cases, 293 HGG + 76 LGG) next to 4 case folders
    ids = [f"BraTS20_Training_{i:03d}" for i in range(1, 370)]
    grades = ["LGG" if 260 <= i <= 335 else "HGG" for i in range(1, 370)]
    pd.DataFrame({"Grade": grades, "BraTS_2020_subject_ID": ids}).to_csv(
        dataset_copy / TRAIN / "name_mapping.csv", index=False)
    _, summary = verify_dataset(dataset_copy, progress=False)
    checks = summary.loc["training", "checks"]
    assert "365 case(s) of name_mapping.csv missing" in checks
    assert "4 cases, the release has 369" in checks
    assert "grades" not in checks  # the CSV's grades are the release's
    assert (summary.loc["training", "HGG"], summary.loc["training", "LGG"]) == (293, 76)


def test_verify_without_any_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no BraTS 2020 split folders"):
        verify_dataset(tmp_path)
