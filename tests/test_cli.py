"""The command line: typed --set overrides, one-line errors, help without markup, the demo command;
the command line's words: ``--folder`` (the dataset's own folders) vs ``--split`` (the run's split),
``config`` (the resolved profile), ``evaluate`` refusing a prediction folder that lacks cases of its
split unless ``--partial``, and ``predict --input`` on one case folder, a flat folder of scan sets or a
dataset layout. Every command runs through :func:`brats_utils.cli.main`, as ``python -m brats_utils``."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_utils import cli, config, pipeline
from brats_utils.cli import main
from brats_utils.config import get_profile
from brats_utils.errors import BratsError

#: The ci profile shrunk as tests/test_train.py does: 4 labelled cases (2 train / 1 val / 1 test).
SMALL = ["--profile", "ci", "--set", "synthetic_train_cases=4", "--set", "synthetic_val_cases=1",
         "--set", "synthetic_shape=(32, 32, 24)", "--set", "patch_size=(24, 24, 16)",
         "--set", "sw_patch_size=(24, 24, 16)", "--set", "steps_per_epoch=2", "--set", "epochs=1"]


@pytest.fixture(scope="module")
def profile(data_dir):
    """The profile SMALL names, as the command line resolves it."""
    from brats_utils.cli import build_parser, profile_from_args

    return profile_from_args(build_parser().parse_args(["cache", *SMALL]))


@pytest.fixture(scope="module")
def trained(profile):
    """A one-epoch model of the small profile, trained through the command line."""
    assert main(["train", *SMALL]) == 0
    return profile.run_dir / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def dataset_root(profile, trained):
    """The small profile's synthetic dataset, in the Kaggle layout."""
    return pipeline.ensure_dataset(profile)


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(nib.load(path).dataobj) for path in sorted(folder.glob("*.nii.gz"))}


def _case_folder(root: Path, case_id: str) -> Path:
    return next(root.rglob(case_id))


# --- --folder and --split are different words -------------------------------------------------


@pytest.mark.parametrize(("command", "words"), [
    (["predict", "--folder", "test"], "invalid choice: 'test'"),
    (["predict", "--split", "training"], "invalid choice: 'training'"),
    (["evaluate", "preds", "--folder", "validation"], "invalid choice: 'validation'"),
    (["predict", "--folder", "training", "--split", "test"], "not allowed with argument"),
    (["evaluate", "preds", "--folder", "training", "--split", "val"], "not allowed with argument"),
])
def test_folder_and_split_take_only_their_own_values_and_not_both(command, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def _predicted_ids(folder: Path) -> list[str]:
    return sorted(path.name.removesuffix(".nii.gz") for path in folder.glob("*.nii.gz"))


def test_predict_split_is_the_run_split_folder_the_dataset_folder(profile, trained, dataset_root, tmp_path):
    run = ["predict", *SMALL, "--checkpoint", str(trained)]
    assert main([*run, "--split", "test", "--out", str(tmp_path / "test")]) == 0
    assert _predicted_ids(tmp_path / "test") == sorted(pipeline.split_of(profile)["test"])
    assert main([*run, "--folder", "validation", "--out", str(tmp_path / "validation")]) == 0
    unlabelled = next(dataset_root.rglob("MICCAI_BraTS2020_ValidationData"))
    assert _predicted_ids(tmp_path / "validation") == sorted(p.name for p in unlabelled.glob("BraTS20_*"))


# --- config ----------------------------------------------------------------------------------------


def test_config_prints_every_field_of_the_resolved_profile_as_set_lines(capsys):
    assert main(["config", "--profile", "demo", "--set", "epochs=7", "--dataset", "msd"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    printed = dict(config.parse_override(line) for line in lines)  # each line is a valid --set item
    expected = get_profile("demo").with_overrides(epochs=7, dataset="msd").as_dict()
    assert printed == expected
    assert printed["epochs"] == 7 and get_profile("demo").epochs != 7
    assert f"# run folder {get_profile('demo').with_overrides(dataset='msd').run_dir}" in out


def test_config_rejects_an_unknown_field_in_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["config", "--set", "epochz=3"])
    assert "epochz" in capsys.readouterr().err


# --- evaluate: every case of the split, or --partial ------------------------------------------------


def test_evaluate_lists_the_cases_of_the_split_without_a_prediction(profile, trained, tmp_path, capsys):
    split = pipeline.split_of(profile)
    labelled = split["train"] + split["val"] + split["test"]
    assert main(["predict", *SMALL, "--checkpoint", str(trained), "--split", "test", "--out",
                 str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["evaluate", *SMALL, str(tmp_path), "--folder", "training"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    missing = sorted(set(labelled) - set(split["test"]))
    assert f"no prediction for {len(missing)} of the {len(labelled)} cases" in err
    assert all(case in err for case in missing) and not any(case in err for case in split["test"])
    assert "--partial" in err


def test_evaluate_partial_scores_only_the_predicted_cases_and_says_so(profile, trained, tmp_path, capsys):
    split = pipeline.split_of(profile)
    assert main(["predict", *SMALL, "--checkpoint", str(trained), "--split", "test", "--out",
                 str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["evaluate", *SMALL, str(tmp_path), "--folder", "training", "--partial"]) == 0
    title = capsys.readouterr().out.splitlines()[0]
    n_labelled = sum(len(split[part]) for part in ("train", "val", "test"))
    assert f"on {len(split['test'])} of the {n_labelled} cases of the training folder (partial: " in title
    # the default is the profile's held-out split, which the folder covers: no "partial" then
    assert main(["evaluate", *SMALL, str(tmp_path)]) == 0
    title = capsys.readouterr().out.splitlines()[0]
    n_test = len(split["test"])
    assert f"on {n_test} of the {n_test} test cases" in title and "(partial" not in title


# --- predict --input: one case folder, a flat folder, a dataset layout -----------------------------


def test_predict_gives_a_case_the_same_labels_from_a_case_folder_a_flat_folder_and_the_kaggle_layout(
        trained, dataset_root, tmp_path):
    """The issue's reproduction: a single case folder used to fail with "no BraTS 2020 validation cases
    found; the folder holds BraTS 2020", a flat folder with "no known dataset layout found"."""
    run = ["predict", *SMALL, "--checkpoint", str(trained)]
    assert main([*run, "--input", str(dataset_root), "--folder", "training",
                 "--out", str(tmp_path / "kaggle")]) == 0
    kaggle = _labels(tmp_path / "kaggle")
    first, second = sorted(kaggle)[:2]
    first_id, second_id = first.removesuffix(".nii.gz"), second.removesuffix(".nii.gz")

    case_folder = _case_folder(dataset_root, first_id)
    assert main([*run, "--input", str(case_folder), "--out", str(tmp_path / "one")]) == 0
    assert _labels(tmp_path / "one").keys() == {first}

    flat = tmp_path / "flat"  # two scan sets side by side, the segmentations left out
    flat.mkdir()
    for case_id in (first_id, second_id):
        for path in _case_folder(dataset_root, case_id).iterdir():
            if not path.name.endswith("_seg.nii"):
                shutil.copy(path, flat / path.name)
    assert main([*run, "--input", str(flat), "--out", str(tmp_path / "flat-out")]) == 0
    assert _labels(tmp_path / "flat-out").keys() == {first, second}

    bare = tmp_path / "patient7"  # a case folder of bare modality names: the case is named after the folder
    bare.mkdir()
    for path in _case_folder(dataset_root, first_id).iterdir():
        part = path.name.removesuffix(".nii").removeprefix(f"{first_id}_")
        if part != "seg":
            shutil.copy(path, bare / f"{part.upper()}.nii")
    assert main([*run, "--input", str(bare), "--out", str(tmp_path / "bare")]) == 0

    for labels in (_labels(tmp_path / "one"), _labels(tmp_path / "flat-out"),
                   {first: _labels(tmp_path / "bare")["patient7.nii.gz"]}):
        for name, array in labels.items():
            assert np.array_equal(array, kaggle[name]), name
    assert len(np.unique(kaggle[first])) > 1  # the model segments something, so equality says something


def _write_fake_scan(path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)


@pytest.mark.parametrize(("files", "words"), [
    (["p1_flair.nii.gz", "p1_t1.nii.gz", "p1_t1ce.nii.gz", "p1_t2.nii.gz", "p1_t1.nii"],
     ["more than one file", "p1_t1.nii.gz", "p1_t1.nii"]),
    (["p1_flair.nii.gz", "p1_t1.nii.gz", "p1_t2.nii.gz"],
     ["incomplete scan set", "p1_flair.nii.gz, p1_t1.nii.gz, p1_t2.nii.gz", "case p1", "p1_t1ce.nii.gz"]),
    (["p1_flair.nii.gz", "p1-t1n.nii.gz", "p1_t1ce.nii.gz", "p1_t2.nii.gz"],
     ["named in two ways", "p1-t1n.nii.gz", "p1_flair.nii.gz"]),
    (["scan_a.nii.gz", "scan_b.nii.gz"], ["no known dataset layout"]),
])
def test_predict_refuses_an_ambiguous_flat_folder_in_one_line_naming_the_files(files, words, tmp_path,
                                                                                 capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in files:
        _write_fake_scan(scans / name)
    before = sorted(p.name for p in scans.iterdir())
    # no --checkpoint: the folder is refused before any model is looked for or trained
    assert main(["predict", "--profile", "ci", "--input", str(scans), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(word in err for word in words), err
    assert sorted(p.name for p in scans.iterdir()) == before and not (tmp_path / "out").exists()


# --- overrides, errors, help and the demo command --------------------------------------------------


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


def test_set_values_are_typed_and_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["train", "--set", "amp=yes"])
    assert exit_info.value.code == 2 and "amp" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["train", "--set", "amp=False", "--set", "lr=1e-3"])
    with pytest.warns(FutureWarning, match="amp"):  # the older switch still works, and says what replaced it
        profile = cli.profile_from_args(args)
    assert (profile.precision, profile.lr) == ("fp32", 1e-3)
    args = cli.build_parser().parse_args(["train", "--set", "training.lr=1e-3",
                                          "--set", "sw_patch_size=(8,8,8)"])
    assert cli.profile_from_args(args).inference.patch_size == (8, 8, 8)  # section.field and flat names
    assert cli.profile_from_args(args).training.lr == 1e-3


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


def test_demo_only_runs_the_named_notebooks_without_recording_times(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr("brats_utils.demo.run_series",
                        lambda name, **kwargs: seen.update(name=name, **kwargs))
    assert cli.main(["demo", "--profile", "demo", "--only", "08", "--publish"]) == 0
    assert [path.name for path in seen["notebooks"]] == ["08_beyond_the_paper.ipynb"]
    assert seen["publish"] is True and seen["record_times"] is False
    capsys.readouterr()
    assert cli.main(["demo", "--only", "99"]) == 2
    err = capsys.readouterr().err
    assert "--only 99" in err and "01, 02, 03, 04, 05, 06, 07, 08" in err  # what it expected
