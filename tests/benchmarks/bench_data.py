"""Data pipeline speed: 128^3 patches from the disk cache vs re-reading the NIfTI files per sample.

The authors' Dataset read the four modality files and the segmentation of a case with
nibabel for every sample, normalised them and returned the volume. Here that is measured
side by side with :class:`brats_utils.data.PatchDataset` reading memory-mapped cache
arrays, on one real-size (240 x 240 x 155) synthetic case. Also: seconds and peak memory
to preprocess that case, and its size on disk in the cache.
"""

from __future__ import annotations

import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_utils.augment import MIRROR_ALL
from brats_utils.data import PatchDataset, extract_patch
from brats_utils.datasets import find_dataset
from brats_utils.io import Case, load_case
from brats_utils.labels import MODALITIES
from brats_utils.preprocess import build_cache, cache_size_bytes, preprocess_case, write_entry
from brats_utils.synthetic import write_synthetic_dataset

SHAPE = (240, 240, 155)
PATCH = (128, 128, 128)


def authors_style_sample(case: Case, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One training sample the authors' way: read all five NIfTI files, z-score, then take a patch."""
    channels = []
    for modality in MODALITIES:
        volume = nib.load(case.modalities[modality]).get_fdata()
        std = volume.std()
        channels.append((volume - volume.mean()) / std if std > 0 else np.zeros_like(volume))
    image = np.stack(channels).astype(np.float32)
    labels = nib.load(case.seg).get_fdata().astype(np.uint8)
    labels[labels == 4] = 3
    start = [int(rng.integers(0, n - p + 1)) for n, p in zip(SHAPE, PATCH, strict=True)]
    return extract_patch(image, start, PATCH), extract_patch(labels, start, PATCH)


def _rate(draw, minimum_seconds: float, minimum_count: int) -> float:
    """Samples per second of ``draw(i)``, timed over at least the given duration and count."""
    draw(0)  # warm the page cache and lazy opens
    count, start = 0, time.perf_counter()
    while count < minimum_count or time.perf_counter() - start < minimum_seconds:
        draw(count + 1)
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    """Print preprocessing cost, cache size and patch throughput (cache vs NIfTI) as a ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_dataset(Path(tmp) / "dataset", 1, 0, SHAPE, seed=0)
        [case] = find_dataset(root, split="training")

        tracemalloc.start()
        start = time.perf_counter()
        loaded = load_case(case)
        read_s = time.perf_counter() - start
        _, read_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        start = time.perf_counter()
        pre = preprocess_case(loaded, margin=2)
        preprocess_s = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        start = time.perf_counter()
        entry = write_entry(pre, Path(tmp) / "scratch", key="bench")
        write_s = time.perf_counter() - start
        size_mb = cache_size_bytes([entry]) / 1e6
        cropped = "x".join(map(str, pre.image.shape[1:]))
        print(f"one {'x'.join(map(str, SHAPE))} case: "
              f"read NIfTI {read_s:.2f} s (peak {read_peak / 1e6:.0f} MB), "
              f"preprocess {preprocess_s:.2f} s (peak {peak / 1e6:.0f} MB, loaded case included), "
              f"write cache {write_s:.2f} s")
        print(f"cache entry: {size_mb:.1f} MB on disk (cropped to {cropped}; float16 image, uint8 labels)")

        [entry] = build_cache([case], Path(tmp) / "cache", workers=1, progress=False)
        rng = np.random.default_rng(0)
        nifti = _rate(lambda i: authors_style_sample(case, rng), minimum_seconds=8, minimum_count=3)
        plain = PatchDataset([entry], patch_size=PATCH, samples_per_volume=10**6, foreground_fraction=0.5)
        cached = _rate(lambda i: plain[i], minimum_seconds=5, minimum_count=20)
        augmented = PatchDataset([entry], patch_size=PATCH, samples_per_volume=10**6, foreground_fraction=0.5,
                                 augment=MIRROR_ALL)
        cached_aug = _rate(lambda i: augmented[i], minimum_seconds=5, minimum_count=20)

    print(f"{'128^3 patches per second':<42}{'samples/s':>10}{'vs NIfTI':>10}")
    for name, rate in [("re-read 5 NIfTI files per sample (authors)", nifti),
                       ("memory-mapped cache", cached), ("memory-mapped cache + flips/rot90", cached_aug)]:
        print(f"{name:<42}{rate:>10.1f}{rate / nifti:>9.1f}x")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kilobytes on Linux
    print(f"peak resident memory of this process: {peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
