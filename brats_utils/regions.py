"""Region-based training (nnU-Net's BraTS recipe): three sigmoids WT, TC, ET instead of a 4-class softmax.

BraTS does not score the four labels; it scores three *nested regions* (:data:`~brats_utils.labels.
TRAIN_REGIONS`): whole tumour WT = {1, 2, 3}, tumour core TC = {1, 3}, enhancing tumour ET = {3} in
training labels. A softmax model learns "which label", and the regions are assembled after the argmax;
a region model learns exactly what is scored: one sigmoid channel per region, each with its own
binary decision, trained with Dice + binary cross-entropy *per region*::

    L = bce_weight · 1/3 Σ_r BCE(s_r, g_r) + dice_weight · (1 - 1/3 Σ_r Dice(σ(s_r), g_r))

with ``s_r`` the logits of region r and ``g_r`` its binary target (region r contains the voxel's
label). Background is no channel: it is "outside WT".

The export turns three region decisions back into one label per voxel ({0, 1, 2, 3}, and to the file
labels {0, 1, 2, 4} through the label scheme): **ET → 3; TC ∖ ET → 1; WT ∖ TC → 2; else 0**. The three
sigmoids are independent, so a voxel may be called ET but not TC; the rule settles it by the innermost
region (ET wins), which keeps the regions nested again after the conversion.

Everything here takes the *target* (``"labels"``: the paper's softmax model, ``"regions"``: this one)
as an argument, so the training loop and the inference code choose their loss, predictor and label
conversion with one call each: :func:`loss_for`, :func:`predictor_for`, :func:`probs_to_labels`,
:func:`probs_to_logits`, all reading one record per target (:data:`TARGETS`); the losses a profile can
name are :data:`LOSSES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brats_utils.errors import ProfileError
from brats_utils.labels import TRAIN_REGIONS
from brats_utils.losses import CombinedLoss
from brats_utils.precision import autocast, to_channels_last, use_channels_last

#: Channel order of a region model's output.
REGION_ORDER: tuple[str, ...] = ("WT", "TC", "ET")
#: Training label given to a voxel by the innermost region that contains it (ET, then TC, then WT).
_INNERMOST_FIRST: tuple[tuple[str, int], ...] = (("ET", 3), ("TC", 1), ("WT", 2))


# --- labels <-> regions -------------------------------------------------------------------


def labels_to_regions(labels: torch.Tensor) -> torch.Tensor:
    """Training labels ``[B, X, Y, Z]`` (0..3) to binary region targets ``[B, 3, X, Y, Z]`` (WT, TC, ET)."""
    labels = labels.long()
    masks = [torch.isin(labels, torch.tensor(TRAIN_REGIONS[name], device=labels.device))
             for name in REGION_ORDER]
    return torch.stack(masks, dim=1).float()


def regions_to_labels(regions: torch.Tensor | np.ndarray,
                      threshold: float = 0.5) -> torch.Tensor | np.ndarray:
    """Region probabilities or masks ``[3, ...]`` (WT, TC, ET) to training labels ``[...]`` (uint8 0..3).

    A region is "on" where its value exceeds ``threshold``; then ET → 3, TC ∖ ET → 1, WT ∖ TC → 2,
    else 0 (the innermost region decides, so an ET voxel outside the predicted TC is still ET).
    Accepts numpy or torch and returns the same kind; a batch ``[B, 3, ...]`` works on axis 1
    when given as torch with ``regions.ndim == 5``.
    """
    is_numpy = isinstance(regions, np.ndarray)
    tensor = torch.from_numpy(regions) if is_numpy else regions
    axis = 1 if tensor.ndim == 5 else 0
    if tensor.shape[axis] != len(REGION_ORDER):
        raise ValueError(f"expected {len(REGION_ORDER)} region channels (WT, TC, ET) on axis {axis}, "
                         f"got shape {tuple(tensor.shape)}")
    on = tensor > threshold
    labels = torch.zeros(on.select(axis, 0).shape, dtype=torch.uint8, device=tensor.device)
    for name, label in reversed(_INNERMOST_FIRST):  # outermost first, the inner regions overwrite it
        labels[on.select(axis, REGION_ORDER.index(name))] = label
    return labels.numpy() if is_numpy else labels


# --- the start of training ---------------------------------------------------------------------


def init_region_bias_(model: nn.Module, prior: float) -> nn.Module:
    """Start a region model's sigmoids at probability ``prior``: the head's biases set to logit(prior).

    With bias 0 every sigmoid starts at 0.5: the untrained model calls *every* voxel tumour, in all
    three regions, while about 1 % of a patch is. The first steps then go to undoing that (binary
    cross-entropy pushes every voxel down, and the soft Dice of a region predicted everywhere is tiny and
    barely moves), before the regions themselves are learnt. Setting the bias so that the sigmoid
    starts at the prior frequency (Lin et al. 2017, "Focal loss for dense object detection", whose
    prior was 0.01) starts training where the data are. A softmax model has no such problem: its four
    classes start at 0.25 each, and background is one of them. ``model.final_conv`` must be the
    region head (3 outputs); returns the model.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"the region prior is a probability in (0, 1), got {prior}")
    head = getattr(model, "final_conv", None)
    if head is None or head.bias is None or head.out_channels != len(REGION_ORDER):
        raise ValueError(f"expected a region head final_conv with a bias and {len(REGION_ORDER)} outputs, "
                         f"got {head!r}")
    with torch.no_grad():
        head.bias.fill_(float(np.log(prior / (1.0 - prior))))
    return model


# --- the region loss ------------------------------------------------------------------------


def region_dice_loss(logits: torch.Tensor, regions: torch.Tensor, *, eps: float = 1e-6,
                     batch_dice: bool = False) -> torch.Tensor:
    """Soft Dice loss of sigmoid outputs: ``1 - mean_r Dice(σ(logits_r), regions_r)``.

    ``logits`` and ``regions`` are ``[B, R, X, Y, Z]``; ``batch_dice`` sums over the whole batch (one Dice
    per region, nnU-Net's choice) instead of one per sample and region.
    """
    probs = torch.sigmoid(logits.to(torch.promote_types(logits.dtype, torch.float32)))
    regions = regions.to(probs.dtype)
    summed_axes = tuple(range(2, logits.ndim))
    if batch_dice:
        summed_axes = (0, *summed_axes)
    intersection = (probs * regions).sum(summed_axes)
    denominator = probs.sum(summed_axes) + regions.sum(summed_axes)
    return 1 - ((2 * intersection + eps) / (denominator + eps)).mean()


class RegionLoss(nn.Module):
    """``bce_weight · BCE + dice_weight · soft Dice`` over the three sigmoid regions WT, TC, ET.

    Called like :class:`~brats_utils.losses.CombinedLoss`: logits ``[B, 3, X, Y, Z]`` and *training labels*
    ``[B, X, Y, Z]``; the region targets are made here (:func:`labels_to_regions`). The weights default to
    the paper's 0.3 / 0.7 so that only the target changes between the two models of the study.
    """

    def __init__(self, bce_weight: float = 0.3, dice_weight: float = 0.7, eps: float = 1e-6,
                 batch_dice: bool = False) -> None:
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.dice_options = {"eps": eps, "batch_dice": batch_dice}

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two terms and their weighted sum: ``{"bce": ..., "dice": ..., "loss": ...}``."""
        if logits.shape[1] != len(REGION_ORDER):
            raise ValueError(f"a region model has {len(REGION_ORDER)} output channels (WT, TC, ET), "
                             f"got logits {list(logits.shape)}")
        regions = labels_to_regions(target)
        logits32 = logits.to(torch.promote_types(logits.dtype, torch.float32))
        bce = F.binary_cross_entropy_with_logits(logits32, regions)
        dice = region_dice_loss(logits32, regions, **self.dice_options)
        return {"bce": bce, "dice": dice, "loss": self.bce_weight * bce + self.dice_weight * dice}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The combined region loss (a scalar)."""
        return self.components(logits, target)["loss"]


# --- the targets: one record each, and the losses a profile names ----------------------------------


@dataclass(frozen=True)
class Target:
    """What a network is trained to predict, in one record: how many output channels, the activation
    that turns logits into probabilities (and its inverse, for a loss on blended probabilities), the
    target's CE + Dice loss and the conversion of probabilities ``[K, ...]`` to training labels."""

    channels: int
    activation: Callable[[torch.Tensor], torch.Tensor]
    to_logits: Callable[[torch.Tensor], torch.Tensor]
    loss: Callable[..., nn.Module]  # (ce_weight, dice_weight, batch_dice, include_background) -> loss
    to_labels: Callable[[torch.Tensor], torch.Tensor]


def _labels_loss(*, ce_weight: float, dice_weight: float, batch_dice: bool,
                 include_background: bool) -> nn.Module:
    return CombinedLoss(ce_weight=ce_weight, dice_weight=dice_weight, batch_dice=batch_dice,
                        include_background=include_background)


def _region_loss(*, ce_weight: float, dice_weight: float, batch_dice: bool,
                 include_background: bool) -> nn.Module:
    return RegionLoss(bce_weight=ce_weight, dice_weight=dice_weight, batch_dice=batch_dice)  # no background


#: The targets by the name a profile's ``target`` gives: ``"labels"`` (the paper's 4-class softmax) and
#: ``"regions"`` (three sigmoids WT/TC/ET). Adding one is one entry here.
TARGETS: dict[str, Target] = {
    "labels": Target(channels=4, activation=lambda logits: torch.softmax(logits, dim=1),
                     to_logits=lambda probs: torch.log(probs.clamp_min(1e-8)), loss=_labels_loss,
                     to_labels=lambda probs: probs.argmax(dim=0).to(torch.uint8)),
    "regions": Target(channels=len(REGION_ORDER), activation=torch.sigmoid,
                      to_logits=lambda probs: torch.logit(probs.clamp(1e-6, 1 - 1e-6)), loss=_region_loss,
                      to_labels=regions_to_labels),
}

#: The losses by the name a profile's ``loss`` gives: each builds the loss of a :class:`Target` from the
#: profile's weights and options. ``"ce_dice"`` is the paper's 0.3 CE + 0.7 soft Dice (binary CE per
#: region for a region model). Adding one is one entry here (docs/architecture.md shows one).
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce_dice": lambda target, **options: target.loss(**options),
}


def _entry(registry: dict, kind: str, name: str):
    try:
        return registry[name]
    except KeyError:
        raise ProfileError(f"unknown {kind} {name!r}", expected="one of " + ", ".join(registry)) from None


def target_of(name: str) -> Target:
    """The :class:`Target` called ``name``; :class:`~brats_utils.errors.ProfileError` names the known ones."""
    return _entry(TARGETS, "target", name)


def output_channels(target: str) -> int:
    """Output channels of a model trained for ``target`` (4 for "labels", 3 for "regions")."""
    return target_of(target).channels


def loss_for(target: str = "labels", *, loss: str = "ce_dice", ce_weight: float = 0.3,
             dice_weight: float = 0.7, batch_dice: bool = False,
             include_background: bool = True) -> nn.Module:
    """The training loss ``loss`` (:data:`LOSSES`) of ``target``: by default :class:`CombinedLoss`
    (softmax) or :class:`RegionLoss` (sigmoids).

    ``ce_weight`` is the cross-entropy weight (binary cross-entropy for regions); ``include_background``
    only concerns the softmax loss (a region model has no background channel).
    """
    build = _entry(LOSSES, "loss", loss)
    return build(target_of(target), ce_weight=ce_weight, dice_weight=dice_weight, batch_dice=batch_dice,
                 include_background=include_background)


# --- predictions of either kind ------------------------------------------------------------------


def predictor_for(model: nn.Module, target: str = "labels", *, precision: str = "auto") -> Callable:
    """A sliding-window predictor (windows → probabilities): the target's activation of the network's
    logits (softmax for labels, sigmoid for regions). The one function that makes a predictor of a model.

    The network runs in ``precision`` (:data:`brats_utils.precision.PRECISIONS`, resolved for the
    batch's device), on a ``channels_last_3d`` batch where
    :func:`~brats_utils.precision.use_channels_last` says so. A batch on another device than the
    model's parameters is moved to them first (the probabilities stay there).
    """
    activation = target_of(target).activation

    def predict(batch: torch.Tensor) -> torch.Tensor:
        parameter = next(model.parameters(), None)
        if parameter is not None and batch.device != parameter.device:
            batch = batch.to(parameter.device)
        if use_channels_last(precision, batch.device):
            batch = to_channels_last(batch)
        with autocast(precision, batch.device):
            logits = model(batch)
        return activation(logits.float())

    return predict


def probs_to_labels(probs: torch.Tensor, target: str = "labels") -> torch.Tensor:
    """Training labels (uint8) from probabilities ``[K, ...]``: argmax (labels), the region rule (regions)."""
    record = target_of(target)
    if record.channels != probs.shape[0]:
        raise ValueError(f"{target} probabilities need {record.channels} channels, got {probs.shape[0]}")
    return record.to_labels(probs)


def probs_to_logits(probs: torch.Tensor, target: str = "labels") -> torch.Tensor:
    """Logits whose activation gives ``probs`` back: ``log p`` (softmax), ``log(p / (1 - p))`` (sigmoid).

    The validation computes its loss from blended probabilities this way (clamped away from 0 and 1).
    """
    return target_of(target).to_logits(probs)
