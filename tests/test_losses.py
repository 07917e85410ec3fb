"""Soft Dice (the paper's equation (1)) and the combined loss, against arithmetic done by hand."""

from __future__ import annotations

import math

import pytest
import torch

from brats_utils.losses import CombinedLoss, soft_dice_loss

EPS = 1e-6


def two_class_logits(tumour_probabilities: list[list[float]]) -> torch.Tensor:
    """Logits ``[B, 2, N, 1, 1]`` whose softmax gives exactly these tumour probabilities (class 1)."""
    p = torch.tensor(tumour_probabilities, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)[..., None, None]


def labels(values: list[list[int]]) -> torch.Tensor:
    return torch.tensor(values)[..., None, None]


def dice(p: list[float], g: list[int]) -> float:
    """(2 Σ p g + ε) / (Σ p + Σ g + ε), written out."""
    return (2 * sum(a * b for a, b in zip(p, g, strict=True)) + EPS) / (sum(p) + sum(g) + EPS)


# The notebook's toy example: four voxels, two of them tumour.
P_TUMOUR = [0.9, 0.8, 0.3, 0.1]
TRUTH = [1, 1, 0, 0]
P_BACKGROUND = [1 - p for p in P_TUMOUR]
NOT_TRUTH = [1 - g for g in TRUTH]


def test_soft_dice_equals_the_hand_computed_value():
    # tumour: 2·1.7 / (2.1 + 2) = 0.829...; background: 2·1.6 / (1.9 + 2) = 0.820...
    expected = 1 - (dice(P_TUMOUR, TRUTH) + dice(P_BACKGROUND, NOT_TRUTH)) / 2
    assert expected == pytest.approx(0.175109, abs=1e-6)
    loss = soft_dice_loss(two_class_logits([P_TUMOUR]), labels([TRUTH]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_leaving_out_background_keeps_only_the_tumour_class():
    loss = soft_dice_loss(two_class_logits([P_TUMOUR]), labels([TRUTH]), include_background=False)
    assert loss.item() == pytest.approx(1 - dice(P_TUMOUR, TRUTH), rel=1e-6)


def test_per_sample_dice_averages_samples_and_batch_dice_pools_them():
    # second sample has no tumour at all: per-sample Dice scores its tumour class ≈ 0
    p2, g2 = [0.2, 0.1, 0.1, 0.2], [0, 0, 0, 0]
    logits, target = two_class_logits([P_TUMOUR, p2]), labels([TRUTH, g2])
    per_sample = [dice(P_TUMOUR, TRUTH), dice(P_BACKGROUND, NOT_TRUTH),
                  dice(p2, g2), dice([1 - p for p in p2], [1 - g for g in g2])]
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - sum(per_sample) / 4, rel=1e-6)
    pooled = [dice(P_TUMOUR + p2, TRUTH + g2),
              dice(P_BACKGROUND + [1 - p for p in p2], NOT_TRUTH + [1 - g for g in g2])]
    batch = soft_dice_loss(logits, target, batch_dice=True).item()
    assert batch == pytest.approx(1 - sum(pooled) / 2, rel=1e-6)
    assert batch < soft_dice_loss(logits, target).item()


def test_batch_of_one_gives_the_same_dice_either_way():
    torch.manual_seed(0)
    logits, target = torch.randn(1, 4, 6, 5, 4), torch.randint(0, 4, (1, 6, 5, 4))
    assert soft_dice_loss(logits, target).item() == pytest.approx(
        soft_dice_loss(logits, target, batch_dice=True).item(), rel=1e-6)


def test_combined_loss_is_0_3_cross_entropy_plus_0_7_dice_by_hand():
    logits, target = two_class_logits([P_TUMOUR]), labels([TRUTH])
    ce = -sum(math.log(p if g else 1 - p) for p, g in zip(P_TUMOUR, TRUTH, strict=True)) / 4
    dice_loss = 1 - (dice(P_TUMOUR, TRUTH) + dice(P_BACKGROUND, NOT_TRUTH)) / 2
    assert ce == pytest.approx(0.197635, abs=1e-6)
    parts = CombinedLoss().components(logits, target)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["dice"].item() == pytest.approx(dice_loss, rel=1e-6)
    assert CombinedLoss()(logits, target).item() == pytest.approx(0.3 * ce + 0.7 * dice_loss, rel=1e-6)
    assert CombinedLoss(ce_weight=0.4, dice_weight=0.6)(logits, target).item() == pytest.approx(
        0.4 * ce + 0.6 * dice_loss, rel=1e-6)


def test_four_classes_on_a_volume_match_a_loop_over_samples_and_classes():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 4, 5, 6, 3, dtype=torch.float64), torch.randint(0, 4, (2, 5, 6, 3))
    probs = torch.softmax(logits, dim=1)
    scores = []
    for b in range(2):
        for c in range(4):
            p, g = probs[b, c].flatten().tolist(), (target[b] == c).flatten().long().tolist()
            scores.append(dice(p, g))
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - sum(scores) / len(scores), rel=1e-6)


def test_a_perfect_prediction_has_zero_dice_loss_and_gradients_are_finite():
    target = labels([TRUTH, [0, 1, 1, 0]])
    perfect = 50.0 * (torch.nn.functional.one_hot(target, 2).movedim(-1, 1).double() - 0.5)
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-9)
    logits = torch.randn(2, 2, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    CombinedLoss()(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda x: soft_dice_loss(x, target), (logits.detach().requires_grad_(),))


def test_half_precision_logits_give_a_float32_loss():
    torch.manual_seed(2)
    logits, target = torch.randn(1, 4, 4, 4, 4), torch.randint(0, 4, (1, 4, 4, 4))
    low = CombinedLoss()(logits.bfloat16(), target)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(CombinedLoss()(logits.bfloat16().float(), target).item(), rel=1e-6)


def test_a_target_that_does_not_match_the_logits_is_refused():
    with pytest.raises(ValueError, match="does not match"):
        soft_dice_loss(torch.randn(1, 4, 4, 4, 4), torch.zeros(1, 4, 4, 5, dtype=torch.long))
