"""Checkpoints: a run saved by an earlier version of the package still resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from brats_utils import model, pipeline
from brats_utils.checkpoints import check_compatible, checkpoint_dir, load_checkpoint
from brats_utils.config import get_profile
from brats_utils.errors import CheckpointError

#: Saved by the package before the settings were cut into sections (fixtures/make_ci_before_sections.py):
#: the ci profile with a two-level network of base 2 filters, one epoch of one step.
BEFORE_SECTIONS = Path(__file__).parent / "fixtures" / "ci_before_sections.pt"
TINY_PRESET = {"base_filters": 2, "levels": 2, "units_per_block": 1}


@pytest.fixture
def tiny_preset(monkeypatch):
    """The fixture's network preset, registered as the script that saved it did."""
    monkeypatch.setitem(model.PRESETS, "fixture_tiny", TINY_PRESET)


def fixture_profile():
    """The settings the fixture was trained with; its best checkpoint was chosen by the paper's metric, the
    only one there was then (best_metric's legacy value)."""
    return get_profile("ci").with_overrides(epochs=1, steps_per_epoch=1, model_preset="fixture_tiny",
                                            max_val_cases=1, best_metric="val_paper_dice")


def test_the_old_checkpoint_fits_its_profile_and_refuses_other_settings(tiny_preset):
    checkpoint = load_checkpoint(BEFORE_SECTIONS)
    assert "amp" in checkpoint["config"]  # written when amp was still a field of its own
    check_compatible(checkpoint, fixture_profile().with_overrides(epochs=3).as_dict(), BEFORE_SECTIONS)
    with pytest.raises(CheckpointError, match=r"lr: 0\.0005 -> 0\.001"):
        check_compatible(checkpoint, fixture_profile().with_overrides(lr=1e-3).as_dict(), BEFORE_SECTIONS)
    with pytest.raises(CheckpointError, match="best_metric: 'val_paper_dice' -> 'val_dice_mean'"):
        check_compatible(checkpoint, fixture_profile().with_overrides(best_metric="val_dice_mean").as_dict(),
                         BEFORE_SECTIONS)


def test_a_checkpoint_saved_before_the_settings_sections_resumes(tiny_preset, tmp_path, monkeypatch):
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path))
    profile = fixture_profile().with_overrides(epochs=2)
    saved = load_checkpoint(BEFORE_SECTIONS)
    checkpoint_dir(profile.run_dir).mkdir(parents=True)
    shutil.copy(BEFORE_SECTIONS, checkpoint_dir(profile.run_dir) / "last.pt")
    result = pipeline.train(profile, progress=False)
    assert list(result.history["epoch"]) == [1, 2]  # epoch 1 came from the file, epoch 2 was trained
    assert result.history.iloc[0]["train_loss"] == pytest.approx(saved["history"][0]["train_loss"])
    resumed = load_checkpoint(result.last_checkpoint)
    assert resumed["epoch"] == 2
    weight = "enc1.0.weight"  # trained on by epoch 2
    assert not torch.equal(resumed["model_state_dict"][weight], saved["model_state_dict"][weight])
