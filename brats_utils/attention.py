"""Attention gates (Oktay et al., 2018, "Attention U-Net") for the skip connections of the paper's U-Net.

A skip connection hands the decoder every feature of the encoder, tumour or not. An attention gate
weighs each skip voxel by a coefficient ``α ∈ (0, 1)`` computed from the skip features ``x`` and a
*gating signal* ``g`` from the coarser level, which has seen more context::

    q = ψ(ReLU(W_x x + W_g g + b_g)) + b_ψ        α = sigmoid(q)        x̂ = α · x

``W_x``, ``W_g`` and ``ψ`` are 1×1×1 convolutions: ``W_x`` (x_channels → inter, **no bias**, as in
Oktay's equation, where ``b_g`` is the only bias of the sum), ``W_g`` (g_channels → inter, bias ``b_g``),
``ψ`` (inter → 1, bias ``b_ψ``).

Where the gating signal comes from: Oktay's gates take ``g`` from the coarser level at its own
resolution and bring ``x`` down to it with a strided ``W_x``, then upsample α. Here the gate sits
**after upsampling**: ``g`` is the output of the decoder's transposed convolution (``upconv{l}``, padded
to the skip's size), which already has the skip's resolution and channel count, so ``W_x`` has stride 1
and α needs no resampling. That is one gate per skip, ``inter = x_channels // 2`` channels inside.

Cost of one gate by formula (:func:`gate_parameters`): ``g·i + i`` (W_g) + ``x·i`` (W_x) + ``i + 1`` (ψ)
parameters; with g = x = c and i = c/2 that is ``c² + c + 1``: 273 for the top skip (c = 16) and 1,057 for
the second (c = 32) of the paper model, 1,330 in all (0.4 % of 340,596).
"""

from __future__ import annotations

import torch
from torch import nn


def gate_parameters(g_channels: int, x_channels: int, inter_channels: int) -> int:
    """Parameters of one :class:`AttentionGate` by formula: W_g with bias, W_x without, ψ with bias."""
    return (g_channels * inter_channels + inter_channels) + x_channels * inter_channels + (inter_channels + 1)


class AttentionGate(nn.Module):
    """Additive attention gate ``x̂ = sigmoid(ψ(ReLU(W_x x + W_g g))) · x`` on one skip connection.

    ``x`` (the skip) and ``g`` (the upsampled gating signal) must have the same spatial size.
    ``inter_channels`` defaults to ``x_channels // 2`` (at least 1).
    """

    def __init__(self, g_channels: int, x_channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = max(1, x_channels // 2) if inter_channels is None else inter_channels
        self.W_g = nn.Conv3d(g_channels, inter, kernel_size=1, bias=True)
        self.W_x = nn.Conv3d(x_channels, inter, kernel_size=1, bias=False)
        self.psi = nn.Conv3d(inter, 1, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The attention coefficients ``α`` ``[B, 1, X, Y, Z]`` (for figures)."""
        if x.shape[2:] != g.shape[2:]:
            raise ValueError(f"skip {list(x.shape)} and gating signal {list(g.shape)} differ in size")
        return torch.sigmoid(self.psi(self.relu(self.W_x(x) + self.W_g(g))))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The gated skip ``α · x``."""
        return x * self.coefficients(x, g)
