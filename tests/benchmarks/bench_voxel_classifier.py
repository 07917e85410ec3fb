"""Could a per-voxel classifier do the U-Net's job? The skeptic's baselines beside the trained demo model.

On the ``demo`` profile's data and split, as the U-Net sees them (the preprocessing cache: cropped,
z-scored inside the brain), two classifiers of single voxels are trained on the training cases and
scored on the validation and test cases with the BraTS regions' Dice (WT, TC, ET; both empty
counts 1):

- ``boosted`` (:mod:`brats_utils.baselines`, which notebook 06 uses too): scikit-learn's
  ``HistGradientBoostingClassifier`` on 12 features per voxel: the four intensities and two
  Gaussian-smoothed copies of them (sigma 1 and 3 voxels, 2.5 and 7.5 mm at the demo's size: a little
  context), fitted on 150,000 brain voxels drawn uniformly from the training cases;
- ``logistic``: logistic regression on the four raw intensities alone.

The trained demo U-Net (:func:`brats_utils.pipeline.ensure_trained`: the run of the profile, trained
first if missing, a few minutes on a CPU) is scored on the same cases as ``python -m brats_utils predict``
writes them: on the test cases with the enhancing-tumour rule chosen on the validation cases
(:func:`brats_utils.pipeline.with_et_rule`), on the validation cases without it. On real BraTS a voxel
classifier is far behind a U-Net, because the sub-regions overlap normal tissue in all four contrasts and only
shape and context separate them; the phantoms are built to behave alike (``docs/phantoms.md``). The
target: the boosted classifier at least 0.10 Dice below the U-Net on the test cases for WT, TC and ET.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from brats_utils import pipeline
from brats_utils.baselines import fit_voxel_classifier, predict_voxels
from brats_utils.config import get_profile
from brats_utils.metrics import region_dice_torch
from brats_utils.preprocess import cache_entries, load_cached

PROFILE = os.environ.get("BENCH_VOXEL_PROFILE", "demo")
REGIONS = ("WT", "TC", "ET")
TARGET_GAP = 0.10


def _load(entries: dict, ids: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, training labels) of each case, from the preprocessing cache."""
    cases = []
    for case_id in ids:
        case = load_cached(entries[case_id], mmap=False)
        cases.append((np.asarray(case.image, dtype=np.float32), np.asarray(case.labels)))
    return cases


def _score(classifier, cases: list) -> dict[str, float]:
    """Mean region Dice of ``classifier`` (:func:`brats_utils.baselines.predict_voxels`) over ``cases``."""
    rows = [region_dice_torch(torch.from_numpy(predict_voxels(classifier, image)), torch.from_numpy(labels))
            for image, labels in cases]
    return {name: float(np.mean([row[f"Dice_{name}"] for row in rows])) for name in REGIONS}


def _unet_scores(profile, split: str) -> dict[str, float]:
    """The trained demo U-Net's mean region Dice on ``split`` (the package's predict and evaluate)."""
    predictions = pipeline.predict_split(profile, split=split, progress=False)
    per_case, _ = pipeline.evaluate_folder(profile, predictions[0].parent, split=split, progress=False)
    return {name: float(per_case[f"Dice_{name}"].mean()) for name in REGIONS}


def main() -> None:
    """Fit both baselines, score them and the U-Net, print one table and the gap to the target."""
    profile = get_profile(PROFILE)
    entries = {entry.name: entry for entry in cache_entries(pipeline.ensure_cache(profile, progress=False))}
    split = pipeline.split_of(profile)
    train = _load(entries, split["train"])
    start = time.perf_counter()
    boosted = fit_voxel_classifier(train, kind="boosted", seed=profile.seed)
    logistic = fit_voxel_classifier(train, kind="logistic", seed=profile.seed)
    print(f"{PROFILE} profile: {len(split['train'])} training cases, {boosted.voxels} voxels, "
          f"fitted in {time.perf_counter() - start:.0f} s")
    del train

    rows = {}
    for name in ("val", "test"):
        cases = _load(entries, split[name])
        rows[("boosted (12 features)", name)] = _score(boosted, cases)
        rows[("logistic (4 intensities)", name)] = _score(logistic, cases)
        rows[("U-Net (trained demo run)", name)] = _unet_scores(profile, name)
    print(f"\nmean Dice; val: {len(split['val'])} validation cases (model selection), "
          f"test: {len(split['test'])} test cases ({', '.join(split['test'])})")
    print(f"{'method':26} {'split':5} " + " ".join(f"{r:>6}" for r in REGIONS))
    for (method, name), scores in rows.items():
        print(f"{method:26} {name:5} " + " ".join(f"{scores[r]:6.3f}" for r in REGIONS))
    unet, best = rows[("U-Net (trained demo run)", "test")], rows[("boosted (12 features)", "test")]
    gaps = {r: unet[r] - best[r] for r in REGIONS}
    verdict = "met" if min(gaps.values()) >= TARGET_GAP else "NOT met"
    print("\nU-Net minus boosted on the test cases: " + ", ".join(f"{r} {gaps[r]:+.3f}" for r in REGIONS)
          + f"  (target >= {TARGET_GAP:.2f} for each: {verdict})")


if __name__ == "__main__":
    main()
