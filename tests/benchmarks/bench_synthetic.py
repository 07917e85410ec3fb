"""Synthetic data speed: a full-size case, the dataset writer, and the smooth-field design choice.

Printed side by side in one run:
- loading and preparing the MNI152 template (once per process);
- generating one 240x240x155 case (wall and CPU time) vs reading the same case back from disk with
  ``load_case``;
- the separable cosine ``smooth_field`` vs the usual alternative, a coarse random grid upsampled
  with ``scipy.ndimage.zoom`` (cubic), on the same grid;
- writing each profile's synthetic dataset (ci, demo) from scratch.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from brats_utils.config import get_profile
from brats_utils.datasets import find_dataset
from brats_utils.io import load_case
from brats_utils.synthetic import mni_template, smooth_field, synthesize_case, write_synthetic_dataset

FULL = (240, 240, 155)


def _best_of(fn, repeats: int = 3, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def main() -> None:
    """Print the timings and their ratios."""
    start = time.perf_counter()
    mni_template()
    print(f"MNI152 template loaded and prepared in {time.perf_counter() - start:.1f} s (once per process)")
    generate = _best_of(lambda: synthesize_case(FULL, seed=1))
    cpu = _best_of(lambda: synthesize_case(FULL, seed=1), clock=time.process_time)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_dataset(Path(tmp) / "full", 1, 0, FULL, seed=1)
        case = find_dataset(root)[0]
        read = _best_of(lambda: load_case(case))
    print(f"one {'x'.join(map(str, FULL))} case: generate {generate:.2f} s ({cpu:.2f} s CPU), "
          f"read from .nii {read:.2f} s "
          f"(generate / read = {generate / read:.1f})")

    rng = np.random.default_rng(0)
    grid = (150, 180, 135)  # about the brain's bounding box at full size
    separable = _best_of(lambda: smooth_field(grid, rng, 4))
    coarse = rng.standard_normal((6, 6, 6)).astype(np.float32)
    zoomed = _best_of(lambda: ndimage.zoom(coarse, [n / 6 for n in grid], order=3), repeats=1)
    print(f"smooth field on {grid}: separable cosines {separable * 1e3:.0f} ms, ndimage.zoom (cubic) "
          f"{zoomed * 1e3:.0f} ms (zoom / separable = {zoomed / separable:.0f}x)")

    for name in ("ci", "demo"):
        profile = get_profile(name)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_synthetic_dataset(Path(tmp) / name, profile.synthetic_train_cases,
                                    profile.synthetic_val_cases, profile.synthetic_shape, seed=profile.seed)
            seconds = time.perf_counter() - start
        cases = profile.synthetic_train_cases + profile.synthetic_val_cases
        print(f"profile {name}: {cases} cases of {'x'.join(map(str, profile.synthetic_shape))} written in "
              f"{seconds:.1f} s ({seconds / cases * 1e3:.0f} ms per case)")


if __name__ == "__main__":
    main()
