"""data: patient split, patch extraction and sampling, foreground oversampling, augmentation, loaders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from brats_utils.augment import IN_PLANE, MIRROR_ALL, augmentation_for
from brats_utils.config import get_profile
from brats_utils.data import (
    EpochShuffleSampler,
    PatchDataset,
    VolumeDataset,
    extract_patch,
    make_loaders,
    pad_collate,
    split_cases,
)
from brats_utils.labels import TRAIN_LABELS
from brats_utils.preprocess import CropMeta, PreprocessedCase, write_entry


def make_entry(cache_dir, case_id, labels, image=None, seed=0):
    """Write a cache entry from arrays (image: noise inside the labelled 'brain' unless given)."""
    rng = np.random.default_rng(seed)
    if image is None:
        image = rng.normal(size=(4, *labels.shape)).astype(np.float32)
    meta = CropMeta(case_id, tuple((0, n) for n in labels.shape), labels.shape, np.eye(4).tolist())
    return write_entry(PreprocessedCase(case_id, image, labels.astype(np.uint8), meta), cache_dir, key="test")


def tumour_volume(shape=(40, 40, 40)):
    labels = np.zeros(shape, np.uint8)
    labels[19:21, 19:21, 19:21] = 3  # 8 voxels of 'enhancing tumour' in the middle
    return labels


# --- split ---------------------------------------------------------------------------


def test_split_reproduces_the_authors_295_74_split():
    ids = [f"BraTS20_Training_{i:03d}" for i in range(1, 370)]
    train, val = split_cases(ids[::-1], val_fraction=0.2, seed=42)  # input order does not matter
    assert (len(train), len(val)) == (295, 74)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(ids)
    # the authors' log: case 355 fell into the training part (removed there: 294 train / 74 val)
    assert "BraTS20_Training_355" in train
    # scikit-learn's ShuffleSplit semantics: validation = first ceil(0.2 n) of RandomState(42).permutation
    order = np.random.RandomState(42).permutation(369)
    assert val == [ids[i] for i in order[:74]]
    assert split_cases(ids, seed=43)[1] != val


def test_split_is_saved_as_csv(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    train, val = split_cases(ids, csv_path=tmp_path / "runs" / "split.csv")
    table = pd.read_csv(tmp_path / "runs" / "split.csv")
    assert list(table.columns) == ["case_id", "split"] and table["case_id"].tolist() == sorted(ids)
    assert sorted(table.loc[table["split"] == "val", "case_id"]) == sorted(val)
    assert len(val) == 2


def test_split_refuses_to_leave_no_training_case():
    with pytest.raises(ValueError):
        split_cases(["a"], val_fraction=0.2)


# --- patches -------------------------------------------------------------------------


@pytest.mark.parametrize("start", [(0, 0, 0), (-3, 2, 5), (4, -6, 9), (-10, -10, -10), (7, 7, 7)])
def test_extract_patch_matches_padding_then_slicing(start):
    array = np.arange(2 * 9 * 10 * 11, dtype=np.float32).reshape(2, 9, 10, 11) + 1
    size = (6, 12, 5)
    pad = 20
    reference = np.pad(array, [(0, 0)] + [(pad, pad)] * 3)
    window = tuple(slice(s + pad, s + pad + n) for s, n in zip(start, size, strict=True))
    expected = reference[(slice(None), *window)]
    np.testing.assert_array_equal(extract_patch(array, start, size), expected)


def test_volumes_smaller_than_the_patch_are_zero_padded_around_the_centre(tmp_path):
    labels = np.ones((20, 24, 30), np.uint8)
    image = np.full((4, 20, 24, 30), 5.0, np.float32)
    entry = make_entry(tmp_path, "small", labels, image)
    dataset = PatchDataset([entry], patch_size=(32, 32, 32), samples_per_volume=4, foreground_fraction=0.5)
    for index in range(len(dataset)):
        image_patch, label_patch = dataset[index]
        assert image_patch.shape == (4, 32, 32, 32) and label_patch.shape == (32, 32, 32)
        assert image_patch.dtype == torch.float32 and label_patch.dtype == torch.int64
        # the volume sits centred: (32 - 20) / 2 = 6 voxels of padding before it along x, etc.
        expected = np.zeros((32, 32, 32))
        expected[6:26, 4:28, 1:31] = 1
        np.testing.assert_array_equal(label_patch.numpy(), expected)
        np.testing.assert_array_equal(image_patch.numpy()[0], expected * 5)


@pytest.mark.parametrize("fraction", [0.0, 0.4, 1.0])
def test_requested_foreground_share_is_met(tmp_path, fraction):
    labels = tumour_volume()
    entry = make_entry(tmp_path, "one", labels)
    n = 1500
    dataset = PatchDataset([entry], patch_size=(8, 8, 8), samples_per_volume=n, foreground_fraction=fraction)
    hits = np.mean([dataset.sample(i)[1][4, 4, 4] > 0 for i in range(n)])
    # a uniform patch start in [0, 32] puts the patch centre (start + 4) on the 2x2x2 tumour
    # with probability q = (2/33)^3; forced patches always do
    q = (2 / 33) ** 3
    expected = fraction + (1 - fraction) * q
    assert abs(hits - expected) <= 4 * np.sqrt(expected * (1 - expected) / n) + 1e-3


def test_foreground_patches_visit_each_tumour_label_equally(tmp_path):
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:35, 5:35, 5:20] = 2  # large oedema
    labels[20, 20, 30] = 3  # one voxel of enhancing tumour
    entry = make_entry(tmp_path, "two", labels)
    n = 800
    dataset = PatchDataset([entry], patch_size=(8, 8, 8), samples_per_volume=n, foreground_fraction=1.0)
    centres = np.array([dataset.sample(i)[1][4, 4, 4] for i in range(n)])
    assert set(np.unique(centres)) == {2, 3}
    assert abs(np.mean(centres == 3) - 0.5) <= 4 * np.sqrt(0.25 / n)


def test_same_seed_same_patches_other_seed_other_patches(tmp_path):
    entry = make_entry(tmp_path, "one", tumour_volume())

    def draw(seed):
        dataset = PatchDataset([entry], patch_size=(16, 16, 16), samples_per_volume=6, augment=MIRROR_ALL,
                               seed=seed)
        return [dataset.sample(i) for i in range(6)]

    first, again, other = draw(1), draw(1), draw(2)
    for (a_img, a_lab), (b_img, b_lab) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_lab, b_lab)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    entries = [make_entry(tmp_path, f"case{i}", tumour_volume((24, 28, 20)), seed=i) for i in range(3)]

    def batches(workers):
        dataset = PatchDataset(entries, patch_size=(16, 16, 16), samples_per_volume=2,
                               augment=MIRROR_ALL, seed=7)
        loader = DataLoader(dataset, batch_size=2, sampler=EpochShuffleSampler(len(dataset), seed=7),
                            num_workers=workers, collate_fn=pad_collate, persistent_workers=workers > 0)
        return [batch for _ in range(2) for batch in loader]  # two epochs

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 6
    for (a_img, a_lab), (b_img, b_lab) in zip(serial, parallel, strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    # the second epoch draws other patches than the first
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(serial[:3], serial[3:], strict=True))


def test_sampler_shuffles_each_epoch_and_resumes_with_set_epoch():
    sampler = EpochShuffleSampler(10, seed=3)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10, 20))
    sampler.set_epoch(1)
    assert list(sampler) == epoch1


# --- augmentation --------------------------------------------------------------------


def _image_and_function_of_it(shape, seed=0):
    """A random image whose four channels and label map are fixed functions of one base volume."""
    base = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    image = np.stack([base * (k + 1) + k for k in range(4)])
    labels = np.digitize(base, [-0.5, 0.3, 1.0]).astype(np.uint8)  # {0, 1, 2, 3}
    return image, labels


@pytest.mark.parametrize("name", ["in_plane", "mirror", "strong"])
@pytest.mark.parametrize("shape", [(12, 12, 7), (10, 14, 6)])
def test_named_augmentations_keep_modalities_and_mask_aligned(name, shape):
    image, labels = _image_and_function_of_it(shape)
    transform = augmentation_for(name)
    for seed in range(12):
        out_image, out_labels = transform(image, labels, rng=np.random.default_rng(seed))
        assert out_image.shape[0] == 4 and out_image.shape[1:] == out_labels.shape == shape
        assert set(np.unique(out_labels)) <= set(TRAIN_LABELS) and out_labels.dtype == np.uint8
        if name == "strong":
            continue  # resampled and intensity-changed: alignment is tested in test_augment.py
        base = out_image[0]
        for k in range(4):
            np.testing.assert_allclose(out_image[k], base * (k + 1) + k, rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(out_labels, np.digitize(base, [-0.5, 0.3, 1.0]))


@pytest.mark.parametrize(("transform", "expected"), [(IN_PLANE, 8), (MIRROR_ALL, 16)])
def test_augmentation_draws_every_symmetry_of_its_group(transform, expected):
    # reference: the 8 symmetries of the axial (x, y) plane, the same for every z slice, and
    # with MIRROR_ALL each of them also mirrored along z
    _, labels = _image_and_function_of_it((6, 6, 3))
    in_plane = [np.rot90(flipped, k, axes=(0, 1)) for flipped in (labels, labels[::-1]) for k in range(4)]
    depth_flips = (False, True) if transform is MIRROR_ALL else (False,)
    symmetries = {(s[:, :, ::-1] if z else s).tobytes() for s in in_plane for z in depth_flips}
    assert len(symmetries) == expected
    image = np.stack([labels.astype(np.float32)] * 4)
    outcomes = {transform(image, labels, rng=np.random.default_rng(s))[1].tobytes() for s in range(300)}
    assert outcomes == symmetries


def test_whole_crops_deeper_than_128_slices_are_augmented(tmp_path):
    # OpenCV 5 refuses more than 128 channels in cv2.flip: the old albumentations path, which
    # passed the z slices as channels, crashed on every crop deeper than 128 slices
    labels = np.zeros((20, 18, 155), np.uint8)
    labels[5:12, 4:10, 60:100] = 2
    entry = make_entry(tmp_path, "deep", labels)
    dataset = PatchDataset([entry], patch_size=None, samples_per_volume=8, augment=MIRROR_ALL, seed=3)
    for index in range(8):
        image, out = dataset[index]
        assert image.shape == (4, 20, 18, 155) and out.shape == (20, 18, 155)
        assert int((out == 2).sum()) == int((labels == 2).sum())


# --- collation, validation volumes, loaders ------------------------------------------


def test_pad_collate_pads_whole_volumes_to_the_largest():
    a = (torch.ones(4, 3, 5, 2), torch.ones(3, 5, 2, dtype=torch.int64))
    b = (torch.full((4, 4, 2, 3), 2.0), torch.full((4, 2, 3), 2, dtype=torch.int64))
    images, labels = pad_collate([a, b])
    assert images.shape == (2, 4, 4, 5, 3) and labels.shape == (2, 4, 5, 3)
    assert images[0].sum() == 4 * 3 * 5 * 2 and labels[1].sum() == 2 * 4 * 2 * 3
    assert torch.equal(images[1, :, :4, :2, :3], b[0])


def test_volume_dataset_returns_whole_volumes(tmp_path):
    labels = tumour_volume((10, 12, 14))
    entry = make_entry(tmp_path, "vol", labels)
    image, label, case_id = VolumeDataset([entry])[0]
    assert image.shape == (4, 10, 12, 14) and image.dtype == torch.float32
    assert torch.equal(label, torch.from_numpy(labels.astype(np.int64))) and case_id == "vol"


def test_make_loaders_follow_the_profile(tmp_path):
    cache = tmp_path / "cache"
    for i in range(6):
        make_entry(cache, f"BraTS20_Training_{i + 1:03d}", tumour_volume((36, 40, 34)), seed=i)
    profile = get_profile("ci")
    loader, validation = make_loaders(cache, profile.data, profile.loader, split_csv=tmp_path / "split.csv")
    split = pd.read_csv(tmp_path / "split.csv")
    counts = split["split"].value_counts()
    assert counts["val"] == len(validation) == 1 and counts["test"] == 2  # ci holds out 2 test cases first
    assert set(split.loc[split["split"] == "test", "case_id"]).isdisjoint(e.name for e in validation.entries)
    assert loader.batch_size == profile.batch_size
    assert loader.pin_memory == torch.cuda.is_available()
    images, labels = next(iter(loader))
    assert images.shape == (profile.batch_size, 4, *profile.patch_size) and images.dtype == torch.float32
    assert labels.shape == (profile.batch_size, *profile.patch_size) and labels.dtype == torch.int64
    assert len(loader.dataset) == 3 * profile.samples_per_volume
    assert {e.name for e in loader.dataset.entries}.isdisjoint(e.name for e in validation.entries)
