"""preprocess: brain mask, crop/uncrop, z-score inside the brain, label maps, metadata and the disk cache."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from brats_utils import preprocess
from brats_utils.errors import CacheError, LabelValueError, ShapeMismatchError
from brats_utils.preprocess import (
    CropMeta,
    bounding_box,
    brain_mask,
    build_cache,
    cache_entries,
    cache_key,
    is_up_to_date,
    load_cached,
    preprocess_case,
    to_file_labels,
    to_train_labels,
    uncrop,
    zscore_in_mask,
)


class Loaded:
    """Stand-in for io.LoadedCase built from arrays (same attributes)."""

    def __init__(self, image, labels, case_id="case_x", affine=None, header=None):
        self.case_id, self.image, self.labels = case_id, image, labels
        self.affine = np.eye(4) if affine is None else affine
        self.header = header


def head_phantom(shape=(30, 34, 26), seed=0):
    """Raw-intensity image with an ellipsoid 'brain' on a zero background, and labels inside it."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[tuple(slice(0, n) for n in shape)]
    brain = ((x - 14) / 9) ** 2 + ((y - 17) / 11) ** 2 + ((z - 12) / 8) ** 2 <= 1
    scales = np.array([300, 800, 1200, 50])[:, None, None, None]
    image = np.where(brain, rng.normal(1.0, 0.2, (4, *shape)) * scales + 40, 0).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[12:16, 15:19, 10:13] = 2
    labels[13:15, 16:18, 11:12] = 4
    labels[13, 16, 10] = 1
    return image, labels, brain


# --- one case ------------------------------------------------------------------------


def test_brain_mask_is_any_modality_non_zero():
    image = np.zeros((4, 3, 3, 3), np.float32)
    image[0, 0, 0, 0] = 5
    image[3, 2, 2, 2] = -1  # negative intensities count as brain too
    mask = brain_mask(image)
    assert mask.sum() == 2 and mask[0, 0, 0] and mask[2, 2, 2]


def test_bounding_box_grows_by_margin_and_clips_to_the_array():
    mask = np.zeros((10, 10, 10), bool)
    mask[3, 4, 5] = mask[6, 8, 7] = True
    # hand arithmetic: x 3..6 -> 1..9, y 4..8 -> 2..11 clipped to 10, z 5..7 -> 3..10
    assert bounding_box(mask, 2) == (slice(1, 9), slice(2, 10), slice(3, 10))
    assert bounding_box(mask, 0) == (slice(3, 7), slice(4, 9), slice(5, 8))
    assert bounding_box(np.zeros((4, 5, 6), bool), 2) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_zscore_gives_mean_0_std_1_inside_the_brain_and_0_outside():
    image, _, brain = head_phantom()
    out = zscore_in_mask(image, brain)
    assert out.dtype == np.float32
    for channel in range(4):
        values = out[channel][brain].astype(np.float64)
        assert abs(values.mean()) < 1e-5 and abs(values.std() - 1) < 1e-5
        # second implementation: the textbook formula on the raw brain voxels
        raw = image[channel][brain].astype(np.float64)
        np.testing.assert_allclose(values, (raw - raw.mean()) / raw.std(), atol=1e-5)
    assert np.all(out[:, ~brain] == 0)


def test_constant_modality_becomes_zeros_with_a_warning_never_nan():
    image, _, brain = head_phantom()
    image[2][brain] = 7.0
    with pytest.warns(UserWarning, match="t1ce of case c9 is constant"):
        out = zscore_in_mask(image, brain, case_id="c9")
    assert np.isfinite(out).all() and np.all(out[2] == 0)
    assert abs(out[0][brain].std() - 1) < 1e-5  # the other modalities are still normalised


def test_label_maps_round_trip_and_match_the_brats_convention():
    file_labels = np.array([0, 1, 2, 4, 4, 0], np.uint8)
    train = to_train_labels(file_labels)
    assert train.tolist() == [0, 1, 2, 3, 3, 0] and train.dtype == np.uint8
    assert to_file_labels(train).tolist() == file_labels.tolist()
    # nibabel's get_fdata gives floats: accepted as well
    assert to_train_labels(file_labels.astype(np.float64)).tolist() == [0, 1, 2, 3, 3, 0]


@pytest.mark.parametrize("bad", [3, 5, 255])
def test_unknown_file_labels_are_rejected(bad):
    with pytest.raises(LabelValueError, match=rf"\[{bad}\].*case c1"):
        to_train_labels(np.array([0, 1, bad], np.uint8), case_id="c1")


def test_unknown_train_labels_are_rejected():
    with pytest.raises(LabelValueError):
        to_file_labels(np.array([0, 4], np.uint8))
    with pytest.raises(LabelValueError):
        to_train_labels(np.array([0.0, 1.5]))


def test_preprocess_crops_normalises_and_remaps():
    image, labels, brain = head_phantom()
    pre = preprocess_case(Loaded(image, labels), margin=2)
    box = bounding_box(brain, 2)
    assert pre.meta.slices == box and pre.image.shape == (4, *pre.meta.cropped_shape)
    assert pre.meta.original_shape == image.shape[1:]
    crop_brain = brain[box]
    assert np.all(pre.image[:, ~crop_brain] == 0)
    for channel in range(4):
        assert abs(pre.image[channel][crop_brain].mean()) < 1e-5
    assert set(np.unique(pre.labels)) == {0, 1, 2, 3}


def test_crop_then_uncrop_returns_the_original_exactly():
    image, labels, _ = head_phantom()
    pre = preprocess_case(Loaded(image, labels), margin=1)
    np.testing.assert_array_equal(uncrop(to_file_labels(pre.labels), pre.meta), labels)
    np.testing.assert_array_equal(uncrop(image[(slice(None), *pre.meta.slices)], pre.meta), image)
    # what the network predicts on the crop lands on the same voxels of the original grid
    np.testing.assert_array_equal(uncrop(brain_mask(pre.image), pre.meta), brain_mask(image))
    with pytest.raises(ShapeMismatchError):
        uncrop(pre.labels[1:], pre.meta)


def test_tumour_outside_the_brain_mask_is_not_cropped_away():
    image, labels, brain = head_phantom()
    labels[0, 0, 0] = 2  # a label on background: kept, so un-cropping is still exact
    pre = preprocess_case(Loaded(image, labels), margin=0)
    assert pre.meta.bbox[0][0] == 0
    np.testing.assert_array_equal(uncrop(to_file_labels(pre.labels), pre.meta), labels)


def test_case_without_segmentation():
    image, _, _ = head_phantom()
    pre = preprocess_case(Loaded(image, None))
    assert pre.labels is None and pre.image.shape[0] == 4


def test_crop_meta_is_json_and_restores_affine_and_header():
    image, labels, _ = head_phantom()
    affine = np.array([[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    header = nib.Nifti1Header()
    header.set_data_shape(image.shape[1:])
    header.set_zooms((1.0, 1.0, 1.0))
    header["descrip"] = b"test header"
    pre = preprocess_case(Loaded(image, labels, affine=affine, header=header))
    restored = CropMeta.from_dict(json.loads(json.dumps(pre.meta.to_dict())))
    assert restored == pre.meta
    np.testing.assert_array_equal(restored.affine_array, affine)
    assert restored.header.binaryblock == header.binaryblock


# --- the cache -----------------------------------------------------------------------


@pytest.fixture
def dataset_cases(synthetic_root):
    from brats_utils.datasets import find_dataset

    return find_dataset(synthetic_root, split="training")[:3]


def _files(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())


def test_cache_entries_hold_what_preprocess_case_gives(dataset_cases, tmp_path):
    from brats_utils.io import load_case

    case = dataset_cases[0]
    entries = build_cache(dataset_cases, tmp_path / "cache", margin=2, workers=1, progress=False)
    assert entries == cache_entries(tmp_path / "cache")
    cached = load_cached(entries[0])
    fresh = preprocess_case(load_case(case), margin=2)
    assert isinstance(cached.image, np.memmap) and cached.image.dtype == np.float16
    np.testing.assert_allclose(cached.image, fresh.image, atol=2e-3, rtol=1e-3)  # float16 precision
    np.testing.assert_array_equal(cached.labels, fresh.labels)
    assert cached.meta == fresh.meta
    foreground = preprocess.load_foreground(entries[0])
    assert np.all(fresh.labels[tuple(foreground[:, 1:].T)] == foreground[:, 0])


def test_up_to_date_entries_are_skipped_and_the_input_is_untouched(dataset_cases, synthetic_root,
                                                                    tmp_path, monkeypatch):
    before = _files(synthetic_root)
    build_cache(dataset_cases, tmp_path, workers=1, progress=False)
    stamps = _files(tmp_path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("an up-to-date entry was rebuilt")

    monkeypatch.setattr(preprocess, "_cache_case", must_not_run)
    build_cache(dataset_cases, tmp_path, workers=1, progress=False)
    assert _files(tmp_path) == stamps and _files(synthetic_root) == before


def test_changed_settings_rebuild_the_entry(dataset_cases, tmp_path):
    case = dataset_cases[0]
    [entry] = build_cache([case], tmp_path, margin=0, workers=1, progress=False)
    small = load_cached(entry).image.shape
    assert not is_up_to_date(entry, cache_key(case, margin=3))
    build_cache([case], tmp_path, margin=3, workers=1, progress=False)
    cached = load_cached(entry)
    assert cached.meta.margin == 3 and is_up_to_date(entry, cache_key(case, margin=3))
    assert all(b >= a for a, b in zip(small[1:], cached.image.shape[1:], strict=True))
    assert cached.image.shape != small


def test_format_version_is_part_of_the_key(dataset_cases, monkeypatch):
    key = cache_key(dataset_cases[0], margin=2)
    monkeypatch.setattr(preprocess, "CACHE_FORMAT_VERSION", preprocess.CACHE_FORMAT_VERSION + 1)
    assert cache_key(dataset_cases[0], margin=2) != key


@pytest.mark.parametrize("stale_entry_exists", [False, True])
def test_a_crash_mid_write_leaves_no_trusted_entry(dataset_cases, tmp_path, monkeypatch, stale_entry_exists):
    case = dataset_cases[0]
    if stale_entry_exists:
        [entry] = build_cache([case], tmp_path, margin=0, workers=1, progress=False)
        stale_image = np.array(load_cached(entry).image)
    real_save = np.save

    def save_then_crash(path, array, *args, **kwargs):
        real_save(path, array, *args, **kwargs)
        if str(path).endswith(preprocess.LABELS_FILE):
            raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(preprocess.np, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        build_cache([case], tmp_path, margin=2, workers=1, progress=False)
    monkeypatch.undo()

    key = cache_key(case, margin=2)
    assert not is_up_to_date(tmp_path / case.case_id, key)
    assert not list(tmp_path.glob(".tmp-*"))
    if stale_entry_exists:  # the old entry is intact (consistent with its own meta), just not current
        old = load_cached(tmp_path / case.case_id)
        assert old.meta.margin == 0 and old.image.shape[1:] == old.meta.cropped_shape
        np.testing.assert_array_equal(old.image, stale_image)
    else:
        assert not (tmp_path / case.case_id).exists() and cache_entries(tmp_path) == []
    # the next build repairs it
    build_cache([case], tmp_path, margin=2, workers=1, progress=False)
    assert is_up_to_date(tmp_path / case.case_id, key)


def test_parallel_build_matches_serial_build(dataset_cases, tmp_path):
    serial = build_cache(dataset_cases, tmp_path / "serial", workers=1, progress=False)
    parallel = build_cache(dataset_cases, tmp_path / "parallel", workers=2, progress=False)
    assert [p.name for p in parallel] == [c.case_id for c in dataset_cases]
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(load_cached(a).image, load_cached(b).image)
        np.testing.assert_array_equal(load_cached(a).labels, load_cached(b).labels)


def test_cache_is_never_written_inside_the_dataset(dataset_cases):
    inside = dataset_cases[0].folder.parent / "cache"
    with pytest.raises(CacheError, match="next to the input"):
        build_cache(dataset_cases, inside, workers=1, progress=False)
    assert not inside.exists()


def test_damaged_entry_is_reported(tmp_path):
    (tmp_path / "case_y").mkdir()
    (tmp_path / "case_y" / "meta.json").write_text("{not json")
    with pytest.raises(CacheError, match="meta.json"):
        load_cached(tmp_path / "case_y")


def test_ensure_cache_builds_the_profile_cache(synthetic_root, monkeypatch, tmp_path):
    from brats_utils import pipeline
    from brats_utils.config import get_profile
    from brats_utils.datasets import find_dataset

    profile = get_profile("ci").with_overrides(max_cases=2)
    monkeypatch.setattr(pipeline, "ensure_dataset", lambda p: synthetic_root)
    monkeypatch.setattr(type(profile), "cache_dir", property(lambda self: tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no constant-modality surprises on the synthetic data
        folder = pipeline.ensure_cache(profile, progress=False)
    assert folder == tmp_path / "cache"
    assert [p.name for p in cache_entries(folder)] == [c.case_id for c in find_dataset(synthetic_root)[:2]]
