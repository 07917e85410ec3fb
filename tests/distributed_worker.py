"""One rank of the two-process DDP test (``tests/test_distributed.py`` starts it with torchrun).

Every rank builds the model from its *own* seed (DDP must replace them by rank 0's weights), trains
on its shard of a fixed random data set (:class:`~brats_utils.distributed.ShardedEpochSampler`,
batch 1) for two epochs, and checks after every backward pass that its gradients equal rank 0's.
Rank 0 then repeats the same optimisation in one process without DDP, with batch 2 = the two ranks'
samples of each step, and writes ``result.json``; no other rank writes anything.

Usage: ``torchrun --nproc_per_node=2 tests/distributed_worker.py OUT_DIR``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from brats_utils.distributed import (
    ShardedEpochSampler,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    is_main_process,
    shard_indices,
    unwrap_model,
    wrap_model,
)
from brats_utils.losses import CombinedLoss
from brats_utils.model import build_model

SAMPLES, SHAPE, EPOCHS, SEED, LR = 8, (16, 16, 16), 2, 3, 0.05


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Random images whose labels 0..3 are a voxel-wise function of them (so a network can learn it)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(SAMPLES, 4, *SHAPE, generator=generator)
    labels = (images[:, 0] > 0).long() + (images[:, 1] > 0.5).long() + (images[:, 2] > 1.0).long()
    return images, labels


def new_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("paper", base_filters=4, dropout=0.0)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def gathered_max_difference(vector: torch.Tensor) -> float:
    """Largest |difference| between this rank's vector and rank 0's (the same value on every rank)."""
    reference = vector.clone()
    dist.broadcast(reference, src=0)
    difference = (vector - reference).abs().max()
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    return float(difference)


def mean_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(CombinedLoss()(model(images), labels))


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    info = init_distributed(device="cpu")
    images, labels = data()
    loss_fn = CombinedLoss()

    model = new_model(SEED + info.rank)  # different on each rank until DDP broadcasts rank 0's
    difference_before_wrap = gathered_max_difference(flat(model.parameters()))
    ddp = wrap_model(model, info)
    initial_difference = gathered_max_difference(flat(model.parameters()))
    loss_before = mean_loss(model, images, labels)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
    sampler = ShardedEpochSampler(SAMPLES, seed=SEED)

    seen: list[int] = []
    grad_differences: list[float] = []
    step_losses: list[float] = []
    for _ in range(EPOCHS):
        for index in sampler:  # each pass advances the sampler's epoch
            seen.append(index)
            optimizer.zero_grad(set_to_none=True)
            sample = index % SAMPLES
            loss = loss_fn(ddp(images[sample:sample + 1]), labels[sample:sample + 1])
            loss.backward()
            grad_differences.append(gathered_max_difference(flat(p.grad for p in model.parameters())))
            optimizer.step()
            step_losses.append(all_reduce_mean(float(loss.detach())))
    param_difference = gathered_max_difference(flat(model.parameters()))
    loss_after = mean_loss(model, images, labels)
    reductions = {"sum_of_ranks": all_reduce_sum(float(info.rank + 1)),
                  "mean_of_ranks": all_reduce_mean(float(info.rank)),
                  "tensor_sum": all_reduce_sum(torch.tensor([1.0, info.rank])).tolist()}
    shards: list[list[int] | None] = [None] * info.world_size
    dist.all_gather_object(shards, seen)

    if is_main_process():
        # the same optimisation in one process: rank 0's initial weights, batch 2 = both ranks' step
        reference = new_model(SEED)
        reference_optimizer = torch.optim.SGD(reference.parameters(), lr=LR, momentum=0.9)
        for epoch in range(EPOCHS):
            order = shard_indices(SAMPLES, 0, 1, seed=SEED, epoch=epoch)  # the single-process epoch
            for step in range(0, len(order), info.world_size):
                batch = [i % SAMPLES for i in order[step:step + info.world_size]]
                reference_optimizer.zero_grad(set_to_none=True)
                loss_fn(reference(images[batch]), labels[batch]).backward()
                reference_optimizer.step()
        difference = flat(reference.parameters()) - flat(model.parameters())
        single_process_difference = float(difference.abs().max())
        result = {
            "world_size": info.world_size, "backend": info.backend, "rank": info.rank,
            "wrapped": type(ddp).__name__, "unwrapped_is_model": unwrap_model(ddp) is model,
            "difference_before_wrap": difference_before_wrap, "initial_param_difference": initial_difference,
            "grad_differences": grad_differences,
            "param_difference": param_difference, "single_process_difference": single_process_difference,
            "loss_before": loss_before, "loss_after": loss_after, "step_losses": step_losses,
            "shards": shards, **reductions,
        }
        (out_dir / "result.json").write_text(json.dumps(result))
    barrier()
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
