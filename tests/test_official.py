"""The official BraTS evaluation (extra ``official``) beside the project's own lesion-wise scores.

The agreement test runs only where ``brats-evaluation`` is installed (``pip install -e ".[official]"``);
the tolerances and why they are what they are: docs/evaluation.md.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from brats_utils import cli, lesion_metrics, official
from brats_utils.lesion_metrics import LESION_HD95_PENALTY, lesion_wise_train_scores
from brats_utils.metrics import region_scores

REGIONS = ("WT", "TC", "ET")


def ball(shape: tuple[int, int, int], center: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum((grid[i] - center[i]) ** 2 for i in range(3)) <= radius**2


def tumour(shape, center, scale=1.0) -> np.ndarray:
    """Training labels (= BraTS 2023 labels): oedema 2 around an enhancing shell 3 around a core 1."""
    labels = np.zeros(shape, np.uint8)
    for label, radius in ((2, 9), (3, 6), (1, 3)):
        labels[ball(shape, center, radius * scale)] = label
    return labels


def synthetic_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """(prediction, truth) pairs whose lesions are far apart and above 50 voxels: one shifted tumour with a
    missed oedema satellite and a false ET blob; one with two tumours, the second predicted a size smaller."""
    shape = (48, 48, 40)
    truth = tumour(shape, (20, 20, 20))
    truth[ball(shape, (38, 38, 20), 4)] = 2  # a satellite the prediction misses
    prediction = tumour(shape, (21, 20, 20))
    prediction[ball(shape, (8, 40, 30), 4)] = 3  # a false positive, far from every lesion
    first = (prediction, truth)
    truth = np.maximum(tumour(shape, (14, 14, 20)), tumour(shape, (34, 34, 20)))
    prediction = np.maximum(tumour(shape, (14, 14, 20)), tumour(shape, (34, 34, 20), scale=0.8))
    return [first, (prediction, truth)]


needs_official = pytest.mark.skipif(official.official_version() is None,
                                     reason="brats-evaluation is not installed (extra 'official')")


@needs_official
@pytest.mark.parametrize("case", [0, 1])
def test_the_official_package_and_the_project_agree_where_their_rules_coincide(case):
    prediction, truth = synthetic_cases()[case]
    theirs = official.official_train_scores(prediction, truth, (1.0, 1.0, 1.0), case_id=f"case{case}")
    ours = {**region_scores(prediction, truth), **lesion_wise_train_scores(prediction, truth)}
    for region in REGIONS:
        r = region.lower()
        # global scores: the same definitions
        assert theirs[f"global_dsc_{r}"] == pytest.approx(ours[f"Dice_{region}"], abs=1e-9)
        assert theirs[f"global_hd95_{r}"] == pytest.approx(ours[f"Hausdorff95_{region}"], abs=0.01)
        # lesions found, missed and invented: the same on well-separated lesions above 50 voxels
        counts = {kind: int(theirs[f"all_instance_{kind.lower()}_{r}"]) for kind in ("TP", "FN", "FP")}
        assert counts == {kind: ours[f"Num_{kind}_{region}"] for kind in ("TP", "FN", "FP")}
        # lesion-wise means: theirs over matched lesions only, ours (2023) with every miss and false positive
        # counted as Dice 0 and HD95 374 in the same mean
        scored = counts["TP"] + counts["FN"] + counts["FP"]
        assert ours[f"LesionWise_Dice_{region}"] == pytest.approx(
            theirs[f"lesionwise_dsc_mean_{r}"] * counts["TP"] / scored, abs=1e-9)
        penalties = LESION_HD95_PENALTY * (counts["FN"] + counts["FP"])
        assert ours[f"LesionWise_HD95_{region}"] == pytest.approx(
            (theirs[f"lesionwise_hd95_mean_{r}"] * counts["TP"] + penalties) / scored, abs=0.01)
    assert {int(theirs["all_instance_fn_wt"]), int(theirs["all_instance_fp_et"])} <= {0, 1}


def test_brats2025_says_which_implementation_scores(monkeypatch):
    monkeypatch.setattr(lesion_metrics, "official_version", lambda: None)
    fallback = lesion_metrics.get_protocol("brats2025")
    assert fallback.score is lesion_wise_train_scores and "not installed" in fallback.description
    monkeypatch.setattr(lesion_metrics, "official_version", lambda: "9.9")
    chosen = lesion_metrics.get_protocol("brats2025")
    assert chosen.score is official.official_train_scores and "brats-evaluation 9.9" in chosen.description


def test_the_command_line_scores_a_folder_with_brats2025(tmp_path, capsys):
    from brats_utils.datasets import find_dataset
    from brats_utils.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "phantoms", 2, 0, (24, 24, 16), seed=3)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for case in find_dataset(root, split="training"):  # a perfect prediction: the truth itself
        suffix = ".nii.gz" if case.seg.name.endswith(".gz") else ".nii"
        shutil.copy(case.seg, predictions / f"{case.case_id}{suffix}")
    arguments = ["evaluate", "--profile", "ci", "--protocol", "brats2025", "--folder", "training",
                 str(predictions), str(root)]
    assert cli.main(arguments) == 0
    printed = capsys.readouterr().out
    assert f"scored with {lesion_metrics.get_protocol('brats2025').description}" in printed
