"""The package's shape: a pure-torch model, declared label schemes, checked profiles, the command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from brats_utils import cli, config, labels
from brats_utils.errors import BratsError, LabelValueError, ProfileError


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_importing_the_model_loads_neither_matplotlib_nor_pandas():
    loaded = _loaded_after("import brats_utils.model")
    assert "torch" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("matplotlib", "pandas")}


def test_config_reads_no_environment_at_import(tmp_path):
    code = ("import os\nimport brats_utils.config as c\nos.environ['BRATS_DATA_DIR'] = os.environ['TARGET']\n"
            "print(c.get_profile('ci').run_dir)")
    env = {"PATH": "/usr/bin:/bin", "TARGET": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == str(tmp_path / "runs" / "ci")


# --- label schemes ------------------------------------------------------------------------


def test_brats2020_is_the_default_scheme_and_round_trips():
    file_labels = np.array([0, 1, 2, 4], np.uint8)
    assert labels.to_train_labels(file_labels).tolist() == [0, 1, 2, 3]
    assert labels.to_file_labels(labels.to_train_labels(file_labels)).tolist() == [0, 1, 2, 4]
    assert labels.FILE_LABELS == (0, 1, 2, 4) and labels.TRAIN_REGIONS == {"WT": (1, 2, 3), "TC": (1, 3),
                                                                            "ET": (3,)}


@pytest.mark.parametrize("scheme", [labels.BRATS2023, labels.MSD_TASK01])
def test_other_schemes_map_onto_the_same_training_labels(scheme):
    file_labels = np.array(scheme.file_labels, np.uint8)
    train = labels.to_train_labels(file_labels, scheme=scheme)
    assert sorted(train.tolist()) == [0, 1, 2, 3]
    assert labels.to_file_labels(train, scheme=scheme).tolist() == file_labels.tolist()
    # every scheme's regions are the same tissue in training labels
    assert scheme.train_regions == labels.BRATS2020.train_regions


def test_the_one_label_check_names_values_case_file_and_expectation(tmp_path):
    with pytest.raises(LabelValueError, match=r"unexpected label values \[3\], case c7, file .*seg.nii "
                                              r"\(expected labels in \{0, 1, 2, 4\}\)"):
        labels.check_labels(np.array([0, 3]), case_id="c7", path=tmp_path / "seg.nii")
    with pytest.raises(ValueError):  # a LabelValueError is also a ValueError
        labels.check_labels(np.array([4]), labels.BRATS2023.file_labels)
    labels.check_labels(np.array([0, 3], np.uint8), labels.BRATS2023.file_labels)


# --- profiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [{"val_fraction": 1.0}, {"foreground_fraction": -0.1}, {"batch_size": 0},
                                    {"patch_size": (32, 0, 32)}, {"model_preset": "l9_f99"},
                                    {"compare_presets": ("paper", "nope")}, {"amp": "yes"}, {"epochs": 2.5},
                                    {"data_source": "kaggle"}])
def test_a_profile_is_checked_when_it_is_built(change):
    with pytest.raises(ProfileError):
        config.get_profile("ci").with_overrides(**change)


def test_overrides_from_the_environment_reach_get_profile(monkeypatch):
    monkeypatch.setenv(config.OVERRIDES_ENV, "epochs=7; patch_size=(16, 16, 16)")
    profile = config.get_profile("ci")
    assert profile.epochs == 7 and profile.patch_size == (16, 16, 16)


# --- the command line -----------------------------------------------------------------------


def test_set_values_are_typed_and_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["train", "--set", "amp=yes"])
    assert exit_info.value.code == 2 and "amp" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["train", "--set", "amp=False", "--set", "lr=1e-3"])
    assert cli.profile_from_args(args).amp is False and cli.profile_from_args(args).lr == 1e-3


def test_a_package_error_is_one_line_and_status_2(monkeypatch, capsys):
    def fails(args):
        raise BratsError("no BraTS 2020 split folders found", path="/nowhere")

    monkeypatch.setattr(cli, "_cmd_cache", fails)
    assert cli.main(["cache", "--profile", "ci"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: no BraTS 2020 split folders found, file /nowhere" in err
    assert "Traceback" not in err


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def crashes(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_cmd_cache", crashes)
    with pytest.raises(ZeroDivisionError):
        cli.main(["cache"])


def test_the_brats_entry_point_shows_its_own_name(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/brats", "--help"])
    assert cli.build_parser().prog == "brats"
    monkeypatch.setattr(sys, "argv", ["/somewhere/brats_utils/__main__.py"])
    assert cli.build_parser().prog == "python -m brats_utils"


def test_version_and_help_without_markup(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert "0.1.0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "`" not in text
    parser = cli.build_parser()
    download = parser._subparsers._group_actions[0].choices["download"]
    assert "--profile" not in download.format_help()  # download uses no profile: no options that do nothing


def test_demo_honours_the_profile_the_environment_and_set(monkeypatch):
    seen = {}
    monkeypatch.setattr("brats_utils.demo.run_series", lambda name, overrides, publish: seen.update(
        name=name, overrides=overrides, publish=publish))
    monkeypatch.setenv("BRATS_PROFILE", "ci")
    assert cli.main(["demo", "--set", "epochs=1", "--set", "model_preset=l4_f16"]) == 0
    assert seen == {"name": "ci", "overrides": ["epochs=1", "model_preset='l4_f16'"], "publish": False}
    assert cli.main(["demo", "--profile", "gpu"]) == 0 and seen["name"] == "gpu"
    assert cli.main(["demo", "--publish"]) == 0 and seen["publish"] is True  # make publish
