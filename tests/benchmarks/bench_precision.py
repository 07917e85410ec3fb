"""Precision and memory layout of the paper model: fp32, bf16 and channels-last, side by side.

Four settings of :mod:`brats_utils.precision` are timed in one process, interleaved round by round
(so a noisy neighbour slows all of them alike), and reported as the fastest round of each and its
ratio to fp32 (below 1 is faster):

- forward pass: ``build_model("paper")`` in eval mode under ``torch.inference_mode`` on one
  ``1 x 4 x 128^3`` patch (the inference window);
- training step: batch 2 of ``48^3`` patches, :class:`~brats_utils.losses.CombinedLoss`, AdamW,
  gradient clipping, the same sequence as :func:`brats_utils.train.train_step` with
  :func:`~brats_utils.precision.autocast` and :func:`~brats_utils.precision.grad_scaler`.

Peak memory is what the call adds (``compare.peak_memory``: on a CPU the resident-set high-water mark,
on CUDA the allocated tensors), the smallest over the rounds. A second section compiles the model
with ``torch.compile`` (a ``1 x 4 x 64^3`` forward pass, fp32 and bf16) and reports the compile time
and the steady-state ratio to eager, or why it was skipped.

``BENCH_PRECISION_ROUNDS`` (default 3) sets the rounds, ``BENCH_PRECISION_SCALE`` (default 1) scales
every patch edge (0.5 for a quick look), ``BENCH_PRECISION_COMPILE=0`` skips the second section.
On CUDA the same settings run with fp16 in place of bf16 where the GPU lacks bf16.
"""

from __future__ import annotations

import os
import statistics
import time
import traceback

import torch

from brats_utils.compare import peak_memory
from brats_utils.losses import CombinedLoss
from brats_utils.model import build_model
from brats_utils.precision import autocast, cuda_has_bf16, grad_scaler, to_channels_last

ROUNDS = int(os.environ.get("BENCH_PRECISION_ROUNDS", "3"))
SCALE = float(os.environ.get("BENCH_PRECISION_SCALE", "1"))


def _edge(size: int) -> int:
    return max(16, int(round(size * SCALE / 4)) * 4)


def _settings(device: torch.device) -> list[tuple[str, str, bool]]:
    """(label, precision, channels_last) of every setting measured on ``device``."""
    low = "bf16" if device.type == "cpu" or cuda_has_bf16(device) else "fp16"
    return [("fp32", "fp32", False), ("fp32 + channels-last", "fp32", True),
            (low, low, False), (f"{low} + channels-last", low, True)]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_runner(device: torch.device, precision: str, channels_last: bool):
    torch.manual_seed(0)
    model = build_model("paper").to(device).eval()
    image = torch.randn(1, 4, *(_edge(128),) * 3, device=device)
    if channels_last:
        model, image = to_channels_last(model), to_channels_last(image)

    def run() -> None:
        with torch.inference_mode(), autocast(precision, device):
            model(image)

    return run


def _train_runner(device: torch.device, precision: str, channels_last: bool):
    torch.manual_seed(0)
    model = build_model("paper").to(device).train()
    if channels_last:
        to_channels_last(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=5e-4)
    scaler = grad_scaler(precision, device)
    loss_fn = CombinedLoss()
    shape = (_edge(48),) * 3
    image = torch.randn(2, 4, *shape, device=device)
    label = torch.randint(0, 4, (2, *shape), device=device)
    if channels_last:
        image = to_channels_last(image)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            loss = loss_fn(model(image), label)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.5)
        scaler.step(optimizer)
        scaler.update()

    return run


def _measure(runners: dict[str, object], device: torch.device, rounds: int) -> dict[str, dict[str, float]]:
    """Seconds (fastest and median round) and peak MiB (smallest) of each runner, interleaved."""
    for run in runners.values():  # warm-up: oneDNN/cuDNN pick and build their kernels
        run()
    _synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    memory: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            with peak_memory(device) as peak:
                started = time.perf_counter()
                run()
                _synchronize(device)
                seconds[name].append(time.perf_counter() - started)
            memory[name].append(peak["MiB"])
    return {name: {"best": min(seconds[name]), "median": statistics.median(seconds[name]),
                   "MiB": min(memory[name])} for name in runners}


def _print_table(title: str, results: dict[str, dict[str, float]], reference: str) -> None:
    base = results[reference]
    print(f"\n{title}")
    print(f"{'setting':<26}{'best s':>9}{'median s':>10}{'x fp32':>8}{'peak MiB':>10}{'x fp32':>8}")
    for name, r in results.items():
        memory_ratio = r["MiB"] / base["MiB"] if base["MiB"] > 0 else float("nan")
        print(f"{name:<26}{r['best']:>9.3f}{r['median']:>10.3f}{r['best'] / base['best']:>8.2f}"
              f"{r['MiB']:>10.0f}{memory_ratio:>8.2f}")


def _compile_section(device: torch.device) -> None:
    """torch.compile against eager on a 64^3 forward pass, fp32 and the low precision."""
    if os.environ.get("BENCH_PRECISION_COMPILE", "1") == "0":
        print("\ntorch.compile: skipped (BENCH_PRECISION_COMPILE=0)")
        return
    print("\ntorch.compile (inductor) against eager, forward pass 1 x 4 x " + "x".join([str(_edge(64))] * 3))
    print(f"{'setting':<26}{'compile s':>10}{'eager s':>9}{'compiled s':>11}{'x eager':>8}{'max |diff|':>11}")
    low = _settings(device)[2][1]
    for precision in ("fp32", low):
        torch.manual_seed(0)
        model = build_model("paper").to(device).eval()
        image = torch.randn(1, 4, *(_edge(64),) * 3, device=device)
        try:
            compiled = torch.compile(model)
            started = time.perf_counter()
            with torch.inference_mode(), autocast(precision, device):
                out_compiled = compiled(image).float()
            _synchronize(device)
            compile_seconds = time.perf_counter() - started
        except Exception as error:  # no C++ compiler, an unsupported operator, ...
            print(f"{precision:<26}skipped: torch.compile failed ({type(error).__name__}: "
                  f"{str(error).splitlines()[0][:120] if str(error) else ''})")
            traceback.print_exc(limit=1)
            return

        def eager(model=model, image=image, precision=precision):
            with torch.inference_mode(), autocast(precision, device):
                return model(image)

        def fast(compiled=compiled, image=image, precision=precision):
            with torch.inference_mode(), autocast(precision, device):
                return compiled(image)

        with torch.inference_mode(), autocast(precision, device):
            difference = (model(image).float() - out_compiled).abs().max().item()
        results = _measure({"eager": eager, "compiled": fast}, device, ROUNDS)
        print(f"{precision:<26}{compile_seconds:>10.1f}{results['eager']['best']:>9.3f}"
              f"{results['compiled']['best']:>11.3f}"
              f"{results['compiled']['best'] / results['eager']['best']:>8.2f}{difference:>11.2e}")


def main() -> None:
    """Print the forward and training tables, then the torch.compile section."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = _settings(device)
    print(f"device {device}, {torch.get_num_threads()} threads, {ROUNDS} rounds interleaved, "
          f"fastest round reported; ratios to fp32 (below 1: faster / smaller)")
    edge = _edge(128)
    forward = {label: _forward_runner(device, precision, cl) for label, precision, cl in settings}
    _print_table(f"forward pass, paper model, 1 x 4 x {edge}^3, inference mode",
                 _measure(forward, device, ROUNDS), "fp32")
    del forward
    edge = _edge(48)
    train = {label: _train_runner(device, precision, cl) for label, precision, cl in settings}
    _print_table(f"training step, paper model, batch 2 x 4 x {edge}^3, CombinedLoss + AdamW",
                 _measure(train, device, ROUNDS), "fp32")
    del train
    _compile_section(device)


if __name__ == "__main__":
    main()
