"""Training speed: seconds per step of the paper model at a 128^3 patch, and the share spent waiting for data.

The batches come from the real pipeline: a disk cache of real-size (240 x 240 x 155)
synthetic cases and the DataLoader of :func:`brats_utils.train.loaders_for` with the
``gpu`` profile's settings (batch 2, 128^3 patches, augmentation, 2 workers). Each step is
timed in two parts: waiting for the next batch (``next(iterator)`` plus the copy to the
device) and computing :func:`brats_utils.train.train_step` (forward, loss, backward,
clipping, AdamW; in the profile's precision: fp16 AMP on CUDA, bf16 on a CPU with native bf16).
The loader is measured with its 2 workers and, side by side, with the loading done in the
training process (``num_workers=0``), which shows what the workers hide. Target: data waiting
below 10 % of the step time.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from brats_utils.config import get_profile
from brats_utils.datasets import find_dataset
from brats_utils.losses import CombinedLoss
from brats_utils.model import build_model
from brats_utils.precision import grad_scaler, pick_device, resolve_precision
from brats_utils.preprocess import build_cache
from brats_utils.synthetic import write_synthetic_dataset
from brats_utils.train import loaders_for, train_step

SHAPE = (240, 240, 155)
CASES = 3  # the split keeps 2 for training: 4 patches per epoch, then the sampler starts a new pass


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forever(loader) -> Iterator:
    """Batches from ``loader``, pass after pass (its sampler draws new patches each pass)."""
    while True:
        yield from loader


def time_steps(loader, device: torch.device, steps: int) -> tuple[float, float]:
    """Mean seconds per step and mean seconds of it spent waiting for data, after one warm-up step."""
    profile = get_profile("gpu")
    torch.manual_seed(0)
    model = build_model("paper", dropout=profile.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
    precision = resolve_precision(profile.requested_precision, device)
    scaler = grad_scaler(precision, device)
    loss_fn = CombinedLoss(ce_weight=profile.ce_weight, dice_weight=profile.dice_weight)

    iterator = forever(loader)
    waiting = total = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        image, label = next(iterator)
        image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
        _synchronize(device)
        loaded = time.perf_counter()
        train_step(model, image, label, loss_fn, optimizer, scaler, clip_norm=profile.grad_clip_norm,
                   precision=precision)
        _synchronize(device)
        if step > 0:  # the first step also starts the workers and warms the kernels
            waiting += loaded - started
            total += time.perf_counter() - started
    return total / steps, waiting / steps


def time_loading(loader, batches: int) -> float:
    """Mean seconds to produce one batch in this process (a loader without workers), after a warm-up."""
    iterator = forever(loader)
    next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (time.perf_counter() - started) / batches


def main() -> None:
    """Print seconds per 128^3 training step and the data-waiting share, with and without loader workers."""
    device = pick_device()
    steps = 20 if device.type == "cuda" else 3
    profile = get_profile("gpu").with_overrides(data_source="synthetic", max_cases=None)
    print(f"paper model, batch {profile.batch_size} of {profile.patch_size} patches from a cache of {CASES} "
          f"real-size cases, {device}, precision {resolve_precision(profile.requested_precision, device)} "
          f"(the profile's {profile.requested_precision!r})")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_dataset(Path(tmp) / "dataset", CASES, 0, SHAPE, seed=0)
        cache = Path(tmp) / "cache"
        build_cache(find_dataset(root, split="training"), cache, margin=profile.crop_margin, workers=2,
                    progress=False)
        loader, _ = loaders_for(profile, cache, Path(tmp))
        step, waiting = time_steps(loader, device, steps)
        in_process, _ = loaders_for(profile.with_overrides(num_workers=0), cache, Path(tmp))
        loading = time_loading(in_process, batches=3)
    compute = step - waiting
    print(f"seconds per training step ({steps} timed): {step:.3f}, of which waiting for data {waiting:.3f}")
    print(f"data waiting with {profile.num_workers} workers: {waiting / step:.1%} of the step "
          "(target < 10 %)")
    print(f"loading a batch without workers: {loading:.3f} s = {loading / (compute + loading):.1%} "
          f"of a step; with workers the step is {(compute + loading) / step:.2f}x faster")


if __name__ == "__main__":
    main()
