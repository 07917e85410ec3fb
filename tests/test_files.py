"""Atomic writes: whole or not at all."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from brats_utils.files import atomic_path, write_csv_atomic, write_json_atomic


def test_success_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "case.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".nii.gz")  # format sniffing works
        assert not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["case.nii.gz"]


def test_a_crash_mid_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "history.csv"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_csv_and_json_round_trip(tmp_path):
    table = pd.DataFrame({"epoch": [1, 2], "loss": [0.5, 0.25]})
    pd.testing.assert_frame_equal(pd.read_csv(write_csv_atomic(table, tmp_path / "t.csv")), table)
    assert json.loads(write_json_atomic({"a": [1, 2]}, tmp_path / "d.json").read_text()) == {"a": [1, 2]}
