"""The orchestration layer: the predictor a profile describes, and its ensembles."""

from __future__ import annotations

import os

import pytest
import torch

from brats_utils import pipeline
from brats_utils.config import get_profile
from brats_utils.model import build_model


def two_models(num_classes: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    models = [build_model("paper", num_classes=num_classes, dropout=0.0) for _ in range(2)]
    with torch.no_grad():  # two different heads, so that the mean differs from either member
        models[1].final_conv.bias.add_(torch.linspace(-1.0, 1.0, num_classes))
    return models


@pytest.mark.parametrize("target, activation, channels", [("regions", torch.sigmoid, 3),
                                                          ("labels", lambda x: torch.softmax(x, 1), 4)])
def test_a_fold_ensemble_is_the_mean_of_its_members_probabilities(target, activation, channels):
    profile = get_profile("ci").with_overrides(target=target, precision="fp32")
    models = two_models(channels)
    batch = torch.randn(2, 4, 16, 16, 16)
    with torch.no_grad():
        each = [activation(model.eval()(batch)) for model in models]
        ensemble = pipeline.predictor(profile, *models)(batch)
    assert not torch.allclose(each[0], each[1], atol=1e-3)
    torch.testing.assert_close(ensemble, (each[0] + each[1]) / 2)
    if target == "regions":  # three independent sigmoids: no channel sums to one
        assert not torch.allclose(ensemble.sum(1), torch.ones(()))
    else:
        torch.testing.assert_close(ensemble.sum(1), torch.ones_like(ensemble.sum(1)))


def test_the_predictor_follows_the_profile_precision_and_test_time_flips():
    models = two_models(4)[:1]
    batch = torch.randn(1, 4, 16, 16, 16)
    profile = get_profile("ci").with_overrides(precision="fp32")
    with torch.no_grad():
        exact = torch.softmax(models[0](batch), 1)
        torch.testing.assert_close(pipeline.predictor(profile, *models)(batch), exact)
        low = pipeline.predictor(profile.with_overrides(precision="bf16"), *models)(batch)
        assert 0 < (low - exact).abs().max() < 0.05  # bf16 logits: close, not equal
        flips = pipeline.test_time_flips(profile)
        assert len(flips) == 8  # ci trains with "mirror": all 8 flips
        flipped = sum(torch.softmax(models[0](batch.flip(d)), 1).flip(d) if d else exact for d in flips) / 8
        torch.testing.assert_close(pipeline.predictor(profile, *models, tta=True)(batch), flipped)
    assert pipeline.test_time_flips(profile.with_overrides(augmentation="none")) == ((),)
    # one decision for the predictor and the prediction fingerprint: the flips applied, or none
    assert pipeline.applied_flips(profile, tta=True) == flips and pipeline.applied_flips(profile, False) == ()
    assert pipeline.applied_flips(profile.with_overrides(tta=True)) == flips
    assert pipeline.applied_flips(profile.with_overrides(augmentation="none"), tta=True) == ()


def test_no_brats_variable_of_the_caller_reaches_a_test():
    """conftest's hermetic environment: a BRATS_ROOT or BRATS_SET in the shell running pytest (a developer's
    real data) must not switch the pipeline's steps away from the synthetic data."""
    from conftest import KEPT_VARIABLES

    assert [name for name in os.environ if name.startswith("BRATS_") and name not in KEPT_VARIABLES] == []
