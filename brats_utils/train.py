"""Training that survives a Colab disconnect: the paper's recipe, checkpoints, exact resume.

The recipe (all settings come from the run :class:`~brats_utils.config.Profile`):

- loss: :class:`~brats_utils.losses.CombinedLoss`, 0.3 cross-entropy + 0.7 soft Dice;
- optimiser: AdamW (lr 5e-4, weight decay 5e-4);
- schedule: ``ReduceLROnPlateau`` on the validation loss (x0.5 after 2 epochs without
  improvement, floor 1e-6), or the authors' ``CosineAnnealingLR`` (``profile.lr_schedule``);
- early stopping on the validation loss (patience 10, minimum improvement 1e-3: the authors'
  code's numbers, the paper gives none; the strict rule or the authors', ``profile.early_stop_rule``);
- gradient-norm clipping (1.5, as the authors' final code);
- precision from ``profile.precision`` (:mod:`brats_utils.precision`): ``"auto"`` is fp16 autocast with a
  ``GradScaler`` on CUDA, bf16 autocast on a CPU with native bf16, fp32 elsewhere; channels-last 3D
  where :func:`~brats_utils.precision.use_channels_last` says so (CUDA in 16 bits).

Several processes (``torchrun --nproc_per_node=2 -m brats_utils train``) train one model with
DistributedDataParallel (:mod:`brats_utils.distributed`): ``batch_size`` stays the global batch of an
optimiser step, each rank loading ``batch_size / world_size`` patches of its shard of every epoch, so
the run takes the same steps on the same patches as one process; each rank validates its share of the
volumes, and the losses and scores are averaged over the ranks, so every rank steps the schedule and
early stopping alike. Only rank 0 writes (history, checkpoints, split, progress bars) and locks the run
folder. One process is the same code path with a world of one.

Every epoch ends with a validation on whole validation volumes (sliding window when a
volume is larger than the inference window) that reports the loss, the paper's metric
(hard Dice averaged over the four labels, background included), the BraTS region
Dice (WT, TC, ET) and their mean (``val_dice_mean``). The **best checkpoint is chosen by
``profile.best_metric``** on the validation cases: by default the mean of WT, TC and ET Dice, what
BraTS scores (the paper's metric is dominated by the background's Dice of about 1 and can pick the
epoch with the worst ET); the ``authors`` profile keeps the paper's metric, as the authors did, so its
"best" is comparable with their 0.79. Both are in the history. Validation runs in the training
precision, or in fp32 with ``profile.fp32_validation`` (the authors' code validated in fp32). A
profile's test cases (``profile.test_fraction``) never reach this module's loaders.

Files of a run (``profile.run_dir`` unless told otherwise; locked while a process trains into it)::

    run_dir/history.csv              one row per epoch, rewritten atomically every epoch
    run_dir/checkpoints/last.pt      the resume point, written last at every epoch
    run_dir/checkpoints/best.pt      highest validation ``best_metric`` so far
    run_dir/checkpoints/epoch_005.pt every ``checkpoint_every`` epochs

Exact resume: a checkpoint holds the model, optimiser, scheduler, scaler, early-stopping
state, random-generator states, settings and history. Every epoch also seeds Python, NumPy
and torch from ``(profile.seed, epoch)`` and tells the patch sampler which epoch it is
(:func:`epoch_batches`), so the patches, augmentations and dropout masks of epoch k do not
depend on whether the process was restarted in between. On a CPU, a run killed after
epoch k and resumed produces the same history as an uninterrupted run (tested).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from brats_utils.checkpoints import (
    check_compatible,
    checkpoint_dir,
    newest_readable_checkpoint,
)
from brats_utils.config import Profile
from brats_utils.data import make_loaders
from brats_utils.distributed import (
    DistInfo,
    ShardedEpochSampler,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    cleanup,
    distributed_info,
    per_rank_batch_size,
    run_folder_lock,
    unwrap_model,
    wrap_model,
)
from brats_utils.files import write_csv_atomic
from brats_utils.inference import sliding_window_predict
from brats_utils.metrics import region_dice_torch
from brats_utils.precision import (
    autocast,
    match_optimizer_state_layout,
    resolve_precision,
    to_channels_last,
    use_channels_last,
)
from brats_utils.regions import loss_for, probs_to_labels, probs_to_logits
from brats_utils.rng import seed_everything
from brats_utils.run_state import (
    HISTORY_COLUMNS,
    TrainingState,
    TrainResult,
    agree_with_fallback,
    history_csv_path,
    save_epoch,
    with_mean_dice,
)
from brats_utils.schedules import step_scheduler

# --- one step, one validation ----------------------------------------------------------


def train_step(model: nn.Module, image: torch.Tensor, label: torch.Tensor, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
               clip_norm: float, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns the (detached) loss and the gradient norm before clipping.

    The forward pass and the loss run under :func:`brats_utils.precision.autocast` for ``precision``
    (fp32: none). With fp16 the scaler (:func:`~brats_utils.precision.grad_scaler`) multiplies the
    loss before ``backward`` so that small float16 gradients do not underflow, and ``unscale_``
    divides them back before clipping, so the clipping threshold is in true gradient units; for
    fp32 and bf16 it is disabled and passes everything through. The image goes in as
    ``channels_last_3d`` where :func:`~brats_utils.precision.use_channels_last` says so.
    """
    if use_channels_last(precision, image.device):
        image = to_channels_last(image)
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision, image.device):
        loss = loss_fn(model(image), label)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), grad_norm.detach()


VALIDATION_KEYS = ("val_loss", "val_paper_dice", "val_dice_WT", "val_dice_TC", "val_dice_ET")


def validation_precision(profile: Profile, training_precision: str) -> str:
    """The precision validation runs in: fp32 with ``profile.fp32_validation``, else the training one."""
    return "fp32" if profile.fp32_validation else training_precision


@torch.inference_mode()
def validate(model: nn.Module, volumes, loss_fn: nn.Module, profile: Profile, device: torch.device, *,
             precision: str = "fp32", progress: bool = False, rank: int = 0,
             world_size: int = 1) -> dict[str, float]:
    """Loss, paper Dice and region Dice averaged over whole validation volumes.

    Each volume is predicted exactly as at inference time (:func:`brats_utils.inference.
    sliding_window_predict` with the profile's ``sw_*`` settings, in ``precision``: one pass when
    the volume fits in one window). The loss is computed from the softmax probabilities, given to
    the loss as logits ``log p``, which its softmax maps back to ``p`` exactly. With several ranks,
    rank ``r`` validates ``volumes[r::world_size]`` and the sums and counts are added up over the
    ranks (:func:`~brats_utils.distributed.all_reduce_sum`), so every rank returns the same means.
    """
    model = unwrap_model(model)
    model.eval()
    count = len(volumes) if profile.max_val_cases is None else min(len(volumes), profile.max_val_cases)
    totals = dict.fromkeys(VALIDATION_KEYS, 0.0)
    mine = range(count)[rank::world_size]
    for index in tqdm(mine, desc="validation", leave=False, disable=not progress):
        image, label, _case_id = volumes[index]
        probs = sliding_window_predict(model, image, patch_size=profile.sw_patch_size,
                                       overlap=profile.sw_overlap, sw_batch_size=profile.sw_batch_size,
                                       device=device, precision=precision, target=profile.target)
        loss = loss_fn(probs_to_logits(probs, profile.target)[None], label[None])
        dice = region_dice_torch(probs_to_labels(probs, profile.target), label)
        scores = {"val_loss": float(loss), "val_paper_dice": dice["PaperDice"],
                  **{f"val_dice_{region}": dice[f"Dice_{region}"] for region in ("WT", "TC", "ET")}}
        for key, value in scores.items():
            totals[key] += value
    if world_size > 1:
        summed = all_reduce_sum(torch.tensor([*totals.values(), len(mine)], dtype=torch.float64,
                                             device=device if device.type == "cuda" else "cpu")).tolist()
        totals, count = dict(zip(VALIDATION_KEYS, summed[:-1], strict=True)), summed[-1]
    return {key: value / count for key, value in totals.items()}


def epoch_batches(loader, steps: int | None, epoch: int) -> Iterator:
    """The batches of training epoch ``epoch`` (from 1): ``steps`` of them, or one pass if None.

    Passes over the loader are numbered ``(epoch - 1) * passes_per_epoch + i`` and handed to
    the sampler's ``set_epoch``, so epoch k draws the same patches whether or not the run
    was restarted in between.
    """
    passes = 1 if steps is None else math.ceil(steps / len(loader))
    set_epoch = getattr(loader.sampler, "set_epoch", None)
    produced = 0
    for index in range(passes):
        if set_epoch is not None:
            set_epoch((epoch - 1) * passes + index)
        for batch in loader:
            yield batch
            produced += 1
            if produced == steps:
                return


# --- the loop ----------------------------------------------------------------------------


def train_epoch(state: TrainingState, loader, loss_fn: nn.Module, profile: Profile, device: torch.device,
                epoch: int, *, precision: str = "fp32", progress: bool = False, rank: int = 0,
                world_size: int = 1) -> dict[str, float]:
    """One epoch of optimisation; returns the mean training loss and mean gradient norm (before clipping).

    With several ranks each takes the ``steps_per_epoch`` global steps with its share of every batch
    (:func:`loaders_for`), the means are averaged over the ranks, and ranks above 0 draw their dropout
    masks from ``(seed, epoch, rank)``.
    """
    seed = profile.seed if profile.init_seed is None else profile.init_seed
    seed_everything(seed, epoch)
    if rank > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))
    steps_per_epoch = profile.steps_per_epoch
    state.model.train()
    loss_sum = torch.zeros((), device=device)
    norm_sum = torch.zeros((), device=device)
    finite_norms = torch.zeros((), device=device)
    steps = 0
    batches = epoch_batches(loader, steps_per_epoch, epoch)
    for image, label in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress,
                             total=steps_per_epoch or len(loader)):
        loss, grad_norm = train_step(state.model, image.to(device, non_blocking=True),
                                     label.to(device, non_blocking=True), loss_fn, state.optimizer,
                                     state.scaler, clip_norm=profile.grad_clip_norm, precision=precision)
        loss_sum += loss
        finite = torch.isfinite(grad_norm)  # with AMP, an overflowing step is skipped by the scaler
        norm_sum += torch.where(finite, grad_norm, 0.0)
        finite_norms += finite
        steps += 1
    return {"train_loss": all_reduce_mean(float(loss_sum) / steps),
            "grad_norm": all_reduce_mean(float(norm_sum) / max(float(finite_norms), 1.0))}


def loaders_for(profile: Profile, cache_dir: str | Path, run_dir: Path, *, rank: int = 0,
                world_size: int = 1):
    """Training patches and validation volumes of ``cache_dir`` with the profile's settings.

    The patient split is saved to ``run_dir/split.csv`` (by rank 0 only); see
    :func:`brats_utils.data.make_loaders`. With ``world_size > 1`` rank ``rank`` draws its shard of
    every epoch (:class:`~brats_utils.distributed.ShardedEpochSampler`) in batches of
    ``batch_size / world_size`` (:func:`~brats_utils.distributed.per_rank_batch_size`).
    """
    sampler = (functools.partial(ShardedEpochSampler, rank=rank, world_size=world_size) if world_size > 1
               else None)
    return make_loaders(cache_dir, profile.data, profile.loader,
                        batch_size=per_rank_batch_size(profile.batch_size, world_size),
                        split_csv=Path(run_dir) / "split.csv" if rank == 0 else None, sampler=sampler)


def _start_state(profile: Profile, run_dir: Path, device: torch.device, *, precision: str = "fp32",
                 resume: bool, progress: bool, is_main: bool = True, world_size: int = 1,
                 epochs: int | None = None) -> TrainingState:
    """A fresh training state, restored from ``last.pt`` when resuming, or with the old run deleted.

    When ``last.pt`` is damaged the newest epoch file that loads is the resume point
    (:func:`~brats_utils.checkpoints.newest_readable_checkpoint`, a warning names both) and the
    history and best checkpoint are brought back to that epoch
    (:func:`~brats_utils.run_state.agree_with_fallback`).

    Every rank restores the same ``last.pt``; only rank 0 (``is_main``) deletes an old run. A run
    that still has epochs to train (up to ``epochs``, default ``profile.epochs``) and is resumed by
    another number of processes than it was trained with continues with a warning (same global batch
    and steps, other dropout masks: not exact). The model is stored as ``channels_last_3d`` where
    :func:`~brats_utils.precision.use_channels_last` says so.
    """
    state = TrainingState.create(profile, device, precision=precision)
    found = newest_readable_checkpoint(run_dir) if resume else None
    if found is not None:
        checkpoint, last_path = found
        check_compatible(checkpoint, profile.as_dict(), last_path, state.model)
        state.restore(checkpoint)
        if is_main:  # history.csv may be an epoch ahead (written just before last.pt) or more (a fallback)
            write_csv_atomic(pd.DataFrame(state.history, columns=list(HISTORY_COLUMNS)),
                             history_csv_path(run_dir))
        if last_path.name != "last.pt" and is_main:
            agree_with_fallback(run_dir, checkpoint, state.history, profile.best_metric)
        trained_by = checkpoint["config"].get("world_size", 1)
        to_train = checkpoint["epoch"] < (profile.epochs if epochs is None else epochs)
        if trained_by != world_size and to_train and not state.stopper.should_stop and is_main:
            warnings.warn(f"{last_path} was trained by {trained_by} process(es) and is resumed by "
                          f"{world_size}: the global batch and the steps per epoch stay the same, but "
                          f"dropout masks and rounding differ from an uninterrupted run, so the resume is "
                          f"not exact", stacklevel=2)
        if trained_by > 1 and not checkpoint["config"].get("global_batch") and to_train and is_main:
            warnings.warn(f"{last_path} was trained by {trained_by} processes before batch_size became the "
                          f"global batch (each rank took batch_size patches and a share of the steps); "
                          f"its remaining epochs take batch_size patches per step over all ranks and "
                          f"steps_per_epoch steps", stacklevel=2)
        if progress:
            tqdm.write(f"Resuming {run_dir} after epoch {checkpoint['epoch']}.")
    elif not resume and is_main:
        for old in [*checkpoint_dir(run_dir).glob("*.pt"), history_csv_path(run_dir)]:
            old.unlink(missing_ok=True)
    if use_channels_last(precision, device):
        to_channels_last(state.model)  # in place: the optimiser keeps the same parameters
    match_optimizer_state_layout(state.optimizer)  # a resumed run's moments follow them
    return state


def train(profile: Profile, cache_dir: str | Path, *, run_dir: Path | None = None, resume: bool = True,
          max_epochs: int | None = None, progress: bool = True,
          device: str | torch.device | None = None) -> TrainResult:
    """Train the profile's U-Net on the cached cases of ``cache_dir``, resuming from ``last.pt`` if present.

    ``run_dir`` defaults to ``profile.run_dir`` and is locked for the run: a second process
    training into it gets :class:`~brats_utils.errors.FolderLockedError`. ``max_epochs``
    overrides ``profile.epochs`` (e.g. to extend a finished run by one epoch).
    ``resume=False`` deletes the run's checkpoints and history and starts over. Returns a
    :class:`TrainResult`. Raises :class:`~brats_utils.errors.CheckpointError` when the last
    checkpoint is damaged or comes from another architecture or other settings, and
    :class:`~brats_utils.errors.DiskFullError` when a checkpoint does not fit on the disk
    (the previous one stays the one that loads). :func:`brats_utils.pipeline.train` builds
    the cache first. Under torchrun every rank calls it (see the module docstring); the process
    group is left at the end.
    """
    run_dir = Path(run_dir) if run_dir is not None else profile.run_dir
    epochs = profile.epochs if max_epochs is None else max_epochs
    if epochs < 1:
        raise ValueError(f"need at least one epoch, got {epochs}")
    info = distributed_info(device)
    device = info.device
    precision = resolve_precision(profile.requested_precision, device)
    progress = progress and info.is_main
    try:
        with run_folder_lock(run_dir, info):
            loader, val_volumes = loaders_for(profile, cache_dir, run_dir, rank=info.rank,
                                              world_size=info.world_size)
            state = _start_state(profile, run_dir, device, precision=precision, resume=resume,
                                 progress=progress, is_main=info.is_main, world_size=info.world_size,
                                 epochs=epochs)
            config = state.model.config  # an as-run preset builds levels its forward pass never uses
            unused = config.get("wired_levels", config["levels"]) < config["levels"]
            state.model = wrap_model(state.model, info, find_unused_parameters=unused)
            if profile.compile:
                state.model = torch.compile(state.model)
            _run_epochs(state, profile, loader, val_volumes, run_dir, device, epochs, precision=precision,
                        progress=progress, info=info)
            state.model = unwrap_model(state.model)
            barrier()  # the other ranks leave when rank 0 has written the last checkpoint
    finally:
        if info.is_distributed:
            cleanup()
    return TrainResult(history=pd.DataFrame(state.history, columns=list(HISTORY_COLUMNS)),
                       best_checkpoint=checkpoint_dir(run_dir) / "best.pt",
                       last_checkpoint=checkpoint_dir(run_dir) / "last.pt", run_dir=run_dir,
                       device=str(device), stopped_early=state.stopper.should_stop,
                       best_metric=profile.best_metric)


def _run_epochs(state: TrainingState, profile: Profile, loader, val_volumes, run_dir: Path,
                device: torch.device, epochs: int, *, precision: str = "fp32", progress: bool,
                info: DistInfo | None = None) -> None:
    """The epochs after the last one of ``state.history`` up to ``epochs``, or until early stopping."""
    info = info or DistInfo(device=device)
    ranks = {"rank": info.rank, "world_size": info.world_size}
    run = {"resolved_precision": precision, "world_size": info.world_size, "global_batch": True}
    loss_fn = loss_for(profile.target, loss=profile.loss, ce_weight=profile.ce_weight,
                       dice_weight=profile.dice_weight, batch_dice=profile.batch_dice,
                       include_background=profile.dice_include_background)
    start = len(state.history) + 1
    if state.stopper.should_stop and progress and start <= epochs:
        tqdm.write(f"This run stopped early at epoch {start - 1}; use resume=False to start over.")
    remaining = range(start, start if state.stopper.should_stop else epochs + 1)
    for epoch in tqdm(remaining, desc=f"training {profile.name}", unit="epoch", initial=start - 1,
                      total=epochs, disable=not progress or not remaining):
        started = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]
        row = with_mean_dice({"epoch": epoch,
               **train_epoch(state, loader, loss_fn, profile, device, epoch, precision=precision,
                             progress=progress, **ranks),
               **validate(state.model, val_volumes, loss_fn, profile, device,
                          precision=validation_precision(profile, precision), progress=progress, **ranks),
               "lr": lr, "seconds": time.perf_counter() - started})
        step_scheduler(state.scheduler, row["val_loss"])
        state.stopper.step(row["val_loss"])
        metric = profile.best_metric
        is_best = all(row[metric] > earlier[metric] for earlier in state.history)
        state.history.append({key: row[key] for key in HISTORY_COLUMNS})
        if info.is_main:
            save_epoch(state, profile, run_dir, is_best=is_best, run=run)
        if progress:
            tqdm.write(_epoch_line(row, epochs))
        if state.stopper.should_stop:
            if progress:
                tqdm.write(f"Early stop: the validation loss has not improved by more than "
                           f"{state.stopper.min_delta} for {state.stopper.patience} epochs.")
            break


def _epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
            f"paper Dice {row['val_paper_dice']:.3f}  mean {row['val_dice_mean']:.3f}  "
            f"WT {row['val_dice_WT']:.3f}  "
            f"TC {row['val_dice_TC']:.3f}  ET {row['val_dice_ET']:.3f}  lr {row['lr']:.1e}  "
            f"{row['seconds']:.0f} s")
