"""DDP helpers (brats_utils.distributed): single-process fallbacks, sharding, and a real 2-process run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from brats_utils import distributed as D
from brats_utils.data import EpochShuffleSampler

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture
def no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in D.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# --- one process ----------------------------------------------------------------------------


def test_without_torchrun_everything_is_one_process(no_torchrun):
    info = D.init_distributed(device="cpu")
    assert info == D.DistInfo(rank=0, world_size=1, local_rank=0, backend=None, device=torch.device("cpu"))
    assert info.is_main and not info.is_distributed
    assert D.is_main_process() and D.get_rank() == 0 and D.get_world_size() == 1
    model = nn.Linear(2, 2)
    assert D.wrap_model(model, info) is model
    assert D.unwrap_model(model) is model
    assert D.all_reduce_mean(2.5) == 2.5
    tensor = torch.tensor([1.0, 3.0])
    assert D.all_reduce_mean(tensor) is tensor
    assert D.all_reduce_sum(tensor) is tensor and D.all_reduce_sum(4) == 4
    D.barrier()
    with D.main_process_first():
        pass
    D.cleanup()


def test_world_size_one_under_torchrun_is_one_process(no_torchrun, monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    info = D.init_distributed(device="cpu")
    assert info.world_size == 1 and info.backend is None
    assert not torch.distributed.is_initialized()


def test_half_set_environment_is_refused(no_torchrun, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="incomplete: LOCAL_RANK, WORLD_SIZE not set"):
        D.init_distributed(device="cpu")


def test_missing_master_address_is_refused(no_torchrun, monkeypatch):
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        D.init_distributed(device="cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 is outside WORLD_SIZE=2"):
        D.init_distributed(device="cpu")


def test_unwrap_model_takes_the_network_out_of_dataparallel():
    model = nn.Linear(2, 2)
    assert D.unwrap_model(nn.DataParallel(model)) is model


# --- sharding ---------------------------------------------------------------------------------


def single_process_epoch(n: int, seed: int, epoch: int) -> list[int]:
    sampler = EpochShuffleSampler(n, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("n", [12, 13, 7, 1])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_are_disjoint_and_cover_the_single_process_epoch(n, world_size):
    epoch_order = single_process_epoch(n, seed=5, epoch=3)
    shards = [D.shard_indices(n, r, world_size, seed=5, epoch=3) for r in range(world_size)]
    per_rank = -(-n // world_size)
    assert all(len(shard) == per_rank for shard in shards)  # equal: DDP ranks must take equal steps
    assert set().union(*shards) == set(epoch_order)  # the single-process epoch's set, no more
    flat = [i for shard in shards for i in shard]
    assert len(flat) - len(set(flat)) == (-n) % world_size  # only the padding repeats
    # dealt out in order: step k of all ranks together is the single-process order's next slice
    interleaved = [shards[r][k] for k in range(per_rank) for r in range(world_size)]
    assert interleaved[:n] == epoch_order


def test_without_padding_the_tail_is_dropped():
    shards = [D.shard_indices(13, r, 4, seed=0, pad=False) for r in range(4)]
    assert [len(s) for s in shards] == [3, 3, 3, 3]
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == 12 and set(flat) < set(single_process_epoch(13, 0, 0))


def test_shards_are_deterministic_and_change_with_seed_and_epoch():
    first = D.shard_indices(20, 1, 2, seed=42, epoch=0)
    assert first == D.shard_indices(20, 1, 2, seed=42, epoch=0)
    assert first != D.shard_indices(20, 1, 2, seed=43, epoch=0)
    later = D.shard_indices(20, 1, 2, seed=42, epoch=1)
    assert all(20 <= i < 40 for i in later)  # epoch e draws indices e*n + permutation: new patches


def test_per_rank_batch_size_splits_the_global_batch_and_refuses_a_remainder():
    assert D.per_rank_batch_size(2, 1) == 2 and D.per_rank_batch_size(2, 2) == 1
    assert D.per_rank_batch_size(8, 4) == 2
    with pytest.raises(ValueError, match=r"batch_size 3 .* cannot be split evenly over 2 processes.*=2\)"):
        D.per_rank_batch_size(3, 2)
    with pytest.raises(ValueError, match="batch_size 2 .* over 4 processes"):
        D.per_rank_batch_size(2, 4)


@pytest.mark.parametrize("n", [8, 7])
def test_ranks_with_half_the_global_batch_take_the_single_process_steps(n):
    """Global batch 2 over 2 ranks: step k of the ranks is step k of one process; an odd epoch's last
    step is one process's short last batch plus the first item again (the padding every rank needs)."""
    from torch.utils.data import BatchSampler

    single = list(BatchSampler(EpochShuffleSampler(n, seed=3), 2, drop_last=False))
    ranks = [list(BatchSampler(D.ShardedEpochSampler(n, seed=3, rank=r, world_size=2),
                               D.per_rank_batch_size(2, 2), drop_last=False)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == -(-n // 2)
    steps = [[*a, *b] for a, b in zip(*ranks, strict=True)]
    assert steps[: n // 2] == single[: n // 2]
    if n % 2:
        assert steps[-1] == [*single[-1], single[0][0]]


def test_sharding_rejects_impossible_ranks():
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        D.shard_indices(10, 2, 2)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        D.ShardedEpochSampler(10, rank=3, world_size=2)


def test_sharded_sampler_refuses_to_guess_before_the_process_group_exists(no_torchrun, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="before init_distributed"):
        D.ShardedEpochSampler(10)
    assert len(D.ShardedEpochSampler(10, rank=1, world_size=2)) == 5


def test_sharded_sampler_follows_the_epochs_like_the_single_process_sampler():
    samplers = [D.ShardedEpochSampler(9, seed=1, rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in samplers] == [5, 5]
    for epoch in range(3):  # each pass advances the epoch by itself
        passes = [list(s) for s in samplers]
        assert passes == [D.shard_indices(9, r, 2, seed=1, epoch=epoch) for r in range(2)]
    for sampler in samplers:
        sampler.set_epoch(1)  # resuming
    assert [list(s) for s in samplers] == [D.shard_indices(9, r, 2, seed=1, epoch=1) for r in range(2)]
    single = D.ShardedEpochSampler(9, seed=1)  # no process group: rank 0 of 1 = the plain sampler
    assert list(single) == single_process_epoch(9, 1, 0)


# --- two real processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_on_gloo_trains_like_one_process(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in D.TORCHRUN_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(WORKER), str(out)]
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    assert [p.name for p in out.iterdir()] == ["result.json"]  # rank 0 wrote; rank 1 wrote nothing
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["backend"] == "gloo" and result["rank"] == 0
    assert result["wrapped"] == "DistributedDataParallel" and result["unwrapped_is_model"]
    assert result["difference_before_wrap"] > 0  # each rank built its own weights ...
    assert result["initial_param_difference"] == 0.0  # ... and DDP gave them all rank 0's
    assert result["grad_differences"] == [0.0] * len(result["grad_differences"])  # averaged gradients
    assert len(result["grad_differences"]) == 8  # 2 epochs x 4 steps of batch 1 per rank
    assert result["param_difference"] == 0.0
    assert result["loss_after"] < result["loss_before"]
    # two ranks of batch 1 = one process of batch 2 on the same samples, to float rounding
    assert result["single_process_difference"] < 1e-5
    assert result["sum_of_ranks"] == 3.0 and result["mean_of_ranks"] == 0.5
    assert result["tensor_sum"] == [2.0, 1.0]
    rank0, rank1 = result["shards"]
    for epoch in range(2):
        a, b = set(rank0[4 * epoch:4 * epoch + 4]), set(rank1[4 * epoch:4 * epoch + 4])
        assert not a & b and a | b == set(range(8 * epoch, 8 * epoch + 8))


def _torchrun_command(data: Path, port: int, *overrides: str) -> tuple[list[str], dict[str, str]]:
    env = {key: value for key, value in os.environ.items()
           if key not in D.TORCHRUN_VARIABLES and key not in ("BRATS_PROFILE", "BRATS_SET")}
    env.update(BRATS_DATA_DIR=str(data), OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "brats_utils", "train",
               "--profile", "ci", "--set", "steps_per_epoch=4", *[f"--set={o}" for o in overrides]]
    return command, env


def _torchrun_train(data: Path, port: int, *overrides: str) -> subprocess.CompletedProcess:
    command, env = _torchrun_command(data, port, *overrides)
    return subprocess.run(command, env=env, cwd=data, capture_output=True, text=True, timeout=240)


def _parents() -> dict[int, int]:
    """Every live process's parent pid, from /proc/<pid>/stat (zombies count as gone)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after "pid (command name)"
        except OSError:  # exited meanwhile
            continue
        if fields and fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    return parents


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants: torchrun starts its ranks in sessions of their own."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    tree, index = [pid], 0
    while index < len(tree):
        tree += children.get(tree[index], [])
        index += 1
    return tree


def _kill_all(pids: list[int]) -> None:
    """SIGKILL every pid and wait until none of them is alive (a zombie is not)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while set(pids) & set(_parents()):
        assert time.monotonic() < deadline, f"processes {set(pids) & set(_parents())} survived SIGKILL"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds torchrun's ranks through /proc")
def test_torchrun_trains_the_ci_profile_on_two_processes_and_resumes_after_a_kill(tmp_path):
    from brats_utils.checkpoints import load_checkpoint

    data = tmp_path / "data"
    data.mkdir()
    run_dir = data / "runs" / "ci"
    last = run_dir / "checkpoints" / "last.pt"
    command, env = _torchrun_command(data, free_port(), "epochs=3")
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(command, env=env, cwd=data, stdout=log, stderr=subprocess.STDOUT)
        ranks: list[int] = []
        try:
            deadline = time.monotonic() + 240
            while not last.exists():  # the first epoch's checkpoint: the whole run is killed there
                assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 240 s"
                ranks = _process_tree(killed.pid)
                time.sleep(0.05)
            tree = _process_tree(killed.pid)
            assert len(tree) >= 3, tree  # torchrun and its two ranks, all found
        finally:  # as a dying Kaggle session: every process at once (and never a survivor left behind)
            _kill_all(sorted(set(_process_tree(killed.pid)) | set(ranks)))
            killed.wait(timeout=60)
    checkpoint = load_checkpoint(last)
    assert checkpoint["config"]["world_size"] == 2 and 1 <= checkpoint["epoch"] < 3  # killed mid-run
    assert not any(key.startswith("module.") for key in checkpoint["model_state_dict"])  # unwrapped

    second = _torchrun_train(data, free_port(), "epochs=3")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Resuming" in second.stdout + second.stderr
    assert second.stdout.count("TrainResult:") == 1  # rank 0 reports, rank 1 does not
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_001.pt", "epoch_002.pt", "epoch_003.pt", "last.pt"]  # one set
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoints", "history.csv", "split.csv"]
    resumed = load_checkpoint(last)
    assert resumed["epoch"] == 3 and resumed["config"]["world_size"] == 2
    done = checkpoint["epoch"]
    assert resumed["history"][:done] == checkpoint["history"]  # it continued after the killed run's epochs
    history = [row["train_loss"] for row in resumed["history"]]
    assert history[-1] < history[0], history
    lines = (run_dir / "history.csv").read_text().strip().splitlines()
    assert len(lines) == 4  # header + 3 epochs, written once (by rank 0)

    # exact resume: the same as an uninterrupted two-process run of 3 epochs
    reference_data = tmp_path / "reference"
    reference_data.mkdir()
    reference = _torchrun_train(reference_data, free_port(), "epochs=3")
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    uninterrupted = load_checkpoint(reference_data / "runs" / "ci" / "checkpoints" / "last.pt")
    deterministic = ("train_loss", "val_loss", "val_paper_dice", "val_dice_WT", "grad_norm", "lr")
    assert [[row[k] for k in deterministic] for row in resumed["history"]] == [
        [row[k] for k in deterministic] for row in uninterrupted["history"]]
    weights = uninterrupted["model_state_dict"]
    assert all(torch.equal(resumed["model_state_dict"][name], weights[name]) for name in weights)

    # one process takes over the two-process run: same global batch and steps, with a warning
    env = {**env, "PYTHONWARNINGS": "default"}
    third = subprocess.run([sys.executable, "-m", "brats_utils", "train", "--profile", "ci", "--set",
                            "steps_per_epoch=4", "--set", "epochs=4"], env=env, cwd=data, capture_output=True,
                           text=True, timeout=240)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "trained by 2 process(es) and is resumed by 1" in third.stderr
    final = load_checkpoint(last)
    assert final["epoch"] == 4 and final["config"]["world_size"] == 1
    assert final["history"][:3] == resumed["history"]
