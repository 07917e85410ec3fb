"""BraTS 2023 lesion-wise Dice and HD95 on hand-made cases whose answers are worked out in the comments.

Lesions are cubes in a 40³ volume at 1 mm. A 4³ cube (64 voxels > 50) is scored; the dilation of 3
iterations reaches 3 voxels out along each axis, so cubes with gaps of 10+ voxels are separate lesions.
"""

from __future__ import annotations

import numpy as np
import pytest

from brats_utils.labels import REGIONS
from brats_utils.lesion_metrics import (
    LESION_HD95_PENALTY,
    lesion_wise_case_metrics,
    lesion_wise_scores,
)

SHAPE = (40, 40, 40)
A = (slice(2, 6), slice(2, 6), slice(2, 6))  # 64 voxels
B = (slice(20, 24), slice(20, 24), slice(20, 24))  # 64 voxels, gap of 14 to A
FAR = (slice(32, 36), slice(2, 6), slice(32, 36))  # 64 voxels, far from A and B


def mask(*boxes: tuple[slice, ...]) -> np.ndarray:
    volume = np.zeros(SHAPE, dtype=bool)
    for box in boxes:
        volume[box] = True
    return volume


def test_two_lesions_both_found_exactly_score_one_and_zero():
    # Dice (1 + 1) / 2 = 1; HD95 (0 + 0) / 2 = 0
    result = lesion_wise_scores(mask(A, B), mask(A, B))
    assert (result.dice, result.hd95) == (1.0, 0.0)
    assert (result.true_positives, result.false_negatives, result.false_positives) == (2, 0, 0)
    assert [lesion.volume for lesion in result.lesions] == [64.0, 64.0]


def test_a_missed_lesion_scores_zero_and_the_penalty():
    # A exact (Dice 1, HD95 0), B missed (Dice 0, HD95 374): Dice (1 + 0) / 2 = 0.5, HD95 (0 + 374) / 2 = 187
    result = lesion_wise_scores(mask(A), mask(A, B))
    assert result.dice == 0.5
    assert result.hd95 == pytest.approx((0 + 374) / 2)
    assert (result.true_positives, result.false_negatives, result.false_positives) == (1, 1, 0)


def test_a_false_positive_component_adds_a_zero_to_the_average():
    # A and B exact, one extra component: Dice (1 + 1 + 0) / 3 = 2/3, HD95 (0 + 0 + 374) / 3
    result = lesion_wise_scores(mask(A, B, FAR), mask(A, B))
    assert result.dice == pytest.approx(2 / 3)
    assert result.hd95 == pytest.approx(374 / 3)
    assert (result.true_positives, result.false_negatives, result.false_positives) == (2, 0, 1)


def test_lesions_of_at_most_50_voxels_are_left_out():
    small = (slice(20, 25), slice(20, 25), slice(20, 22))  # 5 x 5 x 2 = 50 voxels: not above 50
    # A exact, the 50-voxel lesion missed: it is not scored, Dice 1 / 1 = 1, HD95 0 / 1 = 0
    result = lesion_wise_scores(mask(A), mask(A, small))
    assert (result.dice, result.hd95) == (1.0, 0.0)
    assert (result.true_positives, result.false_negatives) == (1, 0)
    assert [lesion.scored for lesion in result.lesions] == [True, False]
    # predicting it is no false positive either: the component matches a lesion, just an unscored one
    assert lesion_wise_scores(mask(A, small), mask(A, small)).false_positives == 0
    # one voxel more (51) and it counts: Dice (1 + 0) / 2
    bigger = mask(A, small)
    bigger[25, 20, 20] = True
    assert lesion_wise_scores(mask(A), bigger).dice == 0.5
    # the threshold is a volume: 50 voxels of 2 x 1 x 1 mm are 100 mm³ > 50, so the miss counts
    assert lesion_wise_scores(mask(A), mask(A, small), spacing=(2.0, 1.0, 1.0)).dice == 0.5


def test_empty_truth_and_prediction_score_one_and_zero():
    empty = mask()
    result = lesion_wise_scores(empty, empty)
    assert (result.dice, result.hd95) == (1.0, 0.0)
    assert result.lesions == ()
    # only a false positive: Dice 0 / 1, HD95 374 / 1
    fp_only = lesion_wise_scores(mask(FAR), empty)
    assert (fp_only.dice, fp_only.hd95, fp_only.false_positives) == (0.0, LESION_HD95_PENALTY, 1)


def test_truth_components_within_the_dilation_merge_into_one_lesion():
    left = (slice(10, 14), slice(10, 14), slice(10, 14))
    right = (slice(16, 20), slice(10, 14), slice(10, 14))  # a gap of 2 voxels (x = 14, 15) < 2 x 3
    # One lesion left ∪ right (128 voxels), predicted: left only (64). Dice 2·64 / (64 + 128) = 2/3.
    # HD95: left's surface (64 - 2³ = 56 voxels) lies on the truth's surface, so pred -> truth gives 56
    # zeros; truth -> pred gives another 56 zeros (left) and, for right's surface, its x-distance to
    # left's face at x = 13: 16 voxels at x = 16 (3 mm), 12 at 17 (4), 12 at 18 (5), 16 at 19 (6).
    # Pooled, sorted: 112 zeros, 16 threes, 12 fours, 12 fives, 16 sixes (168 values); the 95th
    # percentile sits at index 0.95 · 167 = 158.65, between entries 158 and 159, both 6: HD95 = 6.
    result = lesion_wise_scores(mask(left), mask(left, right))
    assert len(result.lesions) == 1
    assert result.dice == pytest.approx(2 / 3)
    assert result.hd95 == pytest.approx(6.0)
    assert (result.true_positives, result.false_negatives, result.false_positives) == (1, 0, 0)
    # the same two cubes 12 voxels apart are two lesions, one missed: (1 + 0) / 2 and (0 + 374) / 2
    apart = (slice(26, 30), slice(10, 14), slice(10, 14))
    separate = lesion_wise_scores(mask(left), mask(left, apart))
    assert (len(separate.lesions), separate.dice, separate.hd95) == (2, 0.5, 187.0)


def test_a_component_touching_the_lesions_dilated_region_is_matched_not_a_false_positive():
    near = (slice(8, 12), slice(2, 6), slice(2, 6))  # 2 voxels beyond A (x = 6, 7 empty)
    # near does not overlap A, so Dice 0, but it lies within A's region of interest: no false positive,
    # and HD95 is a real distance, not the penalty. Both surfaces have 56 voxels in 4 layers (16, 12, 12,
    # 16) at x-distances 3, 4, 5, 6 from the other cube's facing layer; pooled: 32 threes, 24 fours,
    # 24 fives, 32 sixes; index 0.95 · 111 = 105.45 falls among the sixes: HD95 = 6.
    result = lesion_wise_scores(mask(near), mask(A))
    assert (result.dice, result.false_positives, result.true_positives) == (0.0, 0, 1)
    assert result.hd95 == pytest.approx(6.0)


def test_label_maps_are_split_into_regions_brats_2023_by_default_2020_on_request():
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[4:12, 4:12, 4:12] = 2  # edema, 512 voxels
    truth[6:10, 6:10, 6:10] = 3  # enhancing core, 64 voxels
    pred = truth.copy()
    pred[pred == 3] = 1  # the core predicted as necrosis
    # WT {1,2,3} and TC {1,3} agree exactly; ET {3} is a 64-voxel lesion with no prediction
    scores = lesion_wise_case_metrics(pred, truth)
    assert (scores["LesionWise_Dice_WT"], scores["LesionWise_HD95_WT"]) == (1.0, 0.0)
    assert (scores["LesionWise_Dice_TC"], scores["LesionWise_HD95_TC"]) == (1.0, 0.0)
    assert (scores["LesionWise_Dice_ET"], scores["LesionWise_HD95_ET"]) == (0.0, 374.0)
    assert (scores["Num_TP_ET"], scores["Num_FN_ET"], scores["Num_FP_ET"]) == (0, 1, 0)

    # BraTS 2020 labels (ET = 4) with the 2020 region definitions
    truth_2020, pred_2020 = np.where(truth == 3, 4, truth), np.where(pred == 3, 4, pred)
    assert lesion_wise_case_metrics(pred_2020, truth_2020, REGIONS) == scores


def test_lesions_at_the_volume_border_score_as_if_the_volume_were_larger():
    # A sits in the corner, so its dilation is clipped by the border; padding the volume with empty
    # space must not change any score (the scores only look at the masks, and the work is cropped)
    corner = (slice(0, 4), slice(0, 4), slice(0, 4))
    left, right = (slice(10, 14), slice(10, 14), slice(10, 14)), (slice(16, 20), slice(10, 14), slice(10, 14))
    pred, truth = mask(corner, left, FAR), mask(corner, left, right)
    result = lesion_wise_scores(pred, truth)
    padded = lesion_wise_scores(np.pad(pred, 20), np.pad(truth, 20))
    assert result == padded
    # corner exact (1, 0), left ∪ right as in the merge test (2/3, 6), FAR a false positive (0, 374)
    assert result.dice == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert result.hd95 == pytest.approx((0 + 6 + 374) / 3)
