"""What each beyond-the-paper variant costs: parameters, MACs per voxel, training step and inference.

The study (:mod:`brats_utils.beyond`) measures every run's step and inference time once, while it
trains; on a shared machine those single measurements are noisy. Here the variants are measured side
by side on a quiet process: every variant's training step (:func:`brats_utils.compare.
measure_training_step`, the demo study's settings: batch 2 of 48^3 patches, bf16 where the CPU has it)
and its full-volume prediction (:func:`brats_utils.compare.measure_inference`, the demo volume of
96 x 96 x 64 with 64^3 windows), interleaved round by round, fastest round of each, and the ratio
to the paper model. The ensemble row is three paper models averaged through one sliding window.
``BENCH_BEYOND_ROUNDS`` (default 3) sets the rounds; ``BENCH_BEYOND_PROFILE`` (default ``demo``) the
profile.
"""

from __future__ import annotations

import os
import time

import torch


def main() -> None:
    """Print one row per variant: parameters, MACs/voxel, step and inference seconds, ratios to paper."""
    from brats_utils import beyond, compare
    from brats_utils.config import get_profile
    from brats_utils.model import build_model
    from brats_utils.regions import output_channels

    rounds = int(os.environ.get("BENCH_BEYOND_ROUNDS", "3"))
    base = get_profile(os.environ.get("BENCH_BEYOND_PROFILE", "demo"))
    device = torch.device("cpu")
    profiles = {}
    for variant in beyond.variant_names(base):
        study = beyond.variant_profile(base, variant, base.seed)
        profiles[variant] = compare.study_profile(study, study.model_preset)
    steps = {v: [] for v in profiles}
    inference = {v: [] for v in [*profiles, beyond.ENSEMBLE]}
    for _ in range(rounds):
        for variant, study in profiles.items():
            steps[variant].append(compare.measure_training_step(study.model_preset, study, device, steps=2)
                                  ["seconds per training step"])
            torch.manual_seed(0)
            model = build_model(study.model_preset, num_classes=output_channels(study.target)).eval()
            inference[variant].append(compare.measure_inference(model, study, device)
                                      ["seconds per full-volume inference"])
        paper = profiles["paper"]
        members = [build_model("paper").eval() for _ in range(3)]
        generator = torch.Generator().manual_seed(0)
        volume = torch.randn((4, *compare.full_volume_shape(paper)), generator=generator)
        beyond.ensemble_predict(members, volume[:, :16, :16, :16], paper)  # warm-up
        started = time.perf_counter()
        beyond.ensemble_predict(members, volume, paper)
        inference[beyond.ENSEMBLE].append(time.perf_counter() - started)
    best_step = {v: min(s) for v, s in steps.items()}
    best_inference = {v: min(s) for v, s in inference.items()}
    print(f"{base.name} study settings: batch {base.batch_size} of {tuple(base.patch_size)} patches, "
          f"precision {base.precision}; inference on {compare.full_volume_shape(profiles['paper'])} with "
          f"{tuple(base.sw_patch_size)} windows; fastest of {rounds} interleaved rounds")
    print(f"{'variant':<26}{'parameters':>11}{'MACs/voxel':>11}{'step s':>9}{'x paper':>8}"
          f"{'predict s':>10}{'x paper':>8}")
    for variant in [*profiles, beyond.ENSEMBLE]:
        static = beyond.static_costs("paper" if variant == beyond.ENSEMBLE else variant)
        k = 3 if variant == beyond.ENSEMBLE else 1
        step = best_step.get(variant)
        step_text = (f"{step:9.3f}{step / best_step['paper']:8.2f}" if step is not None
                     else f"{'-':>9}{'-':>8}")
        print(f"{variant:<26}{k * static['parameters']:>11,}{k * static['MACs per voxel']:>11,.0f}{step_text}"
              f"{best_inference[variant]:10.3f}{best_inference[variant] / best_inference['paper']:8.2f}")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
