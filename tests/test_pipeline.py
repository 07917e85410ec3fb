"""The orchestration layer: the predictor a profile describes, and its ensembles."""

from __future__ import annotations

import os

import numpy as np
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


# --- the enhancing-tumour rule at prediction time -------------------------------------------------------


class SmallEnhancingBlob:
    """A predictor that calls everything background except a 2x2x2 cube of enhancing tumour (label 3)
    inside a 4x4x4 cube of necrosis (label 1), at the centre of every window it sees."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        probs = torch.zeros(batch.shape[0], 4, *batch.shape[2:])
        probs[:, 0] = 1.0
        centre = [n // 2 for n in batch.shape[2:]]
        core = tuple(slice(c - 2, c + 2) for c in centre)
        et = tuple(slice(c - 1, c + 1) for c in centre)
        probs[(slice(None), 0, *core)] = 0.0
        probs[(slice(None), 1, *core)] = 1.0
        probs[(slice(None), 1, *et)] = 0.0
        probs[(slice(None), 3, *et)] = 1.0
        return probs


def test_the_et_rule_relabels_a_predicted_et_smaller_than_the_threshold_in_mm3(data_dir, tmp_path):
    """``inference.min_et_volume_mm3`` is a volume: a ci case rewritten with 2 mm voxels (8 mm³ each) has
    an 8-voxel ET of 64 mm³ (hand arithmetic); a threshold of 65 mm³ relabels it as NCR/NET (file label
    1), 63 mm³ keeps it, and the tumour core is the same either way."""
    import dataclasses

    import nibabel as nib

    from brats_utils.inference import predict_folder

    profile = get_profile("ci").with_overrides(sw_patch_size=(48, 48, 32), sw_overlap=0.0)
    case = pipeline.training_cases(profile)[0]
    coarse = {}
    for modality, path in case.modalities.items():
        image = nib.load(path)
        coarse[modality] = tmp_path / "case" / path.name
        coarse[modality].parent.mkdir(exist_ok=True)
        two_mm = np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), two_mm), coarse[modality])
    case = dataclasses.replace(case, modalities=coarse, seg=None)
    outputs = {}
    for threshold in (0.0, 63.0, 65.0):
        settings = profile.with_overrides(min_et_volume_mm3=threshold)
        [path] = predict_folder(SmallEnhancingBlob(), [case], tmp_path / f"t{threshold:g}",
                                settings.inference, settings.preprocessing, progress=False)
        outputs[threshold] = np.asarray(nib.load(path).dataobj)
    kept, also_kept, relabelled = outputs.values()
    assert (kept == 4).sum() == 8 and (kept == 1).sum() == 56
    np.testing.assert_array_equal(also_kept, kept)
    assert (relabelled == 4).sum() == 0 and (relabelled == 1).sum() == 64
    np.testing.assert_array_equal(relabelled > 0, kept > 0)


def test_a_profile_without_a_threshold_chooses_it_on_its_validation_cases(data_dir, capsys):
    """None: chosen on the run's validation predictions (kept in predictions-val with its curve) for any
    other cases; the validation cases are predicted without it; a threshold the profile sets stays."""
    import json

    profile = get_profile("ci")
    torch.manual_seed(0)
    model = build_model("paper", num_classes=4, dropout=0.0).eval()
    assert profile.inference.min_et_volume_mm3 is None
    assert pipeline.with_et_rule(profile, model, "val").inference.min_et_volume_mm3 == 0.0
    settled = pipeline.with_et_rule(profile, model, "test", progress=False)
    record = json.loads((profile.run_dir / "predictions-val" / pipeline.ET_THRESHOLD_FILE).read_text())
    assert settled.inference.min_et_volume_mm3 == record["min_volume_mm3"]
    assert sorted(record["case_ids"]) == sorted(pipeline.split_of(profile)["val"])
    assert "ET rule:" in capsys.readouterr().out
    fixed = profile.with_overrides(min_et_volume_mm3=250.0)
    assert pipeline.with_et_rule(fixed, model, "test") is fixed
    assert get_profile("paper").inference.min_et_volume_mm3 == 0.0  # the paper has no post-processing


def test_save_figure_names_its_file_in_the_figures_folder_of_the_environment(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("BRATS_FIGURES_DIR", str(tmp_path / "figures"))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = pipeline.save_figure(fig, "02_example")
    plt.close(fig)
    assert path == tmp_path / "figures" / "02_example.png" and path.read_bytes()[:4] == b"\x89PNG"
