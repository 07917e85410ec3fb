"""One full-size case (240 x 240 x 155, a crop deeper than 128 slices) along the whole training path.

The unit tests otherwise run on tiny volumes; this one proves that nothing on the way (loading,
preprocessing, the cache, patch sampling with augmentation, a training step, sliding-window
prediction and the export) assumes a small grid or a crop of at most 128 slices.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from brats_utils.augment import MIRROR_ALL
from brats_utils.config import InferenceSettings, PreprocessingSettings
from brats_utils.data import PatchDataset
from brats_utils.datasets import find_dataset
from brats_utils.inference import predict_case
from brats_utils.io import Case
from brats_utils.losses import CombinedLoss
from brats_utils.model import build_model
from brats_utils.preprocess import build_cache, load_cached
from brats_utils.regions import predictor_for
from brats_utils.synthetic import BRATS_SHAPE, real_affine, write_synthetic_dataset
from brats_utils.train import train_step

pytestmark = pytest.mark.slow  # full-size volumes / a trained model: make unit-fast skips them


@pytest.fixture(scope="module")
def full_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, Path]:
    """One synthetic full-size training case and its cache entry."""
    tmp = tmp_path_factory.mktemp("full_size")
    (case,) = find_dataset(write_synthetic_dataset(tmp / "dataset", 1, 0, BRATS_SHAPE, seed=5))
    (entry,) = build_cache([case], tmp / "cache", workers=1, progress=False)
    return case, entry


def test_a_full_size_case_trains_predicts_and_exports(full_case: tuple[Case, Path], tmp_path: Path) -> None:
    case, entry = full_case
    cached = load_cached(entry)
    assert cached.meta.original_shape == BRATS_SHAPE and cached.image.shape[-1] > 128

    torch.manual_seed(0)
    model = build_model("paper", base_filters=4)
    patches = PatchDataset([entry], patch_size=(32, 32, 32), augment=MIRROR_ALL, foreground_fraction=1.0,
                           seed=0)
    image, labels = patches[0]
    assert image.shape == (4, 32, 32, 32) and labels.max() > 0
    loss, grad_norm = train_step(model, image[None], labels[None], CombinedLoss(),
                                 torch.optim.Adam(model.parameters(), lr=1e-3),
                                 torch.amp.GradScaler("cpu", enabled=False), clip_norm=1.0, precision="fp32")
    assert torch.isfinite(loss) and torch.isfinite(grad_norm)

    # prediction: the full-size grid's windows and stitching, with a 1x1x1 convolution for speed
    settings = InferenceSettings(patch_size=(128, 128, 128), sw_batch_size=1)
    out = tmp_path / f"{case.case_id}.nii.gz"
    pointwise = nn.Conv3d(4, 4, kernel_size=1).eval()
    predicted = predict_case(predictor_for(pointwise, precision="fp32"), case, settings,
                             PreprocessingSettings(margin=1), out_path=out)
    assert predicted.shape == BRATS_SHAPE and set(np.unique(predicted).tolist()) <= {0, 1, 2, 4}
    written = nib.load(out)
    np.testing.assert_array_equal(written.affine, real_affine(BRATS_SHAPE))
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), predicted)


def test_augmentation_on_a_whole_full_size_crop(full_case: tuple[Case, Path]) -> None:
    _, entry = full_case
    volumes = PatchDataset([entry], patch_size=None, augment=MIRROR_ALL, samples_per_volume=4, seed=0)
    cached = load_cached(entry)
    for index in range(len(volumes)):
        image, labels = volumes.sample(index)
        assert image.shape[1:] == labels.shape and labels.shape[-1] > 128
        assert np.bincount(labels.ravel(), minlength=4).tolist() == \
            np.bincount(np.asarray(cached.labels).ravel(), minlength=4).tolist()
