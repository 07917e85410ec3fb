"""A training run's history drawn like the paper's Figure 4: loss, Dice and learning rate per epoch."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from brats_utils.labels import REGION_COLORS


def plot_history(history: pd.DataFrame, best_metric: str = "val_dice_mean") -> Figure:
    """Loss, Dice and learning rate over the epochs (like the paper's Figure 4).

    ``history`` is a run's table (``brats_utils.run_state.HISTORY_COLUMNS``); the dashed line marks the
    best epoch (highest ``best_metric``: the profile's, mean region Dice by default). A history written
    before ``val_dice_mean`` existed gets it from its region Dice.
    """
    if "val_dice_mean" not in history:
        regions = [f"val_dice_{region}" for region in ("WT", "TC", "ET")]
        history = history.assign(val_dice_mean=history[regions].mean(axis=1))
    fig, (ax_loss, ax_dice, ax_lr) = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    epochs = history["epoch"]
    ax_loss.plot(epochs, history["train_loss"], "o-", label="training (patches)")
    ax_loss.plot(epochs, history["val_loss"], "s-", label="validation (whole volumes)")
    ax_loss.set(title="Loss: 0.3 CE + 0.7 soft Dice", xlabel="epoch", ylabel="loss")
    ax_dice.plot(epochs, history["val_paper_dice"], "k.-", label="paper metric (4 labels incl. background)")
    ax_dice.plot(epochs, history["val_dice_mean"], "k--", label="mean of WT, TC, ET")
    for region in ("WT", "TC", "ET"):
        ax_dice.plot(epochs, history[f"val_dice_{region}"], ".-", color=REGION_COLORS[region], label=region)
    ax_dice.set(title="Validation Dice", xlabel="epoch", ylabel="Dice", ylim=(0, 1.02))
    ax_lr.plot(epochs, history["lr"], "o-", color="tab:purple")
    ax_lr.set(title="Learning rate (ReduceLROnPlateau)", xlabel="epoch", ylabel="learning rate", yscale="log")
    best_epoch = history.loc[history[best_metric].idxmax(), "epoch"]
    for ax in (ax_loss, ax_dice, ax_lr):
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_dice.legend(fontsize="small")
    return fig
