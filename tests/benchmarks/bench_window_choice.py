"""How the default prediction covers a brain crop, and why: three ways, scored on the validation cases.

A crop a little larger than the window along an axis needs a second window there: 4 windows of 128³
for a 127 x 161 x 132 crop, where one pass over the whole crop would cost about a third. Fewer voxels
through the network is the only way left to predict faster on a CPU (the network is more than 95 % of
the time, bench_inference), so this bench measures what it costs in accuracy, for the trained demo model
(trained first if it is missing: about a minute and a half on 2 cores):

- ``windows``: windows of the profile's ``sw_patch_size``, overlap 0.5, Gaussian blending (the default);
- ``stretched``: along an axis the crop exceeds by at most 1/8 of the window, one window as long as the
  crop (rounded up to a multiple of 4) instead of two;
- ``one pass``: a single window over the whole crop (the floor of bench_inference).

All in the CPU's ``auto`` precision. The choice is made on the **validation** cases (they chose the
model's epoch too, so they are the cases that choose settings); the test cases are printed after it, as
a report only. Runnable alone: ``python tests/benchmarks/bench_window_choice.py [PROFILE]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

#: The largest stretch of a window, as a fraction of its length, that ``stretched`` allows.
STRETCH = 0.125


def _stretched(crop: tuple[int, ...], window: tuple[int, ...]) -> tuple[int, ...]:
    """``window``, lengthened to cover ``crop`` along every axis the crop exceeds by at most STRETCH."""
    return tuple(n + (-n) % 4 if w < n <= w * (1 + STRETCH) else w for n, w in zip(crop, window, strict=True))


def main(profile_name: str = "demo") -> None:
    """Print mean region Dice and seconds of the three ways, on the validation and then the test cases."""
    from brats_utils import pipeline
    from brats_utils.checkpoints import load_model
    from brats_utils.config import get_profile
    from brats_utils.data import split_volumes
    from brats_utils.inference import sliding_window_predict
    from brats_utils.metrics import region_dice_torch

    profile = get_profile(profile_name)
    model = load_model(pipeline.ensure_trained(profile, progress=False))
    window = tuple(profile.sw_patch_size)
    ways = {"windows": lambda crop: window, "stretched": lambda crop: _stretched(crop, window),
            "one pass": lambda crop: tuple(n + (-n) % 8 for n in crop)}
    print(f"{profile_name} model, windows {window}, overlap {profile.sw_overlap}, precision auto; "
          f"mean Dice WT/TC/ET and seconds over the cases")
    for split in ("val", "test"):
        volumes = split_volumes(profile.cache_dir, profile.run_dir / "split.csv", split)
        dice: dict[str, list[list[float]]] = {way: [] for way in ways}
        seconds = dict.fromkeys(ways, 0.0)
        for image, label, _ in volumes:
            crop = tuple(image.shape[1:])
            for way, window_for in ways.items():
                started = time.perf_counter()
                labels = sliding_window_predict(model, image, patch_size=window_for(crop),
                                                overlap=profile.sw_overlap, device="cpu").argmax(0)
                seconds[way] += time.perf_counter() - started
                scores = region_dice_torch(labels, label)
                dice[way].append([scores[f"Dice_{r}"] for r in ("WT", "TC", "ET")])
        role = "they choose" if split == "val" else "report only"
        print(f"{len(volumes)} {pipeline.split_label(profile, split)} ({role}):")
        for way in ways:
            means = [sum(column) / len(column) for column in zip(*dice[way], strict=True)]
            print(f"  {way:<10}{'/'.join(f'{v:.3f}' for v in means)}   {seconds[way]:6.2f} s "
                  f"({seconds[way] / seconds['windows']:.2f} of the windows' time)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(*sys.argv[1:2])
