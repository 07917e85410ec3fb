"""The ``authors`` profile, the held-out test split and the authors' pickled weights (docs/reproduction.md).

Every run is tiny (synthetic 32x32x24 volumes, two steps per epoch) and writes into a temporary
folder: ``$BRATS_DATA_DIR`` is redirected for this module.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from brats_utils import cli, pipeline
from brats_utils import train as train_module
from brats_utils.checkpoints import load_pretrained
from brats_utils.config import PROFILES, get_profile
from brats_utils.data import split_cases, split_patients
from brats_utils.errors import CheckpointError
from brats_utils.io import LoadedCase
from brats_utils.model import PRESETS, UNet3D, build_model, init_weights_authors_
from brats_utils.preprocess import cache_key, preprocess_case
from brats_utils.schedules import EarlyStopping, make_scheduler, step_scheduler

DETERMINISTIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_paper_dice", "val_dice_WT", "val_dice_TC",
                         "val_dice_ET", "lr", "grad_norm"]


def authors_small(**changes):
    """The ``authors`` profile at ci sizes on synthetic data: only sizes change, never the recipe."""
    sizes = {"name": "authors-ci", "data_source": "synthetic", "synthetic_train_cases": 6,
             "synthetic_val_cases": 0, "synthetic_shape": (32, 32, 24), "sw_patch_size": (32, 32, 24),
             "num_workers": 0, "epochs": 2, "steps_per_epoch": 2, "checkpoint_every": 1,
             # case 003 carries the synthetic case-355 quirk; it is dropped after the split, as theirs
             "exclude_from_training": ("BraTS20_Training_003",)}
    return get_profile("authors").with_overrides(**{**sizes, **changes})


# --- the profile is the table's column -------------------------------------------------------


def test_the_authors_profile_is_their_final_run():
    p = PROFILES["authors"]
    assert (p.normalisation, p.crop, p.patch_size, p.batch_size, p.augmentation) == ("volume", False, None, 2,
                                                                                      "none")
    assert (p.lr, p.weight_decay, p.lr_schedule, p.cosine_t_max, p.min_lr) == (5e-4, 5e-3, "cosine", 30, 1e-6)
    assert (p.grad_clip_norm, p.early_stop_patience, p.early_stop_min_delta, p.early_stop_rule) == \
        (1.5, 10, 1e-3, "authors")
    assert (p.checkpoint_every, p.dropout, p.init, p.model_preset) == (5, 0.1, "authors", "paper")
    assert (p.val_fraction, p.test_fraction, p.seed, p.exclude_from_training) == \
        (0.2, 0.0, 42, ("BraTS20_Training_355",))
    assert p.sw_patch_size == (240, 240, 155) and not p.tta  # one full-volume pass
    assert p.best_metric == "val_paper_dice" and p.fp32_validation  # chosen and validated as they did


def test_the_paper_profile_says_what_it_does():
    p = PROFILES["paper"]
    assert p.crop and p.normalisation == "brain" and p.patch_size is None
    assert p.best_metric == "val_paper_dice" and not p.fp32_validation  # "the best by validation Dice"
    assert "cropped to the brain" in p.description and "whole 240x240x155 volumes" not in p.description


def test_on_the_369_brats_ids_the_split_is_294_74_with_355_dropped_and_gpu_holds_out_test_cases():
    ids = [f"BraTS20_Training_{i:03d}" for i in range(1, 370)]
    p = PROFILES["authors"]
    parts = split_patients(ids, val_fraction=p.val_fraction, test_fraction=p.test_fraction, seed=p.seed,
                           exclude_from_training=p.exclude_from_training)
    train, val = split_cases(ids, val_fraction=0.2, seed=42)
    assert (len(parts["train"]), len(parts["val"]), parts["test"]) == (294, 74, [])
    assert parts["val"] == val and parts["excluded"] == ["BraTS20_Training_355"]
    assert "BraTS20_Training_355" in train  # it fell in training, and is dropped after the split
    q = PROFILES["gpu"]
    parts = split_patients(ids, val_fraction=q.val_fraction, test_fraction=q.test_fraction, seed=q.seed)
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (236, 59, 74)
    assert set(parts["train"]).isdisjoint(parts["test"]) and set(parts["val"]).isdisjoint(parts["test"])
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == ids
    # the demo's fractions are made for its 50 phantoms: 30 test cases for a paired test, 4 validation
    demo = PROFILES["demo"]
    sizes = [len(v) for v in split_patients([f"c{i:02d}" for i in range(demo.synthetic_train_cases)],
                                            val_fraction=demo.val_fraction, test_fraction=demo.test_fraction,
                                            seed=demo.seed).values()]
    assert sizes == [16, 4, 30, 0]


# --- early stopping, schedule, initialisation ---------------------------------------------------


def test_the_authors_early_stopping_lets_a_slowly_rising_loss_run_forever():
    rising = [1.0 + 0.0009 * i for i in range(30)]
    strict, theirs = EarlyStopping(10, 1e-3), EarlyStopping(10, 1e-3, rule="authors")
    assert any(strict.step(loss) for loss in rising)
    assert not any(theirs.step(loss) for loss in rising)
    assert theirs.best == pytest.approx(rising[-1]) and theirs.bad_epochs == 0  # overwritten every epoch
    jumps = EarlyStopping(3, 1e-3, rule="authors")
    assert [jumps.step(loss) for loss in (1.0, 1.01, 1.01, 1.0005, 1.01, 1.01, 1.01)] == \
        [False, False, False, False, False, False, True]
    assert jumps.best == 1.0005
    restored = EarlyStopping(3, 1e-3, rule="authors")
    restored.load_state_dict(jumps.state_dict())
    assert restored.should_stop and restored.state_dict()["rule"] == "authors"


def test_the_cosine_schedule_is_stepped_per_epoch_and_rises_again_after_t_max():
    profile = PROFILES["authors"]
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=profile.lr)
    scheduler = make_scheduler(optimizer, profile)
    lrs = []
    for _ in range(61):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_scheduler(scheduler, val_loss=1.0)  # the loss is ignored
    expected = [1e-6 + (5e-4 - 1e-6) * (1 + math.cos(math.pi * e / 30)) / 2 for e in range(61)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6, atol=1e-12)
    assert lrs[30] == pytest.approx(1e-6) and lrs[60] == pytest.approx(5e-4)


def test_their_init_is_kaiming_fan_out_on_conv3d_and_pytorch_default_on_transposed_convolutions():
    torch.manual_seed(0)
    model = build_model("paper")
    init_weights_authors_(model)
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose3d):
            bound = 1 / math.sqrt(module.weight.shape[1] * math.prod(module.kernel_size))
            assert module.weight.abs().max() <= bound and module.bias.abs().max() <= bound
            assert module.weight.std() == pytest.approx(bound / math.sqrt(3), rel=0.15)
        elif isinstance(module, nn.Conv3d) and module.weight.numel() > 2000:
            fan_out = module.out_channels * math.prod(module.kernel_size)
            assert module.weight.std() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
            assert not module.bias.any()


# --- preprocessing settings ----------------------------------------------------------------------


def test_whole_volume_zscore_uncropped_keeps_the_grid_and_is_part_of_the_cache_key(synthetic_root):
    from brats_utils.datasets import find_dataset
    from brats_utils.io import load_case

    case = find_dataset(synthetic_root, split="training")[0]
    loaded = load_case(case)
    theirs = preprocess_case(loaded, normalisation="volume", crop=False)
    ours = preprocess_case(loaded)
    assert theirs.image.shape == loaded.image.shape and ours.image.shape[1:] != loaded.image.shape[1:]
    background = ~np.any(loaded.image != 0, axis=0)
    for c in range(4):
        values = theirs.image[c].astype(np.float64)
        assert abs(values.mean()) < 1e-3 and values.std() == pytest.approx(1, abs=1e-3)
        assert np.unique(values[background]).size == 1 and values[background][0] < 0
    assert ours.image[:, 0, 0, 0].tolist() == [0, 0, 0, 0]
    constant = LoadedCase(case_id="flat", image=np.full((4, 8, 8, 8), 3.0, np.float32), labels=None,
                          affine=np.eye(4), header=None)
    with pytest.warns(UserWarning, match="constant"):
        assert not preprocess_case(constant, normalisation="volume", crop=False).image.any()
    keys = {cache_key(case, margin=2, normalisation=n, crop=c)
            for n in ("brain", "volume") for c in (True, False)}
    assert len(keys) == 4 and cache_key(case, margin=2) == cache_key(case, margin=2, normalisation="brain")


# --- the authors' recipe trains and resumes at ci size -------------------------------------------


def test_the_authors_profile_trains_and_resumes_exactly_at_ci_size(data_dir, tmp_path):
    profile = authors_small()
    two = pipeline.train(profile, run_dir=tmp_path / "two", progress=False, device="cpu")
    split = pd.read_csv(tmp_path / "two" / "split.csv").set_index("case_id")["split"]
    assert split["BraTS20_Training_003"] == "excluded" and set(split) <= {"train", "val", "excluded"}
    cached = next(iter(profile.cache_dir.iterdir()))
    assert np.load(cached / "image.npy").shape == (4, 32, 32, 24)  # uncropped
    lrs = two.history["lr"].tolist()
    assert lrs[0] == 5e-4 and lrs[1] == pytest.approx(1e-6 + (5e-4 - 1e-6) * (1 + math.cos(math.pi / 30)) / 2)

    first = pipeline.train(profile, run_dir=tmp_path / "resumed", max_epochs=1, progress=False, device="cpu")
    assert len(first.history) == 1
    torch.manual_seed(12345)
    np.random.seed(12345)
    resumed = pipeline.train(profile, run_dir=tmp_path / "resumed", progress=False, device="cpu")
    pd.testing.assert_frame_equal(resumed.history[DETERMINISTIC_COLUMNS], two.history[DETERMINISTIC_COLUMNS],
                                  check_exact=True)
    final = torch.load(resumed.last_checkpoint, weights_only=True)
    reference = torch.load(two.last_checkpoint, weights_only=True)
    assert all(torch.equal(final["model_state_dict"][k], reference["model_state_dict"][k])
               for k in reference["model_state_dict"])
    assert final["scheduler_state_dict"]["T_max"] == 30 and final["early_stopping"]["rule"] == "authors"


# --- the test cases never reach model selection ---------------------------------------------------


def test_test_cases_never_reach_training_validation_or_the_best_epoch(data_dir, tmp_path, monkeypatch):
    profile = get_profile("ci").with_overrides(name="heldout", synthetic_train_cases=8, synthetic_val_cases=0,
                                               synthetic_shape=(32, 32, 24), patch_size=(24, 24, 16),
                                               sw_patch_size=(32, 32, 24), epochs=2, steps_per_epoch=2)
    parts = pipeline.split_of(profile)
    assert len(parts["test"]) == 2 and len(parts["val"]) == 2 and len(parts["train"]) == 4
    seen = {"loader": set(), "validated": set()}
    real_loaders, real_validate = train_module.loaders_for, train_module.validate

    def loaders_for(*args, **kwargs):
        loader, volumes = real_loaders(*args, **kwargs)
        seen["loader"] |= {entry.name for entry in loader.dataset.entries}
        seen["volumes"] = {entry.name for entry in volumes.entries}
        return loader, volumes

    def validate(model, volumes, *args, **kwargs):
        seen["validated"] |= {volumes[i][2] for i in range(len(volumes))}
        return real_validate(model, volumes, *args, **kwargs)

    monkeypatch.setattr(train_module, "loaders_for", loaders_for)
    monkeypatch.setattr(train_module, "validate", validate)
    result = pipeline.train(profile, run_dir=tmp_path / "run", progress=False, device="cpu")
    test = set(parts["test"])
    assert seen["loader"] == set(parts["train"]) and seen["volumes"] == seen["validated"] == set(parts["val"])
    assert test.isdisjoint(seen["loader"] | seen["validated"])
    split = pd.read_csv(tmp_path / "run" / "split.csv").set_index("case_id")["split"]
    assert {case for case, name in split.items() if name == "test"} == test
    # the best epoch is the history's argmax of the validation metric, and nothing else decides it
    assert result.best_epoch == int(result.history.loc[result.history[profile.best_metric].idxmax(), "epoch"])
    # the final report predicts exactly the test cases
    assert pipeline.heldout_split(profile) == "test"
    paths = pipeline.predict_split(profile, checkpoint=result.best_checkpoint, split="test",
                                   out_dir=tmp_path / "pred", progress=False)
    assert {p.name.removesuffix(".nii.gz") for p in paths} == test
    per_case, _ = pipeline.evaluate_folder(profile, tmp_path / "pred", split="test", progress=False)
    assert set(per_case.index) == test


# --- the authors' pickled weights ---------------------------------------------------------------------

#: The authors' notebook defined their model as ``__main__.ImprovedUNet3D``.
ImprovedUNet3D = type("ImprovedUNet3D", (UNet3D,),
                      {"__module__": "__main__", "__qualname__": "ImprovedUNet3D"})


def save_like_the_authors(path, monkeypatch) -> nn.DataParallel:
    """``torch.save(DataParallel(ImprovedUNet3D))``: a whole pickled model, its class gone afterwards."""
    torch.manual_seed(3)
    wrapped = nn.DataParallel(ImprovedUNet3D(**PRESETS["paper"], dropout=0.1))
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules["__main__"], "ImprovedUNet3D", ImprovedUNet3D, raising=False)
        torch.save(wrapped, path)
    return wrapped


def test_load_pretrained_reads_a_whole_pickled_data_parallel_file(tmp_path, monkeypatch):
    path = tmp_path / "BratsCV_best.pt"
    wrapped = save_like_the_authors(path, monkeypatch)
    model = load_pretrained(build_model("paper"), path).eval()
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), wrapped.module.eval()(x))


def test_load_pretrained_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_pretrained(build_model("paper"), path)
    assert not marker.exists()


def test_evaluate_pretrained_runs_their_file_with_their_preprocessing(data_dir, tmp_path, monkeypatch,
                                                                    capsys):
    profile = authors_small(name="authors-pretrained")
    weights = tmp_path / "BratsCV_best.pt"
    save_like_the_authors(weights, monkeypatch)
    per_case, summary = pipeline.evaluate_pretrained(profile, weights, out_dir=tmp_path / "pred",
                                                     progress=False)
    assert set(per_case.index) == set(pipeline.split_of(profile)["val"])
    assert {"PaperDice", "Dice_WT", "Dice_TC", "Dice_ET", "Hausdorff95_WT"} <= set(summary.columns)
    assert cli.main(["evaluate-pretrained", str(weights), "--profile", "authors",
                     "--set", "name='authors-cli'", "--set", "data_source='synthetic'",
                     "--set", "synthetic_train_cases=6",
                     "--set", "synthetic_val_cases=0", "--set", "synthetic_shape=(32,32,24)",
                     "--set", "sw_patch_size=(32,32,24)", "--set", "num_workers=0",
                     "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "validation cases (used for model selection)" in out and "PaperDice" in out and "Dice_WT" in out
    assert (tmp_path / "cli" / "metrics.csv").exists()


# --- k-fold cross-validation ----------------------------------------------------------------------------


def test_folds_partition_the_non_test_patients_and_keep_the_test_cases_out():
    ids = [f"BraTS20_Training_{i:03d}" for i in range(1, 370)]
    folds = [split_patients(ids, val_fraction=0.2, test_fraction=0.2, fold=k, n_folds=5) for k in range(5)]
    test = folds[0]["test"]
    assert all(f["test"] == test for f in folds) and len(test) == 74
    validated = [case for f in folds for case in f["val"]]
    assert sorted(validated) == sorted(set(ids) - set(test))  # every non-test patient validates exactly once
    assert all(set(f["train"]).isdisjoint(f["val"]) and set(f["train"]).isdisjoint(test) for f in folds)
    assert [len(f["val"]) for f in folds] == [59, 59, 59, 59, 59]
    with pytest.raises(Exception, match="fold"):
        get_profile("ci").with_overrides(fold=5)


def test_cross_validation_pools_out_of_fold_scores_and_averages_the_folds_on_test_cases(data_dir, tmp_path):
    profile = get_profile("ci").with_overrides(name="cv", synthetic_train_cases=8, synthetic_val_cases=0,
                                               synthetic_shape=(32, 32, 24), patch_size=(24, 24, 16),
                                               sw_patch_size=(32, 32, 24), epochs=1, steps_per_epoch=1,
                                               n_folds=2)
    assert get_profile("ci").with_overrides(name="cv", fold=1).run_dir == profile.run_dir / "fold1"
    per_case, _ = pipeline.cross_validate(profile, out_dir=tmp_path / "oof", progress=False)
    parts = pipeline.split_of(profile)
    assert sorted(per_case.index) == sorted(parts["train"] + parts["val"])  # all non-test cases, once
    # the ET threshold: chosen on the pooled out-of-fold predictions, in mm³, with the cases it came from
    chosen = json.loads((tmp_path / "oof" / pipeline.ET_THRESHOLD_FILE).read_text())
    assert chosen["chosen_on"] == "out-of-fold predictions of 2-fold cross-validation"
    assert sorted(chosen["case_ids"]) == sorted(per_case.index)
    curve = pd.DataFrame(chosen["curve"])
    best = curve.loc[curve["mean ET Dice"] == curve["mean ET Dice"].max(), "threshold"].min()
    assert chosen["min_volume_mm3"] == best and curve.loc[0, "threshold"] == 0
    # at threshold 0 nothing changes: the curve starts at the pooled ET Dice of the evaluation itself
    assert curve.loc[0, "mean ET Dice"] == pytest.approx(per_case["Dice_ET"].mean())
    for k in range(2):
        split = pd.read_csv(profile.run_dir / f"fold{k}" / "split.csv").set_index("case_id")["split"]
        assert {c for c, s in split.items() if s == "test"} == set(parts["test"])
    paths = pipeline.predict_with_folds(profile, out_dir=tmp_path / "test", progress=False)
    assert {p.name.removesuffix(".nii.gz") for p in paths} == set(parts["test"])

