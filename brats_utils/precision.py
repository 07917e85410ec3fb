"""Which floating-point precision the network runs in, chosen per device and overridable.

Four requests are understood: ``"fp32"`` (no autocast), ``"bf16"`` and ``"fp16"`` (autocast to that
16-bit type) and ``"auto"``, which :func:`resolve_precision` turns into one of the three:

- **CUDA → fp16.** Every GPU this project targets has fp16 tensor cores (Kaggle's T4s, Colab's T4,
  V100, A100, ...), while bf16 exists only from Ampere on; fp16 needs a ``GradScaler`` in training
  (:func:`needs_grad_scaler`) because small fp16 gradients underflow. bf16 can still be asked for
  where the GPU has it (``torch.cuda.is_bf16_supported(including_emulation=False)``); on a GPU
  without it (a T4) the request is a ``ValueError``, not a silent emulation.
- **CPU with native bf16 → bf16.** The rule (:func:`cpu_has_native_bf16`): PyTorch dispatches to its
  AVX-512 kernels (``torch.backends.cpu.get_cpu_capability() == "AVX512"``; the ``ATEN_CPU_CAPABILITY``
  variable can lower it) *and* the CPU has bf16 instructions: the ``avx512_bf16`` or ``amx_bf16`` flag
  in ``/proc/cpuinfo`` (Cooper Lake, Sapphire Rapids and later Xeons, AMD Zen 4 and later), or, where
  there is no ``/proc/cpuinfo``, PyTorch's own probe. oneDNN then runs the 3D convolutions in bf16
  with fp32 accumulation. Without these instructions bf16 is emulated and slower than fp32.
- **anything else → fp32** (CPUs without bf16, Apple's MPS, other accelerators).

fp16 on a CPU is refused (``ValueError``): no CPU this project runs on has fp16 arithmetic for
convolutions, and fp16 without a loss scaler underflows in training. bf16 may always be asked for on
a CPU (it is then emulated where the instructions are missing: correct, only slow).

bf16 keeps fp32's exponent range, so it needs no gradient scaling, but it has only 8 bits of mantissa:
the logits differ from fp32 in the third significant digit. What matters for segmentation is the
argmax: :func:`precision_agreement` measures how many voxels get the same label in fp32 and in the
low precision, and the region Dice between the two label maps, so a trained model's low-precision
inference can be checked against its fp32 result.

Memory layout: :func:`to_channels_last` stores 5-D tensors and weights as ``torch.channels_last_3d``
(NDHWC). On CUDA that is the layout cuDNN's tensor-core 3D convolutions use, so fp16/bf16 run
without transposes; :func:`use_channels_last` says when to apply it (see there for what was measured
on a CPU).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

#: The requests :func:`resolve_precision` understands.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
#: The torch type each low precision autocasts to.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: CPU flags (``/proc/cpuinfo``) that mean bf16 arithmetic in hardware.
BF16_CPU_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16"})

ModuleOrTensor = TypeVar("ModuleOrTensor", nn.Module, torch.Tensor)


def _device(device: str | torch.device) -> torch.device:
    return torch.device(device) if not isinstance(device, torch.device) else device


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str] | None:
    """The CPU flags of ``/proc/cpuinfo`` (first processor), or None where the file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware and PyTorch uses its AVX-512 kernels (module docstring)."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    flags = _cpuinfo_flags()
    if flags is None:  # no /proc (macOS, Windows): ask PyTorch's own probe where it has one
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return bool(probe()) if probe is not None else False
    return bool(flags & BF16_CPU_FLAGS)


def cuda_has_bf16(device: str | torch.device = "cuda") -> bool:
    """Whether the CUDA device computes bf16 natively (compute capability 8.0, Ampere, or later)."""
    device = _device(device)
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def _gpu_name(device: torch.device) -> str:
    try:
        return torch.cuda.get_device_name(device)
    except (AssertionError, RuntimeError):  # no CUDA in this build, or no driver
        return "this GPU"


def resolve_precision(requested: str, device: str | torch.device) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for ``requested`` (one of :data:`PRECISIONS`) on ``device``.

    ``"auto"``: fp16 on CUDA, bf16 on a CPU with native bf16 (:func:`cpu_has_native_bf16`), fp32
    elsewhere. Raises ``ValueError`` for an unknown request, fp16 on a CPU, and bf16 on a GPU without
    bf16 arithmetic (a T4).
    """
    device = _device(device)
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda":
            return "fp16"
        if device.type == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if requested == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is not supported on a CPU (no fp16 convolution arithmetic, and training "
                         "would need loss scaling); use precision 'bf16' or 'fp32'")
    if requested == "bf16" and device.type == "cuda" and not cuda_has_bf16(device):
        raise ValueError(f"{_gpu_name(device)} has no native bf16 (needs compute capability 8.0, Ampere, "
                         f"or later); use precision 'fp16' (with a GradScaler) or 'fp32'")
    return requested


def autocast(precision: str, device: str | torch.device) -> torch.autocast:
    """``torch.autocast`` for ``precision`` on ``device``; disabled for fp32 (the model runs as it is).

    ``precision`` may be any request, ``"auto"`` included; it is resolved by :func:`resolve_precision`
    (and refused the same way). Use it as a context manager around the forward pass and the loss.
    """
    device = _device(device)
    resolved = resolve_precision(precision, device)
    return torch.autocast(device_type=device.type, dtype=DTYPES[resolved] if resolved != "fp32" else None,
                          enabled=resolved != "fp32")


def needs_grad_scaler(precision: str, device: str | torch.device) -> bool:
    """Whether training needs a ``GradScaler``: only fp16 on CUDA (bf16 has fp32's exponent range)."""
    device = _device(device)
    return device.type == "cuda" and resolve_precision(precision, device) == "fp16"


def grad_scaler(precision: str, device: str | torch.device) -> torch.amp.GradScaler:
    """A ``GradScaler`` that is enabled exactly when :func:`needs_grad_scaler` says so.

    A disabled scaler passes ``scale``/``unscale_``/``step``/``update`` straight through, so one
    training step works for every precision.
    """
    device = _device(device)
    return torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(precision, device))


def use_channels_last(precision: str, device: str | torch.device) -> bool:
    """Whether to store the model and its inputs as ``channels_last_3d`` for ``precision`` on ``device``.

    - CUDA, fp16 or bf16: yes. cuDNN's tensor-core 3D convolutions work in NDHWC; in the default
      NCDHW layout it adds transposes around them (not measured here: no GPU was at hand).
    - CUDA, fp32: no (fp32 convolutions use no tensor cores unless TF32 is on, so the reason is absent).
    - CPU: no, in either precision. Measured with ``tests/benchmarks/bench_precision.py`` (paper model,
      2 shared AVX-512 cores with native bf16, three runs): with bf16, the CPU's ``auto`` choice,
      channels-last was slower in 5 of 6 comparisons (forward pass on 128³: 0.40/0.45/0.77 of fp32's
      time against 0.36/0.35/0.74 without it) and mostly more memory (up to 19 %). With fp32 the forward pass
      went either way (0.82-1.34) and the training step was 14-28 % faster but took up to 15 % more
      memory; that is one CPU on a noisy machine, not enough to change the default for CPUs without
      bf16, which were not measured.
    """
    device = _device(device)
    return device.type == "cuda" and resolve_precision(precision, device) in ("fp16", "bf16")


def to_channels_last(model_or_tensor: ModuleOrTensor) -> ModuleOrTensor:
    """Store a 5-D tensor, or every 5-D parameter and buffer of a module, as ``channels_last_3d``.

    A tensor of another rank is returned as it is (labels ``[B, X, Y, Z]`` can pass through the same
    call). A module is converted in place and returned: its parameters stay the same objects, so an
    optimiser built before the conversion still holds them. Values do not change, only strides.
    """
    if isinstance(model_or_tensor, torch.Tensor):
        if model_or_tensor.dim() != 5:
            return model_or_tensor
        return model_or_tensor.contiguous(memory_format=torch.channels_last_3d)
    if not isinstance(model_or_tensor, nn.Module):
        raise TypeError(f"expected an nn.Module or a tensor, got {type(model_or_tensor).__name__}")
    with torch.no_grad():
        for tensor in [*model_or_tensor.parameters(), *model_or_tensor.buffers()]:
            if tensor.dim() == 5:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last_3d)
    return model_or_tensor


def match_optimizer_state_layout(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Lay out every state tensor of ``optimizer`` (AdamW's moments) like its parameter, in place.

    A fresh optimiser creates its state in its parameters' layout; one restored from a checkpoint gets
    the layout the checkpoint was saved in (channels-last from a CUDA run, contiguous from a CPU one).
    Call it after the model's layout is settled (:func:`to_channels_last` or not), so that a resumed
    run's moments match its parameters (values do not change).
    """
    for parameter, state in optimizer.state.items():
        layout = (torch.channels_last_3d if parameter.dim() == 5 and is_channels_last(parameter)
                  else torch.contiguous_format)
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                state[key] = value.contiguous(memory_format=layout)
    return optimizer


def is_channels_last(tensor: torch.Tensor) -> bool:
    """Whether a 5-D tensor is laid out as ``channels_last_3d``."""
    return tensor.dim() == 5 and tensor.is_contiguous(memory_format=torch.channels_last_3d)


# --- checking a low precision against fp32 ------------------------------------------------


def label_map_agreement(labels: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How far two label maps of training labels 0..3 (``[X, Y, Z]`` or ``[B, X, Y, Z]``) agree.

    Returns ``agreement``, the fraction of voxels with the same label, and ``Dice_WT``, ``Dice_TC``,
    ``Dice_ET``, the region Dice of ``labels`` against ``reference`` (WT = {1, 2, 3}, TC = {1, 3},
    ET = {3}; a region empty in both scores 1, as in BraTS; a batch is averaged volume by volume).
    """
    from brats_utils.metrics import region_dice_torch

    if labels.shape != reference.shape:
        raise ValueError(f"label maps differ in shape: {list(labels.shape)} vs {list(reference.shape)}")
    dice = region_dice_torch(labels, reference)
    agreement = (labels == reference).sum().item() / max(labels.numel(), 1)
    return {"agreement": agreement, **{key: dice[key] for key in ("Dice_WT", "Dice_TC", "Dice_ET")}}


def precision_agreement(model: nn.Module, images: torch.Tensor, precision: str = "auto", *,
                        device: str | torch.device | None = None,
                        batch_size: int = 1) -> dict[str, float | str]:
    """Run ``model`` on ``images`` ``[B, C, X, Y, Z]`` in fp32 and in ``precision``; compare the argmaxes.

    The model runs in eval mode under ``torch.inference_mode`` on ``device`` (default: where its
    parameters are), ``batch_size`` images at a time; its mode is restored afterwards. Returns
    :func:`label_map_agreement` of the low-precision labels against the fp32 labels, plus
    ``precision`` (the resolved one) and ``max_abs_logit_diff``. With ``precision`` fp32 both runs
    are the same computation and the agreement is exactly 1.
    """
    device = _device(device) if device is not None else next(model.parameters()).device
    resolved = resolve_precision(precision, device)
    if images.dim() != 5:
        raise ValueError(f"expected images [B, C, X, Y, Z], got {list(images.shape)}")
    was_training = model.training
    model.eval()
    low_labels, fp32_labels, max_diff = [], [], 0.0
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], max(1, batch_size)):
                batch = images[start:start + max(1, batch_size)].to(device=device, dtype=torch.float32)
                reference = model(batch).float()
                with autocast(resolved, device):
                    low = model(batch).float()
                max_diff = max(max_diff, (low - reference).abs().max().item())
                low_labels.append(low.argmax(dim=1).cpu())
                fp32_labels.append(reference.argmax(dim=1).cpu())
    finally:
        model.train(was_training)
    scores = label_map_agreement(torch.cat(low_labels), torch.cat(fp32_labels))
    return {"precision": resolved, **scores, "max_abs_logit_diff": max_diff}


def pick_device() -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
