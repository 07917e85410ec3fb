"""The run and cache folders under faults: a second writer, a full disk."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from brats_utils import files, preprocess
from brats_utils.checkpoints import atomic_torch_save
from brats_utils.errors import DiskFullError, FolderLockedError
from brats_utils.files import folder_lock, write_csv_atomic
from brats_utils.io import save_segmentation
from brats_utils.preprocess import CropMeta, PreprocessedCase, build_cache, write_entry

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
            build_cache(cases, tmp_path / "cache", workers=1, progress=False)
    assert [p.name for p in build_cache(cases, tmp_path / "cache", workers=1, progress=False)] == \
        [cases[0].case_id]


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
