"""Enhancing-tumour post-processing on hand-made cases: the rule, and the threshold chosen by mean ET Dice."""

from __future__ import annotations

import numpy as np
import pytest

from brats_utils.metrics import case_metrics
from brats_utils.postprocess import (
    candidate_thresholds,
    choose_et_threshold,
    et_threshold_table,
    suppress_small_et,
    threshold_record,
    voxel_volume_mm3,
)


def case(et_voxels: int, *, oedema: int = 20, shape=(10, 10, 10)) -> np.ndarray:
    """A file-label map with ``oedema`` voxels of 2, then ``et_voxels`` voxels of 4 (in raster order)."""
    labels = np.zeros(shape, dtype=np.uint8)
    flat = labels.reshape(-1)
    flat[:oedema] = 2
    flat[oedema:oedema + et_voxels] = 4
    return labels


def test_small_et_becomes_necrosis_and_wt_tc_do_not_change():
    labels = case(5)
    processed = suppress_small_et(labels, 6)
    assert np.count_nonzero(processed == 4) == 0
    assert np.count_nonzero(processed == 1) == 5
    assert np.array_equal(processed == 2, labels == 2)
    assert np.array_equal(np.isin(processed, (1, 4)), np.isin(labels, (1, 4)))  # TC unchanged
    assert np.array_equal(labels, case(5)), "the input is not modified"


def test_et_at_or_above_the_threshold_and_threshold_zero_change_nothing():
    assert np.array_equal(suppress_small_et(case(5), 5), case(5))  # exactly min_voxels is kept
    assert np.array_equal(suppress_small_et(case(5), 0), case(5))
    assert np.array_equal(suppress_small_et(case(0), 100), case(0))
    with pytest.raises(ValueError):
        suppress_small_et(case(5), -1)


def test_training_labels_use_et_three():
    labels = np.array([0, 2, 3, 3], dtype=np.uint8)
    assert suppress_small_et(labels, 3, et_label=3).tolist() == [0, 2, 1, 1]


def test_the_empty_mask_rule_is_what_the_post_processing_fixes():
    truth, prediction = case(0, oedema=23), case(3)  # no true ET; three oedema voxels called ET
    before = case_metrics(prediction, truth)
    after = case_metrics(suppress_small_et(prediction, 10), truth)
    assert (before["Dice_ET"], before["Hausdorff95_ET"]) == (0.0, pytest.approx(373.12866))
    assert (after["Dice_ET"], after["Hausdorff95_ET"]) == (1.0, 0.0)
    assert after["Dice_WT"] == before["Dice_WT"] == 1.0


def test_threshold_is_chosen_by_mean_et_dice_on_hand_made_cases():
    # case A: no true ET, 4 false ET voxels; case B: a true ET of 30 voxels predicted exactly;
    # case C: a true ET of 8 voxels predicted as 8 voxels. Dropping < 5 fixes A and keeps B and C;
    # dropping < 9 would also lose C.
    predictions = [case(4), case(30), case(8)]
    truths = [case(0), case(30), case(8)]
    assert candidate_thresholds(predictions) == [0, 5, 9, 31]
    table = et_threshold_table(predictions, truths).set_index("threshold")
    assert table.loc[0, "mean ET Dice"] == pytest.approx(2 / 3)
    assert table.loc[5, "mean ET Dice"] == pytest.approx(1.0)
    assert table.loc[9, "mean ET Dice"] == pytest.approx(2 / 3)
    assert table.loc[31, "mean ET Dice"] == pytest.approx(1 / 3)
    assert table["cases changed"].tolist() == [0, 1, 2, 3]
    assert choose_et_threshold(predictions, truths) == 5


def test_ties_go_to_the_smallest_threshold_and_mismatched_inputs_raise():
    assert choose_et_threshold([case(30)], [case(30)]) == 0
    with pytest.raises(ValueError):
        choose_et_threshold([case(3)], [])


def test_the_relabelled_labels_follow_the_label_scheme():
    from brats_utils.labels import BRATS2020, BRATS2023, MSD_TASK01
    from brats_utils.postprocess import ET_LABEL, NCR_LABEL, et_and_ncr_labels

    assert (ET_LABEL, NCR_LABEL) == et_and_ncr_labels(BRATS2020) == (4, 1)
    assert et_and_ncr_labels(BRATS2023) == (3, 1)  # BraTS 2023: 1 NETC, 3 ET
    assert et_and_ncr_labels(MSD_TASK01) == (3, 2)  # MSD: 2 non-enhancing tumour, 3 enhancing tumour
    et, ncr = et_and_ncr_labels(MSD_TASK01)
    assert suppress_small_et(np.array([0, et, 1]), 2, et_label=et, replacement=ncr).tolist() == [0, ncr, 1]
def test_the_threshold_is_a_volume_in_mm3_whatever_the_spacing():
    # 5 ET voxels of 2 mm³ are 10 mm³: dropped below 11 mm³, kept at 10 mm³
    assert voxel_volume_mm3(np.diag([1.0, 2.0, -1.0, 1.0])) == 2.0  # a flipped axis is still 2 mm³
    assert np.count_nonzero(suppress_small_et(case(5), 11, voxel_volume_mm3=2.0) == 4) == 0
    assert np.array_equal(suppress_small_et(case(5), 10, voxel_volume_mm3=2.0), case(5))
    # the hand-made cases of the test above, case A with 3 false ET voxels of 2 mm³ (6 mm³): below 8 mm³
    # it is dropped, while case C's true 8 mm³ (8 voxels of 1 mm³) is kept
    predictions, truths = [case(3), case(30), case(8)], [case(0), case(30), case(8)]
    volumes = [2.0, 1.0, 1.0]
    assert candidate_thresholds(predictions, volumes) == [0, 8, 9, 31]
    assert choose_et_threshold(predictions, truths, voxel_volumes=volumes) == 8


def test_the_record_keeps_the_value_the_cases_and_the_curve_it_came_from():
    predictions, truths = [case(4), case(30), case(8)], [case(0), case(30), case(8)]
    table = et_threshold_table(predictions, truths)
    record = threshold_record(table, chosen_on="validation cases", case_ids=["a", "b", "c"])
    assert record["min_volume_mm3"] == 5.0
    assert record["chosen_on"] == "validation cases" and record["case_ids"] == ["a", "b", "c"]
    assert [row["threshold"] for row in record["curve"]] == [0, 5, 9, 31]
