"""Training: exact resume, checkpoint contents and atomic writes, the schedule, early stop, clipping, errors.

Every run is tiny (a few 24x24x16 patches of 32x32x24 synthetic volumes, one validation
volume) and writes into a temporary folder: ``$BRATS_DATA_DIR`` is redirected for this module.
"""

from __future__ import annotations

import math
import random
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from brats_utils import pipeline
from brats_utils import train as train_module
from brats_utils.checkpoints import CHECKPOINT_KEYS, atomic_torch_save, load_checkpoint
from brats_utils.config import get_profile
from brats_utils.errors import CheckpointError, CheckpointFallbackWarning
from brats_utils.losses import CombinedLoss
from brats_utils.model import build_model
from brats_utils.pipeline import ensure_trained, train
from brats_utils.schedules import EarlyStopping
from brats_utils.train import history_csv_path, train_step
from brats_utils.viz import plot_history

DETERMINISTIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_paper_dice", "val_dice_WT", "val_dice_TC",
                         "val_dice_ET", "lr", "grad_norm"]


@pytest.fixture(scope="module")
def profile(data_dir):
    """The ci profile shrunk further: 4 labelled cases (2 train / 1 val / 1 test), 2 steps per epoch."""
    return get_profile("ci").with_overrides(
        name="unit", synthetic_train_cases=4, synthetic_val_cases=1, synthetic_shape=(32, 32, 24),
        patch_size=(24, 24, 16), sw_patch_size=(24, 24, 16), steps_per_epoch=2, epochs=2, checkpoint_every=1)


@pytest.fixture(scope="module")
def two_epochs(profile, tmp_path_factory):
    """An uninterrupted two-epoch run."""
    return train(profile, run_dir=tmp_path_factory.mktemp("uninterrupted"), progress=False, device="cpu")


def _scramble_random_generators() -> None:
    """What a fresh Python process would have: nothing of the previous run's generator states."""
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


def test_a_run_killed_after_one_epoch_and_resumed_matches_an_uninterrupted_run(profile, two_epochs, tmp_path):
    first = train(profile, run_dir=tmp_path, max_epochs=1, progress=False, device="cpu")
    assert len(first.history) == 1
    _scramble_random_generators()
    resumed = train(profile, run_dir=tmp_path, progress=False, device="cpu")

    columns = DETERMINISTIC_COLUMNS
    pd.testing.assert_frame_equal(resumed.history[columns], two_epochs.history[columns], check_exact=True)
    final = torch.load(resumed.last_checkpoint, weights_only=True)["model_state_dict"]
    reference = torch.load(two_epochs.last_checkpoint, weights_only=True)["model_state_dict"]
    assert all(torch.equal(final[name], reference[name]) for name in reference)


def test_training_changes_the_weights_and_reports_finite_numbers(two_epochs):
    history = two_epochs.history
    assert list(history["epoch"]) == [1, 2]
    assert np.isfinite(history[DETERMINISTIC_COLUMNS].to_numpy(dtype=float)).all()
    assert ((history[["val_paper_dice", "val_dice_WT", "val_dice_TC", "val_dice_ET"]] >= 0)
            & (history[["val_paper_dice", "val_dice_WT", "val_dice_TC", "val_dice_ET"]] <= 1)).all().all()
    first = torch.load(two_epochs.run_dir / "checkpoints" / "epoch_001.pt", weights_only=True)
    last = torch.load(two_epochs.last_checkpoint, weights_only=True)
    assert any(not torch.equal(first["model_state_dict"][k], last["model_state_dict"][k])
               for k in last["model_state_dict"])


def test_checkpoint_holds_everything_needed_to_continue(profile, two_epochs):
    checkpoint = load_checkpoint(two_epochs.last_checkpoint)
    assert set(CHECKPOINT_KEYS) <= set(checkpoint)
    assert checkpoint["epoch"] == 2
    assert {key: checkpoint["config"][key] for key in profile.as_dict()} == profile.as_dict()
    assert checkpoint["config"]["world_size"] == 1
    assert checkpoint["config"]["resolved_precision"] in ("fp32", "bf16")
    assert checkpoint["model_config"] == build_model(profile.model_preset, dropout=profile.dropout).config
    model = build_model(**{"preset": profile.model_preset, **checkpoint["model_config"]})
    model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    # AdamW counts its own steps: 2 epochs x 2 steps
    steps = {int(s["step"]) for s in checkpoint["optimizer_state_dict"]["state"].values()}
    assert steps == {2 * profile.steps_per_epoch}
    assert checkpoint["scheduler_state_dict"]["best"] == pytest.approx(two_epochs.history["val_loss"].min(),
                                                                       rel=1e-3)
    replayed = EarlyStopping(profile.early_stop_patience, profile.early_stop_min_delta)
    for loss in two_epochs.history["val_loss"]:
        replayed.step(loss)
    assert checkpoint["early_stopping"] == replayed.state_dict()
    assert {"python", "numpy", "torch", "cuda"} <= set(checkpoint["rng_state"])
    assert pd.DataFrame(checkpoint["history"]).equals(two_epochs.history)


def test_files_of_a_run_best_periodic_last_and_history(two_epochs):
    folder = two_epochs.run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "epoch_001.pt", "epoch_002.pt", "last.pt"]
    best = load_checkpoint(two_epochs.best_checkpoint)
    history = two_epochs.history
    best_epoch = int(history.loc[history["val_dice_mean"].idxmax(), "epoch"])  # the default best_metric
    assert history["val_dice_mean"].tolist() == pytest.approx(
        history[["val_dice_WT", "val_dice_TC", "val_dice_ET"]].mean(axis=1).tolist())
    assert best["epoch"] == best_epoch == two_epochs.best_epoch
    on_disk = pd.read_csv(history_csv_path(two_epochs.run_dir))
    pd.testing.assert_frame_equal(on_disk, history, check_dtype=False)
    assert "best epoch" in repr(two_epochs) and str(two_epochs.best_checkpoint) in repr(two_epochs)


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(two_epochs, tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    shutil.copy(two_epochs.last_checkpoint, target)
    real_save = torch.save

    def crash_half_way(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(100)  # half a file on disk ...
        raise KeyboardInterrupt  # ... and the process dies (Colab disconnects)

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 99}, target)
    monkeypatch.undo()
    assert load_checkpoint(target)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_a_damaged_checkpoint_raises_checkpoint_error_naming_the_file(two_epochs, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(two_epochs.last_checkpoint.read_bytes()[:5000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"model_state_dict": {}, "epoch": 3}, incomplete)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match="cannot be read") as error:
            load_checkpoint(path)
        assert str(path) in str(error.value)
    with pytest.raises(CheckpointError, match="lacks model_config, optimizer_state_dict"):
        load_checkpoint(incomplete)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_damaged_last_checkpoint_falls_back_to_the_newest_good_one_exactly(profile, two_epochs, tmp_path):
    shutil.copytree(two_epochs.run_dir, tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    for name in ("last.pt", "epoch_002.pt", "best.pt"):  # cut short: epoch_001.pt is the newest good file
        (folder / name).write_bytes((folder / name).read_bytes()[:-200])
    _scramble_random_generators()
    with pytest.warns(CheckpointFallbackWarning) as warned:
        resumed = train(profile, run_dir=tmp_path / "run", progress=False, device="cpu")
    message = str(warned[0].message)
    assert f"cannot read {folder / 'last.pt'}, {folder / 'epoch_002.pt'}" in message
    assert f"resuming from {folder / 'epoch_001.pt'} (epoch 1)" in message
    columns = DETERMINISTIC_COLUMNS
    pd.testing.assert_frame_equal(resumed.history[columns], two_epochs.history[columns], check_exact=True)
    for name in ("last.pt", "best.pt"):
        final = torch.load(folder / name, weights_only=True)
        reference = torch.load(two_epochs.run_dir / "checkpoints" / name, weights_only=True)
        assert final["epoch"] == reference["epoch"]
        assert all(torch.equal(final["model_state_dict"][k], reference["model_state_dict"][k])
                   for k in reference["model_state_dict"])


def test_the_history_is_cut_back_to_the_fallback_epoch(profile, two_epochs, tmp_path):
    shutil.copytree(two_epochs.run_dir, tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    for name in ("last.pt", "epoch_002.pt"):
        (folder / name).write_bytes((folder / name).read_bytes()[:5000])
    with pytest.warns(CheckpointFallbackWarning):
        train_module._start_state(profile, tmp_path / "run", torch.device("cpu"), resume=True, progress=False)
    assert list(pd.read_csv(history_csv_path(tmp_path / "run"))["epoch"]) == [1]
    assert load_checkpoint(folder / "best.pt")["epoch"] == 1  # the best of the epochs kept


def test_resuming_when_no_checkpoint_can_be_read_fails_clearly(profile, two_epochs, tmp_path):
    shutil.copytree(two_epochs.run_dir, tmp_path / "run")
    for path in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="no checkpoint of this run can be read .*--restart"):
        train(profile, run_dir=tmp_path / "run", max_epochs=3, progress=False, device="cpu")


@pytest.mark.parametrize(("change", "message"), [
    ({"model_preset": "l4_f16"}, "another architecture"),
    ({"lr": 1e-3}, r"other settings \(lr: 0.0005 -> 0.001\)"),
])
def test_resuming_with_another_model_or_recipe_fails_clearly(profile, two_epochs, tmp_path, change, message):
    shutil.copytree(two_epochs.run_dir, tmp_path / "run")
    with pytest.raises(CheckpointError, match=message):
        train(profile.with_overrides(**change), run_dir=tmp_path / "run", max_epochs=3, progress=False,
              device="cpu")


def test_plateau_schedule_and_early_stop_follow_a_scripted_validation_loss(profile, tmp_path, monkeypatch):
    """Validation is replaced by a script; the learning rates and the stop are worked out by hand.

    plateau patience 1 (x0.5, floor 3e-4; torch's relative threshold 1e-4), early stop patience 4,
    min delta 0.01:

    epoch  loss   plateau: bad epochs -> lr next   early stop: bad epochs
    1      1.0    best 1.0, 0 -> 5e-4              best 1.0, 0
    2      0.8    best 0.8, 0 -> 5e-4              best 0.8, 0
    3      0.795  best 0.795, 0 -> 5e-4            0.795 > 0.8 - 0.01: 1
    4      0.85   1 -> 5e-4                        2
    5      0.9    2 > 1: reduce to max(2.5e-4, 3e-4) = 3e-4   3
    6      0.79   best 0.79, 0 -> 3e-4             0.79 = 0.8 - 0.01 is no improvement: 4 -> stop
    """
    losses = [1.0, 0.8, 0.795, 0.85, 0.9, 0.79, 0.5, 0.5]
    dice = [0.1, 0.5, 0.4, 0.6, 0.2, 0.3, 0.9, 0.9]
    calls = iter(range(len(losses)))

    def scripted_validation(*args, **kwargs):
        i = next(calls)
        return {"val_loss": losses[i], "val_paper_dice": dice[i], "val_dice_WT": dice[i],
                "val_dice_TC": dice[i], "val_dice_ET": dice[i]}

    monkeypatch.setattr(train_module, "validate", scripted_validation)
    scripted = profile.with_overrides(epochs=8, steps_per_epoch=1, plateau_patience=1, min_lr=3e-4,
                                      early_stop_patience=4, early_stop_min_delta=0.01, checkpoint_every=5)
    result = train(scripted, run_dir=tmp_path, progress=False, device="cpu")

    assert result.stopped_early
    assert list(result.history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert result.history["lr"].tolist() == pytest.approx([5e-4] * 5 + [3e-4])
    assert load_checkpoint(result.best_checkpoint)["epoch"] == 4  # highest mean Dice, not lowest loss
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["best.pt", "epoch_005.pt", "last.pt"]
    again = train(scripted, run_dir=tmp_path, progress=False, device="cpu")  # a stopped run stays stopped
    assert len(again.history) == 6


def test_early_stopping_counts_and_restores():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    assert [stopper.step(x) for x in (1.0, 0.95, 0.85)] == [False, False, False]  # 0.85 < 1.0 - 0.1
    assert stopper.best == 0.85 and stopper.bad_epochs == 0
    copy = EarlyStopping(patience=2, min_delta=0.1)
    copy.load_state_dict(stopper.state_dict())
    assert [copy.step(x) for x in (0.8, 0.9)] == [False, True]
    assert [stopper.step(x) for x in (0.8, 0.9)] == [False, True]


def test_gradients_are_clipped_before_the_step():
    torch.manual_seed(0)
    model = build_model("paper")
    image, label = torch.randn(1, 4, 16, 16, 16), torch.randint(0, 4, (1, 16, 16, 16))
    combined = CombinedLoss()

    def huge_loss(logits, target):
        return 1e4 * combined(logits, target)

    torch.manual_seed(1)  # dropout draws from the global generator: same seed, same forward pass
    true_grads = torch.autograd.grad(huge_loss(model(image), label), list(model.parameters()))
    true_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in true_grads))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _, reported = train_step(model, image, label, huge_loss, optimizer, scaler, clip_norm=1.5,
                             precision="fp32")

    assert true_norm > 100  # the clip really had something to do
    assert float(reported) == pytest.approx(true_norm, rel=1e-4)
    clipped = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    assert clipped == pytest.approx(1.5, rel=1e-4)


def test_ensure_trained_reuses_a_finished_run_and_resumes_an_unfinished_one(profile, two_epochs, monkeypatch):
    shutil.copytree(two_epochs.run_dir, profile.run_dir, dirs_exist_ok=True)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(pipeline, "train", must_not_train)
    assert ensure_trained(profile) == profile.run_dir / "checkpoints" / "best.pt"

    with pytest.raises(CheckpointError, match="other settings"):  # never reuse a run made otherwise
        ensure_trained(profile.with_overrides(patch_size=(16, 16, 16)))

    longer = profile.with_overrides(epochs=3)  # the same run is now unfinished: it resumes
    seen = {}
    monkeypatch.setattr(pipeline, "train", lambda p, **kw: seen.update(profile=p, **kw) or two_epochs)
    ensure_trained(longer, progress=False)
    assert seen["profile"] == longer and seen["resume"] is True


def test_plot_history_draws_loss_dice_and_learning_rate(two_epochs):
    fig = plot_history(two_epochs.history)
    loss, dice, lr = fig.axes[:3]
    assert len(loss.lines) >= 2 and lr.get_yscale() == "log"
    np.testing.assert_allclose(dice.lines[0].get_ydata(), two_epochs.history["val_paper_dice"])


def test_the_best_checkpoint_is_chosen_by_the_profile_metric(profile, tmp_path, monkeypatch):
    """Mean region Dice by default; the paper's 4-label mean for the authors' setting. Epoch 2 has the
    higher paper Dice (background and a good WT) but a missed ET; epoch 3 the higher mean of WT, TC, ET."""
    scores = [{"val_paper_dice": 0.50, "val_dice_WT": 0.5, "val_dice_TC": 0.5, "val_dice_ET": 0.5},
              {"val_paper_dice": 0.80, "val_dice_WT": 0.9, "val_dice_TC": 0.6, "val_dice_ET": 0.0},
              {"val_paper_dice": 0.70, "val_dice_WT": 0.8, "val_dice_TC": 0.7, "val_dice_ET": 0.6}]

    def best_epoch(settings, folder):
        calls = iter(scores)
        monkeypatch.setattr(train_module, "validate", lambda *a, **k: {"val_loss": 1.0, **next(calls)})
        result = train(settings, run_dir=folder, progress=False, device="cpu")
        assert result.history["val_dice_mean"].tolist() == pytest.approx([0.5, 0.5, 0.7])
        assert load_checkpoint(result.best_checkpoint)["epoch"] == result.best_epoch
        return result.best_epoch

    short = profile.with_overrides(epochs=3, steps_per_epoch=1)
    assert best_epoch(short, tmp_path / "mean") == 3
    assert best_epoch(short.with_overrides(best_metric="val_paper_dice"), tmp_path / "paper") == 2


def test_runs_from_before_best_metric_resume_with_the_paper_metric(profile, two_epochs):
    """A checkpoint saved before ``best_metric`` existed chose its best epoch by the paper's metric: it
    resumes as that, and its history rows get the mean region Dice."""
    from brats_utils.checkpoints import check_compatible

    checkpoint = load_checkpoint(two_epochs.last_checkpoint)
    checkpoint["config"].pop("best_metric")
    checkpoint["history"] = [{k: v for k, v in row.items() if k != "val_dice_mean"}
                             for row in checkpoint["history"]]
    with pytest.raises(CheckpointError, match="best_metric: 'val_paper_dice' -> 'val_dice_mean'"):
        check_compatible(checkpoint, profile.as_dict(), two_epochs.last_checkpoint)
    legacy = profile.with_overrides(best_metric="val_paper_dice")
    check_compatible(checkpoint, legacy.as_dict(), two_epochs.last_checkpoint)
    state = train_module.TrainingState.create(legacy, torch.device("cpu"))
    state.restore(checkpoint)
    assert [row["val_dice_mean"] for row in state.history] == pytest.approx(
        two_epochs.history["val_dice_mean"].tolist())


def test_fp32_validation_overrides_the_training_precision(profile, tmp_path, monkeypatch):
    from brats_utils.precision import resolve_precision

    assert train_module.validation_precision(profile, "bf16") == "bf16"
    assert train_module.validation_precision(profile.with_overrides(fp32_validation=True), "fp16") == "fp32"
    seen = []
    dice_columns = ("val_paper_dice", "val_dice_WT", "val_dice_TC", "val_dice_ET")
    scores = {"val_loss": 1.0, **dict.fromkeys(dice_columns, 0.5)}
    monkeypatch.setattr(train_module, "validate", lambda *a, precision, **k: seen.append(precision) or scores)
    short = profile.with_overrides(epochs=1, steps_per_epoch=1, precision="bf16")
    train(short, run_dir=tmp_path / "as trained", progress=False, device="cpu")
    train(short.with_overrides(fp32_validation=True), run_dir=tmp_path / "fp32", progress=False, device="cpu")
    assert seen == [resolve_precision("bf16", torch.device("cpu")), "fp32"]


# --- several processes: the global batch -----------------------------------------------------


def test_two_ranks_load_halves_of_the_single_process_batches(profile):
    """batch_size is the global batch: rank r of 2 loads the r-th sample of every single-process batch."""
    cache = pipeline.ensure_cache(profile, progress=False)
    run_dir = profile.run_dir / "sharding"  # only the split is written, by the single-process call
    batches = {}
    for rank, world_size in ((0, 1), (0, 2), (1, 2)):
        loader, _ = train_module.loaders_for(profile, cache, run_dir, rank=rank, world_size=world_size)
        loader.sampler.set_epoch(3)
        batches[rank, world_size] = list(loader.batch_sampler)
    single, rank0, rank1 = batches[0, 1], batches[0, 2], batches[1, 2]
    assert profile.batch_size == 2 and {len(b) for b in single} == {2} and {len(b) for b in rank0} == {1}
    assert len(rank0) == len(rank1) == len(single)  # the same optimiser steps per epoch
    assert [[*a, *b] for a, b in zip(rank0, rank1, strict=True)] == single


def test_resuming_with_another_number_of_processes_warns_that_it_is_not_exact(profile, two_epochs, tmp_path):
    run_dir, cpu = two_epochs.run_dir, torch.device("cpu")
    with pytest.warns(UserWarning, match=r"trained by 1 process\(es\) and is resumed by 2"):
        train_module._start_state(profile, run_dir, cpu, resume=True, progress=False, world_size=2, epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the same number of processes, or nothing left to train
        train_module._start_state(profile, run_dir, cpu, resume=True, progress=False, epochs=3)
        train_module._start_state(profile, run_dir, cpu, resume=True, progress=False, world_size=2)

    # a two-process run from before batch_size was the global batch: its meaning changes, so it says so
    old_run = tmp_path / "old-ddp-run"
    shutil.copytree(run_dir, old_run)
    last = old_run / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(last)
    assert checkpoint["config"]["global_batch"] is True
    checkpoint["config"] = {k: v for k, v in checkpoint["config"].items() if k != "global_batch"}
    checkpoint["config"]["world_size"] = 2
    atomic_torch_save(checkpoint, last)
    with pytest.warns(UserWarning, match="before batch_size became the global batch"):
        train_module._start_state(profile, old_run, cpu, resume=True, progress=False, world_size=2, epochs=3)


# --- torch.compile ------------------------------------------------------------------------------


def test_a_compiled_run_trains_saves_plain_weights_and_predicts_like_eager(profile, tmp_path):
    """``compile=True``: the checkpoints hold the network's own names (no ``_orig_mod.``), and the
    compiled prediction of a test case gives the eager model's labels."""
    import nibabel as nib

    from brats_utils.checkpoints import load_model

    compiled = profile.with_overrides(name="compiled", compile=True, epochs=1, precision="fp32")
    result = train(compiled, run_dir=tmp_path / "run", progress=False, device="cpu")
    state = load_checkpoint(result.best_checkpoint)["model_state_dict"]
    assert not any("_orig_mod" in key or key.startswith("module.") for key in state)
    assert np.isfinite(result.history["train_loss"]).all()
    labels = {}
    for name, settings in (("compiled", compiled), ("eager", compiled.with_overrides(compile=False))):
        out = pipeline.predict_split(settings, split="test", checkpoint=result.best_checkpoint,
                                     out_dir=tmp_path / name, progress=False)
        labels[name] = {path.name: np.asarray(nib.load(path).dataobj) for path in out}
    assert labels["compiled"].keys() == labels["eager"].keys() and labels["eager"]
    for case, eager in labels["eager"].items():
        assert (labels["compiled"][case] == eager).mean() >= 0.999, case
    assert set(load_model(result.best_checkpoint).state_dict()) == set(state)  # loads as a plain network
