"""Sliding-window inference, test-time flips and the round trip to a BraTS NIfTI file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from brats_utils import inference
from brats_utils.config import get_profile
from brats_utils.inference import (
    ALL_FLIPS,
    average_predictors,
    importance_map,
    sliding_window,
    sliding_window_predict,
    softmax_predictor,
    to_original_grid,
    window_starts,
    windows_per_pass,
    with_flips,
)
from brats_utils.labels import MODALITIES
from brats_utils.pipeline import predictor
from brats_utils.preprocess import CropMeta


def pointwise_model(seed: int = 0) -> nn.Module:
    """A 1x1x1 convolution: equivariant to translations and flips, so any stitching must reproduce it."""
    torch.manual_seed(seed)
    return nn.Conv3d(4, 4, kernel_size=1)


def context_model(seed: int = 0) -> nn.Module:
    """A small network with 3x3x3 context and instance norm (neither translation- nor flip-equivariant)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(4, 6, 3, padding=1), nn.InstanceNorm3d(6), nn.LeakyReLU(0.01),
                         nn.Dropout3d(0.5), nn.Conv3d(6, 4, 1))


def full_softmax(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model.eval()(image[None]), dim=1)[0]


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(4, 24, 20, 18, generator=torch.Generator().manual_seed(0))


# --- window layout and weights ------------------------------------------------------------


def test_window_starts_cover_the_volume_evenly():
    assert window_starts(240, 128, 0.5) == [0, 56, 112]
    assert window_starts(155, 128, 0.5) == [0, 27]
    assert window_starts(128, 128, 0.5) == [0]
    assert window_starts(100, 128, 0.5) == [0]
    starts = window_starts(97, 16, 0.25)
    assert starts[0] == 0 and starts[-1] == 97 - 16
    assert max(np.diff(starts)) <= 16 * 0.75
    with pytest.raises(ValueError, match="overlap"):
        window_starts(10, 4, 1.0)


def test_gaussian_importance_map_has_sigma_patch_over_8():
    weights = importance_map((17, 9, 33))
    assert weights.max() == 1.0 and weights[8, 4, 16] == 1.0
    assert torch.equal(weights, weights.flip((0, 1, 2)))
    # one sigma (17 / 8 voxels) from the centre along the first axis: exp(-1/2); here 2 voxels away
    assert float(weights[10, 4, 16]) == pytest.approx(np.exp(-0.5 * (2 / (17 / 8)) ** 2), rel=1e-6)
    assert float(weights.min()) > 0
    assert torch.equal(importance_map((4, 4, 4), "constant"), torch.ones(4, 4, 4))


# --- sliding window ---------------------------------------------------------------------------


def test_one_window_over_the_whole_volume_equals_one_forward_pass():
    model = context_model()
    image = torch.randn(4, 16, 12, 8)
    expected = full_softmax(model, image)
    result = sliding_window_predict(model, image, precision="fp32", patch_size=(16, 12, 8))
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)


def test_volume_smaller_than_the_patch_is_padded_and_cropped_back():
    model = context_model()
    image = torch.randn(4, 10, 7, 12)
    padded = torch.nn.functional.pad(image, (0, 0, 0, 1, 1, 1))  # centred zero padding to 12 x 8 x 12
    expected = full_softmax(model, padded)[:, 1:11, 0:7, :]
    result = sliding_window_predict(model, image.numpy(), precision="fp32", patch_size=(12, 8, 12))
    assert result.shape == (4, 10, 7, 12) and result.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("mode", "overlap", "sw_batch_size"), [("gaussian", 0.5, 2), ("constant", 0.25, 3)])
def test_stitching_a_translation_equivariant_model_reproduces_the_full_volume(image, mode, overlap,
                                                                               sw_batch_size):
    model = pointwise_model()
    result = sliding_window_predict(model, image, precision="fp32", patch_size=(12, 12, 12), overlap=overlap,
                                    mode=mode, sw_batch_size=sw_batch_size)
    torch.testing.assert_close(result, full_softmax(model, image), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.sum(dim=0), torch.ones(image.shape[1:]))


def test_stitch_device_and_numpy_input_give_the_same_result(image):
    model = context_model()
    a = sliding_window_predict(model, image, precision="fp32", patch_size=(12, 12, 12))
    b = sliding_window_predict(model, image.numpy(), precision="fp32", patch_size=(12, 12, 12),
                               stitch_device="cpu", sw_batch_size=5)
    torch.testing.assert_close(a, b)


def test_windows_per_pass_is_one_on_a_cpu_and_two_on_a_gpu_unless_asked(image):
    assert windows_per_pass("cpu") == 1
    assert windows_per_pass(torch.device("cuda")) == 2  # a device object only: no GPU is needed
    batches: list[int] = []
    model = pointwise_model()

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        batches.append(batch.shape[0])
        return torch.softmax(model(batch), dim=1)

    default = sliding_window(predictor, image, patch_size=(12, 12, 12))  # 3 x 3 x 2 windows at overlap 0.5
    assert batches == [1] * 18
    batches.clear()
    asked = sliding_window(predictor, image, patch_size=(12, 12, 12), sw_batch_size=5)
    assert batches == [5, 5, 5, 3]
    torch.testing.assert_close(asked, default, rtol=1e-5, atol=1e-6)
    assert get_profile("gpu").sw_batch_size is None and get_profile("demo").sw_batch_size == 1


def test_tta_with_a_flip_equivariant_model_equals_no_tta(image):
    model = pointwise_model()
    plain = sliding_window_predict(model, image, precision="fp32", patch_size=(12, 12, 12))
    flipped = sliding_window_predict(model, image, precision="fp32", patch_size=(12, 12, 12), tta=True)
    torch.testing.assert_close(flipped, plain, rtol=1e-5, atol=1e-6)


def test_tta_averages_the_eight_flipped_predictions():
    model = context_model()
    image = torch.randn(4, 12, 10, 8)
    expected = torch.stack([full_softmax(model, image.flip([d - 1 for d in dims])).flip([d - 1 for d in dims])
                            for dims in ALL_FLIPS]).mean(dim=0)
    assert len(ALL_FLIPS) == 8
    result = sliding_window_predict(model, image, precision="fp32", patch_size=(12, 10, 8), tta=True)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(result, full_softmax(model, image), atol=1e-4)


def test_model_mode_is_restored_and_dropout_is_off_during_prediction():
    model = context_model().train()
    image = torch.randn(4, 8, 8, 8)
    first = sliding_window_predict(model, image, precision="fp32", patch_size=(8, 8, 8))
    second = sliding_window_predict(model, image, precision="fp32", patch_size=(8, 8, 8))
    assert model.training
    torch.testing.assert_close(first, second)


# --- the stages alone ------------------------------------------------------------------------


def test_flips_wrap_any_predictor_and_undo_themselves():
    def mirror_sensitive(batch):  # probabilities that depend on the position along x
        ramp = torch.linspace(0, 1, batch.shape[2]).view(1, 1, -1, 1, 1)
        ramp = ramp.expand(batch.shape[0], 1, *batch.shape[2:])
        return torch.cat([ramp, 1 - ramp], dim=1)

    batch = torch.zeros(1, 4, 6, 5, 4)
    flipped = with_flips(mirror_sensitive, flips=((), (2,)))(batch)
    torch.testing.assert_close(flipped, torch.full_like(flipped, 0.5))  # a ramp and its mirror average out
    torch.testing.assert_close(with_flips(mirror_sensitive, flips=((),))(batch), mirror_sensitive(batch))


def test_the_sliding_window_blends_any_predictor_and_an_ensemble_averages():
    model_a, model_b = pointwise_model(0).eval(), pointwise_model(1).eval()
    image = torch.randn(4, 20, 18, 16)
    ensemble = average_predictors([softmax_predictor(model_a, precision="fp32"),
                                   softmax_predictor(model_b, precision="fp32")])
    blended = sliding_window(ensemble, image, patch_size=(8, 8, 8), overlap=0.5)
    expected = (full_softmax(model_a, image) + full_softmax(model_b, image)) / 2
    torch.testing.assert_close(blended, expected, rtol=1e-5, atol=1e-6)


def test_export_puts_the_argmax_back_on_the_grid_in_file_labels():
    probs = torch.zeros(4, 2, 2, 2)
    probs[3] = 1.0  # enhancing tumour everywhere in the crop
    meta = CropMeta("c", ((1, 3), (0, 2), (2, 4)), (4, 3, 5), np.eye(4).tolist())
    labels = to_original_grid(probs, meta)
    assert labels.shape == (4, 3, 5) and labels.dtype == np.uint8
    assert labels[1:3, 0:2, 2:4].tolist() == np.full((2, 2, 2), 4).tolist() and labels.sum() == 4 * 8


# --- whole cases: back on the original grid, NIfTI export ---------------------------------------


class OracleModel(nn.Module):
    """Channel c of the test image is bright exactly where the training label is c, so after
    z-scoring the scaled image itself is a logit map whose argmax is the label."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


@pytest.fixture
def oracle_case(tmp_path):
    """A case on an odd, asymmetric grid whose brain and tumour sit off-centre."""
    from brats_utils.io import Case

    shape = (31, 26, 19)
    labels = np.zeros(shape, np.uint8)
    brain = np.zeros(shape, bool)
    brain[5:27, 3:20, 2:16] = True
    labels[9:20, 6:14, 4:12] = 2
    labels[11:17, 7:12, 5:10] = 1
    labels[13:16, 8:11, 6:9] = 4
    train = np.where(labels == 4, 3, labels)
    folder = tmp_path / "BraTS20_Training_007"
    folder.mkdir()
    affine = np.array([[-1.0, 0, 0, 3.5], [0, -1.0, 0, 239.0], [0, 0, 1.0, -7.0], [0, 0, 0, 1]])
    modalities = {}
    for channel, name in enumerate(MODALITIES):
        volume = np.where(brain, np.where(train == channel, 1000, 1), 0).astype(np.int16)
        modalities[name] = folder / f"BraTS20_Training_007_{name}.nii"
        nib.save(nib.Nifti1Image(volume, affine), modalities[name])
    seg_image = nib.Nifti1Image(labels, affine)
    seg_image.header["descrip"] = b"oracle test"
    seg = folder / "BraTS20_Training_007_seg.nii"
    nib.save(seg_image, seg)
    case = Case(case_id="BraTS20_Training_007", modalities=modalities, seg=seg, folder=folder)
    return case, labels, affine


def test_prediction_lines_up_with_the_input_and_exports_a_brats_nifti(oracle_case, tmp_path):
    case, labels, affine = oracle_case
    profile = get_profile("ci").with_overrides(sw_patch_size=(8, 8, 8), crop_margin=1)
    out = tmp_path / "out" / "BraTS20_Training_007.nii.gz"
    predicted = inference.predict_case(predictor(profile, OracleModel()), case, profile.inference,
                                       profile.preprocessing, out_path=out)
    assert predicted.dtype == np.uint8 and predicted.shape == labels.shape
    np.testing.assert_array_equal(predicted, labels)

    saved = nib.load(out)
    source = nib.load(case.modalities["flair"])
    np.testing.assert_allclose(saved.affine, affine)
    assert saved.get_data_dtype() == np.uint8
    assert saved.header.get_zooms() == source.header.get_zooms()
    assert saved.header.get_xyzt_units() == source.header.get_xyzt_units()
    assert set(np.unique(np.asanyarray(saved.dataobj)).tolist()) == {0, 1, 2, 4}
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), labels)


def test_predict_folder_and_evaluate_close_the_loop(oracle_case, tmp_path):
    from brats_utils.metrics import evaluate

    case, _, _ = oracle_case
    profile = get_profile("ci").with_overrides(sw_patch_size=(16, 16, 16), tta=True)
    paths = inference.predict_folder(predictor(profile, OracleModel()), [case], tmp_path / "preds",
                                     profile.inference, profile.preprocessing, progress=False)
    assert [p.name for p in paths] == ["BraTS20_Training_007.nii.gz"]
    per_case, _ = evaluate(tmp_path / "preds", [case], progress=False)
    assert per_case.loc["BraTS20_Training_007", ["Dice_WT", "Dice_TC", "Dice_ET"]].tolist() == [1.0, 1.0, 1.0]


def test_load_model_rebuilds_the_network_from_a_checkpoint(tmp_path):
    from brats_utils.checkpoints import CHECKPOINT_KEYS, load_model
    from brats_utils.model import build_model

    model = build_model("paper")
    checkpoint = dict.fromkeys(CHECKPOINT_KEYS)
    checkpoint.update(model_state_dict=model.state_dict(), model_config=model.config)
    torch.save(checkpoint, tmp_path / "best.pt")
    loaded = load_model(tmp_path / "best.pt")
    assert not loaded.training
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


# --- precision and prefetch -----------------------------------------------------------------------


def test_prediction_precision_is_resolved_per_device_and_fp32_is_exact(image):
    model = context_model()
    reference = full_softmax(model, image)
    exact = sliding_window_predict(model, image, patch_size=image.shape[1:], precision="fp32")
    torch.testing.assert_close(exact, reference)
    low = sliding_window_predict(model, image, patch_size=image.shape[1:], precision="bf16")
    assert (low - reference).abs().max() < 0.05  # bf16 logits: close, not equal
    with pytest.raises(ValueError, match="fp16 is not supported on a CPU"):
        sliding_window_predict(model, image, patch_size=image.shape[1:], precision="fp16")


def test_prefetching_the_next_case_gives_the_sequential_results(oracle_case, tmp_path, monkeypatch):
    import dataclasses
    import threading

    case, _, _ = oracle_case
    cases = [case, dataclasses.replace(case, case_id="BraTS20_Training_008")]
    profile = get_profile("ci").with_overrides(sw_patch_size=(8, 8, 8), crop_margin=1)
    settings = (profile.inference, profile.preprocessing)
    model = softmax_predictor(context_model().eval(), precision="fp32")
    sequential = inference.predict_folder(model, cases[:2], tmp_path / "seq", *settings, progress=False,
                                          prefetch=False)
    threads = []
    prepare = inference.prepare_case

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(inference, "prepare_case", recording)
    prefetched = inference.predict_folder(model, cases[:2], tmp_path / "pre", *settings, progress=False)
    assert [p.name for p in prefetched] == [p.name for p in sequential]
    for a, b in zip(sequential, prefetched, strict=True):
        np.testing.assert_array_equal(np.asanyarray(nib.load(a).dataobj), np.asanyarray(nib.load(b).dataobj))
    assert len(threads) == 2 and all(name.startswith("prefetch") for name in threads)  # off the main thread
    assert inference.predict_folder(model, [], tmp_path / "none", *settings, progress=False) == []


def test_predict_folder_keeps_complete_outputs_of_the_same_model_only(oracle_case, tmp_path, monkeypatch):
    import dataclasses

    case, _, _ = oracle_case
    cases = [case, dataclasses.replace(case, case_id="BraTS20_Training_008")]
    profile = get_profile("ci").with_overrides(sw_patch_size=(8, 8, 8), crop_margin=1)
    settings = profile.inference
    out = tmp_path / "preds"

    def predict(seed, settings=settings, **options):  # a network, its predictor and its fingerprint
        model = context_model(seed).eval()
        fingerprint = inference.prediction_fingerprint([model], settings, profile.preprocessing)
        return inference.predict_folder(softmax_predictor(model, precision="fp32"), cases, out, settings,
                                         profile.preprocessing, progress=False, fingerprint=fingerprint,
                                         **options)

    first = predict(0)
    assert first.skipped == 0
    predicted = []
    real = inference._predict_prepared

    def recording(model, case, *args, **kwargs):
        predicted.append(case.case_id)
        return real(model, case, *args, **kwargs)

    monkeypatch.setattr(inference, "_predict_prepared", recording)
    # the same model and settings: nothing to do; lowering sw_batch_size keeps them too
    fewer_windows = dataclasses.replace(settings, sw_batch_size=1)
    again = predict(0, fewer_windows)
    assert (again, again.skipped, predicted) == (first, 2, [])
    # a file cut short is predicted again, and so is every case with --overwrite
    first[1].write_bytes(first[1].read_bytes()[:100])
    assert predict(0).skipped == 1
    assert predicted == ["BraTS20_Training_008"]
    assert predict(0, overwrite=True).skipped == 0
    # another model: its outputs are removed first, so an interruption never leaves the old ones as "complete"
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "_predict_prepared", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(1)
    assert not any(path.exists() for path in first)
