"""Precision choice, autocast, channels-last and the fp32-agreement check (brats_utils.precision)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brats_utils import precision as P
from brats_utils.model import build_model


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU has (``bf16_cpu(True)``) or lacks (``bf16_cpu(False)``) native bf16."""

    def set_native(native: bool) -> None:
        monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)

    return set_native


@pytest.fixture
def cuda_gpu(monkeypatch: pytest.MonkeyPatch):
    """Pretend a CUDA GPU with or without native bf16 (``cuda_gpu(bf16=False)`` is a T4)."""

    def set_gpu(bf16: bool) -> None:
        monkeypatch.setattr(P, "cuda_has_bf16", lambda device="cuda": bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")

    return set_gpu


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("paper", base_filters=4, dropout=0.0).eval()


# --- resolution rules -----------------------------------------------------------------------


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_cpu_is_bf16_exactly_when_the_cpu_has_native_bf16(bf16_cpu, native, expected):
    bf16_cpu(native)
    assert P.resolve_precision("auto", "cpu") == expected
    assert P.resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_on_cuda_is_fp16_whatever_the_gpu(cuda_gpu, bf16):
    cuda_gpu(bf16)
    assert P.resolve_precision("auto", "cuda") == "fp16"
    assert P.resolve_precision("auto", "cuda:1") == "fp16"


def test_auto_elsewhere_is_fp32(bf16_cpu):
    bf16_cpu(True)
    assert P.resolve_precision("auto", "mps") == "fp32"
    assert P.resolve_precision("auto", "meta") == "fp32"


@pytest.mark.parametrize("native", [True, False])
def test_explicit_requests_are_kept(bf16_cpu, cuda_gpu, native):
    bf16_cpu(native)
    cuda_gpu(True)
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    assert P.resolve_precision("bf16", "cpu") == "bf16"  # emulated where not native: slow, not wrong
    assert P.resolve_precision("fp16", "cuda") == "fp16"
    assert P.resolve_precision("bf16", "cuda") == "bf16"
    assert P.resolve_precision("fp32", "cuda") == "fp32"


def test_fp16_on_a_cpu_is_refused_with_the_alternatives():
    with pytest.raises(ValueError, match="fp16 is not supported on a CPU.*'bf16' or 'fp32'"):
        P.resolve_precision("fp16", "cpu")


def test_bf16_on_a_gpu_without_it_is_refused_naming_the_gpu(cuda_gpu):
    cuda_gpu(False)
    with pytest.raises(ValueError, match="Tesla T4 has no native bf16.*'fp16'"):
        P.resolve_precision("bf16", "cuda")


def test_unknown_request_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown precision 'half'.*auto, fp32, bf16, fp16"):
        P.resolve_precision("half", "cpu")


def test_native_bf16_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert P.cpu_has_native_bf16()
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda: frozenset({"avx512f", "amx_bf16", "amx_tile"}))
    assert P.cpu_has_native_bf16()
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda: frozenset({"avx512f", "avx2"}))
    assert not P.cpu_has_native_bf16()
    # the flag alone is not enough when PyTorch runs its AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not P.cpu_has_native_bf16()


def test_without_proc_cpuinfo_pytorchs_probe_decides(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda: None)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert P.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not P.cpu_has_native_bf16()


def test_grad_scaler_only_for_fp16_on_cuda(bf16_cpu, cuda_gpu):
    bf16_cpu(True)
    cuda_gpu(True)
    assert P.needs_grad_scaler("fp16", "cuda")
    assert P.needs_grad_scaler("auto", "cuda")
    assert not P.needs_grad_scaler("bf16", "cuda")
    assert not P.needs_grad_scaler("fp32", "cuda")
    assert not P.needs_grad_scaler("auto", "cpu")
    assert not P.needs_grad_scaler("bf16", "cpu")
    assert not P.grad_scaler("bf16", "cpu").is_enabled()


def test_channels_last_rule_is_cuda_low_precision_only(bf16_cpu, cuda_gpu):
    bf16_cpu(True)
    cuda_gpu(True)
    assert P.use_channels_last("fp16", "cuda") and P.use_channels_last("bf16", "cuda")
    assert not P.use_channels_last("fp32", "cuda")
    assert not P.use_channels_last("bf16", "cpu") and not P.use_channels_last("fp32", "cpu")


# --- autocast ----------------------------------------------------------------------------------


def test_bf16_autocast_on_a_cpu_gives_bf16_activations():
    model = tiny_model()
    seen: list[torch.dtype] = []
    model.enc1[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.inference_mode(), P.autocast("bf16", "cpu"):
        logits = model(x)
    assert seen == [torch.bfloat16]
    assert logits.dtype == torch.bfloat16


def test_fp32_autocast_is_disabled_and_bit_exact():
    model = tiny_model()
    x = torch.randn(2, 4, 16, 16, 16)
    with torch.inference_mode():
        plain = model(x)
        with P.autocast("fp32", "cpu") as context:
            inside = model(x)
            assert not torch.is_autocast_enabled("cpu")
    assert isinstance(context, torch.autocast)
    assert inside.dtype == torch.float32
    assert torch.equal(plain, inside)


def test_autocast_refuses_what_resolve_refuses():
    with pytest.raises(ValueError, match="fp16 is not supported on a CPU"):
        P.autocast("fp16", "cpu")


# --- channels-last -------------------------------------------------------------------------------


def test_channels_last_changes_strides_not_values():
    model = tiny_model()
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.inference_mode():
        expected = model(x)
    weight = model.enc1[0].weight
    assert not P.is_channels_last(weight)
    assert P.to_channels_last(model) is model
    assert model.enc1[0].weight is weight  # same Parameter: an optimiser built before still holds it
    assert P.is_channels_last(weight) and weight.stride()[1] == 1
    assert P.is_channels_last(model.upconv1.weight)
    x_cl = P.to_channels_last(x)
    assert x_cl.stride() != x.stride() and x_cl.stride()[1] == 1
    assert torch.equal(x_cl, x)
    with torch.inference_mode():
        got = model(x_cl)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_channels_last_leaves_other_ranks_alone():
    labels = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    assert P.to_channels_last(labels) is labels
    with pytest.raises(TypeError, match="nn.Module or a tensor"):
        P.to_channels_last([1, 2, 3])


def test_a_restored_optimiser_state_takes_the_layout_of_its_parameters():
    model = build_model("paper", base_filters=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 4, 8, 8, 8)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()  # contiguous moments, as a CPU run saves them

    def moments(opt):
        return [s["exp_avg"] for p, s in opt.state.items() if p.dim() == 5 and p.shape[2] == 3]  # 3³ kernels

    P.to_channels_last(model)  # as a resume on CUDA does: load the contiguous state, then convert
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restored.load_state_dict(saved)
    assert moments(restored) and not any(P.is_channels_last(m) for m in moments(restored))
    values = [m.clone() for m in moments(restored)]
    assert P.match_optimizer_state_layout(restored) is restored
    assert all(P.is_channels_last(m) for m in moments(restored))
    assert all(torch.equal(a, b) for a, b in zip(moments(restored), values, strict=True))

    back = build_model("paper", base_filters=4)  # and the other way: channels-last moments, plain weights
    back.load_state_dict(model.state_dict())
    plain = torch.optim.AdamW(back.parameters(), lr=1e-3)
    plain.load_state_dict(restored.state_dict())
    P.match_optimizer_state_layout(plain)
    assert all(m.is_contiguous() for m in moments(plain))


def test_channels_last_model_trains_in_bf16():
    model = P.to_channels_last(build_model("paper", base_filters=4).train())
    x = P.to_channels_last(torch.randn(2, 4, 16, 16, 16))
    with P.autocast("bf16", "cpu"):
        loss = model(x).float().square().mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.enc1.parameters())


# --- agreement with fp32 ----------------------------------------------------------------------------


def test_agreement_of_a_hand_made_pair_of_label_maps():
    # reference (fp32) and candidate, 10 voxels each; 2 voxels differ
    reference = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 3]).reshape(1, 10, 1, 1)
    candidate = torch.tensor([0, 0, 2, 1, 3, 2, 2, 3, 3, 3]).reshape(1, 10, 1, 1)
    scores = P.label_map_agreement(candidate, reference)
    assert scores["agreement"] == pytest.approx(0.8)
    # WT {1,2,3}: candidate 8 voxels, reference 7, overlap 7 -> 14 / 15
    assert scores["Dice_WT"] == pytest.approx(14 / 15)
    # TC {1,3}: candidate {3,4,7,8,9} (5), reference {3,4,7,8,9} (5) -> 1
    assert scores["Dice_TC"] == pytest.approx(1.0)
    # ET {3}: candidate {4,7,8,9} (4), reference {7,8,9} (3), overlap 3 -> 6 / 7
    assert scores["Dice_ET"] == pytest.approx(6 / 7)


def test_agreement_counts_empty_regions_as_agreeing():
    background = torch.zeros(4, 4, 4, dtype=torch.long)
    scores = P.label_map_agreement(background, background.clone())
    assert scores == {"agreement": 1.0, "Dice_WT": 1.0, "Dice_TC": 1.0, "Dice_ET": 1.0}
    with pytest.raises(ValueError, match="differ in shape"):
        P.label_map_agreement(background, background[:2])


def test_precision_agreement_is_exactly_one_for_the_same_precision():
    model = tiny_model().train()
    images = torch.randn(2, 4, 16, 16, 16)
    scores = P.precision_agreement(model, images, "fp32", device="cpu")
    assert scores == {"precision": "fp32", "agreement": 1.0, "Dice_WT": 1.0, "Dice_TC": 1.0,
                      "Dice_ET": 1.0, "max_abs_logit_diff": 0.0}
    assert model.training  # the mode is restored


def test_precision_agreement_in_bf16_is_high_but_measured():
    model = tiny_model()
    images = torch.randn(2, 4, 16, 16, 16)
    scores = P.precision_agreement(model, images, "bf16", device="cpu", batch_size=2)
    assert scores["precision"] == "bf16"
    assert 0.9 < scores["agreement"] <= 1.0
    assert 0.0 < scores["max_abs_logit_diff"] < 0.5
    with torch.inference_mode(), P.autocast("bf16", "cpu"):
        low = model(images).float().argmax(1)
    with torch.inference_mode():
        reference = model(images).argmax(1)
    assert scores["agreement"] == pytest.approx((low == reference).double().mean().item())
