"""Run profiles and the command line that reads them."""

from __future__ import annotations

import re
import typing
import warnings
from pathlib import Path

import pytest

from brats_utils import cli, config
from brats_utils.errors import ProfileError


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


def test_brats_root_is_read_in_one_place_when_asked(monkeypatch, tmp_path):
    assert config.brats_root() is None  # conftest's hermetic environment: not set
    monkeypatch.setenv("BRATS_ROOT", str(tmp_path))
    assert config.brats_root() == tmp_path
    monkeypatch.setenv("BRATS_ROOT", "~/brats")
    assert config.brats_root() == Path("~/brats").expanduser()
    package = Path(config.__file__).parent
    readers = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                     if re.search(r"environ[^\n]*(BRATS_ROOT|ROOT_ENV)", path.read_text()))
    assert readers == ["config.py"]  # everything else is handed the folder (download_brats2020(root))


def test_precision_is_a_typed_override_and_amp_off_still_means_fp32():
    from brats_utils.errors import ProfileError

    get_profile = config.get_profile
    args = cli.build_parser().parse_args(["train", "--set", "precision=bf16", "--set", "compile=True"])
    profile = cli.profile_from_args(args)
    assert (profile.precision, profile.requested_precision, profile.compile) == ("bf16", "bf16", True)
    assert get_profile("ci").precision == "auto" and get_profile("ci").compile is False
    with pytest.warns(FutureWarning, match="deprecated"):
        assert get_profile("ci").with_overrides(amp=False).requested_precision == "fp32"
    with pytest.raises(ProfileError, match="precision"):
        config.parse_override("precision=fp8")


# --- the field metadata, and every list of names derived from it ------------------------------------


@pytest.fixture
def second_loss(monkeypatch):
    """A second entry in the loss registry (it holds one), so that ``loss`` can change."""
    from brats_utils.regions import LOSSES

    monkeypatch.setitem(LOSSES, "another", LOSSES["ce_dice"])


def _another_value(name: str, value: object) -> object:
    """A valid value of the setting ``name`` other than ``value`` (to probe what changing it does)."""
    from brats_utils.pipeline import REGISTRIES

    section, field = config.flat_fields()[name]
    registry = config.field_meta(field).registry
    if registry is not None:
        if isinstance(value, tuple):  # a tuple of names (compare_presets)
            return (*value, next(entry for entry in REGISTRIES[registry] if entry not in value))
        return next(entry for entry in REGISTRIES[registry] if entry != value)
    hint = config._hints(config.SECTIONS[section])[field.name]
    options = [arg for arg in typing.get_args(hint) if typing.get_origin(arg) is typing.Literal]
    literal = typing.get_args(options[0] if options else hint) if (options or typing.get_origin(hint)
                                                                   is typing.Literal) else ()
    if literal:
        return next(choice for choice in literal if choice != value)
    if isinstance(value, bool):
        return not value
    if name in ("model_preset",):
        return "l4_f16"
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return tuple(max(1, v // 2) for v in value)
    if isinstance(value, tuple) or (value is None and "tuple" in str(hint)):
        return ("paper",)
    if isinstance(value, float):
        return value / 2 if value else 0.5
    return 1 if value is None else value + 1


def test_every_setting_declares_its_metadata_and_the_lists_are_derived_from_it():
    fields = config.flat_fields()
    metas = {name: config.field_meta(field) for name, (_, field) in fields.items()}
    assert config.resumable_fields() == {"name", "description"} | {n for n, m in metas.items() if m.resumable}
    assert config.fingerprint_fields() == {n for n, m in metas.items() if m.fingerprint}
    assert config.acts_only_with() == {n: m.acts_only_with for n, m in metas.items() if m.acts_only_with}
    assert config.legacy_values() == {n: m.legacy for n, m in metas.items()
                                      if m.legacy is not config.NO_LEGACY}
    # what the study and the resume of the earlier lists said, with beyond_* now resumable (a study setting)
    assert {"epochs", "tta", "precision", "beyond_variants", "beyond_seeds"} <= config.resumable_fields()
    assert {"lr", "patch_size", "sw_patch_size", "target", "dataset"}.isdisjoint(config.resumable_fields())
    assert config.acts_only_with() == {"region_prior": ("target", "regions")}


@pytest.mark.parametrize("name", list(config.flat_fields()))
def test_a_setting_blocks_a_resume_exactly_when_it_is_not_resumable(name, tmp_path, second_loss):
    from brats_utils.checkpoints import check_compatible
    from brats_utils.errors import CheckpointError

    profile = config.get_profile("ci").with_overrides(target="regions")  # region_prior acts
    changed = profile.with_overrides(**{name: _another_value(name, getattr(profile, name))})
    checkpoint = {"config": profile.as_dict(), "model_config": {}}
    if name in config.resumable_fields():
        check_compatible(checkpoint, changed.as_dict(), tmp_path / "last.pt")
    else:
        with pytest.raises(CheckpointError, match=name):
            check_compatible(checkpoint, changed.as_dict(), tmp_path / "last.pt")


@pytest.mark.parametrize("name", list(config.flat_fields()))
def test_a_setting_changes_a_study_fingerprint_exactly_when_it_enters_it(name, second_loss):
    import torch

    from brats_utils.compare import row_fingerprint

    profile = config.get_profile("ci").with_overrides(target="regions")
    changed = profile.with_overrides(**{name: _another_value(name, getattr(profile, name))})
    cpu = torch.device("cpu")
    differs = row_fingerprint(profile, cpu) != row_fingerprint(changed, cpu)
    assert differs == (name in config.fingerprint_fields())


def test_a_setting_that_acts_only_with_another_is_left_out_otherwise():
    labels = config.get_profile("ci")
    assert "region_prior" not in labels.acting_settings()
    assert "region_prior" in labels.with_overrides(target="regions").acting_settings()


def test_a_checkpoint_without_a_later_setting_reads_its_legacy_value():
    old = {k: v for k, v in config.get_profile("ci").as_dict().items() if k != "region_prior"}
    assert config.saved_settings(old)["region_prior"] is None  # region heads started at bias 0 then
    assert config.saved_settings({})["epochs"] == config.defaults()["epochs"]


@pytest.mark.parametrize("name, bad", [("val_fraction", 1.0), ("foreground_fraction", 1.5), ("batch_size", 0),
                                       ("sw_patch_size", (8, 0, 8)), ("n_folds", 1), ("crop_margin", -1),
                                       ("region_prior", 1.0), ("lr", 0.0)])
def test_ranges_come_from_the_metadata(name, bad):
    section, field = config.flat_fields()[name]
    declared = config.field_meta(field).range
    assert declared is not None and not declared.holds(bad)
    message = rf"{name}={re.escape(str(bad))} is not {re.escape(str(declared))}"
    with pytest.raises(ProfileError, match=message):
        config.get_profile("ci").with_overrides(**{name: bad})


# --- sections, flat names and the deprecated amp ---------------------------------------------------


def test_sections_and_flat_names_reach_the_same_setting():
    ci = config.get_profile("ci")
    assert ci.training.epochs == ci.epochs == 2
    assert ci.inference.patch_size == ci.sw_patch_size and ci.preprocessing.margin == ci.crop_margin == 1
    by_section = ci.with_overrides(**{"inference.patch_size": (16, 16, 16), "training.lr": 1e-3})
    by_flat = ci.with_overrides(sw_patch_size=(16, 16, 16), lr=1e-3)
    assert by_section == by_flat and by_flat.inference.patch_size == (16, 16, 16)
    assert by_flat.patch_size == ci.patch_size  # the loader's patches are another setting
    assert config.parse_override("training.epochs=4") == ("training.epochs", 4)
    with pytest.raises(AttributeError):
        ci.no_such_setting  # noqa: B018


def test_as_dict_keeps_the_flat_names_of_the_checkpoints_before_the_sections():
    import torch

    saved = torch.load(Path(__file__).parent / "fixtures" / "ci_before_sections.pt", weights_only=True)
    added_since = {"loss", "stratify_split", "lock_timeout", "best_metric", "fp32_validation", "data_seed",
                   "min_et_volume_mm3"}
    assert set(config.get_profile("ci").as_dict()) - added_since == set(saved["config"]) - {
        "amp", "resolved_precision", "world_size", "global_batch"}


def test_amp_is_a_deprecated_alias_of_precision():
    ci = config.get_profile("ci").with_overrides(precision="bf16")
    with pytest.warns(FutureWarning, match="amp"):
        assert ci.with_overrides(amp=False).precision == "fp32"
    with pytest.warns(FutureWarning, match="amp"):
        assert ci.with_overrides(amp=True).precision == "bf16"  # amp on leaves precision as it is
    with pytest.warns(FutureWarning, match="amp"):
        assert ci.amp is True
    assert config.saved_settings({"amp": False, "precision": "bf16"})["precision"] == "fp32"
    with pytest.raises(ProfileError, match="amp"), pytest.warns(FutureWarning):
        ci.with_overrides(amp="yes")


# --- checks when a profile is built, and overrides from the environment --------------------------


@pytest.mark.parametrize("change", [{"val_fraction": 1.0}, {"foreground_fraction": -0.1}, {"batch_size": 0},
                                    {"patch_size": (32, 0, 32)}, {"amp": "yes"}, {"epochs": 2.5},
                                    {"data_source": "kaggle"}])
def test_a_profile_is_checked_when_it_is_built(change):
    with pytest.raises(ProfileError), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # amp
        config.get_profile("ci").with_overrides(**change)


@pytest.mark.parametrize("change", [{"model_preset": "l9_f99"}, {"compare_presets": ("paper", "nope")},
                                    {"augmentation": "spin"}, {"target": "voxels"}, {"loss": "focal"},
                                    {"dataset": "brats2019"}, {"metrics_protocol": "dice"}])
def test_names_of_registry_entries_are_checked_against_the_registries(change):
    from brats_utils.pipeline import check_registered

    (name, value), = change.items()
    profile = config.get_profile("ci").with_overrides(**change)  # config sits below the registries
    with pytest.raises(ProfileError, match=f"{name} cannot be"):
        check_registered(profile)


def test_overrides_from_the_environment_reach_get_profile(monkeypatch):
    monkeypatch.setenv(config.OVERRIDES_ENV, "epochs=7; patch_size=(16, 16, 16)")
    profile = config.get_profile("ci")
    assert profile.epochs == 7 and profile.patch_size == (16, 16, 16)

