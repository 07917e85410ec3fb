"""The state of a training run: its live objects and their checkpoint, its history table, its result.

:class:`TrainingState` is everything a checkpoint holds (model, optimiser, schedule, scaler, early
stopping, history; and a record of the random generators, :mod:`brats_utils.rng`); :class:`TrainResult`
is what :func:`brats_utils.train.train` returns. The loop itself is :mod:`brats_utils.train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from brats_utils.checkpoints import atomic_torch_save, checkpoint_dir, load_checkpoint
from brats_utils.config import Profile
from brats_utils.distributed import unwrap_model
from brats_utils.errors import CheckpointError
from brats_utils.files import write_csv_atomic
from brats_utils.model import build_model, init_weights_authors_
from brats_utils.precision import grad_scaler
from brats_utils.regions import init_region_bias_, output_channels
from brats_utils.rng import rng_state, seed_everything
from brats_utils.schedules import EarlyStopping, make_scheduler, make_stopper

#: Columns of a run's history, one row per epoch.
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_paper_dice", "val_dice_mean", "val_dice_WT",
                   "val_dice_TC", "val_dice_ET", "lr", "grad_norm", "seconds")
REGION_DICE_COLUMNS = ("val_dice_WT", "val_dice_TC", "val_dice_ET")


def with_mean_dice(row: dict) -> dict:
    """A history row with ``val_dice_mean`` (the mean of its WT, TC and ET Dice), as rows written before
    that column existed lack it."""
    return {**row, "val_dice_mean": float(np.mean([row[column] for column in REGION_DICE_COLUMNS]))}


# --- the files of a run -------------------------------------------------------------


def history_csv_path(run_dir: Path) -> Path:
    """The history table of a run."""
    return Path(run_dir) / "history.csv"


@dataclass
class TrainResult:
    """What a training run produced."""

    history: pd.DataFrame
    best_checkpoint: Path
    last_checkpoint: Path
    run_dir: Path
    device: str
    stopped_early: bool
    best_metric: str = "val_dice_mean"  # the profile's: the history column that chose best.pt

    @property
    def best_epoch(self) -> int:
        """Epoch of the best checkpoint (highest validation ``best_metric``)."""
        return int(self.best["epoch"])

    @property
    def best(self) -> pd.Series:
        """The history row of the best epoch (the first of equal ones, as training kept it)."""
        return self.history.loc[self.history[self.best_metric].idxmax()]

    def __repr__(self) -> str:
        best = self.best
        ending = "stopped early" if self.stopped_early else "finished"
        return (f"TrainResult: {len(self.history)} epochs on {self.device} ({ending}), "
                f"{self.history['seconds'].sum() / 60:.1f} min\n"
                f"  best epoch {self.best_epoch} (by {self.best_metric}): mean region Dice "
                f"{best['val_dice_mean']:.3f}, paper Dice {best['val_paper_dice']:.3f}, "
                f"WT {best['val_dice_WT']:.3f}, TC {best['val_dice_TC']:.3f}, ET {best['val_dice_ET']:.3f}, "
                f"val loss {best['val_loss']:.4f}\n"
                f"  best checkpoint {self.best_checkpoint}\n"
                f"  last checkpoint {self.last_checkpoint}\n"
                f"  history         {history_csv_path(self.run_dir)}")


@dataclass
class TrainingState:
    """Everything a checkpoint holds besides the random generators: the run's live objects."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | torch.optim.lr_scheduler.CosineAnnealingLR
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping
    history: list[dict]

    @classmethod
    def create(cls, profile: Profile, device: torch.device, *, precision: str = "fp32") -> TrainingState:
        """A fresh model (seeded with ``profile.init_seed`` or ``profile.seed``, initialised by
        ``profile.init``, with the outputs of ``profile.target``, a region head starting at
        ``profile.region_prior``) and the profile's optimiser, schedule (:func:`make_scheduler`) and
        stopper."""
        seed_everything(profile.seed if profile.init_seed is None else profile.init_seed)
        model = build_model(profile.model_preset, dropout=profile.dropout,
                            num_classes=output_channels(profile.target))
        if profile.init == "authors":
            init_weights_authors_(model)
        if profile.target == "regions" and profile.region_prior is not None:
            init_region_bias_(model, profile.region_prior)
        model = model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
        return cls(model, optimizer, make_scheduler(optimizer, profile), grad_scaler(precision, device),
                   make_stopper(profile), [])

    def checkpoint(self, profile: Profile, run: dict | None = None) -> dict:
        """The checkpoint dict (:data:`~brats_utils.checkpoints.CHECKPOINT_KEYS`) after the last epoch.

        ``run`` (the resolved ``precision``, ``world_size``...) is recorded beside the profile in ``config``.
        """
        model = unwrap_model(self.model)
        return {"model_state_dict": model.state_dict(), "model_config": dict(model.config),
                "optimizer_state_dict": self.optimizer.state_dict(),
                "scheduler_state_dict": self.scheduler.state_dict(),
                "scaler_state_dict": self.scaler.state_dict(),
                "early_stopping": self.stopper.state_dict(), "epoch": len(self.history),
                "rng_state": rng_state(), "config": {**profile.as_dict(), **(run or {})},
                "history": self.history}

    def restore(self, checkpoint: dict) -> None:
        """Continue from a checkpoint checked by :func:`check_compatible`."""
        model = unwrap_model(self.model)
        try:
            model.load_state_dict(checkpoint["model_state_dict"])
        except RuntimeError as error:  # same settings, but the model code changed since
            raise CheckpointError(f"checkpoint weights do not fit the model: {error}",
                                  expected=f"weights of {model.config}") from error
        self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        if checkpoint["scaler_state_dict"] and self.scaler.is_enabled():  # empty when saved without AMP
            self.scaler.load_state_dict(checkpoint["scaler_state_dict"])
        self.stopper.load_state_dict(checkpoint["early_stopping"])
        self.history = [with_mean_dice(dict(row)) for row in checkpoint["history"]]
        # the random generators are not restored: every epoch seeds them from (seed, epoch) (train_epoch)


# --- the files of a run, after each epoch and after a fallback --------------------------------------


def save_epoch(state: TrainingState, profile: Profile, run_dir: Path, *, is_best: bool,
                run: dict | None = None) -> None:
    """History, best, periodic and last checkpoint after an epoch; ``last.pt`` is written last."""
    epoch = len(state.history)
    write_csv_atomic(pd.DataFrame(state.history, columns=list(HISTORY_COLUMNS)), history_csv_path(run_dir))
    checkpoint = state.checkpoint(profile, run)
    if is_best:
        atomic_torch_save(checkpoint, checkpoint_dir(run_dir) / "best.pt")
    if epoch % profile.checkpoint_every == 0:
        atomic_torch_save(checkpoint, checkpoint_dir(run_dir) / f"epoch_{epoch:03d}.pt")
    atomic_torch_save(checkpoint, checkpoint_dir(run_dir) / "last.pt")  # the resume point, after the others


def agree_with_fallback(run_dir: Path, checkpoint: dict, history: list[dict], best_metric: str) -> None:
    """After resuming from an older checkpoint: ``best.pt`` the best epoch of ``history`` up to it (from its
    epoch file if ``best.pt`` is newer; the resume point's weights when neither is left)."""
    folder = checkpoint_dir(run_dir)
    best_epoch = max(history, key=lambda row: row[best_metric])["epoch"]
    best = None
    for path in (folder / "best.pt", folder / f"epoch_{best_epoch:03d}.pt"):
        try:
            candidate = load_checkpoint(path)
        except CheckpointError:
            continue
        if candidate["epoch"] == best_epoch:
            best = candidate
            break
    atomic_torch_save(best if best is not None else checkpoint, folder / "best.pt")


def is_finished(checkpoint: dict, profile: Profile) -> bool:
    """Whether a run's last checkpoint marks it complete (all epochs done, or stopped early)."""
    stopper = make_stopper(profile)
    stopper.load_state_dict(checkpoint["early_stopping"])
    return checkpoint["epoch"] >= profile.epochs or stopper.should_stop
