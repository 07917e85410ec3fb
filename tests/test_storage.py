"""Where things are stored: the cache apart from the runs, and a complete cache used without the dataset."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brats_utils import cli, config, pipeline
from brats_utils.config import get_profile
from brats_utils.errors import DatasetNotFoundError


def test_cache_and_runs_default_inside_the_data_folder_and_follow_their_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BRATS_CACHE_DIR", raising=False)
    monkeypatch.delenv("BRATS_RUNS_DIR", raising=False)
    profile = get_profile("ci")
    assert profile.cache_dir == tmp_path / "data" / "cache" / "ci"
    assert profile.run_dir == tmp_path / "data" / "runs" / "ci"
    monkeypatch.setenv("BRATS_CACHE_DIR", str(tmp_path / "local-disk" / "cache"))
    monkeypatch.setenv("BRATS_RUNS_DIR", str(tmp_path / "drive" / "runs"))
    assert profile.cache_dir == tmp_path / "local-disk" / "cache" / "ci"
    assert profile.run_dir == tmp_path / "drive" / "runs" / "ci"
    assert profile.with_overrides(fold=2).run_dir == tmp_path / "drive" / "runs" / "ci" / "fold2"


class _CacheAsked(Exception):
    """Raised by the stand-in cache builder: the command got as far as building its cache."""


#: Every command that works on the cache, with the arguments it needs.
CACHE_COMMANDS = [["cache"], ["train"], ["predict"], ["compare"], ["beyond"], ["cross-validate"]]


@pytest.mark.parametrize("command", CACHE_COMMANDS, ids=lambda c: c[0])
def test_every_command_builds_its_cache_under_brats_cache_dir(command, tmp_path, monkeypatch):
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BRATS_CACHE_DIR", str(tmp_path / "elsewhere"))
    asked = []

    def build_cache(cases, folder, **settings):
        asked.append(folder)
        raise _CacheAsked

    monkeypatch.setattr(pipeline, "training_cases", lambda profile: [])
    monkeypatch.setattr(pipeline, "build_cache", build_cache)
    with pytest.raises(_CacheAsked):
        cli.main([*command, "--profile", "ci"])
    assert len(asked) == 1 and asked[0].parent == tmp_path / "elsewhere", asked
    assert not (tmp_path / "data" / "cache").exists()


def _forbid_the_dataset(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was resolved although the cache is complete")

    for name in ("ensure_dataset", "ensure_synthetic", "real_dataset", "training_cases"):
        monkeypatch.setattr(pipeline, name, refuse)


def test_a_ci_training_resumes_from_a_complete_cache_with_the_dataset_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BRATS_CACHE_DIR", str(tmp_path / "local-disk"))
    profile = get_profile("ci")
    first = pipeline.train(profile, max_epochs=1, progress=False)
    assert len(first.history) == 1
    manifest = json.loads((profile.cache_dir / pipeline.CACHE_MANIFEST).read_text())
    assert manifest["request"] == pipeline.cache_request(profile)
    assert len(manifest["entries"]) == profile.synthetic_train_cases

    shutil.rmtree(profile.synthetic_dir)  # a new session: the raw data is gone, the cache is not
    _forbid_the_dataset(monkeypatch)
    second = pipeline.train(profile, progress=False)
    assert len(second.history) == profile.epochs  # resumed at epoch 2, not started over
    assert list(second.history["epoch"]) == list(range(1, profile.epochs + 1))
    assert not profile.synthetic_dir.exists()


def test_an_incomplete_or_other_cache_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path / "data"))
    profile = get_profile("ci")
    assert pipeline.complete_cache(profile) is None  # nothing built yet
    folder = pipeline.ensure_cache(profile, progress=False)
    assert pipeline.complete_cache(profile) == folder
    # other preprocessing: another request, so the cache must be built for it
    assert pipeline.complete_cache(profile.with_overrides(crop_margin=3)) is None
    assert pipeline.complete_cache(profile.with_overrides(max_cases=4)) is None
    # an entry lost after the manifest was written: no longer complete
    manifest = json.loads((folder / pipeline.CACHE_MANIFEST).read_text())
    shutil.rmtree(folder / next(iter(manifest["entries"])))
    assert pipeline.complete_cache(profile) is None
    pipeline.ensure_cache(profile, progress=False)  # rebuilt from the data
    assert pipeline.complete_cache(profile) == folder


def test_the_cache_command_checks_against_the_data_even_when_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path / "data"))
    pipeline.ensure_cache(get_profile("ci"), progress=False)
    resolved = []
    real = pipeline.training_cases
    monkeypatch.setattr(pipeline, "training_cases", lambda p: resolved.append(p.name) or real(p))
    assert cli.main(["cache", "--profile", "ci"]) in (0, None)
    assert resolved == ["ci"]
    assert config.cache_dir() == tmp_path / "data" / "cache"


def _predict_and_score(profile, checkpoint, out_dir):
    """``predict --split test``, then ``evaluate`` of that split, through the CLI: labels and summary."""
    common = ["--profile", profile.name]
    assert cli.main(["predict", *common, "--split", "test", "--checkpoint", str(checkpoint),
                     "--out", str(out_dir)]) in (0, None)
    assert cli.main(["evaluate", str(out_dir), *common, "--split", "test"]) in (0, None)
    images = {path.name: nib.load(path) for path in sorted(out_dir.glob("*.nii.gz"))}
    return images, pd.read_csv(out_dir / "metrics_summary.csv", index_col=0)


def test_prediction_and_scoring_of_a_split_use_the_complete_cache_when_the_dataset_is_gone(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path / "data"))
    profile = get_profile("ci")
    checkpoint = pipeline.train(profile, max_epochs=1, progress=False).best_checkpoint
    from_raw, raw_summary = _predict_and_score(profile, checkpoint, tmp_path / "from-raw")
    assert "the raw dataset is not here" not in capsys.readouterr().out  # the raw path stays the default

    shutil.rmtree(profile.synthetic_dir)  # a new session: the raw data is gone, the cache is not

    def gone(*args, **kwargs):
        raise DatasetNotFoundError("the dataset was removed for this test")

    for name in ("ensure_dataset", "ensure_synthetic", "real_dataset", "training_cases"):
        monkeypatch.setattr(pipeline, name, gone)
    from_cache, cache_summary = _predict_and_score(profile, checkpoint, tmp_path / "from-cache")
    out = capsys.readouterr().out
    said = f"the raw dataset is not here: predicting from the cache in {profile.cache_dir} (float16 images)"
    assert said in out
    assert "scoring against the labels in the cache" in out

    test_ids = pd.read_csv(profile.run_dir / "split.csv").query("split == 'test'")["case_id"]
    assert sorted(from_cache) == sorted(from_raw) == sorted(f"{case_id}.nii.gz" for case_id in test_ids)
    for name, raw in from_raw.items():
        cached = from_cache[name]
        assert cached.shape == raw.shape  # the original grid, with the original affine
        np.testing.assert_allclose(cached.affine, raw.affine)
        raw_labels, cached_labels = np.asarray(raw.dataobj), np.asarray(cached.dataobj)
        assert set(np.unique(cached_labels)) <= {0, 1, 2, 4}  # the dataset's file labels
        # the cache holds the normalised image as float16: the labels may differ on a few voxels
        assert (raw_labels == cached_labels).mean() >= 0.99, name
    # the cached labels put back onto the original grid are the ground truth: the raw run's own
    # predictions score exactly as against the dataset's files
    assert cli.main(["evaluate", str(tmp_path / "from-raw"), "--profile", profile.name, "--split", "test",
                     "--out", str(tmp_path / "raw-vs-cache.csv")]) in (0, None)
    against_cache = pd.read_csv(tmp_path / "raw-vs-cache_summary.csv", index_col=0)
    pd.testing.assert_frame_equal(against_cache, raw_summary)
    # and the predictions from the float16 cache score the same Dice within 0.01
    for column in ("Dice_ET", "Dice_TC", "Dice_WT"):
        assert abs(cache_summary.loc["Mean", column] - raw_summary.loc["Mean", column]) <= 0.01, column
