"""The attention preset: parameter count by hand, cost by hand, gates that run and keep any input size."""

from __future__ import annotations

import torch

from brats_utils.attention import AttentionGate, gate_parameters
from brats_utils.model import build_model, count_parameters, count_trained_parameters, model_costs


def test_paper_attention_parameter_count_equals_a_hand_computation():
    # The paper model's 340,596 parameters plus one gate per skip, gated after upsampling, so the gating
    # signal g has the skip's channels c; inter = c // 2 channels; 1x1x1 convolutions:
    #   W_g: c -> inter with bias  = c*inter + inter
    #   W_x: c -> inter, no bias   = c*inter            (Oktay's equation has one bias b_g in the sum)
    #   psi: inter -> 1 with bias  = inter + 1
    top = 16 * 8 + 8 + 16 * 8 + 8 + 1  # skip of level 1, c = 16: 273
    second = 32 * 16 + 16 + 32 * 16 + 16 + 1  # skip of level 2, c = 32: 1,057
    assert (top, second) == (273, 1057)
    model = build_model("paper_attention")
    assert sum(p.numel() for p in model.parameters()) == count_parameters(model) == 340_596 + 273 + 1057
    assert gate_parameters(16, 16, 8) == top and gate_parameters(32, 32, 16) == second
    gates = [model.get_submodule(name) for name in ("gate1", "gate2")]
    assert [count_parameters(g) for g in gates] == [top, second]
    assert gates[0].W_x.bias is None and gates[0].W_g.bias is not None and gates[0].psi.bias is not None


def test_gate_cost_per_voxel_by_hand():
    # per input voxel: level 1 at full resolution (16*8 + 16*8 + 8 = 264 MACs), level 2 at 1/8 of the
    # voxels ((32*16 + 32*16 + 16) / 8 = 130 MACs)
    extra = model_costs(build_model("paper_attention"))["MACs per voxel"] - model_costs(build_model("paper"))[
        "MACs per voxel"]
    assert extra == 264 + 130


def test_every_gate_is_trained_and_odd_sizes_work():
    model = build_model("paper_attention")
    assert count_trained_parameters(model) == count_parameters(model)
    out = model(torch.randn((1, 4, 20, 18, 13)))
    assert out.shape == (1, 4, 20, 18, 13)
    assert "attention_gates" in model.config and "attention_gates" not in build_model("paper").config


def test_gate_multiplies_the_skip_by_coefficients_in_zero_one():
    gate = AttentionGate(8, 8)
    x, g = torch.randn((2, 8, 4, 4, 4)), torch.randn((2, 8, 4, 4, 4))
    with torch.no_grad():
        alpha = gate.coefficients(x, g)
    assert alpha.shape == (2, 1, 4, 4, 4) and float(alpha.min()) > 0 and float(alpha.max()) < 1
    with torch.no_grad():
        assert torch.allclose(gate(x, g), x * alpha)


def test_a_checkpointed_attention_model_reloads(tmp_path):
    from brats_utils.checkpoints import load_pretrained
    from brats_utils.model import UNet3D

    model = build_model("paper_attention", num_classes=3)
    clone = load_pretrained(UNet3D(**model.config), model.state_dict())
    x = torch.randn((1, 4, 16, 16, 16))
    assert torch.equal(model.eval()(x), clone.eval()(x))
