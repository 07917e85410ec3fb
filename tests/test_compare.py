"""The architecture study on a tiny profile: rows, parameter counts, best-epoch Dice, CSV, reuse.

One study (two small presets, one training step each) is run once for the module into a temporary
data folder; the tests check its table against independent references: the model's own counts
(a sum over built weights and a backward pass), the runs' history files and the CSV on disk.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from brats_utils import compare, config, pipeline
from brats_utils.checkpoints import load_checkpoint
from brats_utils.model import build_model, count_parameters, count_trained_parameters

PRESETS = ("paper", "l4_f16_as_run")


def tiny_profile(**changes: object) -> config.Profile:
    """The ci profile shrunk further: 3 cases of 24x24x16 voxels, 16^3 patches, one step per model."""
    return config.get_profile("ci").with_overrides(**{
        "name": "compare-test", "synthetic_train_cases": 3, "synthetic_val_cases": 0,
        "synthetic_shape": (24, 24, 16), "patch_size": (16, 16, 16), "sw_patch_size": (16, 16, 16),
        "batch_size": 1, "samples_per_volume": 1, "compare_presets": PRESETS, "compare_epochs": 1,
        "compare_steps_per_epoch": 1, **changes})


@pytest.fixture(scope="module")
def study(data_dir: Path) -> pd.DataFrame:
    return pipeline.run_comparison(tiny_profile(), progress=False, device="cpu")


def test_one_row_per_preset_in_order(study):
    assert list(study["preset"]) == list(PRESETS)
    assert list(study["wired levels"]) == [3, 3] and list(study["levels"]) == [3, 4]


def test_parameter_columns_match_the_model(study):
    for _, row in study.iterrows():
        model = build_model(row["preset"])
        assert row["built parameters"] == count_parameters(model)
        assert row["trained parameters"] == count_trained_parameters(model, (1, 4, 8, 8, 8))  # backward pass
        assert row["size MiB (fp32)"] == pytest.approx(count_parameters(model) * 4 / 2**20)
    as_run = study.set_index("preset").loc["l4_f16_as_run"]
    assert (as_run["built parameters"], as_run["trained parameters"]) == (2_867_956, 700_340)
    assert study.set_index("preset").loc["paper", "built parameters"] == 340_596


def test_dice_columns_are_the_best_epoch_of_each_run(study, data_dir):
    for _, row in study.iterrows():
        history = pd.read_csv(compare.comparison_dir(tiny_profile()) / row["preset"] / "history.csv")
        best = history.loc[history["val_dice_mean"].idxmax()]  # the default best_metric
        assert row["best epoch"] == best["epoch"]
        for column in compare.DICE_COLUMNS:
            assert row[column] == pytest.approx(best[column])
            assert 0.0 <= row[column] <= 1.0


def test_costs_are_measured(study):
    for column in ("seconds per training step", "seconds per full-volume inference"):
        assert (study[column] > 0).all() and study[column].map(math.isfinite).all()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory is measured on Linux only")
def test_training_memory_holds_at_least_weights_gradients_and_adam_state(study):
    for _, row in study.iterrows():
        # fp32: every built weight, plus a gradient and two AdamW moments for every trained one
        least = (row["built parameters"] + 3 * row["trained parameters"]) * 4 / 2**20
        assert row["peak training memory (MiB)"] >= least


def test_csv_and_figures_are_written(study, data_dir):
    saved = pd.read_csv(compare.comparison_csv_path(tiny_profile()))
    pd.testing.assert_frame_equal(saved, study, check_dtype=False)
    for name in (compare.DICE_FIGURE, compare.COST_FIGURE):
        assert (data_dir / "figures" / name).stat().st_size > 0


def test_second_call_reuses_finished_runs_even_for_another_selection(study, data_dir):
    run_files = sorted(compare.comparison_dir(tiny_profile()).glob("*/**/*.*"))
    assert any(path.suffix == ".pt" for path in run_files)
    before = {path: path.stat().st_mtime_ns for path in run_files}
    again = pipeline.run_comparison(tiny_profile(), progress=False, device="cpu")
    subset = pipeline.run_comparison(tiny_profile(compare_presets=PRESETS[1:]), progress=False, device="cpu")
    assert {path: path.stat().st_mtime_ns for path in run_files} == before
    pd.testing.assert_frame_equal(again, study)
    pd.testing.assert_frame_equal(subset, study.iloc[1:].reset_index(drop=True))


def test_changed_budget_trains_again_with_a_warning(study, data_dir):
    out_dir = data_dir / "changed"
    shutil.copytree(compare.comparison_dir(tiny_profile()) / "paper", out_dir / "paper")
    profile = tiny_profile(compare_presets=("paper",), compare_steps_per_epoch=2)
    with pytest.warns(UserWarning, match="other settings"):
        table = pipeline.run_comparison(profile, out_dir=out_dir, progress=False, device="cpu")
    assert len(table) == 1
    checkpoint = load_checkpoint(out_dir / "paper" / "checkpoints" / "last.pt")
    assert checkpoint["config"]["steps_per_epoch"] == 2


def test_every_preset_is_scored_once_on_the_test_cases_and_compared_with_the_first(study, data_dir):
    import numpy as np

    from brats_utils.data import split_volumes
    from brats_utils.inference import sliding_window_predict
    from brats_utils.labels import to_file_labels
    from brats_utils.metrics import case_metrics
    from brats_utils.model import build_model as build

    folder = compare.comparison_dir(tiny_profile())
    # the whole study ran first in this module; the subset call of the reuse test wrote its own files
    pipeline.run_comparison(tiny_profile(), progress=False, device="cpu")
    cases = pd.read_csv(folder / "cases.csv")
    split = pd.read_csv(folder / "paper" / "split.csv")
    test_ids = sorted(split.loc[split["split"] == "test", "case_id"])
    for preset in PRESETS:
        assert sorted(cases.loc[cases["preset"] == preset, "case"]) == test_ids
    # the paper preset's scores, again by another path: the checkpoint's weights in a fresh model
    checkpoint = load_checkpoint(folder / "paper" / "checkpoints" / "best.pt")
    model = build("paper")
    model.load_state_dict(checkpoint["model_state_dict"])
    volumes = split_volumes(tiny_profile().cache_dir, folder / "paper" / "split.csv", "test")
    image, label, case_id = volumes[0]
    probs = sliding_window_predict(model.eval(), image, patch_size=(16, 16, 16), overlap=0.5)
    expected = case_metrics(to_file_labels(probs.argmax(0).numpy().astype(np.uint8)),
                            to_file_labels(label.numpy().astype(np.uint8)))
    row = cases[(cases["preset"] == "paper") & (cases["case"] == case_id)].iloc[0]
    for column in compare.CASE_SCORES:
        assert row[column] == pytest.approx(expected[column], abs=1e-6)
    report = pd.read_csv(folder / "report.csv").fillna({"verdict": ""})
    assert list(dict.fromkeys(report["preset"])) == list(PRESETS)
    assert (report.loc[report["preset"] == "paper", "verdict"] == "").all()
    assert set(report.loc[report["preset"] != "paper", "verdict"]) <= {"better", "worse", "no difference"}


def test_the_built_cross_is_drawn_above_a_dot_it_lands_on():
    """l4_f16_as_run's built count equals l4_f16's trained count: its cross must not hide under that dot."""
    import matplotlib.pyplot as plt

    table = pd.DataFrame({"preset": ["l4_f16", "l4_f16_as_run"], "trained parameters": [2_867_956, 700_340],
                          "built parameters": [2_867_956, 2_867_956], "val_paper_dice": [0.41, 0.41],
                          **{f"val_dice_{r}": [0.5, 0.5] for r in ("WT", "TC", "ET")}})
    fig = compare.plot_dice_vs_parameters(table)
    ax = fig.axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    cross = ax.collections[labels.index("as counted in the paper (built)")]
    dots = ax.collections[labels.index("paper metric (4 labels incl. background)")]
    assert cross.get_offsets().tolist() == [[2_867_956, 0.41]]
    assert cross.get_zorder() > dots.get_zorder()
    plt.close(fig)
