"""``make gpu-check``: what one (or two) GPUs do with this project's settings, in one table, in minutes.

Run it once on a GPU machine (Kaggle's T4 x 2, Colab's T4) and the GPU figures of docs/benchmarks.md stop
being estimates::

    make gpu-check                      # or: python tests/benchmarks/gpu_check.py [--steps 5] [--quick]

Checks, each one row of the table (seconds are means after warm-up, memory is
``torch.cuda.max_memory_allocated`` above what was allocated before, see ``compare.peak_memory``):

1. **training step** of the paper model on ``--patch``³ patches (batch 2, the gpu profile's recipe):
   fp32, and fp16 autocast with a ``GradScaler`` in channels-last 3D (the ``auto`` precision on CUDA);
2. **full-volume prediction** of a 240 x 240 x 155 volume with 128³ windows, overlap 0.5, Gaussian
   blending: ours in fp16 + channels-last with ``torch.compile`` off and on, against MONAI's
   ``sliding_window_inference`` on the same network in fp32 and the plain layout (its default way) and
   under the same fp16 autocast in channels-last (the same work), both handing the probabilities back
   on the CPU as ours does (MONAI from the ``bench`` extra; skipped with a note where it is missing);
3. **two-GPU DDP step** (``nccl``, one process per GPU, the global batch of 2 split as the trainer splits it:
   1 per GPU) when two GPUs are present.

Without a GPU it prints why and exits with status 1; nothing in ``make test`` needs a GPU. The
pieces that do not (argument parsing, the table, the message) are tested on the CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

FULL_SHAPE = (240, 240, 155)
WINDOW = (128, 128, 128)
COLUMNS = ("check", "setting", "seconds", "peak MiB", "note")
NO_GPU_MESSAGE = ("gpu-check needs a CUDA GPU and found none (torch.cuda.is_available() is False): run it on "
                  "Kaggle (Settings > Accelerator > GPU T4 x2) or Colab (Runtime > Change runtime type > T4 "
                  "GPU). The CPU figures come from `make bench`.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: ``--steps``, ``--patch``, ``--quick`` and ``--skip-compile/-monai/-ddp``."""
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per setting (default 5)")
    parser.add_argument("--patch", type=int, default=128,
                        help="training patch edge (default 128, the paper's)")
    parser.add_argument("--quick", action="store_true",
                        help="a 120 x 120 x 78 volume and 64^3 windows for prediction (a smoke test)")
    parser.add_argument("--skip-compile", action="store_true", help="no torch.compile row")
    parser.add_argument("--skip-monai", action="store_true", help="no MONAI rows")
    parser.add_argument("--skip-ddp", action="store_true", help="no two-GPU row even with two GPUs")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.patch < 16 or args.patch % 8:
        parser.error("need --steps >= 1 and --patch a multiple of 8, at least 16")
    return args


def format_table(rows: Sequence[dict]) -> str:
    """``rows`` (dicts with :data:`COLUMNS`; missing or NaN cells print as ``-``) as one aligned table."""

    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}" if value < 10 else f"{value:.0f}"
        return str(value)

    table = [list(COLUMNS)] + [[cell(row.get(column)) for column in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
             for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _timed(run: Callable[[], object], device, *, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Mean seconds of ``run`` after ``warmup`` calls, and its peak memory (MiB) on ``device``."""
    import torch

    from brats_utils.compare import peak_memory

    for _ in range(warmup):
        run()
    with peak_memory(device) as memory:
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            run()
        torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - started) / repeats
    return seconds, memory["MiB"]


def training_rows(args: argparse.Namespace, device) -> list[dict]:
    """Training steps of the paper model: fp32, and fp16 + GradScaler in channels-last (``auto``)."""
    import torch

    from brats_utils.config import get_profile
    from brats_utils.losses import CombinedLoss
    from brats_utils.model import build_model
    from brats_utils.precision import grad_scaler, to_channels_last, use_channels_last
    from brats_utils.train import train_step

    profile = get_profile("gpu")
    rows = []
    for precision in ("fp32", "fp16"):
        torch.manual_seed(0)
        model = build_model("paper", dropout=profile.dropout).to(device).train()
        if use_channels_last(precision, device):
            to_channels_last(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
        scaler = grad_scaler(precision, device)
        loss_fn = CombinedLoss(ce_weight=profile.ce_weight, dice_weight=profile.dice_weight)
        image = torch.randn(profile.batch_size, 4, *(args.patch,) * 3, device=device)
        label = torch.randint(0, 4, (profile.batch_size, *(args.patch,) * 3), device=device)

        def step(model=model, optimizer=optimizer, scaler=scaler, loss_fn=loss_fn, image=image, label=label,
                 precision=precision):
            train_step(model, image, label, loss_fn, optimizer, scaler, clip_norm=profile.grad_clip_norm,
                       precision=precision)

        seconds, mib = _timed(step, device, repeats=args.steps)
        layout = " + channels-last" if use_channels_last(precision, device) else ""
        rows.append({"check": "training step", "setting": f"paper, {args.patch}^3 x2, {precision}{layout}",
                     "seconds": seconds, "peak MiB": mib, "note": "AMP + GradScaler" if precision == "fp16"
                     else "reference"})
        del model, optimizer
        torch.cuda.empty_cache()
    return rows


def prediction_rows(args: argparse.Namespace, device) -> list[dict]:
    """Full-volume prediction: ours (fp16, channels-last, compile off/on) and MONAI's (fp32, fp16)."""
    import torch

    from brats_utils.inference import sliding_window_predict
    from brats_utils.model import build_model
    from brats_utils.precision import autocast, to_channels_last

    shape = tuple(n // 2 for n in FULL_SHAPE) if args.quick else FULL_SHAPE
    window = tuple(n // 2 for n in WINDOW) if args.quick else WINDOW
    torch.manual_seed(0)
    model = to_channels_last(build_model("paper").to(device).eval())
    volume = torch.randn(4, *shape)
    where = f"{shape[0]}x{shape[1]}x{shape[2]}, {window[0]}^3 windows"
    rows = []

    def ours(net=model):
        sliding_window_predict(net, volume, patch_size=window, overlap=0.5, sw_batch_size=2, device=device,
                               precision="fp16")

    seconds, mib = _timed(ours, device, repeats=2)
    rows.append({"check": "prediction", "setting": f"ours fp16 + channels-last, {where}", "seconds": seconds,
                 "peak MiB": mib, "note": "eager"})
    eager = seconds
    if not args.skip_compile:
        compiled = torch.compile(model)
        started = time.perf_counter()
        ours(compiled)  # compiles
        compile_seconds = time.perf_counter() - started
        seconds, mib = _timed(lambda: ours(compiled), device, repeats=2, warmup=0)
        rows.append({"check": "prediction", "setting": f"ours fp16 + channels-last + compile, {where}",
                     "seconds": seconds, "peak MiB": mib,
                     "note": f"{eager / seconds:.2f}x eager; compiling took {compile_seconds:.0f} s"})
    if not args.skip_monai:
        try:
            from monai.inferers import sliding_window_inference
        except ImportError:
            rows.append({"check": "prediction", "setting": "MONAI",
                         "note": "MONAI missing: pip install -e '.[bench]'"})
            return rows
        plain = build_model("paper").to(device).eval()  # MONAI's default way: fp32, the plain layout
        plain.load_state_dict(model.state_dict())
        for precision, net, layout in (("fp32", plain, ""), ("fp16", model, " + channels-last")):
            def monai(precision=precision, net=net):
                with torch.inference_mode(), autocast(precision, device):
                    sliding_window_inference(volume[None].to(device), roi_size=window, sw_batch_size=2,
                                             overlap=0.5, mode="gaussian", sigma_scale=0.125,
                                             predictor=lambda x: torch.softmax(net(x).float(), dim=1)
                                             )[0].cpu()  # handed back on the CPU, as ours

            seconds, mib = _timed(monai, device, repeats=2)
            note = (f"ours (eager fp16) takes {eager / seconds:.2f} of its time" if precision == "fp32"
                    else f"same work: ours / MONAI {eager / seconds:.2f}")
            rows.append({"check": "prediction", "setting": f"MONAI {precision}{layout}, {where}",
                         "seconds": seconds, "peak MiB": mib, "note": note})
    return rows


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, patch: int, steps: int, results) -> None:
    """One rank of the two-GPU check: DDP over nccl, fp16 + channels-last steps of the paper model."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    from brats_utils.distributed import cleanup, init_distributed, per_rank_batch_size, wrap_model
    from brats_utils.losses import CombinedLoss
    from brats_utils.model import build_model
    from brats_utils.precision import grad_scaler, to_channels_last
    from brats_utils.train import train_step

    info = init_distributed("cuda")
    torch.manual_seed(rank)
    bare = to_channels_last(build_model("paper").to(info.device).train())
    optimizer = torch.optim.AdamW(bare.parameters(), lr=5e-4, weight_decay=5e-4)
    model = wrap_model(bare, info)
    scaler, loss_fn = grad_scaler("fp16", info.device), CombinedLoss()
    per_rank = per_rank_batch_size(2, world_size)  # the global batch of 2, split as the trainer does
    image = torch.randn(per_rank, 4, patch, patch, patch, device=info.device)
    label = torch.randint(0, 4, (per_rank, patch, patch, patch), device=info.device)
    for index in range(steps + 1):
        if index == 1:
            torch.cuda.synchronize(info.device)
            torch.cuda.reset_peak_memory_stats(info.device)
            started = time.perf_counter()
        train_step(model, image, label, loss_fn, optimizer, scaler, clip_norm=1.5, precision="fp16")
    torch.cuda.synchronize(info.device)
    if rank == 0:
        results.put(((time.perf_counter() - started) / steps, torch.cuda.max_memory_allocated() / 2**20))
    cleanup()


def ddp_rows(args: argparse.Namespace) -> list[dict]:
    """Two ranks on the first two GPUs (torch.multiprocessing, like torchrun's one process per GPU)."""
    import torch
    import torch.multiprocessing as mp

    torch.cuda.empty_cache()  # this process's cached blocks on GPU 0 go back before the ranks start
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.spawn(_ddp_worker, args=(2, _free_port(), args.patch, args.steps, results), nprocs=2, join=True)
    seconds, mib = results.get()
    name = torch.cuda.get_device_name(0)
    return [{"check": "DDP step", "setting": f"2 x {name}, paper, {args.patch}^3, 1 per GPU, fp16 + cl",
             "seconds": seconds, "peak MiB": mib,
             "note": "global batch 2 (as torchrun ... train splits it), nccl: set against the training step"}]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks that this machine allows and print one table; 1 (and why) without a GPU."""
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_GPU_MESSAGE, file=sys.stderr)
        return 1
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    started = time.perf_counter()
    print(f"# {torch.cuda.device_count()} x {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    rows = training_rows(args, device) + prediction_rows(args, device)
    if torch.cuda.device_count() >= 2 and not args.skip_ddp:
        rows += ddp_rows(args)
    else:
        rows.append({"check": "DDP step", "note": "skipped: needs two GPUs" if not args.skip_ddp
                     else "skipped (--skip-ddp)"})
    print(format_table(rows))
    print(f"(gpu-check took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(main())
