"""The beyond-the-paper study: ensembles, the foreign copy, the table; one tiny study run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brats_utils import beyond, config, pipeline
from brats_utils.checkpoints import load_checkpoint
from brats_utils.inference import average_predictors, sliding_window_predict
from brats_utils.model import build_model


def tiny_profile(**changes: object) -> config.Profile:
    """The ci profile shrunk: 3 cases of 24x24x16 voxels, 16^3 patches, one step per run."""
    return config.get_profile("ci").with_overrides(**{
        "name": "beyond-test", "synthetic_train_cases": 3, "synthetic_val_cases": 0,
        "synthetic_shape": (24, 24, 16), "patch_size": (16, 16, 16), "sw_patch_size": (16, 16, 16),
        "batch_size": 1, "samples_per_volume": 1, "compare_epochs": 1, "compare_steps_per_epoch": 1,
        "beyond_variants": ("paper", "regions"), "beyond_seeds": 2, **changes})


def test_an_ensemble_of_one_model_equals_that_model():
    profile = tiny_profile()
    torch.manual_seed(0)
    model = build_model("paper").eval()
    image = torch.randn((4, 24, 20, 16))
    alone = sliding_window_predict(model, image, patch_size=profile.sw_patch_size, overlap=profile.sw_overlap,
                                   sw_batch_size=profile.sw_batch_size)
    assert torch.equal(beyond.ensemble_predict([model], image, profile), alone)
    assert torch.allclose(beyond.ensemble_predict([model, model], image, profile), alone, atol=1e-6)


def test_an_ensemble_averages_the_probabilities_of_its_models():
    profile = tiny_profile(target="regions")
    torch.manual_seed(0)
    models = [build_model("paper", num_classes=3).eval() for _ in range(2)]
    image = torch.randn((4, 16, 16, 16))
    each = [sliding_window_predict(m, image, patch_size=(16, 16, 16), target="regions") for m in models]
    assert torch.allclose(beyond.ensemble_predict(models, image, profile), (each[0] + each[1]) / 2, atol=1e-6)
    with pytest.raises(ValueError):
        average_predictors([])


def test_shifted_copy_flips_image_and_labels_together_and_shifts_brain_intensities():
    image = torch.zeros((4, 6, 5, 4))
    image[:, 1, 2, 3] = 1.0
    label = torch.zeros((6, 5, 4), dtype=torch.long)
    label[1, 2, 3] = 3
    shifted, shifted_label = beyond.shifted_copy(image, label)
    assert shifted_label[4, 2, 3] == 3 and shifted[0, 4, 2, 3] == pytest.approx(1.5)
    assert float(shifted.abs().sum()) == pytest.approx(4 * 1.5)  # the background stays 0


def test_summary_gives_mean_and_sample_std_per_variant():
    runs = pd.DataFrame({"variant": ["a", "a", "b"], "seed": [1, 2, 1], "Dice_WT": [0.5, 0.7, 0.9]})
    table = beyond.summarize(runs)
    assert table.loc["a", ("Dice_WT", "mean")] == pytest.approx(0.6)
    assert table.loc["a", ("Dice_WT", "std")] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert np.isnan(table.loc["b", ("Dice_WT", "std")]) and table.loc["a", ("seeds", "")] == 2
    assert beyond.format_table(table).loc["a", "Dice_WT"] == "0.600 ± 0.141"


def test_unknown_variants_are_refused():
    with pytest.raises(ValueError, match="known variants"):
        beyond.variant_names(tiny_profile(beyond_variants=("regions",)))


@pytest.fixture(scope="module")
def study(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with pytest.warns(UserWarning, match="left out of the foreign dataset.*another affine"):
        return pipeline.run_beyond(tiny_profile(), progress=False, device="cpu")


def test_study_has_every_run_and_the_derived_rows(study, data_dir):
    runs, table = study
    assert list(table.index) == ["paper", beyond.POSTPROCESSED, "regions", beyond.ENSEMBLE]
    assert table.loc["paper", ("seeds", "")] == 2 and table.loc[beyond.ENSEMBLE, ("seeds", "")] == 1
    for column in beyond.QUALITY_COLUMNS[:6]:
        assert runs[column].between(0, 400).all()
    assert runs.loc[runs["variant"] == "regions", "parameters"].iloc[0] == 340_596 - 16 - 1
    csv = pd.read_csv(data_dir / "data" / "beyond" / "beyond-test" / "beyond.csv", header=[0, 1])
    assert len(csv) == 4
    assert (data_dir / "figures" / beyond.FIGURE).exists()


def test_the_seeds_give_different_models_on_one_split(study, data_dir):
    folder = data_dir / "data" / "beyond" / "beyond-test" / "paper"
    splits = [pd.read_csv(folder / f"seed{s}" / "split.csv") for s in (42, 43)]
    assert splits[0].equals(splits[1])
    configs = [load_checkpoint(folder / f"seed{s}" / "checkpoints" / "last.pt")["config"] for s in (42, 43)]
    assert [(c["init_seed"], c["data_seed"], c["seed"]) for c in configs] == [(42, 42, 42), (43, 43, 42)]
    weights = [load_checkpoint(folder / f"seed{s}" / "checkpoints" / "best.pt")["model_state_dict"]
               for s in (42, 43)]
    assert not torch.equal(weights[0]["enc1.0.weight"], weights[1]["enc1.0.weight"])


def test_a_second_call_reuses_every_run(study, data_dir):
    rows = sorted((data_dir / "data" / "beyond" / "beyond-test").glob("*/seed*/row.json"))
    stamps = [p.stat().st_mtime_ns for p in rows]
    with pytest.warns(UserWarning, match="left out of the foreign dataset"):
        pipeline.run_beyond(tiny_profile(), progress=False, device="cpu")
    assert [p.stat().st_mtime_ns for p in rows] == stamps and len(rows) == 4


def test_every_run_is_scored_on_the_test_cases_of_its_split(study, data_dir):
    runs, _ = study
    run_dir = data_dir / "data" / "beyond" / "beyond-test" / "paper" / "seed42"
    profile = tiny_profile()
    split = pd.read_csv(run_dir / "split.csv")
    test_ids = list(split.loc[split["split"] == "test", "case_id"])
    assert test_ids and set(test_ids).isdisjoint(split.loc[split["split"] != "test", "case_id"])
    volumes = beyond.split_volumes(profile.cache_dir, run_dir / "split.csv", "test")
    assert [p.name for p in volumes.entries] == test_ids
    study_profile = beyond.compare.study_profile(beyond.variant_profile(profile, "paper", 42), "paper")
    model = beyond.load_model(run_dir / "checkpoints" / "best.pt")
    predictor = beyond.predictor_for(model, "labels", precision=study_profile.requested_precision)
    predictions, truths, _ = beyond.predict_volumes(predictor, volumes, study_profile, torch.device("cpu"))
    expected = beyond.mean_scores(predictions, truths)
    row = runs[(runs["variant"] == "paper") & (runs["seed"] == 42)].iloc[0]
    for column, value in expected.items():
        assert row[column] == pytest.approx(value, nan_ok=True)
    with pytest.raises(ValueError, match="split.csv has no 'excluded' cases"):
        beyond.split_volumes(profile.cache_dir, run_dir / "split.csv", "excluded")


def test_the_foreign_dataset_is_other_patients_stored_the_foreign_way_and_scored(study, data_dir):
    runs, _ = study
    roots = list((data_dir / "data" / "synthetic").glob("beyond-test-foreign-*"))
    assert len(roots) == 1 and roots[0].name.endswith(f"seed{42 + pipeline.FOREIGN_SEED_OFFSET}")
    files = sorted(roots[0].rglob("*_flair.nii.gz"))
    assert files and not list(roots[0].rglob("*.nii"))  # compressed, unlike the Kaggle copy
    n_test = len(pipeline.split_of(tiny_profile())["test"])
    cached = sorted(p.name for p in (data_dir / "data" / "cache").glob("*-foreign-*/BraTS20_*"))
    assert len(files) == n_test + 1 and len(cached) == n_test  # the loader refused the misregistered one
    for prefix in beyond.UNFAMILIAR:  # every row, the post-processed one included
        assert runs[[f"{prefix}Dice_{r}" for r in beyond.REGIONS]].notna().all().all()


def test_the_command_line_runs_the_study_and_names_the_cases(study, monkeypatch, capsys):
    from brats_utils import cli

    calls = []
    monkeypatch.setattr(pipeline, "run_beyond",
                        lambda profile, foreign_root, budget_factor:
                        calls.append((foreign_root, budget_factor)) or study)
    read = []
    report = beyond.read_report(beyond.beyond_dir(tiny_profile()))
    monkeypatch.setattr(beyond, "read_report", lambda folder: read.append(folder) or report)
    assert cli.main(["beyond", "--profile", "ci", "--foreign-root", "/some/brats2021"]) == 0
    assert cli.main(["beyond", "--profile", "ci", "--longer", "3"]) == 0
    printed = capsys.readouterr().out
    assert calls == [("/some/brats2021", 1), (None, 3)]
    ci = config.get_profile("ci")
    assert read == [beyond.beyond_dir(ci), beyond.beyond_dir(ci, 3)]  # the longer run's own report
    assert "test cases (never seen by training or model selection) (screening budget)" in printed
    assert "(3x the screening budget)" in printed and "paper ensemble" in printed
    assert "| regions | " in printed and "paired Wilcoxon p" in printed  # the report as a Markdown table


def test_any_labelled_layout_can_be_the_foreign_dataset(tmp_path, monkeypatch):
    from brats_utils.preprocess import load_cached
    from brats_utils.synthetic import write_layout, write_synthetic_dataset

    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path / "data"))
    profile = tiny_profile(name="beyond-layout")
    kaggle = write_synthetic_dataset(tmp_path / "phantoms", 2, 0, (24, 24, 16), seed=5)
    msd = write_layout(kaggle, tmp_path / "msd", "msd")  # 4D NIfTI, MSD's own label numbers
    entries = pipeline.ensure_foreign_cache(profile, msd, progress=False)
    reference = pipeline.ensure_foreign_cache(profile, kaggle, progress=False)
    assert [e.name for e in entries] == ["BRATS_001", "BRATS_002"]
    assert entries[0].parent != reference[0].parent  # each foreign dataset has its own cache
    for entry, same in zip(entries, reference, strict=True):
        ours, theirs = load_cached(entry), load_cached(same)
        np.testing.assert_array_equal(ours.labels, theirs.labels)
        np.testing.assert_allclose(ours.image, theirs.image, atol=1e-3)


def test_the_et_threshold_is_chosen_on_the_validation_cases_and_applied_everywhere(study, data_dir):
    from brats_utils.postprocess import choose_et_threshold, suppress_small_et

    runs, _ = study
    profile = tiny_profile()
    run_dir = data_dir / "data" / "beyond" / "beyond-test" / "paper" / "seed42"
    study_profile = beyond.compare.study_profile(beyond.variant_profile(profile, "paper", 42), "paper")
    predictor = beyond.predictor_for(beyond.load_model(run_dir / "checkpoints" / "best.pt"), "labels",
                                     precision=study_profile.requested_precision)
    cpu = torch.device("cpu")
    validation = beyond.split_volumes(profile.cache_dir, run_dir / "split.csv", "val")
    spacing = beyond.voxel_volumes(validation)
    assert spacing == [1.0] * len(validation)  # the phantoms' affine: 1 mm voxels, as BraTS
    threshold = choose_et_threshold(*beyond.predict_volumes(predictor, validation, study_profile, cpu)[:2],
                                    voxel_volumes=spacing)
    rows = runs[runs["seed"] == 42].set_index("variant")
    assert rows.loc[beyond.POSTPROCESSED, "ET threshold (mm³)"] == threshold
    ids = " ".join(entry.name for entry in validation.entries)
    assert rows.loc[beyond.POSTPROCESSED, "ET threshold chosen on"] == f"validation cases: {ids}"
    test = beyond.split_volumes(profile.cache_dir, run_dir / "split.csv", "test")
    predictions, truths, _ = beyond.predict_volumes(predictor, test, study_profile, cpu, shifted=True)
    expected = beyond.mean_scores([suppress_small_et(p, threshold, voxel_volume_mm3=v)
                                   for p, v in zip(predictions, beyond.voxel_volumes(test), strict=True)],
                                  truths, "shifted ")
    assert rows.loc[beyond.POSTPROCESSED, "shifted Dice_ET"] == pytest.approx(expected["shifted Dice_ET"])


def test_the_seeds_draw_other_patches_in_another_order(study, data_dir):
    from brats_utils.data import make_loaders

    def first_batch(data_seed):
        profile = tiny_profile().with_overrides(seed=42, test_fraction=0.2, data_seed=data_seed,
                                                patch_size=(8, 8, 8), samples_per_volume=4, batch_size=2,
                                                num_workers=0, augmentation="none")
        loader, _ = make_loaders(profile.cache_dir, profile.data, profile.loader, split_csv=None)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(None), first_batch(42))  # the default is the split's seed
    assert not torch.equal(first_batch(42), first_batch(43))


def test_the_report_tests_every_variant_against_the_paper_model_case_by_case(study, data_dir):
    runs, _ = study
    folder = data_dir / "data" / "beyond" / "beyond-test"
    cases = pd.read_csv(folder / "cases.csv")
    n_test = len(pipeline.split_of(tiny_profile())["test"])
    assert len(cases[(cases["variant"] == "paper")]) == 2 * n_test  # two seeds x the test cases
    mean_of_run = cases[(cases["variant"] == "regions") & (cases["seed"] == 43)]["Dice_TC"].mean()
    run = runs[(runs["variant"] == "regions") & (runs["seed"] == 43)].iloc[0]
    assert mean_of_run == pytest.approx(run["Dice_TC"])
    report = pd.read_csv(folder / "report.csv").fillna({"verdict": ""})
    assert set(report["variant"]) == {"paper", beyond.POSTPROCESSED, "regions", beyond.ENSEMBLE}
    assert (report["n cases"] == n_test).all()
    tested = report[report["variant"] != "paper"]
    # one test case: no interval, no test, and so no verdict but "no difference"
    assert n_test == 1 and tested["p"].isna().all() and tested["CI low"].isna().all()
    assert set(tested["verdict"]) == {"no difference"}
    assert (report.loc[report["variant"] == "paper", "verdict"] == "").all()


def test_study_figure_draws_one_dot_per_seed_and_never_leaves_0_to_1():
    """Three seeds of one variant, one of another: dots where runs are, no error bar below 0."""
    import matplotlib.pyplot as plt

    runs = pd.DataFrame({"variant": ["paper", "paper", "paper", "regions"],
                         **{f"Dice_{r}": [0.05, 0.9, 0.1, 0.5] for r in beyond.REGIONS}})
    fig = beyond.plot_study(runs)
    test_panel = fig.axes[0]
    from matplotlib.collections import PathCollection

    dots = np.concatenate([c.get_offsets() for c in test_panel.collections
                           if isinstance(c, PathCollection) and len(c.get_offsets())])
    assert len(dots) == len(runs) * len(beyond.REGIONS)
    assert dots[:, 1].min() >= 0 and dots[:, 1].max() <= 1
    assert [t.get_text() for t in test_panel.get_xticklabels()] == ["paper", "regions"]
    plt.close(fig)


def test_the_longer_run_trains_the_paper_and_region_models_longer_into_its_own_folder(study, data_dir):
    profile = tiny_profile(beyond_variants=("paper", "regions", "attention gates"), compare_epochs=2)
    longer = beyond.longer_profile(profile, 3)
    assert longer.compare_epochs == 6 and beyond.variant_names(longer) == beyond.LONGER_VARIANTS
    assert longer.with_overrides(compare_epochs=2, beyond_variants=profile.beyond_variants) == profile
    screening = beyond.beyond_dir(profile)
    assert screening == data_dir / "data" / "beyond" / "beyond-test"
    assert beyond.beyond_dir(profile, 3) == screening / "longer-3x"
    assert beyond.figure_name(1) == beyond.FIGURE
    assert beyond.figure_name(3) == "08_beyond_the_paper_longer_3x.png"
    with pytest.raises(ValueError, match="budget_factor"):
        beyond.longer_profile(profile, 0)


def test_a_longer_run_writes_its_own_report_and_leaves_the_screening_one(study, data_dir):
    screening = data_dir / "data" / "beyond" / "beyond-test"
    before = {p: p.stat().st_mtime_ns for p in (screening / "report.csv", screening / "cases.csv")}
    profile = tiny_profile(beyond_seeds=1)
    with pytest.warns(UserWarning, match="left out of the foreign dataset"):
        runs, _ = pipeline.run_beyond(profile, budget_factor=2, progress=False, device="cpu")
    assert {p: p.stat().st_mtime_ns for p in before} == before
    longer = screening / "longer-2x"
    report = beyond.read_report(longer)
    assert set(report["variant"]) == {"paper", beyond.POSTPROCESSED, "regions", beyond.ENSEMBLE}
    assert (data_dir / "figures" / beyond.figure_name(2)).exists()
    curves = beyond.learning_curves(longer)
    assert sorted(curves.groupby("variant")["epoch"].max().items()) == [("paper", 2), ("regions", 2)]


def test_learning_curves_are_the_validation_columns_of_every_runs_history(study, data_dir):
    folder = data_dir / "data" / "beyond" / "beyond-test"
    curves = beyond.learning_curves(folder)
    assert list(curves.columns) == ["variant", "seed", "epoch", "val_dice_mean", "val_dice_WT", "val_dice_TC",
                                    "val_dice_ET"]
    assert sorted(set(zip(curves["variant"], curves["seed"], strict=True))) == [
        ("paper", 42), ("paper", 43), ("regions", 42), ("regions", 43)]
    history = pd.read_csv(folder / "regions" / "seed43" / "history.csv")
    run = curves[(curves["variant"] == "regions") & (curves["seed"] == 43)]
    np.testing.assert_allclose(run["val_dice_mean"], history["val_dice_mean"])
    regions = run[["val_dice_WT", "val_dice_TC", "val_dice_ET"]]
    np.testing.assert_allclose(run["val_dice_mean"], regions.mean(axis=1))
    with pytest.raises(FileNotFoundError, match="'attention gates'"):
        beyond.learning_curves(folder, variants=("paper", "attention gates"))


def test_learning_curve_figure_draws_one_line_per_run_and_budget():
    import matplotlib.pyplot as plt

    curve = pd.DataFrame({"variant": ["paper"] * 2 + ["regions"] * 2, "seed": [42] * 4, "epoch": [1, 2] * 2,
                          "val_dice_mean": [0.1, 0.2, 0.3, 0.4]})
    fig = beyond.plot_learning_curves({"screening": curve, "3x": curve.assign(seed=43)})
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4 and {line.get_linestyle() for line in lines} == {"-", "--"}
    np.testing.assert_allclose(lines[1].get_ydata(), [0.3, 0.4])
    plt.close(fig)


def test_report_figure_draws_every_case_and_the_interval_of_the_report():
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection

    rng = np.random.default_rng(1)
    cases = pd.DataFrame([{"variant": v, "seed": s, "case": c,
                           **{f"Dice_{r}": rng.uniform() for r in beyond.REGIONS}}
                          for v in ("paper", "regions") for s in (42, 43) for c in range(7)])
    report = beyond.study_report(cases.assign(**{f"Hausdorff95_{r}": 1.0 for r in beyond.REGIONS}))
    fig = beyond.plot_report(cases, report)
    panel = fig.axes[1]  # TC
    dots = [c.get_offsets() for c in panel.collections if isinstance(c, PathCollection)]
    per_case = cases.groupby(["variant", "case"])["Dice_TC"].mean()
    np.testing.assert_allclose(np.sort(dots[0][:, 1]), np.sort(per_case["paper"]))  # a dot per case
    assert len(dots) == 2 and all(len(d) == 7 for d in dots)
    row = report[(report["variant"] == "regions") & (report["score"] == "Dice_TC")].iloc[0]
    bars = [line for line in panel.get_lines() if line.get_marker() == "o"]  # the means (not the caps)
    assert [line.get_ydata()[0] for line in bars] == pytest.approx(
        list(report.loc[report["score"] == "Dice_TC", "mean"]))
    assert any(f"p={row['p']:.2g}" in text.get_text() for text in panel.texts)
    plt.close(fig)
