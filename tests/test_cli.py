"""The command line: typed --set overrides, one-line errors, help without markup, the demo command."""

from __future__ import annotations

import argparse
import sys

import pytest

from brats_utils import cli
from brats_utils.errors import BratsError


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
    monkeypatch.setattr("brats_utils.demo.run_series", lambda name, overrides: seen.update(name=name,
                                                                                          overrides=overrides))
    monkeypatch.setenv("BRATS_PROFILE", "ci")
    assert cli.main(["demo", "--set", "epochs=1", "--set", "model_preset=l4_f16"]) == 0
    assert seen == {"name": "ci", "overrides": ["epochs=1", "model_preset='l4_f16'"]}
    assert cli.main(["demo", "--profile", "gpu"]) == 0 and seen["name"] == "gpu"
