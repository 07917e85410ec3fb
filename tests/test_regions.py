"""Region-based training: WT/TC/ET targets, the conversion back to BraTS labels, the region loss, options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brats_utils import config
from brats_utils.labels import FILE_LABELS, check_labels, to_file_labels
from brats_utils.losses import CombinedLoss
from brats_utils.metrics import case_metrics
from brats_utils.regions import (
    RegionLoss,
    init_region_bias_,
    labels_to_regions,
    loss_for,
    output_channels,
    predictor_for,
    probs_to_labels,
    probs_to_logits,
    regions_to_labels,
)


def random_labels(shape=(2, 12, 10, 8), seed=0) -> torch.Tensor:
    return torch.randint(0, 4, shape, generator=torch.Generator().manual_seed(seed))


def test_region_targets_are_the_nested_brats_regions():
    labels = torch.tensor([[0, 1, 2, 3]])[..., None, None]  # [1, 4, 1, 1]
    regions = labels_to_regions(labels)[0, :, :, 0, 0]  # [3, 4]: WT, TC, ET per label
    assert regions.tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]


def test_perfect_region_prediction_gives_back_the_labels_and_dice_one_everywhere():
    labels = random_labels()
    converted = regions_to_labels(labels_to_regions(labels)[0])
    assert torch.equal(converted.long(), labels[0])
    file_labels = to_file_labels(converted.numpy())
    check_labels(file_labels, FILE_LABELS)  # valid BraTS 2020 labels {0, 1, 2, 4}
    scores = case_metrics(file_labels, to_file_labels(labels[0].numpy().astype(np.uint8)))
    assert all(scores[f"Dice_{r}"] == 1.0 for r in ("WT", "TC", "ET"))
    assert all(scores[f"Hausdorff95_{r}"] == 0.0 for r in ("WT", "TC", "ET"))


def test_any_region_probabilities_convert_to_valid_labels_by_the_innermost_region():
    probs = torch.rand((3, 9, 8, 7), generator=torch.Generator().manual_seed(1))
    labels = regions_to_labels(probs)
    check_labels(to_file_labels(labels.numpy()), FILE_LABELS)
    wt, tc, et = (probs > 0.5)
    assert torch.all(labels[et] == 3)  # ET wins even outside the predicted TC
    assert torch.all(labels[tc & ~et] == 1)
    assert torch.all(labels[wt & ~tc & ~et] == 2)
    assert torch.all(labels[~wt & ~tc & ~et] == 0)
    assert np.array_equal(regions_to_labels(probs.numpy()), labels.numpy())  # numpy in, numpy out


def test_region_loss_is_near_zero_for_confident_correct_logits_and_large_for_wrong_ones():
    labels = random_labels()
    regions = labels_to_regions(labels)
    good = RegionLoss()(20 * (2 * regions - 1), labels)
    bad = RegionLoss()(-20 * (2 * regions - 1), labels)
    assert float(good) < 1e-3 < 0.5 < float(bad)
    with pytest.raises(ValueError, match="3 output channels"):
        RegionLoss()(torch.zeros((2, 4, 12, 10, 8)), labels)


def test_region_loss_has_gradients_and_batch_dice_differs_when_a_sample_lacks_a_region():
    labels = random_labels()
    labels[1][labels[1] == 3] = 1  # no ET in the second sample
    logits = torch.randn((2, 3, 12, 10, 8), requires_grad=True)
    loss = RegionLoss()(logits, labels)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert float(RegionLoss(batch_dice=True)(logits, labels).detach()) != pytest.approx(float(loss.detach()))


def test_loss_factory_passes_the_profile_options():
    labels_loss = loss_for("labels", batch_dice=True, include_background=False)
    assert isinstance(labels_loss, CombinedLoss)
    assert labels_loss.dice_options == {"include_background": False, "eps": 1e-6, "batch_dice": True}
    assert isinstance(loss_for("regions", ce_weight=0.5), RegionLoss)
    assert loss_for("regions", ce_weight=0.5).bce_weight == 0.5
    with pytest.raises(ValueError, match="target"):
        loss_for("voxels")


def test_probabilities_to_labels_and_logits_follow_the_target():
    probs = torch.softmax(torch.randn((4, 5, 5, 5)), dim=0)
    assert torch.equal(probs_to_labels(probs, "labels"), probs.argmax(0).to(torch.uint8))
    assert torch.allclose(torch.softmax(probs_to_logits(probs, "labels"), 0), probs, atol=1e-6)
    sig = torch.rand((3, 5, 5, 5)) * 0.98 + 0.01
    assert torch.allclose(torch.sigmoid(probs_to_logits(sig, "regions")), sig, atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        probs_to_labels(probs, "regions")


def test_region_predictor_gives_sigmoids_of_three_channels():
    model = torch.nn.Conv3d(4, output_channels("regions"), 1)
    with torch.no_grad():
        out = predictor_for(model, "regions")(torch.randn((1, 4, 6, 6, 6)))
    assert out.shape == (1, 3, 6, 6, 6) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_profile_fields_for_the_target_and_the_loss_variants():
    profile = config.get_profile("ci")
    assert (profile.target, profile.batch_dice, profile.dice_include_background) == ("labels", False, True)
    assert profile.with_overrides(target="regions").target == "regions"
    from brats_utils.pipeline import check_registered

    with pytest.raises(config.ProfileError, match="target cannot be 'voxels'.*labels, regions"):
        check_registered(profile.with_overrides(target="voxels"))


def test_a_region_model_exports_brats_labels_on_the_original_grid(synthetic_root, synthetic_shape):
    from brats_utils import pipeline
    from brats_utils.datasets import find_dataset
    from brats_utils.inference import predict_case
    from brats_utils.model import build_model

    profile = config.get_profile("ci").with_overrides(target="regions")
    torch.manual_seed(0)
    model = build_model("paper", num_classes=3).eval()
    with torch.no_grad():  # a head that calls every region somewhere: bias the three sigmoids up
        model.final_conv.bias.fill_(0.5)
    case = find_dataset(synthetic_root, split="training")[0]
    labels = predict_case(pipeline.predictor(profile, model), case, profile.inference, profile.preprocessing,
                          target="regions")
    assert labels.shape == synthetic_shape and labels.dtype == np.uint8
    check_labels(labels, FILE_LABELS)
    assert 4 in np.unique(labels)


# --- the start of training ------------------------------------------------------------------------


def test_the_region_head_starts_at_the_prior_probability():
    from brats_utils.model import build_model

    torch.manual_seed(0)
    model = build_model("paper", num_classes=3)
    assert init_region_bias_(model, 0.01) is model
    np.testing.assert_allclose(torch.sigmoid(model.final_conv.bias).detach().numpy(), 0.01, rtol=1e-6)
    with torch.no_grad():  # an untrained model now calls about 1 % tumour instead of 50 %
        start = torch.sigmoid(model.eval()(torch.randn(1, 4, 16, 16, 16))).mean().item()
    assert start < 0.1
    with pytest.raises(ValueError, match="probability in"):
        init_region_bias_(model, 1.0)
    with pytest.raises(ValueError, match="3 outputs"):
        init_region_bias_(build_model("paper"), 0.01)  # a softmax head has 4


def test_training_starts_region_models_at_the_profile_prior_and_leaves_softmax_models_alone():
    from brats_utils.train import TrainingState

    profile = config.get_profile("ci")
    cpu = torch.device("cpu")
    regions = TrainingState.create(profile.with_overrides(target="regions"), cpu).model.final_conv.bias
    np.testing.assert_allclose(torch.sigmoid(regions).detach().numpy(), profile.region_prior, rtol=1e-6)
    plain = TrainingState.create(profile.with_overrides(target="regions", region_prior=None), cpu)
    labels = TrainingState.create(profile, cpu)
    assert torch.count_nonzero(plain.model.final_conv.bias) == 0
    assert torch.count_nonzero(labels.model.final_conv.bias) == 0
    with pytest.raises(config.ProfileError, match="region_prior"):
        profile.with_overrides(region_prior=0.0)


def test_runs_from_before_region_prior_resume_as_what_they_were():
    """A softmax run is the same run whatever its region_prior; a region run saved before the field
    existed started at bias 0, so it resumes only with region_prior=None (a study retrains it)."""
    from brats_utils.checkpoints import check_compatible
    from brats_utils.compare import row_fingerprint
    from brats_utils.errors import CheckpointError

    def saved_before(profile: config.Profile) -> dict:
        return {"config": {k: v for k, v in profile.as_dict().items() if k != "region_prior"}}

    labels, path = config.get_profile("ci"), Path("last.pt")
    check_compatible(saved_before(labels), labels.as_dict(), path)
    check_compatible(saved_before(labels), labels.with_overrides(region_prior=0.2).as_dict(), path)
    regions = labels.with_overrides(target="regions")
    with pytest.raises(CheckpointError, match=r"region_prior: None -> 0\.01"):
        check_compatible(saved_before(regions), regions.as_dict(), path)
    check_compatible(saved_before(regions), regions.with_overrides(region_prior=None).as_dict(), path)
    cpu = torch.device("cpu")
    assert row_fingerprint(labels, cpu) == row_fingerprint(labels.with_overrides(region_prior=0.2), cpu)
    assert row_fingerprint(regions, cpu) != row_fingerprint(regions.with_overrides(region_prior=0.2), cpu)
    assert "region_prior" not in labels.acting_settings() and "region_prior" in regions.acting_settings()
