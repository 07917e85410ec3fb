"""Label schemes: file labels to the one internal set 0..3 and back, and the one label check."""

from __future__ import annotations

import numpy as np
import pytest

from brats_utils import labels
from brats_utils.errors import LabelValueError


def test_brats2020_is_the_default_scheme_and_round_trips():
    file_labels = np.array([0, 1, 2, 4], np.uint8)
    assert labels.to_train_labels(file_labels).tolist() == [0, 1, 2, 3]
    assert labels.to_file_labels(labels.to_train_labels(file_labels)).tolist() == [0, 1, 2, 4]
    assert labels.FILE_LABELS == (0, 1, 2, 4) and labels.TRAIN_REGIONS == {"WT": (1, 2, 3), "TC": (1, 3),
                                                                            "ET": (3,)}


@pytest.mark.parametrize("scheme", [labels.BRATS2023, labels.MSD_TASK01])
def test_other_schemes_map_onto_the_same_training_labels(scheme):
    file_labels = np.array(scheme.file_labels, np.uint8)
    train = labels.to_train_labels(file_labels, scheme=scheme)
    assert sorted(train.tolist()) == [0, 1, 2, 3]
    assert labels.to_file_labels(train, scheme=scheme).tolist() == file_labels.tolist()
    # every scheme's regions are the same tissue in training labels
    assert scheme.train_regions == labels.BRATS2020.train_regions


def test_the_one_label_check_names_values_case_file_and_expectation(tmp_path):
    with pytest.raises(LabelValueError, match=r"unexpected label values \[3\], case c7, file .*seg.nii "
                                              r"\(expected labels in \{0, 1, 2, 4\}\)"):
        labels.check_labels(np.array([0, 3]), case_id="c7", path=tmp_path / "seg.nii")
    with pytest.raises(ValueError):  # a LabelValueError is also a ValueError
        labels.check_labels(np.array([4]), labels.BRATS2023.file_labels)
    labels.check_labels(np.array([0, 3], np.uint8), labels.BRATS2023.file_labels)
