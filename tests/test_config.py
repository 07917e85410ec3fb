"""Run profiles and the command line that reads them."""

from __future__ import annotations

import argparse

import pytest

from brats_utils import cli, config


def test_every_profile_is_complete_and_named_after_its_key():
    assert set(config.PROFILES) == {"authors", "ci", "demo", "gpu", "paper"}
    for key, profile in config.PROFILES.items():
        assert profile.name == key
        assert profile.description
        assert 0 < profile.val_fraction < 1


def test_get_profile_reads_the_environment(monkeypatch):
    monkeypatch.setenv("BRATS_PROFILE", "gpu")
    assert config.get_profile().name == "gpu"
    assert config.get_profile("ci").name == "ci"  # an explicit name wins
    monkeypatch.delenv("BRATS_PROFILE")
    assert config.get_profile().name == config.DEFAULT_PROFILE


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(KeyError, match="ci, demo, gpu, paper"):
        config.get_profile("fast")


def test_paper_profile_is_the_paper_as_written():
    p = config.PROFILES["paper"]
    assert (p.lr, p.weight_decay) == (5e-4, 5e-4)
    assert (p.plateau_factor, p.plateau_patience, p.min_lr) == (0.5, 2, 1e-6)
    assert (p.ce_weight, p.dice_weight) == (0.3, 0.7)
    assert p.patch_size is None and p.batch_size == 2 and p.dropout == 0.3
    assert p.data_source == "real"


def test_profiles_are_frozen_and_overridable():
    ci = config.PROFILES["ci"]
    with pytest.raises(AttributeError):
        ci.epochs = 5  # type: ignore[misc]
    assert ci.with_overrides(epochs=5).epochs == 5 and ci.epochs != 5
    with pytest.raises(TypeError):
        ci.with_overrides(epoch=5)


def test_profile_folders_live_under_the_data_dir(monkeypatch, tmp_path):
    p = config.PROFILES["ci"]
    for folder in (p.synthetic_dir, p.cache_dir, p.run_dir):
        assert config.data_dir() in folder.parents
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path))  # read when asked, not at import
    assert all(tmp_path in folder.parents for folder in (p.synthetic_dir, p.cache_dir, p.run_dir))


@pytest.mark.parametrize(
    "text, expected",
    [("epochs=3", ("epochs", 3)), ("patch_size=(64, 64, 64)", ("patch_size", (64, 64, 64))),
     ("model_preset=l4_f16", ("model_preset", "l4_f16")), ("amp=False", ("amp", False))],
)
def test_cli_overrides_are_read_as_literals(text, expected):
    assert cli.parse_override(text) == expected


def test_cli_rejects_malformed_and_unknown_overrides(capsys):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_override("epochs")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--profile", "ci", "--set", "epoch=3"])
    assert "epoch" in capsys.readouterr().err


def test_cli_applies_overrides_to_the_named_profile():
    args = cli.build_parser().parse_args(["train", "--profile", "ci", "--set", "epochs=7"])
    profile = cli.profile_from_args(args)
    assert profile.name == "ci" and profile.epochs == 7


def test_precision_is_a_typed_override_and_amp_off_still_means_fp32():
    from brats_utils.errors import ProfileError

    get_profile = config.get_profile
    args = cli.build_parser().parse_args(["train", "--set", "precision=bf16", "--set", "compile=True"])
    profile = cli.profile_from_args(args)
    assert (profile.precision, profile.requested_precision, profile.compile) == ("bf16", "bf16", True)
    assert get_profile("ci").precision == "auto" and get_profile("ci").compile is False
    assert get_profile("ci").with_overrides(amp=False).requested_precision == "fp32"
    with pytest.raises(ProfileError, match="precision"):
        config.parse_override("precision=fp8")
