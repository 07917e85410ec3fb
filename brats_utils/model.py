"""The paper's 3D U-Net, configurable to all five of its sizes, plus tools to inspect it.

One class, :class:`UNet3D`, builds every model of the paper (docs/reproduction.md)::

    input [B, 4, X, Y, Z]                                   logits [B, 4, X, Y, Z]
      enc1 ──────────── skip: concat ────────────→ dec1 → Dropout3d → final_conv ↗
        ↓ max-pool                                   ↑ upconv1
        enc2 ───── skip: concat ─────→ dec2
          ↓ max-pool                     ↑ upconv2
          enc3 (the bottom level) ───────┘

- a *block* is ``units_per_block`` units of Conv3d(3³, padding 1, bias) → InstanceNorm3d (no affine,
  so no parameters) → LeakyReLU(0.01), held in an ``nn.Sequential`` whose convolutions sit at
  indices 0, 3, 6, ... exactly as in the authors' code, so their checkpoints load with ``strict=True``;
- channels double at every level (f, 2f, 4f, ...); max-pooling halves, a transposed convolution
  (kernel 2, stride 2) doubles the size again;
- the upsampled tensor is padded to its skip's size before concatenation ``[upsampled, skip]``, so any
  input size works (155 slices is not a multiple of 4);
- module names follow the authors: ``enc1 ... enc{L-1}``, the bottom block ``enc3`` in the 3-level
  model and ``bottleneck`` in deeper ones, ``upconv{l}``/``dec{l}`` on the way up, ``final_conv``.

``attention_gates=True`` (the ``paper_attention`` preset, not in the paper) puts an attention gate
(:class:`brats_utils.attention.AttentionGate`, Oktay et al. 2018) on every skip connection, gated by
the upsampled decoder tensor; the gates are modules ``gate{l}``, registered after the authors' modules.

``wired_levels`` reproduces what the authors actually trained for the 4-level f = 16 model (shown by
their code) and, inferred from its checkpoint sizes, the 5-level f = 32 one: every level is built (and
counted, as in the paper), but the forward pass only runs through the top ``wired_levels``. For the
other two deeper models nothing survives; their ``*_as_run`` presets are an assumption
(docs/reproduction.md).

Inspection: :func:`count_parameters`, :func:`count_trained_parameters` (a backward pass decides which
weights are used), :func:`trace_layers` and :func:`model_costs` (cost and receptive field, traced on
PyTorch's ``meta`` device so even the 46M model on a full volume costs nothing). This module is pure
torch: the per-layer tables and the diagram live with the figures (:mod:`brats_utils.viz.network`),
loading weights in :mod:`brats_utils.checkpoints`.
"""

from __future__ import annotations

import math
from collections import ChainMap

import torch
import torch.nn.functional as F
from torch import nn

from brats_utils.attention import AttentionGate

__all__ = ["ALL_PRESETS", "EXTRA_PRESETS", "FULL_VOLUME", "PAPER_PRESETS", "PATCH_128", "PRESETS", "UNet3D",
           "build_model", "conv_block",
           "count_parameters", "count_trained_parameters", "init_weights_", "init_weights_authors_",
           "model_costs", "pad_and_concat", "pad_like", "receptive_field", "trace_layers", "used_parameters"]

#: Negative slope of every LeakyReLU (the authors' value); also sets the Kaiming gain.
LEAKY_SLOPE = 0.01
#: The input size the paper reports its model on: one whole BraTS volume.
FULL_VOLUME: tuple[int, int, int] = (240, 240, 155)
#: The usual training patch (nnU-Net, MONAI and the ``gpu`` profile).
PATCH_128: tuple[int, int, int] = (128, 128, 128)

#: The paper's five architectures (parameter counts as the paper reports them, i.e. every built weight)
#: and, for the four deeper ones, ``<name>_as_run``: the same modules with only the top three levels
#: wired into the forward pass. That is what the authors' code trained for the 4-level f = 16 model
#: (shown by their code) and, inferred from its checkpoint sizes, the 5-level f = 32 one; for the other
#: two nothing survives and the pattern is an assumption (docs/reproduction.md, "The deeper models").
#: :func:`build_model` builds them; a profile names one as ``model_preset`` (checked by
#: :func:`brats_utils.pipeline.check_registered`).
PRESETS: dict[str, dict] = {
    "paper": {"base_filters": 16, "levels": 3, "units_per_block": 2},  # 340,596
    "l4_f16": {"base_filters": 16, "levels": 4, "units_per_block": 4},  # 2,867,956
    "l4_f32": {"base_filters": 32, "levels": 4, "units_per_block": 4},  # 11,465,188
    "l5_f16": {"base_filters": 16, "levels": 5, "units_per_block": 4},  # 11,536,756
    "l5_f32": {"base_filters": 32, "levels": 5, "units_per_block": 4},  # 46,137,060
}
PRESETS.update({f"{name}_as_run": {**PRESETS[name], "wired_levels": 3} for name in list(PRESETS)[1:]})
#: Presets beyond the paper (notebook 08), kept out of PRESETS so that the paper's tables list its models:
#: attention gates (Oktay et al., 2018) on the paper model's skip connections.
EXTRA_PRESETS: dict[str, dict] = {"paper_attention": {**PRESETS["paper"], "attention_gates": True}}  # +1,330
#: The five models of the paper, smallest first.
PAPER_PRESETS: tuple[str, ...] = ("paper", "l4_f16", "l4_f32", "l5_f16", "l5_f32")
#: Every preset a profile may name (a live view of both).
ALL_PRESETS: ChainMap[str, dict] = ChainMap(PRESETS, EXTRA_PRESETS)

# --- the network ----------------------------------------------------------------------------


def conv_block(in_channels: int, out_channels: int, units: int) -> nn.Sequential:
    """``units`` × [Conv3d 3³ → InstanceNorm3d → LeakyReLU]; convolutions at indices 0, 3, 6, ..."""
    layers: list[nn.Module] = []
    for unit in range(units):
        layers += [
            nn.Conv3d(in_channels if unit == 0 else out_channels, out_channels, kernel_size=3, padding=1),
            nn.InstanceNorm3d(out_channels, affine=False),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        ]
    return nn.Sequential(*layers)


def pad_and_concat(upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Pad ``upsampled`` to the spatial size of ``skip`` (floor before, ceil after), then ``[up, skip]``.

    Max-pooling floors odd sizes (155 → 77), so the way back up can be one voxel short (77 → 76 + 1).
    """
    return torch.cat([pad_like(upsampled, skip), skip], dim=1)


def pad_like(upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``upsampled`` zero-padded to the spatial size of ``skip`` (floor before, ceil after)."""
    pads: list[int] = []
    for up_size, skip_size in zip(reversed(upsampled.shape[2:]), reversed(skip.shape[2:]), strict=True):
        missing = skip_size - up_size
        pads += [missing // 2, missing - missing // 2]  # F.pad wants the last axis first
    return F.pad(upsampled, pads) if any(pads) else upsampled


class UNet3D(nn.Module):
    """A plain 3D U-Net: the paper's model and its deeper variants.

    Args:
        in_channels: input modalities (4: FLAIR, T1, T1ce, T2 in the authors' order).
        num_classes: output channels (4: background, NCR/NET, ED, ET as training labels 0-3).
        base_filters: channels of the top level ``f``; level ``l`` has ``f * 2**(l-1)``.
        levels: resolution levels including the bottom one (3 in the paper's model).
        units_per_block: conv units per block (2 in the paper's model, 4 in its deeper variants).
        dropout: ``Dropout3d`` probability before the 1×1×1 head (authors' final code 0.1, paper 0.3).
        wired_levels: run only the top ``wired_levels`` levels (``None``: all). Deeper levels are still
            built, so they appear in the parameter count and the state dict, but never get a gradient.
        attention_gates: gate every skip connection (:class:`~brats_utils.attention.AttentionGate`).
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 4,
        base_filters: int = 16,
        levels: int = 3,
        units_per_block: int = 2,
        dropout: float = 0.1,
        wired_levels: int | None = None,
        attention_gates: bool = False,
    ) -> None:
        super().__init__()
        wired_levels = levels if wired_levels is None else wired_levels
        if levels < 1 or units_per_block < 1 or not 1 <= wired_levels <= levels:
            raise ValueError(f"need levels >= 1, units_per_block >= 1 and 1 <= wired_levels <= levels; "
                             f"got levels={levels}, units_per_block={units_per_block}, "
                             f"wired_levels={wired_levels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        #: The keyword arguments that rebuild this model: ``UNet3D(**model.config)``.
        self.config: dict = {
            "in_channels": in_channels, "num_classes": num_classes, "base_filters": base_filters,
            "levels": levels, "units_per_block": units_per_block, "dropout": dropout,
            "wired_levels": wired_levels,
        }
        if attention_gates:  # only when set: plain models keep their configs (and checkpoints) as they were
            self.config["attention_gates"] = True
        self.attention_gates = attention_gates
        self.levels = levels
        self.wired_levels = wired_levels
        channels = [base_filters * 2**level for level in range(levels)]  # channels[l-1] for level l

        units = units_per_block
        previous = in_channels
        for level in range(1, levels + 1):  # registration order = the authors' state-dict order
            self.add_module(self.encoder_name(level), conv_block(previous, channels[level - 1], units))
            previous = channels[level - 1]
        for level in range(levels - 1, 0, -1):
            upsample = nn.ConvTranspose3d(channels[level], channels[level - 1], kernel_size=2, stride=2)
            self.add_module(f"upconv{level}", upsample)
            self.add_module(f"dec{level}", conv_block(2 * channels[level - 1], channels[level - 1], units))
        self.final_conv = nn.Conv3d(channels[0], num_classes, kernel_size=1)
        if attention_gates:
            for level in range(levels - 1, 0, -1):
                self.add_module(f"gate{level}", AttentionGate(channels[level - 1], channels[level - 1]))
        # Modules without parameters: they add no state-dict keys, so the authors' names stay intact.
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.dropout = nn.Dropout3d(dropout)
        init_weights_(self)

    def encoder_name(self, level: int) -> str:
        """Module name of the encoder block at ``level`` (1 = top): ``bottleneck`` is the authors' name
        for the bottom block of their 4- and 5-level models; the 3-level model calls it ``enc3``."""
        return "bottleneck" if level == self.levels and self.levels > 3 else f"enc{level}"

    def block(self, name: str) -> nn.Module:
        """The submodule called ``name`` (e.g. ``"enc2"``, ``"upconv1"``)."""
        return self.get_submodule(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, X, Y, Z]`` for an image ``[B, in_channels, X, Y, Z]`` of any size."""
        self.check_input_shape(tuple(x.shape))
        skips = []
        for level in range(1, self.wired_levels):
            x = self.block(self.encoder_name(level))(x)
            skips.append(x)
            x = self.pool(x)
        x = self.block(self.encoder_name(self.wired_levels))(x)  # the bottom of the wired network
        for level in range(self.wired_levels - 1, 0, -1):
            upsampled, skip = self.block(f"upconv{level}")(x), skips.pop()
            if self.attention_gates:
                upsampled = pad_like(upsampled, skip)
                skip = self.block(f"gate{level}")(skip, upsampled)
            x = self.block(f"dec{level}")(pad_and_concat(upsampled, skip))
        return self.final_conv(self.dropout(x))

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless ``shape`` is ``[B, in_channels, X, Y, Z]`` and big enough.

        Each max-pooling halves (and floors) every axis; instance normalisation at the bottom needs more
        than one voxel, so the bottom level must keep at least 1 voxel per axis and 2 in all.
        """
        channels = self.config["in_channels"]
        if len(shape) != 5 or shape[1] != channels:
            raise ValueError(f"expected a tensor [B, {channels}, X, Y, Z], got {list(shape)}")
        factor = 2 ** (self.wired_levels - 1)
        bottom = [size // factor for size in shape[2:]]
        if min(bottom) < 1 or math.prod(bottom) < 2:
            raise ValueError(f"spatial size {list(shape[2:])} is too small for {self.wired_levels} levels: "
                             f"the bottom level would be {bottom} voxels (expected every axis >= {factor} "
                             f"and more than one bottom voxel, e.g. {[factor, factor, 2 * factor]})")


def init_weights_(model: nn.Module) -> None:
    """Kaiming initialisation as the paper states: weights ~ N(0, 2 / ((1 + a²) n)), biases 0.

    ``a`` is the LeakyReLU slope and ``n`` the number of input connections of one output voxel:
    ``c_in · k³`` for a convolution, ``c_in · k³ / s³`` (= ``c_in`` for kernel 2, stride 2) for a
    transposed convolution. For Conv3d this is exactly ``nn.init.kaiming_normal_(w, a=0.01,
    mode="fan_in", nonlinearity="leaky_relu")``; for ConvTranspose3d PyTorch's own fan-in would be
    ``c_out · k³`` (its weight is stored [c_in, c_out, k, k, k]), so ``n`` is computed here.

    The authors' code differed: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` on Conv3d only
    (variance 2 / (c_out · k³)), leaving ConvTranspose3d at PyTorch's default (uniform, ±1/sqrt(c_out·8)).
    """
    gain = nn.init.calculate_gain("leaky_relu", LEAKY_SLOPE)
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            kernel_volume = math.prod(module.kernel_size)
            fan_in = module.in_channels * kernel_volume
            if isinstance(module, nn.ConvTranspose3d):
                fan_in //= math.prod(module.stride)
            with torch.no_grad():
                module.weight.normal_(0.0, gain / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.zero_()


def init_weights_authors_(model: nn.Module) -> None:
    """The authors' initialisation: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` on every
    Conv3d (variance 2 / (c_out · k³)), biases 0; ConvTranspose3d keeps PyTorch's default
    (``reset_parameters``: uniform, ±1/sqrt(c_out·k³)). See docs/reproduction.md.
    """
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose3d):
            module.reset_parameters()
        elif isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_model(preset: str = "paper", **overrides: object) -> UNet3D:
    """The named preset (see :data:`PRESETS`), with any ``UNet3D`` argument overridden.

    Raises ``KeyError`` naming the known presets when ``preset`` is unknown.
    """
    try:
        config = ALL_PRESETS[preset]
    except KeyError:
        known = ", ".join(ALL_PRESETS)
        raise KeyError(f"Unknown model preset {preset!r}; known presets: {known}") from None
    return UNet3D(**{**config, **overrides})


# --- counting -------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """Every parameter the model holds: the paper's counting rule ``sum(p.numel())``."""
    return sum(p.numel() for p in model.parameters())


def count_trained_parameters(model: nn.Module, input_shape: tuple[int, ...] = (1, 4, 32, 32, 32)) -> int:
    """Parameters that receive a gradient in one forward/backward pass on a random input of ``input_shape``.

    Differs from :func:`count_parameters` when levels are built but not wired (the ``*_as_run`` presets).
    Uses ``torch.autograd.grad(..., allow_unused=True)``, so the model's ``.grad`` fields are untouched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(input_shape, generator=generator, device=device)
    grads = torch.autograd.grad(model(x).float().sum(), params, allow_unused=True)
    return sum(p.numel() for p, g in zip(params, grads, strict=True) if g is not None)


# --- inspection: per-layer table, cost, receptive field ------------------------------------------

_TRACED_LAYERS = (nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d)


def _triple(value: int | tuple[int, ...]) -> tuple[int, int, int]:
    return value if isinstance(value, tuple) else (value,) * 3  # type: ignore[return-value]


def trace_layers(model: UNet3D, input_shape: tuple[int, ...]) -> list[dict]:
    """One row per call of a convolution, transposed convolution or pooling layer, in execution order.

    Runs on a parameter-free copy on PyTorch's ``meta`` device: shapes only, no memory, no arithmetic.
    """
    with torch.device("meta"):
        ghost = UNet3D(**model.config)
    rows: list[dict] = []

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
            kernel, stride, padding = map(_triple, (module.kernel_size, module.stride, module.padding))
            batch = output.shape[0]
            if isinstance(module, nn.Conv3d):  # every output voxel: c_in · k³ multiply-adds per channel
                macs = output[0].numel() * module.in_channels // module.groups * math.prod(kernel)
            elif isinstance(module, nn.ConvTranspose3d):  # every input voxel scatters a c_out · k³ block
                macs = inputs[0].numel() // batch * module.out_channels * math.prod(kernel)
            else:
                macs = 0  # pooling compares, it does not multiply
            rows.append({"layer": name, "block": name.split(".")[0], "type": type(module).__name__,
                         "kernel": kernel[0], "stride": stride[0], "padding": padding[0],
                         "output shape": tuple(output.shape[1:]),
                         "parameters": sum(p.numel() for p in module.parameters()), "MACs": macs})
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in ghost.named_modules()
               if isinstance(module, _TRACED_LAYERS)]
    try:
        ghost(torch.empty(input_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return rows


def used_parameters(rows: list[dict]) -> int:
    """Parameters of the layers that ran (each layer counted once, however often it was called)."""
    return sum({row["layer"]: row["parameters"] for row in rows}.values())


def receptive_field(rows: list[dict]) -> int:
    """Receptive field (voxels along one axis) of the convolution/pooling path, from traced layer rows.

    In a U-Net every layer, in execution order, lies on the deepest path (down through every level and
    back up through every decoder), and that path sees the most: any skip path's view is contained in it.
    Walking that path backwards from one output voxel, the interval ``[lo, hi]`` of voxels it depends on
    becomes ``[s·lo - p, s·hi - p + k - 1]`` through a convolution or pooling (kernel k, stride s,
    padding p) and ``[ceil((lo - k + 1) / s), floor(hi / s)]`` through a transposed convolution. The
    floors make the result depend on where the voxel sits on the pooling grid, so every position of one
    grid period is tried and the widest interval is returned. (The textbook recurrence ``rf += (k-1)·jump``
    misses that rounding and comes out a few voxels short once a network goes down and back up.)
    Instance normalisation is left out: its mean and variance make every output depend a little on the
    whole input.
    """
    period = math.prod(row["stride"] for row in rows if row["type"] != "ConvTranspose3d")
    widest = 0
    for position in range(period):
        lo = hi = position
        for row in reversed(rows):
            k, s, p = row["kernel"], row["stride"], row["padding"]
            if row["type"] == "ConvTranspose3d":
                lo, hi = -((k - 1 - lo) // s), hi // s  # -((k-1-lo)//s) is ceil((lo-k+1)/s)
            else:
                lo, hi = s * lo - p, s * hi - p + k - 1
        widest = max(widest, hi - lo + 1)
    return widest


def model_costs(model: UNet3D) -> dict[str, float]:
    """Size and cost figures of ``model``: parameters (built and used), size in MiB at fp32/fp16,
    multiply-accumulates per input voxel, GFLOPs (= 2 · MACs / 1e9, forward pass, convolutions only)
    for one 128³ patch and one whole 240×240×155 volume, and the receptive field in voxels.

    MiB is 2²⁰ bytes: the paper's "1.30MB" is 340,596 × 4 bytes = 1.30 MiB.
    """
    patch_rows = trace_layers(model, (1, model.config["in_channels"], *PATCH_128))
    volume_rows = trace_layers(model, (1, model.config["in_channels"], *FULL_VOLUME))
    parameters = count_parameters(model)
    patch_macs = sum(row["MACs"] for row in patch_rows)
    return {
        "parameters": parameters,
        "parameters used": used_parameters(patch_rows),
        "fp32 MiB": parameters * 4 / 2**20,
        "fp16 MiB": parameters * 2 / 2**20,
        "MACs per voxel": patch_macs / math.prod(PATCH_128),
        "GFLOPs 128³ patch": 2 * patch_macs / 1e9,
        "GFLOPs 240×240×155 volume": 2 * sum(row["MACs"] for row in volume_rows) / 1e9,
        "receptive field (voxels)": receptive_field(patch_rows),
    }
