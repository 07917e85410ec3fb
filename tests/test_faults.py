"""Faults a student meets, each injected and survived: a second writer, a full disk, a damaged cache
entry or checkpoint, two processes starting on one data folder, a killed writer, Ctrl-C and SIGTERM,
an interrupted prediction, running out of memory.

The tests of the second half go through the command line on the ``ci`` profile (subprocesses, real
signals, real truncated files) and check the outcome, the one line the student reads and that no
traceback is shown. Most start from one prepared data folder (a finished two-epoch ``train``),
copied where the fault damages it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_utils import cli, errors, files, pipeline, preprocess
from brats_utils import train as training
from brats_utils.checkpoints import atomic_torch_save
from brats_utils.config import get_profile
from brats_utils.errors import CacheError, DiskFullError, FolderLockedError
from brats_utils.faults import resume_command
from brats_utils.files import folder_lock, sibling_lock, write_csv_atomic
from brats_utils.io import save_segmentation
from brats_utils.preprocess import (
    CropMeta,
    PreprocessedCase,
    build_cache,
    is_up_to_date,
    load_cached,
    write_entry,
)

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _entry(case_id: str = "case_a") -> PreprocessedCase:
    labels = np.zeros((4, 4, 4), np.uint8)
    meta = CropMeta(case_id, ((0, 4),) * 3, (4, 4, 4), np.eye(4).tolist())
    return PreprocessedCase(case_id, np.ones((4, 4, 4, 4), np.float32), labels, meta)


# --- one writer per folder ------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_folder_and_the_holder(tmp_path):
    with folder_lock(tmp_path / "run"):
        with pytest.raises(FolderLockedError) as error:
            with folder_lock(tmp_path / "run"):
                pass
    message = str(error.value)
    assert str(tmp_path / "run") in message
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message
    with folder_lock(tmp_path / "run"):  # released: the next one gets in
        pass
    assert not (tmp_path / "run" / files.HOLDER_FILE).exists()


def test_another_process_holding_the_run_folder_stops_a_training(tmp_path, synthetic_root):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from brats_utils.files import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
         str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from brats_utils.config import get_profile
        from brats_utils.train import train

        with pytest.raises(FolderLockedError, match=rf"pid {holder.pid} on"):
            train(get_profile("ci"), tmp_path / "cache", run_dir=tmp_path / "run", progress=False,
                  device="cpu")
    finally:
        holder.kill()
        holder.wait()
    assert not list((tmp_path / "run").glob("**/*.pt"))


def test_a_cache_being_built_is_not_built_twice(tmp_path, synthetic_root):
    from brats_utils.datasets import find_dataset

    cases = find_dataset(synthetic_root)[:1]
    with folder_lock(tmp_path / "cache"):
        with pytest.raises(FolderLockedError, match="another process is writing"):
            build_cache(cases, tmp_path / "cache", workers=1, progress=False, wait=0)
    assert [p.name for p in build_cache(cases, tmp_path / "cache", workers=1, progress=False)] == \
        [cases[0].case_id]


def _hold_in_another_process(lock: str, target: Path, seconds: float) -> subprocess.Popen:
    """A process holding ``target`` with ``brats_utils.files.<lock>`` for ``seconds`` (once it holds it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; from brats_utils.files import {lock}\n"
         f"with {lock}(sys.argv[1], wait=0):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))",
         str(target), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_process_finding_the_cache_being_built_waits_for_it_then_reads_it(tmp_path, synthetic_root, capfd):
    from brats_utils.datasets import find_dataset

    cases = find_dataset(synthetic_root)[:2]
    build_cache(cases, tmp_path / "cache", workers=1, progress=False)
    holder = _hold_in_another_process("folder_lock", tmp_path / "cache", 2)
    try:
        entries = build_cache(cases, tmp_path / "cache", workers=1, progress=False, wait=120)
    finally:
        holder.kill()
        holder.wait()
    line = f"waiting for pid {holder.pid} on {socket.gethostname()} since "
    err = capfd.readouterr().err
    assert err.count(line) == 1
    assert f"to finish writing {tmp_path / 'cache'} (at most 120 s, setting lock_timeout)" in err
    assert all(is_up_to_date(entry, preprocess.cache_key(case, margin=2))
               for entry, case in zip(entries, cases, strict=True))


def test_waiting_for_another_process_ends_after_the_timeout(tmp_path):
    holder = _hold_in_another_process("sibling_lock", tmp_path / "synthetic", 60)
    try:
        with pytest.raises(FolderLockedError,
                           match=rf"still writing this folder after 1 s \(pid {holder.pid} on"):
            with sibling_lock(tmp_path / "synthetic", wait=1):
                pass
    finally:
        holder.kill()
        holder.wait()
    with sibling_lock(tmp_path / "synthetic", wait=1):  # the dead holder's lock is taken over
        pass


def test_a_damaged_cache_entry_without_its_source_names_the_case_and_the_command(tmp_path, synthetic_root):
    from brats_utils.datasets import find_dataset

    case = find_dataset(synthetic_root)[0]
    (entry,) = build_cache([case], tmp_path / "cache", workers=1, progress=False)
    image = entry / preprocess.IMAGE_FILE
    size = image.stat().st_size
    with open(image, "r+b") as handle:
        handle.truncate(5000)
    with pytest.raises(CacheError) as error:
        load_cached(entry)
    assert str(error.value) == (
        f"the cache entry is damaged (image.npy has 5000 bytes, {size} were written), case {case.case_id}, "
        f"file {entry} (expected a whole entry: rebuild it from the source dataset with "
        f"`python -m brats_utils cache --profile <the run's profile>` (the damaged entry is then rebuilt))")


# --- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.pt"
    atomic_torch_save({"epoch": 1}, target)
    real_save = torch.save

    def disk_fills_up(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(10)
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: "
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(DiskFullError, match=r"disk is full \(.* MiB free") as error:
        atomic_torch_save({"epoch": 2}, target)
    assert str(target.parent) in str(error.value)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["epoch"] == 1
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]


def test_ctrl_c_while_checkpointing_stays_an_interrupt_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, target)

    def interrupted_then_fails_closing(obj, handle, *args, **kwargs):
        try:
            handle.write(b"PK half a zip")
            raise KeyboardInterrupt  # SIGINT, or SIGTERM turned into one by the command line
        finally:  # what torch's zip writer does when it closes the file after that
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3693312 vs 369")

    monkeypatch.setattr(torch, "save", interrupted_then_fails_closing)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_ctrl_c_during_a_checkpoint_write_takes_effect_once_the_file_is_whole(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    real_save = torch.save

    def interrupted_half_way(obj, handle, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of the write
        time.sleep(0.1)
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["epoch"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_full_disk_raised_as_oserror_by_the_writer_is_a_disk_full_error(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(DiskFullError, match=str(tmp_path)):
        atomic_torch_save({"epoch": 2}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_caching_leaves_no_entry(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(preprocess.np, "save", no_space)
    with pytest.raises(DiskFullError, match="disk is full") as error:
        write_entry(_entry(), tmp_path / "cache", key="k")
    assert str(tmp_path / "cache") in str(error.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_full_disk_while_predicting_or_writing_tables_names_the_folder(tmp_path, monkeypatch):
    import nibabel as nib
    import pandas as pd

    def no_space(*args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(nib, "save", no_space)
    with pytest.raises(DiskFullError, match=str(tmp_path / "preds")):
        save_segmentation(np.zeros((4, 4, 4), np.uint8), tmp_path / "preds" / "case.nii.gz", affine=np.eye(4))
    assert list((tmp_path / "preds").iterdir()) == []
    monkeypatch.setattr(pd.DataFrame, "to_csv", no_space)
    with pytest.raises(DiskFullError):
        write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "history.csv")


def test_other_write_errors_are_not_disguised(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "permission denied")

    monkeypatch.setattr(torch, "save", denied)
    with pytest.raises(PermissionError):
        atomic_torch_save({"epoch": 1}, tmp_path / "last.pt")


# --- through the command line ----------------------------------------------------------------------

PROG = "python -m brats_utils"


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "BRATS_DATA_DIR": str(data_dir), "BRATS_PROFILE": "ci", "BRATS_SET": "",
            "BRATS_CACHE_DIR": "", "BRATS_RUNS_DIR": "", "BRATS_ROOT": "", "PYTHONUNBUFFERED": "1"}


def brats(data_dir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m brats_utils <args>`` on the ci profile with ``data_dir`` as its data folder, to the end."""
    return subprocess.run([sys.executable, "-m", "brats_utils", *args], env=_env(data_dir),
                          capture_output=True, text=True, timeout=timeout)


def start(data_dir: Path, *args: str, log: Path) -> subprocess.Popen:
    """The same, started in the background; its stdout and stderr go to ``log``.out / ``log``.err."""
    return subprocess.Popen([sys.executable, "-m", "brats_utils", *args], env=_env(data_dir),
                            stdout=open(log.with_suffix(".out"), "w"),  # noqa: SIM115 (the child keeps it)
                            stderr=open(log.with_suffix(".err"), "w"))  # noqa: SIM115


def signal_when(process: subprocess.Popen, ready: Callable[[], bool], signum: int, *,
                timeout: float = 900) -> int:
    """Send ``signum`` to ``process`` as soon as ``ready()``; returns its exit status."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the command ended before the fault could be injected"
        assert time.monotonic() < deadline, "the command never got to the point of the fault"
        time.sleep(0.05)
    process.send_signal(signum)
    return process.wait(timeout=300)


def one_line(stderr: str, start: str) -> str:
    """The single line of ``stderr`` that starts with ``start`` (progress bars split on carriage returns)."""
    found = [line for line in re.split(r"[\r\n]", stderr) if line.startswith(start)]
    assert len(found) == 1, f"expected one line starting {start!r}, got {found}\n{stderr[-3000:]}"
    return found[0]


def no_traceback(result_or_text) -> None:
    text = (result_or_text if isinstance(result_or_text, str)
            else result_or_text.stdout + result_or_text.stderr)
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A data folder after ``train`` on the ci profile: synthetic data, cache, a finished two-epoch run."""
    data = tmp_path_factory.mktemp("faults") / "data"
    result = brats(data, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    return data


@pytest.fixture
def data(prepared, tmp_path) -> Path:
    """A copy of the prepared data folder that a test may damage."""
    return Path(shutil.copytree(prepared, tmp_path / "data"))


def test_a_damaged_cache_entry_is_rebuilt_when_training_starts(data, prepared):
    entry = data / "cache" / "ci" / "BraTS20_Training_001"
    size = (entry / "image.npy").stat().st_size
    with open(entry / "image.npy", "r+b") as handle:
        handle.truncate(5000)  # what a copy cut short leaves behind
    result = brats(data, "train")
    assert result.returncode == 0
    no_traceback(result)
    source = data / "synthetic" / "ci-48x48x32-seed42" / "BraTS2020_TrainingData" / \
        "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_001"
    assert one_line(result.stderr, f"{PROG}: warning:") == (
        f"{PROG}: warning: the cache entry of case BraTS20_Training_001 is damaged (image.npy has 5000 "
        f"bytes, {size} were written); rebuilding it from {source}")
    original = prepared / "cache" / "ci" / "BraTS20_Training_001" / "image.npy"
    assert (entry / "image.npy").read_bytes() == original.read_bytes()


def test_a_damaged_cache_entry_when_the_dataset_is_gone_names_the_case_and_the_command(data, monkeypatch):
    monkeypatch.setenv("BRATS_DATA_DIR", str(data))
    for name in ("BRATS_CACHE_DIR", "BRATS_RUNS_DIR", "BRATS_ROOT", "BRATS_SET"):
        monkeypatch.delenv(name, raising=False)
    entry = data / "cache" / "ci" / "BraTS20_Training_002"
    with open(entry / "labels.npy", "r+b") as handle:
        handle.truncate(100)

    def gone(profile):
        raise errors.DatasetNotFoundError("dataset folder does not exist", path=data / "synthetic")

    monkeypatch.setattr(pipeline, "training_cases", gone)
    with pytest.raises(CacheError) as error:
        pipeline.ensure_cache(get_profile("ci").with_overrides(epochs=3), progress=False)
    assert str(error.value) == (
        f"the cache entry is damaged and its dataset is not available to rebuild it (dataset folder does not "
        f"exist), case BraTS20_Training_002, file {entry} (expected the dataset back, then python -m "
        f"brats_utils cache --profile ci --set epochs=3)")


@pytest.mark.parametrize("round_", range(5))
def test_two_processes_starting_on_a_fresh_data_folder_both_finish(tmp_path, round_):
    """Two fold trainings at once (the last round) or two cache builds: the later one waits for the shared
    synthetic dataset and cache, never refused."""
    data = tmp_path / "data"
    if round_ == 4:
        commands = [["train", "--set", f"fold={k}", "--set", "epochs=1", "--set", "steps_per_epoch=1",
                     "--set", "max_val_cases=1"] for k in (0, 1)]
    else:
        commands = [["cache"], ["cache"]]
    processes = [start(data, *command, log=tmp_path / f"p{k}") for k, command in enumerate(commands)]
    for k, process in enumerate(processes):
        assert process.wait(timeout=900) == 0, (tmp_path / f"p{k}.err").read_text()[-3000:]
        err = (tmp_path / f"p{k}.err").read_text()
        no_traceback(err)
        assert "another process is" not in err
        waits = [line for line in re.split(r"[\r\n]", err) if line.startswith("waiting for pid")]
        host, folder = re.escape(socket.gethostname()), re.escape(str(data))
        assert all(re.fullmatch(rf"waiting for pid \d+ on {host} since .* to finish writing {folder}/\S+ "
                                rf"\(at most 3600 s, setting lock_timeout\)", line) for line in waits), waits
    entries = preprocess.cache_entries(data / "cache" / "ci")
    assert len(entries) == 8  # the ci profile's training cases
    assert all(preprocess.damage_of(e, preprocess._read_meta(e)) is None for e in entries)
    assert not list((data / "synthetic").glob(".*tmp-*")) and not list((data / "cache" / "ci").glob(".tmp-*"))


def test_a_killed_synth_leaves_a_temporary_folder_that_the_next_start_removes(tmp_path):
    out = tmp_path / "synthetic"
    writer = start(tmp_path / "data", "synth", "--out", str(out), "--set", "synthetic_train_cases=30",
                   log=tmp_path / "synth")
    assert signal_when(writer, lambda: any(tmp_path.glob(".synthetic.tmp-*/**/*.nii")), signal.SIGKILL) != 0
    (left,) = tmp_path.glob(".synthetic.tmp-*")
    assert left.name == f".synthetic.tmp-{socket.gethostname()}-{writer.pid}"
    result = brats(tmp_path / "data", "synth", "--out", str(out), "--set", "synthetic_train_cases=30")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not left.exists()
    training = out / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    assert (training / "BraTS20_Training_030").is_dir()


def test_a_truncated_last_checkpoint_falls_back_to_the_newest_good_one_exactly(data, prepared):
    folder = data / "runs" / "ci" / "checkpoints"
    for name in ("last.pt", "epoch_002.pt"):
        with open(folder / name, "r+b") as handle:
            handle.truncate(5000)
    result = brats(data, "train")
    assert result.returncode == 0
    no_traceback(result)
    line = one_line(result.stderr, f"{PROG}: warning:")
    assert line.startswith(f"{PROG}: warning: cannot read {folder / 'last.pt'}, {folder / 'epoch_002.pt'} "
                           f"(cannot read checkpoint: it cannot be read weights-only (")
    assert line.endswith(f"); resuming from {folder / 'epoch_001.pt'} (epoch 1), the epochs after it are "
                         f"trained again")
    reference = prepared / "runs" / "ci"
    assert (data / "runs" / "ci" / "history.csv").read_text().splitlines()[:1] == \
        (reference / "history.csv").read_text().splitlines()[:1]
    resumed = torch.load(folder / "last.pt", weights_only=True)
    uninterrupted = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["epoch"] == uninterrupted["epoch"] == 2
    assert all(torch.equal(resumed["model_state_dict"][k], uninterrupted["model_state_dict"][k])
               for k in uninterrupted["model_state_dict"])
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in resumed["history"]]
    assert history == [{k: v for k, v in row.items() if k != "seconds"} for row in uninterrupted["history"]]


def _epochs_done(run_dir: Path) -> int:
    history = run_dir / "history.csv"
    return len(history.read_text().splitlines()) - 1 if history.is_file() else 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_training_says_what_was_saved_and_how_to_resume(data, tmp_path, signum):
    run = data / "runs" / "ci"
    process = start(data, "train", "--set", "epochs=40", log=tmp_path / "train")
    assert signal_when(process, lambda: _epochs_done(run) >= 3, signum) == 130
    err = (tmp_path / "train.err").read_text()
    no_traceback(err)
    epochs = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert epochs >= 2 and _epochs_done(run) in (epochs, epochs + 1)  # history.csv is written just before
    assert one_line(err, "interrupted") == (
        f"interrupted: epochs 1-{epochs} are saved in {run / 'checkpoints' / 'last.pt'}; resume with: "
        f"python -m brats_utils train --profile ci --set epochs=40")
    assert err.rstrip().splitlines()[-1].startswith("interrupted: ")  # the last thing the student reads


def test_an_interrupted_cache_build_says_what_was_cached(data, tmp_path):
    cache = data / "cache" / "ci"
    before = {entry: (entry / "meta.json").stat().st_mtime_ns for entry in preprocess.cache_entries(cache)}
    process = start(data, "cache", "--set", "crop_margin=3", log=tmp_path / "cache")  # every entry is rebuilt

    def one_rebuilt() -> bool:
        return any((entry / "meta.json").stat().st_mtime_ns != before.get(entry)
                   for entry in preprocess.cache_entries(cache))

    assert signal_when(process, one_rebuilt, signal.SIGTERM) == 130
    err = (tmp_path / "cache.err").read_text()
    no_traceback(err)
    assert one_line(err, "interrupted") == (
        f"interrupted: every case cached so far is kept in {cache}; resume with: python -m brats_utils cache "
        f"--profile ci --set crop_margin=3")


def test_an_interrupted_prediction_continues_where_it_stopped(data, tmp_path):
    out = data / "runs" / "ci" / "predictions-training"  # the ci profile's 8 training cases
    process = start(data, "predict", "--folder", "training", log=tmp_path / "predict")
    assert signal_when(process, lambda: len(list(out.glob("*.nii.gz"))) >= 2, signal.SIGINT) == 130
    err = (tmp_path / "predict.err").read_text()
    no_traceback(err)
    done = sorted(out.glob("*.nii.gz"))
    command = f"python -m brats_utils predict --folder training --out {out} --profile ci"
    assert one_line(err, "interrupted") == (f"interrupted: {len(done)} segmentations are complete in {out}; "
                                            f"resume with: {command}")
    assert 2 <= len(done) < 8
    done[0].write_bytes(done[0].read_bytes()[:200])  # a file cut short (by a copy) is not complete
    stamps = {path: path.stat().st_mtime_ns for path in done[1:]}
    result = brats(data, *command.split()[3:])
    assert result.returncode == 0
    no_traceback(result)
    assert result.stdout.strip().splitlines()[-1] == (
        f"{8 - len(done) + 1} segmentations written to {out}; {len(done) - 1} were already complete and "
        f"skipped (--overwrite predicts them again)")
    assert {path: path.stat().st_mtime_ns for path in done[1:]} == stamps
    assert len(list(out.glob("*.nii.gz"))) == 8


@pytest.mark.parametrize(("command", "signum", "pattern", "finished"), [
    ("compare", signal.SIGINT, "*/row.json", "models"),
    ("beyond", signal.SIGTERM, "*/*/checkpoints/last.pt", "runs"),
])
def test_an_interrupted_study_says_what_is_kept(data, tmp_path, command, signum, pattern, finished):
    folder = data / command / "ci"
    process = start(data, command, log=tmp_path / command)
    assert signal_when(process, lambda: any(folder.glob(pattern)), signum) == 130
    err = (tmp_path / f"{command}.err").read_text()
    no_traceback(err)
    assert re.fullmatch(rf"interrupted: \d+ finished {finished} are kept in {re.escape(str(folder))} \(the "
                        rf"one in progress continues from its last checkpoint\); resume with: "
                        rf"python -m brats_utils {command} --profile ci", one_line(err, "interrupted"))


# --- in a notebook, and out of memory ----------------------------------------------------------------


def test_in_a_notebook_the_interrupt_prints_the_line_and_still_stops_the_cell(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path))
    profile = get_profile("ci").with_overrides(epochs=7)
    monkeypatch.setattr(pipeline, "ensure_cache", lambda profile, progress=True: tmp_path / "cache")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    with pytest.raises(KeyboardInterrupt) as stopped:
        pipeline.train(profile, progress=False)
    line = (f"interrupted: no epoch had finished, nothing is saved in {profile.run_dir}; resume with: "
            f"python -m brats_utils train --profile ci --set epochs=7")
    assert capsys.readouterr().err == line + "\n"
    assert stopped.value.note == line


def test_the_resume_command_repeats_every_changed_setting():
    profile = get_profile("ci").with_overrides(patch_size=(16, 16, 16), model_preset="l4_f16", fold=1)
    assert resume_command(profile, "train") == (
        "python -m brats_utils train --profile ci --set fold=1 --set 'patch_size=(16,16,16)' "
        "--set model_preset=l4_f16")
    items = ("fold=1", "patch_size=(16,16,16)", "model_preset=l4_f16")
    assert [cli.parse_override(item) for item in items] == [("fold", 1), ("patch_size", (16, 16, 16)),
                                                            ("model_preset", "l4_f16")]


CUDA_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 14.74 GiB of "
                "which 1.12 GiB is free.")
CPU_MESSAGE = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
               "tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize(("stage", "error"), [
    ("training", torch.cuda.OutOfMemoryError(CUDA_MESSAGE)),
    ("prediction", torch.cuda.OutOfMemoryError(CUDA_MESSAGE)),
    ("prediction", RuntimeError(CPU_MESSAGE)),
])
def test_out_of_memory_ends_in_one_line_naming_sizes_and_remedies(data, monkeypatch, capsys, stage, error):
    monkeypatch.setenv("BRATS_DATA_DIR", str(data))
    monkeypatch.setenv("BRATS_SET", "")

    def out_of_memory(*args, **kwargs):
        raise error

    if stage == "training":
        monkeypatch.setattr(training, "train_step", out_of_memory)
        argv = ["train", "--profile", "ci", "--set", "epochs=3"]
    else:
        monkeypatch.setattr("brats_utils.inference.sliding_window", out_of_memory)
        argv = ["predict", "--profile", "ci", "--split", "test"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    line = one_line(err, f"{cli.build_parser().prog}: error:")
    precision = "bf16" if "bf16" in line else "fp32"
    peak = re.search(r"peak [\d.]+ GiB resident on the CPU", line)
    assert peak is not None, line
    first = str(error).splitlines()[0][:160]
    half = ", or 16-bit precision on a GPU (--set precision=auto)" if precision == "fp32" else ""
    if stage == "training":
        assert line.endswith(
            f"error: out of memory during training (patch (32, 32, 32), batch 2, precision {precision}; "
            f"{peak.group()}; {first}) (expected less memory: --set batch_size=1, a smaller patch (--set "
            f"patch_size=(16,16,16)){half})")
    else:
        assert line.endswith(
            f"error: out of memory during prediction (window (32, 32, 32), sw_batch_size auto, precision "
            f"{precision}; {peak.group()}; {first}) (expected less memory: --set sw_batch_size=1, a smaller "
            f"window (--set sw_patch_size=(16,16,16)){half})")


# --- the troubleshooting page -------------------------------------------------------------------------


def test_every_error_and_warning_a_student_can_meet_is_explained_in_the_troubleshooting_page():
    page = (Path(__file__).parents[1] / "docs" / "troubleshooting.md").read_text()
    kinds = [obj for obj in vars(errors).values()
             if isinstance(obj, type) and issubclass(obj, (errors.BratsError, errors.BratsWarning))]
    new = {errors.OutOfMemoryError, errors.DamagedCacheWarning, errors.CheckpointFallbackWarning}
    assert new <= set(kinds)
    missing = [kind.__name__ for kind in kinds if f"`{kind.__name__}`" not in page]
    assert not missing, f"docs/troubleshooting.md does not explain {missing}"
    for message in ("interrupted: ", "waiting for pid", "still writing this folder after",
                    "were already complete and skipped", "out of memory during",
                    "is damaged", "cannot read", "another process is writing this folder"):
        assert message in page, message


def test_the_out_of_memory_message_names_the_precision_of_the_device_the_run_picks(monkeypatch):
    """The precision named is ``auto`` resolved on :func:`~brats_utils.precision.pick_device`'s device:
    fp32 on Apple's MPS even where the CPU would take bf16."""
    from brats_utils import faults, precision

    profile = get_profile("ci").with_overrides(precision="auto")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(faults, "pick_device", lambda: torch.device("cpu"))
    assert "precision bf16" in str(faults.memory_error(profile, "training", MemoryError()))
    monkeypatch.setattr(faults, "pick_device", lambda: torch.device("mps"))
    assert "precision fp32" in str(faults.memory_error(profile, "training", MemoryError()))
