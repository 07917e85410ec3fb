"""The synthetic stand-in has BraTS's proportions where a lesson depends on them (docs/phantoms.md).

- the drawn region volumes follow the targets (whole tumour 20-250 mL, median near 100 mL; core
  and enhancing tumour well below it; no enhancing tumour in low-grade cases);
- the demo's held-out phantoms (its validation and test cases, at the demo's size) have those
  volumes, nested regions with ET < TC < WT, and a whole tumour that is a small share of the brain;
- the demo's split holds a low-grade case in validation and in test;
- foreground oversampling visibly changes how many training patches contain tumour.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from brats_utils import synthetic
from brats_utils.config import get_profile
from brats_utils.data import PatchDataset, split_patients
from brats_utils.datasets import find_dataset
from brats_utils.labels import to_train_labels
from brats_utils.preprocess import build_cache
from brats_utils.regions import labels_to_regions
from brats_utils.synthetic import (
    BRATS_SHAPE,
    WT_RANGE_ML,
    draw_volumes,
    is_low_grade,
    synthesize_case,
    write_synthetic_dataset,
)

DEMO = get_profile("demo")


def _demo_ids() -> list[str]:
    return [f"BraTS20_Training_{i:03d}" for i in range(1, DEMO.synthetic_train_cases + 1)]


def _demo_split() -> dict[str, list[str]]:
    return split_patients(_demo_ids(), val_fraction=DEMO.val_fraction, test_fraction=DEMO.test_fraction,
                          seed=DEMO.seed, stratum=DEMO.stratify_split)


def _low_grade(case_id: str) -> bool:
    return is_low_grade(int(case_id[-3:]), DEMO.synthetic_train_cases)


def test_drawn_volumes_follow_the_brats_targets() -> None:
    rng = np.random.default_rng(0)
    high = [draw_volumes(rng, True) for _ in range(3000)]
    low = [draw_volumes(rng, False) for _ in range(1000)]
    whole = np.array([v.whole for v in high + low])
    assert WT_RANGE_ML[0] <= whole.min() and whole.max() <= WT_RANGE_ML[1]
    assert 90 < np.median(whole) < 110  # median near 100 mL
    assert np.percentile(whole, 10) < 60 and np.percentile(whole, 90) > 170  # spread as on real data
    core_share = np.array([v.core / v.whole for v in high])
    enhancing_share = np.array([v.enhancing / v.core for v in high])
    assert core_share.max() < 0.6 and np.median(core_share) < 0.45  # TC well below WT
    assert enhancing_share.max() < 0.85 and enhancing_share.min() > 0.4  # ET below TC, the rim most of it
    assert all(v.enhancing == 0 and 0 < v.core < v.whole for v in low)  # no ET in low grade


@pytest.fixture(scope="module")
def held_out_phantoms() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The demo's validation and test phantoms, as the demo writes them (same shape, seed, grade)."""
    parts = _demo_split()
    cases = {}
    for case_id in parts["val"] + parts["test"]:
        index = int(case_id[-3:])
        cases[case_id] = synthesize_case(DEMO.synthetic_shape, synthetic.case_seed(DEMO.seed, 0, index),
                                         has_enhancing=not _low_grade(case_id))
    return cases


def test_demo_phantoms_have_brats_proportions(held_out_phantoms) -> None:
    voxel_ml = float(np.prod(np.array(BRATS_SHAPE) / np.array(DEMO.synthetic_shape))) / 1000
    shares = []
    for case_id, (image, labels) in held_out_phantoms.items():
        # [WT, TC, ET] as training sees them
        regions = labels_to_regions(torch.from_numpy(to_train_labels(labels))[None])[0].bool().numpy()
        wt, tc, et = regions
        assert not (tc & ~wt).any() and not (et & ~tc).any(), case_id  # ET in TC in WT
        volumes = [np.count_nonzero(r) * voxel_ml for r in (wt, tc, et)]
        assert WT_RANGE_ML[0] - 1 <= volumes[0] <= WT_RANGE_ML[1] + 1, (case_id, volumes)
        if _low_grade(case_id):
            assert volumes[2] == 0 < volumes[1] < volumes[0], (case_id, volumes)
        else:
            assert 0 < volumes[2] < volumes[1] < volumes[0], (case_id, volumes)
        shares.append(volumes[0] / (np.count_nonzero(image.any(axis=0)) * voxel_ml))
    # the whole tumour is a small part of the brain (about 100 mL of 1.1-1.9 L; a quarter at most,
    # as for the largest real tumours), not the 10-30 % of the earlier phantoms
    assert max(shares) < 0.25 and np.median(shares) < 0.12


def test_enhancing_tumour_is_a_rim_around_necrosis(held_out_phantoms) -> None:
    """In high-grade phantoms the necrosis lies inside the enhancing tumour: a rim, often incomplete."""
    enclosed = []
    for case_id, (_, labels) in held_out_phantoms.items():
        if _low_grade(case_id):
            continue
        core, necrosis = np.isin(labels, (1, 4)), labels == 1
        depth = ndimage.distance_transform_edt(core)
        assert labels[np.unravel_index(depth.argmax(), depth.shape)] == 1, case_id  # the centre is necrotic
        around = ndimage.binary_dilation(necrosis) & ~necrosis
        enclosed.append(np.mean(labels[around] == 4))
    # the rim encloses most of the necrosis, but not all of it in every case (broken rims)
    assert np.median(enclosed) > 0.6 and min(enclosed) < 0.95


def test_demo_split_holds_its_share_of_low_grade_cases_in_validation_and_test() -> None:
    """50 phantoms, 10 of them low grade: 30 test cases hold 6 (3 / 5 of 10), validation 1 of 4."""
    generator_lgg = tuple(i for i in _demo_ids() if _low_grade(i))
    assert DEMO.stratify_split == generator_lgg  # the profile's stratum is the generator's LGG cases
    assert len(generator_lgg) == 10
    parts = _demo_split()
    assert [len(parts[k]) for k in ("train", "val", "test")] == [16, 4, 30]  # as without stratifying
    assert [sum(_low_grade(i) for i in parts[k]) for k in ("train", "val", "test")] == [3, 1, 6]
    unstratified = split_patients(_demo_ids(), val_fraction=DEMO.val_fraction,
                                  test_fraction=DEMO.test_fraction, seed=DEMO.seed)
    # what the stratum changes: without it this seed puts 4 low-grade cases in test and 2 in validation
    assert [sum(_low_grade(i) for i in unstratified[k]) for k in ("val", "test")] == [2, 4]


def test_stratified_split_shares_by_largest_remainder() -> None:
    ids = [f"c{i:02d}" for i in range(20)]
    stratum = ids[:3]
    parts = split_patients(ids, val_fraction=0.25, test_fraction=0.25, seed=1, stratum=stratum)
    # test: 5 of 20, quotas 0.75 (stratum) and 4.25 -> 1 and 4;
    # validation: 4 of the other 15, quotas 0.5 and 3.5 -> a tie, the stratum first: 1 and 3
    assert len(parts["test"]) == 5 and len(set(parts["test"]) & set(stratum)) == 1
    assert len(parts["val"]) == 4 and len(set(parts["val"]) & set(stratum)) == 1
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == ids


@pytest.fixture(scope="module")
def demo_size_cache(tmp_path_factory) -> list:
    """Four demo-size training cases, preprocessed as the demo's cache is."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("demo4") / "data", 4, 0, DEMO.synthetic_shape,
                                   seed=DEMO.seed)
    return build_cache(find_dataset(root), tmp_path_factory.mktemp("cache"), margin=DEMO.crop_margin,
                       workers=0, progress=False)


#: A patch of 24^3 demo voxels (60 mm) is to the demo's brain (60 x 75 x 63 voxels cropped) what a
#: 64^3 patch is to a real BraTS brain. The demo's own 48^3 patches span 65-80 % of the brain along
#: every axis, so every one of them holds some tumour whatever the setting (as 128^3 patches on
#: real scans mostly do); the lesson of oversampling needs a patch smaller than the brain.
LESSON_PATCH = (24, 24, 24)


def _tumour_in_patches(entries: list, foreground_fraction: float) -> tuple[float, float]:
    """Share of patches with any tumour voxel, and the mean share of tumour voxels in a patch."""
    patches = PatchDataset(entries, patch_size=LESSON_PATCH, samples_per_volume=50,
                           foreground_fraction=foreground_fraction, augment=None, seed=DEMO.seed)
    labels = [patches.sample(i)[1] for i in range(len(patches))]
    with_tumour = [(lab > 0).any() for lab in labels]
    return float(np.mean(with_tumour)), float(np.mean([(lab > 0).mean() for lab in labels]))


def test_foreground_oversampling_changes_the_share_of_tumour_patches(demo_size_cache) -> None:
    uniform, uniform_voxels = _tumour_in_patches(demo_size_cache, 0.0)
    oversampled, oversampled_voxels = _tumour_in_patches(demo_size_cache, DEMO.foreground_fraction)
    # uniformly placed patches often miss the tumour (about a third of them on these phantoms);
    # centring half of them on tumour voxels (200 patches each) finds it in most of the rest
    assert uniform < 0.85
    assert oversampled - uniform > 0.08
    assert oversampled_voxels > 1.5 * uniform_voxels  # and the class balance of the loss changes
