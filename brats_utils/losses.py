"""The paper's training loss: 0.3 · cross-entropy + 0.7 · soft Dice (equations (1) and (2)).

Soft Dice, equation (1) of the paper::

    L_Dice = 1 - 1/C · Σ_c (2 Σ_i p_ci g_ci + ε) / (Σ_i p_ci + Σ_i g_ci + ε)

with ``p`` the softmax probabilities, ``g`` the one-hot ground truth, ``ε`` a smoothing constant.

Which voxels does ``Σ_i`` run over? The equation does not say; the text says the Dice is "computed
independently for each class across the entire batch, and then averaged". The authors' code (which
produced their published weights, docs/reproduction.md) sums over the voxels of each
*sample*: one Dice per sample and class, averaged over the batch, then over the classes, with all 4
classes (background included) and ε = 1e-6. That is the default here (``batch_dice=False``).

``batch_dice=True`` gives the other reading (nnU-Net's "batch Dice"): ``Σ_i`` over every voxel of the
batch, one Dice per class. The two differ when a class is missing from one sample (a patch without
enhancing tumour): per-sample Dice scores that class ≈ 0 for that sample unless the network pushes the
class's summed probability below ~ε, so it mostly adds a near-constant to the loss; batch Dice pools the
sample with the others. With a batch of one (the authors' validation) they are identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits (autocast) are upcast: sums over a million voxels need float32."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    include_background: bool = True,
    eps: float = 1e-6,
    batch_dice: bool = False,
) -> torch.Tensor:
    """Soft Dice loss of the paper's equation (1).

    Args:
        logits: raw network output ``[B, C, X, Y, Z]`` (any number of spatial axes).
        target: integer labels ``[B, X, Y, Z]`` with values ``0 .. C-1``.
        include_background: keep class 0 in the class mean (the authors did).
        eps: smoothing ε added to numerator and denominator (authors: 1e-6).
        batch_dice: sum over the whole batch (one Dice per class) instead of per sample.

    Returns:
        A scalar: 1 - mean Dice, in float32 (or float64 for float64 logits) even under autocast.
    """
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {list(target.shape)} does not match logits {list(logits.shape)} "
                         f"(expected target [B, X, Y, Z] for logits [B, C, X, Y, Z])")
    probs = torch.softmax(_at_least_float32(logits), dim=1)
    one_hot = F.one_hot(target.long(), num_classes=logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    summed_axes = tuple(range(2, logits.ndim))
    if batch_dice:
        summed_axes = (0, *summed_axes)
    intersection = (probs * one_hot).sum(summed_axes)
    denominator = probs.sum(summed_axes) + one_hot.sum(summed_axes)
    dice = (2 * intersection + eps) / (denominator + eps)  # [B, C], or [C] with batch_dice
    if not include_background:
        dice = dice[..., 1:]
    return 1 - dice.mean()  # equal sizes: mean over batch then classes == mean of everything


class CombinedLoss(nn.Module):
    """``ce_weight · CrossEntropy + dice_weight · SoftDice``: the paper's equation (2) with 0.3 / 0.7.

    Cross-entropy is the plain, unweighted voxel mean (as the authors). Extra keyword arguments
    (``include_background``, ``eps``, ``batch_dice``) go to :func:`soft_dice_loss`.
    """

    def __init__(self, ce_weight: float = 0.3, dice_weight: float = 0.7, include_background: bool = True,
                 eps: float = 1e-6, batch_dice: bool = False) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.dice_options = {"include_background": include_background, "eps": eps, "batch_dice": batch_dice}

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two terms and their weighted sum: ``{"ce": ..., "dice": ..., "loss": ...}`` (for logging)."""
        ce = F.cross_entropy(_at_least_float32(logits), target.long())
        dice = soft_dice_loss(logits, target, **self.dice_options)
        return {"ce": ce, "dice": dice, "loss": self.ce_weight * ce + self.dice_weight * dice}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The combined loss (a scalar)."""
        return self.components(logits, target)["loss"]
