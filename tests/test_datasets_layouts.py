"""The layout registry (``brats_utils.datasets.LAYOUTS``): every layout writes a case, finds it again
and reads it back as written, names its cases as its own pattern says, and declares its scheme."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brats_utils.datasets import LAYOUTS, DatasetLayout, detect_layout, find_dataset
from brats_utils.io import load_case
from brats_utils.labels import BRATS2020, BRATS2023, MODALITIES, MSD_TASK01, to_file_labels

SHAPE = (12, 10, 8)
#: LPS, as the Kaggle files: the loader keeps this orientation, so the arrays come back unchanged.
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, SHAPE[1] - 1], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def _case_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A four-channel int16 image, non-zero everywhere, and training labels 0..3 with each one present."""
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 1000, size=(len(MODALITIES), *SHAPE)).astype(np.int16)
    train = rng.integers(0, 4, size=SHAPE).astype(np.uint8)
    train.flat[:4] = np.arange(4)
    return image, train


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_written_case_is_found_and_reads_back_as_written(name, tmp_path):
    layout = LAYOUTS[name]
    image, train = _case_arrays(seed=len(name))
    file_labels = to_file_labels(train, scheme=layout.scheme)
    training_id, validation_id = layout.case_name(0, "training"), layout.case_name(1, "validation")
    written = layout.write_case(tmp_path, "training", training_id, image, file_labels, AFFINE)
    unlabelled = layout.write_case(tmp_path, "validation", validation_id, image[::-1], None, AFFINE)
    layout.write_index(tmp_path, {"training": [training_id], "validation": [validation_id]}, "a round trip")

    assert detect_layout(tmp_path) is layout
    (found,) = find_dataset(tmp_path, "training")
    (found_unlabelled,) = find_dataset(tmp_path, "validation", dataset=name)
    assert found == written and found_unlabelled == unlabelled  # write_case returns the record find lists
    assert found.case_id == training_id and found.scheme is layout.scheme
    assert bool(found.image_4d) == layout.image_4d
    loaded = load_case(found)
    np.testing.assert_array_equal(loaded.image, image.astype(np.float32))
    np.testing.assert_array_equal(loaded.labels, file_labels)
    np.testing.assert_allclose(loaded.affine, AFFINE)
    assert found_unlabelled.seg is None and load_case(found_unlabelled).labels is None
    np.testing.assert_array_equal(load_case(found_unlabelled).image, image[::-1].astype(np.float32))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_names_its_files_and_cases_as_its_dataset_does(name):
    layout = LAYOUTS[name]
    ids = [layout.case_name(index, split) for split in ("training", "validation") for index in range(3)]
    assert all(layout.is_case_name(case_id) for case_id in ids) and len(set(ids)) >= 3
    assert layout.prediction_name(ids[0]) == f"{ids[0]}.nii.gz"
    expected = {  # the first case and its FLAIR and segmentation files, as each release names them
        "brats2020": ("BraTS20_Training_001", "BraTS20_Training_001_flair.nii",
                      "BraTS20_Training_001_seg.nii"),
        "brats2021": ("BraTS2021_00000", "BraTS2021_00000_flair.nii.gz", "BraTS2021_00000_seg.nii.gz"),
        "brats2023": ("BraTS-GLI-00000-000", "BraTS-GLI-00000-000-t2f.nii.gz",
                      "BraTS-GLI-00000-000-seg.nii.gz"),
        "msd": ("BRATS_001", "BRATS_001.nii.gz", "BRATS_001.nii.gz"),
    }[name]
    assert (ids[0], layout.image_name(ids[0], "flair"), layout.seg_name(ids[0])) == expected
    assert layout.case_name(0, "validation") == ("BraTS20_Validation_001" if name == "brats2020" else ids[0])


def test_schemes_and_protocols_are_declared_by_the_layouts():
    assert {name: (layout.scheme, layout.protocol) for name, layout in LAYOUTS.items()} == {
        "brats2020": (BRATS2020, "brats2020"), "brats2021": (BRATS2020, "brats2020"),
        "brats2023": (BRATS2023, "lesionwise"), "msd": (MSD_TASK01, "brats2020")}


def test_an_id_format_that_its_pattern_refuses_is_an_error():
    with pytest.raises(ValueError, match="does not match"):
        DatasetLayout("site", "A site", BRATS2020, r"SITE_\d{3}",
                      dict(zip(MODALITIES, MODALITIES, strict=True)), "nowhere",
                      id_format="SITE-{number:03d}")


def test_msd_lists_its_cases_in_a_dataset_json_like_the_decathlon(tmp_path):
    layout = LAYOUTS["msd"]
    ids = {"training": ["BRATS_001", "BRATS_002"], "validation": ["BRATS_003"]}
    layout.write_index(tmp_path, ids, "mine")
    index = json.loads((tmp_path / "Task01_BrainTumour" / "dataset.json").read_text())
    assert (index["description"], index["numTraining"], index["numTest"]) == ("mine", 2, 1)
    assert index["training"][1] == {"image": "./imagesTr/BRATS_002.nii.gz",
                                    "label": "./labelsTr/BRATS_002.nii.gz"}
    assert index["test"] == ["./imagesTs/BRATS_003.nii.gz"]
    assert index["modality"] == {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"}
    LAYOUTS["brats2023"].write_index(tmp_path / "none", {"training": [], "validation": []}, "mine")
    assert not (tmp_path / "none").exists()  # BraTS keeps no such list

