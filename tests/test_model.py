"""UNet3D against the paper's published numbers and the authors' checkpoint layout (ARCHITECTURES.md)."""

from __future__ import annotations

import math
import pickle

import matplotlib
import pytest
import torch
from torch import nn

from brats_utils.checkpoints import load_pretrained
from brats_utils.config import PROFILES
from brats_utils.errors import CheckpointError
from brats_utils.losses import CombinedLoss
from brats_utils.model import (
    PAPER_PRESETS,
    PRESETS,
    UNet3D,
    build_model,
    count_parameters,
    count_trained_parameters,
    pad_and_concat,
)
from brats_utils.viz import plot_architecture, preset_summary, summarize

matplotlib.use("Agg")

# Parameter counts printed in the paper (section 5.1 and the conclusions).
PAPER_COUNTS = {"paper": 340_596, "l4_f16": 2_867_956, "l4_f32": 11_465_188, "l5_f16": 11_536_756,
                "l5_f32": 46_137_060}
# Weights the authors' deeper runs actually used (ARCHITECTURES.md section 5).
AS_RUN_TRAINED = {"l4_f16_as_run": 700_340, "l5_f16_as_run": 700_340, "l4_f32_as_run": 2_796_388,
                  "l5_f32_as_run": 2_796_388}


def formula_count(f: int, levels: int, n: int, wired: int | None = None, cin: int = 4, classes: int = 4,
                  ) -> int:
    """ARCHITECTURES.md section 3, written out: blocks, transposed convolutions and the head."""
    wired = levels if wired is None else wired
    c = [f * 2**i for i in range(levels)]

    def block(a: int, b: int) -> int:
        return (a * b * 27 + b) + (n - 1) * (b * b * 27 + b)

    encoder = sum(block(cin if i == 0 else c[i - 1], c[i]) for i in range(wired))
    decoder = sum(c[i + 1] * c[i] * 8 + c[i] + block(2 * c[i], c[i]) for i in range(wired - 1))
    return encoder + decoder + c[0] * classes + classes


def authors_keys(levels: int, units: int) -> list[str]:
    """The authors' state-dict key names, spelled out from ARCHITECTURES.md (not from our model)."""
    bottom = "enc3" if levels == 3 else "bottleneck"
    blocks = [f"enc{i}" for i in range(1, levels)] + [bottom] + [f"dec{i}" for i in range(1, levels)]
    keys = [f"{b}.{3 * u}.{p}" for b in blocks for u in range(units) for p in ("weight", "bias")]
    keys += [f"upconv{i}.{p}" for i in range(1, levels) for p in ("weight", "bias")]
    return keys + ["final_conv.weight", "final_conv.bias"]


def authors_paper_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A stand-in for the authors' published 340,596-weight checkpoint: names and shapes from the spec."""
    shapes = {
        "enc1.0": (16, 4, 3, 3, 3), "enc1.3": (16, 16, 3, 3, 3),
        "enc2.0": (32, 16, 3, 3, 3), "enc2.3": (32, 32, 3, 3, 3),
        "enc3.0": (64, 32, 3, 3, 3), "enc3.3": (64, 64, 3, 3, 3),
        "upconv2": (64, 32, 2, 2, 2), "dec2.0": (32, 64, 3, 3, 3), "dec2.3": (32, 32, 3, 3, 3),
        "upconv1": (32, 16, 2, 2, 2), "dec1.0": (16, 32, 3, 3, 3), "dec1.3": (16, 16, 3, 3, 3),
        "final_conv": (4, 16, 1, 1, 1),
    }
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        bias_size = shape[1] if name.startswith("upconv") else shape[0]
        state[f"{name}.weight"] = torch.randn(shape, generator=generator)
        state[f"{name}.bias"] = torch.randn(bias_size, generator=generator)
    return state


# --- the paper's numbers ----------------------------------------------------------------------


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_presets_have_the_papers_parameter_counts(preset):
    model = build_model(preset)
    config = model.config
    assert count_parameters(model) == PAPER_COUNTS[preset]
    assert PAPER_COUNTS[preset] == formula_count(config["base_filters"], config["levels"],
                                                 config["units_per_block"])


def test_preset_summary_matches_the_texts_size_claims_and_reports_used_parameters():
    table = preset_summary(("paper", "l5_f16", "l5_f32", "l5_f32_as_run"))
    assert round(table.loc["paper", "fp32 MiB"], 2) == 1.30  # "minimal memory footprint of 1.30MB"
    ratios = table["parameters"] / table.loc["paper", "parameters"]
    assert round(ratios["l5_f16"]) == 34 and int(ratios["l5_f32"]) == 135  # "34 times", "135 times"
    assert table["parameters used"].tolist() == [340_596, 11_536_756, 46_137_060, 2_796_388]
    assert table.loc["paper", "receptive field (voxels)"] == 44  # 1 + 2·2·(1+2+4) + (1+2) + 2·2·(1+2)
    assert table.loc["l5_f32_as_run", "GFLOPs 128³ patch"] < table.loc["l5_f32", "GFLOPs 128³ patch"]


@pytest.mark.parametrize("preset", sorted(AS_RUN_TRAINED))
def test_as_run_presets_build_everything_but_train_the_top_three_levels(preset):
    model = build_model(preset)
    config = model.config
    assert count_parameters(model) == PAPER_COUNTS[preset.removesuffix("_as_run")]
    trained = count_trained_parameters(model, (1, 4, 4, 4, 8))  # smallest input three levels accept
    assert trained == AS_RUN_TRAINED[preset]
    assert trained == formula_count(config["base_filters"], config["levels"], 4, wired=3)
    assert summarize(model, (1, 4, 8, 8, 8)).attrs["costs"]["parameters used"] == trained


@pytest.mark.parametrize("levels", [1, 3, 4, 5])
def test_every_parameter_of_a_fully_wired_model_is_trained(levels):
    model = UNet3D(base_filters=2, levels=levels, units_per_block=2)
    factor = 2 ** (levels - 1)
    assert count_trained_parameters(model, (1, 4, factor, factor, 2 * factor)) == count_parameters(model)


def test_gradients_reach_every_used_parameter_and_no_unused_one():
    torch.manual_seed(0)
    model = build_model("l4_f16_as_run", base_filters=4)
    image, label = torch.randn(2, 4, 8, 12, 8), torch.randint(0, 4, (2, 8, 12, 8))
    CombinedLoss()(model(image), label).backward()
    unused = ("bottleneck.", "upconv3.", "dec3.")
    for name, parameter in model.named_parameters():
        if name.startswith(unused):
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# --- any input size -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "size"), [
    ({}, (19, 23, 17)),
    ({}, (8, 9, 10)),
    ({"base_filters": 2, "levels": 5, "units_per_block": 1}, (17, 35, 21)),
    ({"base_filters": 2, "levels": 4, "units_per_block": 4, "wired_levels": 3}, (5, 7, 9)),
])
def test_odd_input_sizes_come_back_at_the_same_size(kwargs, size):
    model = UNet3D(**kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 4, *size)).shape == (2, 4, *size)


def test_a_whole_brats_volume_fits_every_preset():
    for preset in (*PAPER_PRESETS, "l5_f32_as_run"):
        with torch.device("meta"):  # shapes only: no memory, no arithmetic
            model = build_model(preset)
            assert model(torch.empty(1, 4, 240, 240, 155)).shape == (1, 4, 240, 240, 155)


def test_too_small_or_wrong_inputs_are_refused_with_the_reason():
    model = build_model("paper")
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 4, 3, 8, 8))  # two poolings need 4 voxels per axis
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 4, 4, 4, 4))  # bottom 1x1x1: instance norm needs more than one voxel
    with pytest.raises(ValueError, match=r"\[B, 4, X, Y, Z\]"):
        model(torch.randn(1, 3, 8, 8, 8))


def test_pad_and_concat_puts_upsampled_first_and_splits_the_padding_floor_then_ceil():
    up = torch.ones(1, 1, 2, 4, 4)
    skip = torch.full((1, 2, 5, 4, 4), 7.0)
    merged = pad_and_concat(up, skip)
    assert merged.shape == (1, 3, 5, 4, 4)
    assert merged[0, 0, :, 0, 0].tolist() == [0, 1, 1, 0, 0]  # 3 missing: 1 before, 2 after
    assert (merged[:, 1:] == 7).all()


# --- the authors' checkpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "levels", "units"), [("paper", 3, 2), ("l4_f16", 4, 4), ("l5_f16", 5, 4)])
def test_state_dict_keys_are_the_authors(preset, levels, units):
    with torch.device("meta"):
        model = build_model(preset)
    assert sorted(model.state_dict()) == sorted(authors_keys(levels, units))


def test_a_checkpoint_in_the_authors_layout_loads_strictly_in_every_wrapping(tmp_path):
    state = authors_paper_state_dict()
    wrappings = {
        "bare": state,
        "checkpoint": {"model_state_dict": state, "epoch": 120, "optimizer_state_dict": {"state": {}}},
        "data_parallel": {f"module.{k}": v for k, v in state.items()},
        "data_parallel_checkpoint": {"model_state_dict": {f"module.{k}": v for k, v in state.items()}},
    }
    for name, obj in wrappings.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        for source in (path, str(path), obj):
            model = load_pretrained(build_model("paper"), source)
            loaded = model.state_dict()
            assert all(torch.equal(loaded[k], v) for k, v in state.items()), (name, type(source))


def test_a_mismatched_checkpoint_names_the_offending_keys_and_shapes(tmp_path):
    state = authors_paper_state_dict()
    missing = {k: v for k, v in state.items() if k != "dec1.3.weight"}
    with pytest.raises(CheckpointError, match=r"missing keys: dec1\.3\.weight"):
        load_pretrained(build_model("paper"), missing)
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra\.weight"):
        load_pretrained(build_model("paper"), {**state, "extra.weight": torch.zeros(1)})
    wider = build_model("paper", base_filters=32).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatches: enc1\.0\.weight \(32, 4, 3, 3, 3\)"):
        load_pretrained(build_model("paper"), wider)
    with pytest.raises(CheckpointError, match=r"missing keys: bottleneck\.0\.weight"):  # 3 levels into 4
        load_pretrained(build_model("paper", levels=4), state)


def test_unreadable_or_unsafe_files_raise_checkpoint_error_naming_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(build_model("paper"), tmp_path / "absent.pt")
    truncated = tmp_path / "truncated.pt"
    torch.save(authors_paper_state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_pretrained(build_model("paper"), truncated)
    unsafe = tmp_path / "unsafe.pt"
    unsafe.write_bytes(pickle.dumps(pickle.PicklingError("any object"), protocol=2))  # weights_only refuses
    with pytest.raises(CheckpointError, match="cannot read"):
        load_pretrained(build_model("paper"), unsafe)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_pretrained(build_model("paper"), {"model_state_dict": [1, 2, 3]})


# --- construction details ---------------------------------------------------------------------------


def test_config_rebuilds_the_same_architecture_and_overrides_apply():
    model = build_model("l4_f16_as_run", dropout=0.3)
    assert model.config == {"in_channels": 4, "num_classes": 4, "base_filters": 16, "levels": 4,
                            "units_per_block": 4, "dropout": 0.3, "wired_levels": 3}
    twin = UNet3D(**model.config)
    def shapes(m: nn.Module) -> dict:
        return {k: v.shape for k, v in m.state_dict().items()}

    assert shapes(twin) == shapes(model)
    with pytest.raises(KeyError, match="known presets: paper"):
        build_model("resnet")
    with pytest.raises(ValueError, match="wired_levels"):
        UNet3D(levels=3, wired_levels=4)


def test_every_profile_names_existing_presets():
    for profile in PROFILES.values():
        assert {profile.model_preset, *profile.compare_presets} <= set(PRESETS), profile.name
    every_model = tuple(n for base in PAPER_PRESETS for n in (base, f"{base}_as_run") if n in PRESETS)
    assert PROFILES["gpu"].compare_presets == PROFILES["paper"].compare_presets == every_model


def test_blocks_are_conv_norm_leakyrelu_units_with_instance_norm_without_parameters():
    block = build_model("l4_f16").enc2
    assert [type(m) for m in block] == [nn.Conv3d, nn.InstanceNorm3d, nn.LeakyReLU] * 4
    assert all(not m.affine and m.eps == 1e-5 for m in block if isinstance(m, nn.InstanceNorm3d))
    assert all(m.negative_slope == 0.01 for m in block if isinstance(m, nn.LeakyReLU))
    assert build_model("paper", dropout=0.3).dropout.p == 0.3


def test_kaiming_init_uses_the_leaky_relu_gain_and_the_input_connections():
    torch.manual_seed(0)
    model = build_model("paper")
    gain_squared = 2 / (1 + 0.01**2)  # the paper: variance 2 / ((1 + a²) n)
    for name, fan_in in [("enc3.3", 64 * 27), ("dec2.0", 64 * 27), ("upconv2", 64), ("final_conv", 16)]:
        module = model.get_submodule(name)
        expected_std = math.sqrt(gain_squared / fan_in)
        assert module.weight.std().item() == pytest.approx(expected_std, rel=0.05 if fan_in > 100 else 0.25)
        assert module.weight.mean().abs().item() < 0.1 * expected_std + 0.02
        assert (module.bias == 0).all()


# --- summary, cost, receptive field ---------------------------------------------------------------------


def test_summary_counts_multiply_accumulates_by_hand():
    table = summarize(build_model("paper"), (1, 4, 16, 16, 16))
    layers = table.set_index("layer")
    voxels = 16**3
    assert layers.loc["enc1.0", "MACs"] == voxels * 16 * 4 * 27
    assert layers.loc["upconv2", "MACs"] == (voxels // 64) * 64 * 32 * 8  # every bottom voxel, 2³ outputs
    assert layers.loc["dec2.0", "output shape"] == (32, 8, 8, 8)
    assert layers.loc["total", "parameters"] == PAPER_COUNTS["paper"]
    # MACs per input voxel, level by level (level l has 1/8^(l-1) of the voxels)
    per_voxel = ((4 * 16 + 16 * 16 + 32 * 16 + 16 * 16) * 27 + 16 * 4 + 32 * 16 * 8 / 8
                 + ((16 * 32 + 32 * 32 + 64 * 32 + 32 * 32) * 27 + 64 * 32 * 8 / 8) / 8
                 + (32 * 64 + 64 * 64) * 27 / 64)
    assert table.attrs["costs"]["MACs per voxel"] == pytest.approx(per_voxel)
    assert layers.loc["total", "MACs"] == pytest.approx(per_voxel * voxels)


def _measured_receptive_field(model: UNet3D, length: int = 128) -> int:
    """Widest span along x of input voxels that change one output voxel, with the global instance-norm
    statistics switched off and max- replaced by average-pooling (every input of a window counts)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.InstanceNorm3d):
                setattr(module, child_name, nn.Identity())
            elif isinstance(child, nn.MaxPool3d):
                setattr(module, child_name, nn.AvgPool3d(2))
    model = model.double().eval()
    factor = 2 ** (model.wired_levels - 1)
    widest = 0
    for offset in range(2 * factor):  # every alignment with the pooling grid
        x = torch.randn(1, 4, length, factor, factor, dtype=torch.float64, requires_grad=True)
        model(x)[0, :, length // 2 + offset, 0, 0].sum().backward()
        touched = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3, 4)))
        widest = max(widest, int(touched.max() - touched.min()) + 1)
    return widest


@pytest.mark.parametrize("kwargs", [{"levels": 3, "units_per_block": 2}, {"levels": 4, "units_per_block": 1},
                                    {"levels": 4, "units_per_block": 2, "wired_levels": 3}])
def test_receptive_field_matches_the_gradient_footprint(kwargs):
    torch.manual_seed(0)
    model = UNet3D(base_filters=2, **kwargs)
    predicted = summarize(model, (1, 4, 32, 32, 32)).attrs["costs"]["receptive field (voxels)"]
    assert predicted == _measured_receptive_field(model)


def test_diagram_is_drawn_from_the_model():
    figure = plot_architecture(build_model("l4_f16_as_run"), (1, 4, 240, 240, 155))
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "bottleneck" in texts and "dec3" in texts
    assert any("built, not run" in t for t in texts)
    assert any("120×120×77" in t for t in texts)  # enc2's output on a whole volume
    assert "700,340 used" in figure.axes[0].get_title()
    matplotlib.pyplot.close(figure)
