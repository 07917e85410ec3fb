"""Metrics against hand arithmetic, a brute-force HD95 and the BraTS empty-mask rules."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist

from brats_utils import metrics
from brats_utils.errors import BratsError, LabelValueError
from brats_utils.metrics import HD95_PENALTY, case_metrics, dice, hd95, sensitivity, specificity


def cube(shape=(20, 20, 20), start=(5, 5, 5), side=10) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + side) for s in start)] = True
    return mask


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """Independent HD95: surfaces by explicit 6-neighbour test, distances by all pairs."""

    def surface_points(mask):
        padded = np.pad(mask, 1)
        inner = padded[1:-1, 1:-1, 1:-1]
        all_neighbours_in = np.ones_like(mask)
        for axis, shift in itertools.product(range(3), (-1, 1)):
            all_neighbours_in &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(inner & ~all_neighbours_in) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    d = cdist(pa, pb)
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


# --- Dice, sensitivity, specificity ----------------------------------------------------


def test_dice_sensitivity_specificity_of_shifted_cubes_by_hand():
    truth = cube()  # 1000 voxels in a 20^3 = 8000 grid
    pred = cube(start=(7, 5, 5))  # shifted by 2: overlap 8 x 10 x 10 = 800
    assert dice(pred, truth) == pytest.approx(2 * 800 / 2000)
    assert sensitivity(pred, truth) == pytest.approx(800 / 1000)
    # negatives of the truth: 7000, of which 200 predicted -> TN 6800
    assert specificity(pred, truth) == pytest.approx(6800 / 7000)


@pytest.mark.parametrize(
    ("pred_empty", "truth_empty", "expected_dice", "expected_hd95", "expected_sens"),
    [
        (True, True, 1.0, 0.0, 1.0),
        (False, True, 0.0, HD95_PENALTY, 0.0),
        (True, False, 0.0, HD95_PENALTY, 0.0),
        (False, False, 1.0, 0.0, 1.0),  # identical non-empty masks
    ],
)
def test_empty_mask_rules(pred_empty, truth_empty, expected_dice, expected_hd95, expected_sens):
    empty, full = np.zeros((8, 8, 8), bool), cube((8, 8, 8), (2, 2, 2), 3)
    pred, truth = (empty if pred_empty else full), (empty if truth_empty else full)
    assert dice(pred, truth) == expected_dice
    assert hd95(pred, truth) == expected_hd95
    assert sensitivity(pred, truth) == expected_sens
    assert specificity(pred, truth) == (1.0 if pred_empty or not truth_empty else 1 - 27 / 512)


def test_penalty_is_the_volume_diagonal():
    assert HD95_PENALTY == pytest.approx(np.sqrt(240**2 + 240**2 + 155**2), abs=1e-5)


# --- HD95 ------------------------------------------------------------------------------


def test_hd95_pools_both_directions_before_the_percentile():
    # A: one voxel; B: two voxels at distances 3 and 10 from it. Surfaces are the voxels.
    # A->B: [3]; B->A: [3, 10]; pooled [3, 3, 10]: 95th percentile = 3 + 0.9 * 7 = 9.3
    # (MONAI's max of directed percentiles would give 3 + 0.95 * 7 = 9.65).
    a, b = np.zeros((30, 30, 30), bool), np.zeros((30, 30, 30), bool)
    a[5, 5, 5] = True
    b[8, 5, 5] = True
    b[5, 5, 15] = True
    assert hd95(a, b) == pytest.approx(9.3)
    assert hd95(b, a) == pytest.approx(9.3)


def test_hd95_uses_voxel_spacing():
    a, b = np.zeros((10, 10, 10), bool), np.zeros((10, 10, 10), bool)
    a[0, 0, 0] = True
    b[3, 4, 0] = True
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(np.sqrt(6**2 + 4**2))


def test_hd95_of_4_cubes_shifted_by_one_by_hand():
    # 4^3 cubes, B = A shifted by 1 along x. Each surface has 64 - 8 = 56 voxels. From A:
    # the 12 ring voxels of x=1 and x=2 and the 12 ring voxels of x=3 lie on B's surface (0);
    # A's 16 voxels at x=0 and the 4 inner voxels at x=3 are 1 away. By symmetry B->A alike:
    # pooled 72 zeros and 40 ones, whose 95th percentile is 1.
    a = cube((10, 10, 10), (2, 2, 2), 4)
    b = cube((10, 10, 10), (3, 2, 2), 4)
    assert hd95(a, b) == 1.0
    assert brute_force_hd95(a, b) == 1.0


@pytest.mark.parametrize("shift", [1, 3, 6])
def test_hd95_of_shifted_cubes_matches_brute_force(shift):
    a = cube((30, 24, 24), (4, 6, 6), 10)
    b = cube((30, 24, 24), (4 + shift, 6, 6), 10)
    assert hd95(a, b) == pytest.approx(brute_force_hd95(a, b))
    assert hd95(a, b, spacing=(1.0, 2.0, 0.5)) == pytest.approx(brute_force_hd95(a, b, (1.0, 2.0, 0.5)))


def test_hd95_on_random_blobs_touching_the_border_matches_brute_force():
    # The bounding-box shortcut must not change surfaces at the volume border.
    rng = np.random.default_rng(0)
    a = rng.random((14, 12, 10)) < 0.3
    b = rng.random((14, 12, 10)) < 0.3
    a[0], b[:, -1] = True, True
    assert hd95(a, b) == pytest.approx(brute_force_hd95(a, b))


# --- the paper's metric, case metrics, torch counting ----------------------------------


def test_paper_dice_by_hand():
    truth = np.array([0, 0, 1, 1, 2, 2, 0, 0]).reshape(2, 2, 2)
    pred = np.array([0, 1, 1, 1, 2, 0, 0, 0]).reshape(2, 2, 2)
    # class 0: TP 3, |P| 4, |T| 4 -> 6/8; class 1: TP 2, 3, 2 -> 4/5; class 2: TP 1, 1, 2 -> 2/3;
    # class 3 absent from both -> (0 + s) / (0 + s) = 1.
    expected = (6 / 8 + 4 / 5 + 2 / 3 + 1) / 4
    assert metrics.paper_dice(pred, truth) == pytest.approx(expected, abs=1e-6)


def test_case_metrics_regions_and_labels_by_hand():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:6, 2:6, 2:6] = 2  # 64 voxels of edema
    truth[3:5, 3:5, 3:5] = 1  # 8 of them necrotic core instead
    pred = truth.copy()
    pred[3:5, 3:5, 3:5] = 4  # the core predicted as enhancing tumour
    s = case_metrics(pred, truth)
    assert s["Dice_WT"] == 1.0 and s["Hausdorff95_WT"] == 0.0
    assert s["Dice_TC"] == 1.0  # TC = {1, 4}: the same 8 voxels
    assert s["Dice_ET"] == 0.0 and s["Hausdorff95_ET"] == HD95_PENALTY  # ET in prediction only
    assert s["Dice_NCR/NET"] == 0.0 and s["Dice_ED"] == 1.0
    assert s["Sensitivity_ET"] == 0.0 and s["Specificity_ET"] == pytest.approx(992 / 1000)
    # paper: background 1, label 1: 0, label 2: 1, label 3: 0 (one side empty)
    assert s["PaperDice"] == pytest.approx(0.5, abs=1e-6)


def test_case_metrics_rejects_foreign_labels():
    labels = np.zeros((4, 4, 4), np.uint8)
    bad = labels.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(LabelValueError, match="expected labels in"):
        case_metrics(bad, labels, case_id="BraTS20_Training_001")


def test_region_dice_torch_agrees_with_numpy_per_volume_and_averages_a_batch():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, size=(2, 9, 8, 7))
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, size=truth.shape))
    pred[1][pred[1] == 3] = 0  # volume 2: ET only in the truth
    file = np.array([0, 1, 2, 4])
    per_volume = [case_metrics(file[p], file[t]) for p, t in zip(pred, truth, strict=True)]
    batch = metrics.region_dice_torch(torch.from_numpy(pred), torch.from_numpy(truth))
    for key in ("Dice_WT", "Dice_TC", "Dice_ET", "PaperDice"):
        assert batch[key] == pytest.approx(np.mean([s[key] for s in per_volume]))
    single = metrics.region_dice_torch(torch.from_numpy(pred[0]), torch.from_numpy(truth[0]))
    assert single["Dice_WT"] == pytest.approx(per_volume[0]["Dice_WT"])


# --- folders ----------------------------------------------------------------------------


def _write_case(root, case_id, labels):
    """A minimal case folder (four modalities and a segmentation) as datasets.find_dataset returns."""
    from brats_utils.io import Case
    from brats_utils.labels import MODALITIES

    folder = root / case_id
    folder.mkdir(parents=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    image = (labels.astype(np.int16) + 1) * 100
    paths = {}
    for m in MODALITIES:
        paths[m] = folder / f"{case_id}_{m}.nii"
        nib.save(nib.Nifti1Image(image, affine), paths[m])
    seg = folder / f"{case_id}_seg.nii"
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), seg)
    return Case(case_id=case_id, modalities=paths, seg=seg, folder=folder)


def test_evaluate_scores_only_predicted_cases_and_writes_the_statistics_table(tmp_path):
    truth = np.zeros((12, 12, 10), np.uint8)
    truth[3:9, 3:9, 2:8] = 2
    truth[4:7, 4:7, 3:6] = 4
    cases = [_write_case(tmp_path / "data", f"BraTS20_Training_00{i}", truth) for i in (1, 2, 3)]
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(truth, affine), pred_dir / "BraTS20_Training_001.nii.gz")
    no_et = np.where(truth == 4, 1, truth).astype(np.uint8)
    nib.save(nib.Nifti1Image(no_et, affine), pred_dir / "BraTS20_Training_002.nii.gz")

    per_case, summary = metrics.evaluate(pred_dir, cases, out_csv=tmp_path / "out" / "metrics.csv",
                                         progress=False)
    assert list(per_case.index) == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert per_case.loc["BraTS20_Training_001", "Dice_ET"] == 1.0
    assert per_case.loc["BraTS20_Training_002", "Dice_ET"] == 0.0
    assert per_case.loc["BraTS20_Training_002", "Hausdorff95_ET"] == HD95_PENALTY
    assert per_case.loc["BraTS20_Training_002", "Dice_TC"] == 1.0  # label 1 is still tumour core
    assert list(summary.index) == ["Mean", "StdDev", "Median", "25quantile", "75quantile"]
    assert summary.loc["Mean", "Dice_ET"] == 0.5
    assert summary.loc["Median", "Hausdorff95_ET"] == pytest.approx(HD95_PENALTY / 2)
    saved = pd.read_csv(tmp_path / "out" / "metrics.csv", index_col="case_id")
    pd.testing.assert_frame_equal(saved, per_case, check_dtype=False)
    stats = pd.read_csv(tmp_path / "out" / "metrics_summary.csv", index_col=0)
    assert stats.loc["StdDev", "Dice_ET"] == pytest.approx(np.std([1.0, 0.0], ddof=1))
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_evaluate_without_matching_predictions_raises(tmp_path):
    case = _write_case(tmp_path / "data", "BraTS20_Training_001", np.zeros((4, 4, 4), np.uint8))
    (tmp_path / "pred").mkdir()
    with pytest.raises(BratsError, match="no prediction"):
        metrics.evaluate(tmp_path / "pred", [case], progress=False)
