"""The learning-rate schedule and early stopping of a run: the paper's, or the authors' code's.

- :class:`EarlyStopping`: stop when the validation loss has not improved for ``patience`` epochs, by
  the strict rule (Keras, Lightning) or the authors' (a loss that creeps up never stops the run);
- :func:`make_scheduler` / :func:`step_scheduler`: ``ReduceLROnPlateau`` on the validation loss (the
  paper) or ``CosineAnnealingLR`` stepped once per epoch (the authors' final run).

Both take a profile's ``training`` section (or any object with its fields, the profile itself included).
"""

from __future__ import annotations

import math
from typing import Any

import torch


class EarlyStopping:
    """Stop when the monitored loss has not improved by ``min_delta`` for ``patience`` epochs.

    ``rule="strict"`` (default): improvement means ``loss < best - min_delta`` (the usual rule of
    Keras and Lightning), so a slowly worsening loss does stop the run.

    ``rule="authors"``: the authors' code. Only a loss more than ``min_delta`` *above* the best counts
    as a bad epoch; any other loss, including one up to ``min_delta`` above the best, overwrites the
    best and resets the counter. A loss that creeps up by less than ``min_delta`` per epoch therefore
    never stops the run.
    """

    RULES = ("strict", "authors")

    def __init__(self, patience: int, min_delta: float = 0.0, rule: str = "strict") -> None:
        if rule not in self.RULES:
            raise ValueError(f"rule must be one of {self.RULES}, got {rule!r}")
        self.patience = patience
        self.min_delta = min_delta
        self.rule = rule
        self.best = math.inf
        self.bad_epochs = 0

    def step(self, loss: float) -> bool:
        """Record one epoch's loss; return True when training should stop."""
        improved = (loss <= self.best + self.min_delta if self.rule == "authors"
                    else loss < self.best - self.min_delta)
        if improved:
            self.best = loss
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        """Whether the patience is used up."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        """Everything needed to continue counting after a restart."""
        return {"patience": self.patience, "min_delta": self.min_delta, "rule": self.rule, "best": self.best,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (patience and min_delta stay as constructed)."""
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])

    def __repr__(self) -> str:
        return (f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, rule={self.rule!r}, "
                f"best={self.best:.4g}, "
                f"bad_epochs={self.bad_epochs})")


def make_scheduler(optimizer: torch.optim.Optimizer, settings: Any):
    """The settings' learning-rate schedule: ``ReduceLROnPlateau`` (the paper) or ``CosineAnnealingLR``.

    The cosine schedule (the authors' final run: ``T_max = settings.cosine_t_max``, ``eta_min =
    settings.min_lr``) is stepped once per epoch without a metric; past ``T_max`` the rate rises again
    (period ``2 * T_max``), as in theirs. See :func:`step_scheduler`.
    """
    if settings.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.cosine_t_max,
                                                          eta_min=settings.min_lr)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=settings.plateau_factor, patience=settings.plateau_patience,
        min_lr=settings.min_lr)


def step_scheduler(scheduler, val_loss: float) -> None:
    """End-of-epoch step: the plateau schedule reads the validation loss, the cosine one does not."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()


def make_stopper(settings: Any) -> EarlyStopping:
    """The settings' early stopping (patience, minimum improvement and rule)."""
    return EarlyStopping(settings.early_stop_patience, settings.early_stop_min_delta,
                         settings.early_stop_rule)
