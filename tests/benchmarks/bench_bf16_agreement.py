"""bf16 against fp32 on the demo model: the same test-case predictions, label by label, and the time.

The demo profile's best checkpoint (trained first if it is missing: about a minute and a half on 2 cores, into
``$BRATS_DATA_DIR`` or ``data/``) predicts every test volume of its split (the validation volumes for
a profile without test cases) with the profile's sliding window, once in fp32 and once in bf16 (the
CPU's ``auto`` choice where it has native bf16). Printed per case and over all of them: the argmax
agreement (the issue's bar: at least 99.9 %), the region Dice of the bf16 labels against the fp32
labels, the region Dice of both against the ground truth (within 0.005 of each other is the bar) and
the seconds of each precision (one pass over the whole crop instead of windows: bench_window_choice).
Also runnable on its own:
``python tests/benchmarks/bench_bf16_agreement.py [PROFILE]``; ``ci`` trains the unit test's ci model
(``tests/test_precision_trained.py``: 5 epochs x 10 steps, fp32) in a temporary folder.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(profile_name: str = "demo") -> None:
    """Print the agreement table of bf16 against fp32 on the test cases of the profile's model."""
    if profile_name == "ci":
        import os
        import tempfile

        os.environ["BRATS_DATA_DIR"] = tempfile.mkdtemp(prefix="bf16-ci-")
    from brats_utils import pipeline
    from brats_utils.checkpoints import load_model
    from brats_utils.config import get_profile
    from brats_utils.data import split_volumes
    from brats_utils.inference import sliding_window_predict
    from brats_utils.metrics import region_dice_torch
    from brats_utils.precision import label_map_agreement

    profile = get_profile(profile_name)
    if profile_name == "ci":
        profile = profile.with_overrides(name="bf16check", precision="fp32", epochs=5, steps_per_epoch=10,
                                         early_stop_patience=5)
    model = load_model(pipeline.ensure_trained(profile, progress=False))
    split = pipeline.heldout_split(profile)
    volumes = split_volumes(profile.cache_dir, profile.run_dir / "split.csv", split)
    settings = {"patch_size": profile.sw_patch_size, "overlap": profile.sw_overlap,
                "sw_batch_size": profile.sw_batch_size, "device": "cpu"}
    print(f"{profile_name} model, {len(volumes)} {pipeline.split_label(profile, split)}, "
          f"windows {profile.sw_patch_size}, overlap {profile.sw_overlap}")
    print(f"{'case':<22}{'agreement':>10}{'WT':>8}{'TC':>8}{'ET':>8}   "
          f"Dice vs truth fp32 -> bf16 (WT, TC, ET){'fp32 s':>9}{'bf16 s':>8}")
    agree = voxels = 0.0
    seconds = {"fp32": 0.0, "bf16": 0.0}
    worst_shift = 0.0
    for image, label, case_id in volumes:
        labels = {}
        for precision in ("fp32", "bf16"):
            started = time.perf_counter()
            probs = sliding_window_predict(model, image, precision=precision, **settings)
            labels[precision] = probs.argmax(0)
            took = time.perf_counter() - started
            seconds[precision] += took
            labels[f"{precision}_s"] = took
        scores = label_map_agreement(labels["bf16"], labels["fp32"])
        truth = {p: region_dice_torch(labels[p], label) for p in ("fp32", "bf16")}
        shifts = [truth["bf16"][f"Dice_{r}"] - truth["fp32"][f"Dice_{r}"] for r in ("WT", "TC", "ET")]
        worst_shift = max(worst_shift, *(abs(s) for s in shifts))
        vs_truth = ", ".join(f"{truth['fp32'][f'Dice_{r}']:.3f}->{truth['bf16'][f'Dice_{r}']:.3f}"
                             for r in ("WT", "TC", "ET"))
        print(f"{case_id:<22}{scores['agreement']:>10.5f}{scores['Dice_WT']:>8.4f}{scores['Dice_TC']:>8.4f}"
              f"{scores['Dice_ET']:>8.4f}   {vs_truth}{labels['fp32_s']:>9.2f}{labels['bf16_s']:>8.2f}")
        agree += scores["agreement"] * labels["fp32"].numel()
        voxels += labels["fp32"].numel()
    verdict = "meets" if agree / voxels >= 0.999 and worst_shift <= 0.005 else "MISSES"
    print(f"all voxels: agreement {agree / voxels:.5f}; largest change of a region Dice against the truth "
          f"{worst_shift:.4f}; bf16 / fp32 time {seconds['bf16'] / seconds['fp32']:.2f} "
          f"({verdict} the bar: >= 0.999 and <= 0.005)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(*sys.argv[1:2])
