"""Training on several GPUs (or machines) with PyTorch's own DistributedDataParallel.

One process per GPU, started by ``torchrun``, which tells each process who it is through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)::

    torchrun --nproc_per_node=2 -m brats_utils train --profile gpu          # Kaggle's two T4s
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
             --nproc_per_node=2 -m brats_utils train --profile gpu          # and node_rank=1 on the other

Without torchrun the variables are absent and everything here degrades to one ordinary process:
:func:`init_distributed` returns rank 0 of 1, :func:`wrap_model` returns the model unchanged, and the
reductions and barriers do nothing. The authors used ``nn.DataParallel`` on their two T4s (one
process, the model copied to both GPUs at every step, the first GPU doing the loss for both);
DistributedDataParallel keeps one model per process and averages only the gradients, overlapped with
the backward pass.

What each rank trains on: :class:`ShardedEpochSampler` takes the single-process epoch order of
:class:`~brats_utils.data.EpochShuffleSampler` (the same seeded permutation, the same global indices)
and deals it out, ``order[rank::world_size]``. A :class:`~brats_utils.data.PatchDataset` draws patch
and augmentation from ``(seed, index)`` only, so

The profile's ``batch_size`` is the **global** batch, the patches one optimiser step averages over,
whatever the number of processes: each of ``W`` ranks loads ``batch_size / W`` of them
(:func:`per_rank_batch_size`), as the authors' DataParallel split its batch of 2 over their two GPUs
and as nnU-Net v2 splits its batch over DDP ranks. So

- **identical to one process**: the set of patches (crops and augmentations) of every epoch, which
  patches are averaged into one optimiser step (global step ``k`` with global batch ``B`` sees
  ``order[k·B : (k+1)·B]``, rank ``r`` the ``r``-th of every ``W``), the number of steps per epoch
  (``steps_per_epoch`` counts global steps) and so the learning-rate schedule and early stopping;
- **not identical**: the floating-point summation order of the gradient average, dropout masks (drawn
  per process), a loss that couples the samples of a batch (``batch_dice``: one Dice over each rank's
  share instead of the whole batch), whole volumes of different sizes (``patch_size=None``: each rank
  pads its share only to its own largest volume, one process pads the batch to the largest of all),
  and, when ``W`` does not divide the epoch, the ``(-n) % W``
  patches that the last ranks repeat from the start of the order so that every rank takes the same
  number of steps (``pad=False`` drops the tail instead: then the union misses those patches).

Only rank 0 should write files (checkpoints, history, figures): guard writes with
:func:`is_main_process`, and call :func:`barrier` where the other ranks must wait for them.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from brats_utils.errors import FolderLockedError
from brats_utils.files import folder_lock
from brats_utils.precision import pick_device

#: The variables torchrun sets for every process it starts.
TORCHRUN_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

Number = TypeVar("Number", float, torch.Tensor)


@dataclass(frozen=True)
class DistInfo:
    """Who this process is: its global ``rank`` of ``world_size``, its ``local_rank`` on this machine,
    the ``backend`` of the process group (None for a single process) and the ``device`` it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and prints."""
        return self.rank == 0


def _environment_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer "
                         f"(torchrun sets it)") from None


def init_distributed(device: str | torch.device | None = None, *, backend: str | None = None,
                     timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group torchrun set up, or describe a single process when it did not.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (all three absent, or ``WORLD_SIZE=1``: one
    process, no process group). ``device`` is the device type to use (default: CUDA when available,
    else the CPU). On CUDA the process takes GPU ``LOCAL_RANK`` (``torch.cuda.set_device``) and the
    backend is ``nccl``; on the CPU it is ``gloo``; ``backend`` overrides. Calling it again in an
    initialised process returns the same information. Raises ``ValueError`` for a half-set
    environment, a missing ``MASTER_ADDR``/``MASTER_PORT`` or a ``LOCAL_RANK`` without its GPU.
    """
    present = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if name in os.environ]
    device_type = torch.device(device).type if device is not None else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if not present or (len(present) == 3 and _environment_int("WORLD_SIZE") == 1):
        return DistInfo(device=torch.device(device_type))
    if len(present) != 3:
        missing = sorted({"RANK", "WORLD_SIZE", "LOCAL_RANK"} - set(present))
        raise ValueError(f"distributed environment is incomplete: {', '.join(missing)} not set "
                         f"(start the script with torchrun, or unset {', '.join(present)})")
    rank, world_size, local_rank = (_environment_int(n) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"{name} is not set: torchrun sets it; by hand, give every process the "
                             f"address and port of rank 0")
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} "
                             f"GPU(s): start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(local_rank)
        compute = torch.device("cuda", local_rank)
    else:
        compute = torch.device(device_type)
    backend = backend or ("nccl" if device_type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank,
                    backend=dist.get_backend(), device=compute)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if _active() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (always true without a process group): the one that writes files."""
    return get_rank() == 0


def wrap_model(model: nn.Module, info: DistInfo, **ddp_options: object) -> nn.Module:
    """``DistributedDataParallel(model)`` when ``info.world_size > 1``, else ``model`` itself.

    ``model`` must already be on ``info.device`` (and in its final memory layout, e.g. after
    :func:`brats_utils.precision.to_channels_last`). DDP copies rank 0's parameters and buffers to
    every rank at construction, so all ranks start from the same weights. Extra keyword arguments
    go to ``DistributedDataParallel``.
    """
    if not info.is_distributed:
        return model
    if info.device.type == "cuda":
        ddp_options = {"device_ids": [info.device.index], "output_device": info.device.index, **ddp_options}
    return nn.parallel.DistributedDataParallel(model, **ddp_options)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside a DDP (or DataParallel) wrapper and/or ``torch.compile``: for ``state_dict``,
    ``config`` and checkpoints."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return getattr(model.module, "_orig_mod", model.module)
    return model


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """What one of ``world_size`` ranks loads per step when ``batch_size`` is the global batch.

    ``batch_size / world_size`` (module docstring). Raises ``ValueError`` naming both numbers when the
    division leaves a remainder: ranks with unequal batches would weight their samples unequally in
    DDP's gradient average.
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"need batch_size >= 1 and world_size >= 1, got {batch_size} and {world_size}")
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} (the global batch of one optimiser step) cannot be split "
                         f"evenly over {world_size} processes; use a batch_size that is a multiple of "
                         f"{world_size} (--set batch_size={world_size * max(1, batch_size // world_size)}) "
                         f"or {batch_size} processes")
    return batch_size // world_size


def shard_indices(n: int, rank: int, world_size: int, *, seed: int = 42, epoch: int = 0,
                  pad: bool = True) -> list[int]:
    """Rank ``rank``'s share of the single-process epoch ``epoch`` of ``n`` items, in order.

    The epoch's order is :class:`~brats_utils.data.EpochShuffleSampler`'s for ``(n, seed, epoch)``
    (global indices ``epoch * n + permutation``); rank ``r`` takes ``order[r::world_size]``. With
    ``pad`` (default) the order is first extended by its own first ``(-n) % world_size`` items, so
    every rank gets ``ceil(n / world_size)`` indices and the union over ranks is exactly the epoch's
    set; with ``pad=False`` the tail is dropped and every rank gets ``n // world_size``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if n < 0:
        raise ValueError(f"need n >= 0 items, got {n}")
    from brats_utils.data import EpochShuffleSampler

    sampler = EpochShuffleSampler(n, seed=seed)
    sampler.set_epoch(epoch)
    order = list(sampler)
    remainder = len(order) % world_size
    if remainder:
        if pad:
            order += (order * world_size)[: world_size - remainder]
        else:
            order = order[: len(order) - remainder]
    return order[rank::world_size]


class ShardedEpochSampler(Sampler[int]):
    """:class:`~brats_utils.data.EpochShuffleSampler` dealt out over ranks (see :func:`shard_indices`).

    Same interface: ``set_epoch`` sets the epoch of the next pass and each pass advances it, so the
    resume logic of training works unchanged. ``rank``/``world_size`` default to the process group's
    (built under torchrun before :func:`init_distributed`, it refuses rather than give every rank
    the whole epoch).
    """

    def __init__(self, size: int, seed: int = 42, *, rank: int | None = None, world_size: int | None = None,
                 pad: bool = True) -> None:
        self.size, self.seed, self.epoch, self.pad = int(size), int(seed), 0, pad
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if (rank is None or world_size is None) and launched and not _active():
            raise ValueError("ShardedEpochSampler built before init_distributed(): every rank would draw the "
                             "whole epoch; call init_distributed() first or pass rank and world_size")
        self.rank = get_rank() if rank is None else int(rank)
        self.world_size = get_world_size() if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank}, "
                             f"world_size={self.world_size}")

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass draws."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.pad:
            return -(-self.size // self.world_size)
        return self.size // self.world_size

    def __iter__(self) -> Iterator[int]:
        indices = shard_indices(self.size, self.rank, self.world_size, seed=self.seed, epoch=self.epoch,
                                pad=self.pad)
        self.epoch += 1
        return iter(indices)


def _all_reduce_sum(value: Number) -> Number:
    if isinstance(value, torch.Tensor):
        reduced = value.detach().clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced
    nccl = dist.get_backend() == "nccl"
    on = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    tensor = torch.tensor(float(value), dtype=torch.float64, device=on)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def all_reduce_sum(value: Number) -> Number:
    """The sum of ``value`` over all ranks (a float or a tensor; returned as given without a group).

    A tensor is reduced on its own device (``nccl`` needs it on the GPU) and not modified in place;
    a float travels as a float64 tensor on the process group's device. Use sums (and counts) where
    ranks hold different numbers of items, e.g. validation volumes dealt out over the ranks.
    """
    if not _active() or get_world_size() == 1:
        return value
    return _all_reduce_sum(value)


def all_reduce_mean(value: Number) -> Number:
    """The mean of ``value`` over all ranks (a float or a tensor; returned as given without a group).

    Every rank gets the same result, e.g. the epoch's training loss for the history, so that
    schedulers and early stopping decide alike on every rank. See :func:`all_reduce_sum`.
    """
    if not _active() or get_world_size() == 1:
        return value
    return _all_reduce_sum(value) / get_world_size()


def barrier() -> None:
    """Wait until every rank gets here (nothing without a process group)."""
    if not _active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first, the others after it finished (e.g. building the preprocessing cache
    once: the other ranks then find it ready instead of writing the same files at the same time)."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def cleanup() -> None:
    """Leave the process group (at the end of training; nothing without one)."""
    if _active():
        dist.destroy_process_group()


# --- who this process is, and the run folder it writes ----------------------------------------------


def distributed_info(device: str | torch.device | None = None) -> DistInfo:
    """Who this process is (:func:`~brats_utils.distributed.init_distributed`) and where it computes.

    Under torchrun: the rank's device (its GPU ``LOCAL_RANK``, or the CPU with gloo). One process:
    ``device``, else :func:`pick_device`.
    """
    requested = torch.device(device) if device is not None else pick_device()
    info = init_distributed(requested)
    return info if info.is_distributed else DistInfo(device=requested)


@contextmanager
def run_folder_lock(run_dir: Path, info: DistInfo) -> Iterator[None]:
    """The run folder's lock (:func:`~brats_utils.files.folder_lock`), taken by rank 0 for all ranks of a run.

    The ranks of one run share it; another run (one process or several) still gets
    :class:`~brats_utils.errors.FolderLockedError`, on every one of its ranks.
    """
    if not info.is_distributed:
        with folder_lock(run_dir):
            yield
        return
    with ExitStack() as stack:
        error = None
        if info.is_main:
            try:
                stack.enter_context(folder_lock(run_dir))
            except FolderLockedError as locked:
                error = locked
        if all_reduce_sum(0.0 if error is None else 1.0) > 0:  # every rank learns whether rank 0 got it
            raise error if error is not None else FolderLockedError(
                "rank 0 of this run found the folder held by another process", path=run_dir,
                expected="one training per folder at a time")
        yield
