"""From cached cases to training batches: patient split, patches, foreground oversampling, augmentation.

- :func:`split_cases`: the authors' patient-level 80/20 split (``train_test_split`` of the
  sorted case ids with ``random_state=42``); :func:`split_patients` adds a held-out test
  set before it and the authors' exclusion of case 355 after it, saved as CSV so runs are comparable.
- :class:`PatchDataset`: random patches read from memory-mapped cache arrays (only the
  patch's bytes are read), a share of them centred on tumour, padded where the volume is
  smaller than the patch, augmented. Every item's randomness comes from
  ``(seed, index)`` alone, so a run is reproducible whatever the number of loader workers.
- :class:`EpochShuffleSampler`: a new order and new patches every epoch, still seeded.
- :class:`VolumeDataset`: whole cropped volumes for validation.
- Augmentation comes from :mod:`brats_utils.augment` (named by :func:`~brats_utils.augment.augmentation_for`):
  one transform for the whole 3D patch (the authors drew their flips per slice, breaking 3D consistency).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from brats_utils.augment import augmentation_for
from brats_utils.errors import CacheError
from brats_utils.files import write_csv_atomic
from brats_utils.labels import Shape3D
from brats_utils.preprocess import PreprocessedCase, cache_entries, load_cached, load_foreground

# --- patient-level split -------------------------------------------------------------


def split_cases(case_ids: Sequence[str], *, val_fraction: float = 0.2, seed: int = 42,
                csv_path: str | Path | None = None) -> tuple[list[str], list[str]]:
    """Split case ids into (train, validation) at patient level, as the authors did.

    Reproduces scikit-learn's ``train_test_split(sorted(case_ids), test_size=val_fraction,
    random_state=seed)`` without depending on it: ``ceil(val_fraction * n)`` validation
    cases are the first entries of ``np.random.RandomState(seed).permutation(n)``, the
    rest are training cases, both in that permuted order. For the 369 BraTS 2020 cases
    this gives the paper's 295 / 74. With ``csv_path`` the split is also written there
    (columns ``case_id,split``, sorted by case id).
    """
    ids = sorted(case_ids)
    n_val = math.ceil(val_fraction * len(ids))
    if not 0 <= n_val < len(ids):
        raise ValueError(f"cannot hold out {n_val} of {len(ids)} cases for validation "
                         f"(val_fraction={val_fraction})")
    order = np.random.RandomState(seed).permutation(len(ids))
    val = [ids[i] for i in order[:n_val]]
    train = [ids[i] for i in order[n_val:]]
    if csv_path is not None:
        table = pd.DataFrame({"case_id": train + val, "split": ["train"] * len(train) + ["val"] * len(val)})
        write_csv_atomic(table.sort_values("case_id"), csv_path)
    return train, val


#: Names of the parts of a split, as the split CSV writes them.
SPLIT_NAMES = ("train", "val", "test", "excluded")


def _split_stratified(ids: Sequence[str], fraction: float, seed: int,
                      stratum: Sequence[str]) -> tuple[list[str], list[str]]:
    """(kept, held out) with ``ceil(fraction * n)`` held out, shared between ``stratum`` and the rest.

    Each group (the ids in ``stratum``, the others) holds out its proportional share, rounded by
    largest remainder (ties to the stratum, the smaller group), in the order of
    :func:`split_cases` applied to the group alone; without ``stratum`` this is :func:`split_cases`.
    """
    members = set(stratum) & set(ids)
    if not members:
        return split_cases(ids, val_fraction=fraction, seed=seed)
    groups = [sorted(members), sorted(set(ids) - members)]
    quotas = [fraction * len(group) for group in groups]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(2), key=lambda g: counts[g] - quotas[g])  # stable: the stratum first on ties
    for g in by_remainder[: math.ceil(fraction * len(ids)) - sum(counts)]:
        counts[g] += 1
    kept: list[str] = []
    held: list[str] = []
    for group, count in zip(groups, counts, strict=True):
        order = np.random.RandomState(seed).permutation(len(group))
        held += [group[i] for i in order[:count]]
        kept += [group[i] for i in order[count:]]
    if not kept:
        raise ValueError(f"cannot hold out {len(held)} of {len(ids)} cases (fraction={fraction})")
    return kept, held


def split_patients(case_ids: Sequence[str], *, val_fraction: float = 0.2, test_fraction: float = 0.0,
                   seed: int = 42, exclude_from_training: Sequence[str] = (), fold: int | None = None,
                   n_folds: int = 5, stratum: Sequence[str] = (),
                   csv_path: str | Path | None = None) -> dict[str, list[str]]:
    """Split case ids at patient level into ``{"train", "val", "test", "excluded"}`` lists.

    First ``test_fraction`` of the patients are held out as test cases (:func:`split_cases` with
    ``test_fraction`` in place of ``val_fraction``; none when it is 0), then the rest is split into
    training and validation cases by :func:`split_cases` with ``val_fraction`` and the same seed. With
    ``test_fraction=0`` this is exactly :func:`split_cases` (the authors' 295 / 74 on BraTS 2020).
    With ``fold=k`` the non-test patients are instead cut into ``n_folds`` folds (the seeded permutation
    of their sorted ids, in ``n_folds`` nearly equal consecutive parts): fold ``k`` is the validation
    set, the others train; over ``k = 0 .. n_folds - 1`` every non-test patient validates exactly once
    (out-of-fold), and the test cases are the same for every fold.
    With ``stratum`` (e.g. the low-grade cases) the test and validation cases are drawn
    proportionally from the ids in it and from the others (same counts as without it, shared by
    largest remainder), so that each part holds its share of both; folds are not stratified.
    Ids in ``exclude_from_training`` are then removed from the training cases (the authors dropped case
    355 after their split: 294 / 74) and listed as ``"excluded"``. The validation cases drive the
    schedule, early stopping and the best checkpoint; the test cases are for the final report only.
    With ``csv_path`` the split is written there (columns ``case_id,split``, sorted by case id).
    """
    ids = sorted(case_ids)
    test: list[str] = []
    rest = ids
    if test_fraction > 0:
        rest, test = _split_stratified(ids, test_fraction, seed, stratum)
    if fold is None:
        train, val = _split_stratified(rest, val_fraction, seed, stratum)
    else:
        if not 0 <= fold < n_folds <= len(rest):
            raise ValueError(f"fold {fold} of {n_folds} needs 0 <= fold < n_folds <= {len(rest)} cases")
        rest = sorted(rest)
        parts_of = np.array_split(np.random.RandomState(seed).permutation(len(rest)), n_folds)
        val = [rest[i] for i in parts_of[fold]]
        train = [rest[i] for k, part in enumerate(parts_of) if k != fold for i in part]
    dropped = set(exclude_from_training)
    parts = {"train": [i for i in train if i not in dropped], "val": val, "test": test,
             "excluded": [i for i in train if i in dropped]}
    if not parts["train"]:
        raise ValueError(f"no training cases left of {len(ids)} (val_fraction={val_fraction}, "
                         f"test_fraction={test_fraction})")
    if csv_path is not None:
        table = pd.DataFrame([(case_id, name) for name in SPLIT_NAMES for case_id in parts[name]],
                             columns=["case_id", "split"])
        write_csv_atomic(table.sort_values("case_id"), csv_path)
    return parts


# --- patches -------------------------------------------------------------------------


def extract_patch(array: np.ndarray, start: Sequence[int], size: Sequence[int],
                  dtype: np.dtype | type | None = None) -> np.ndarray:
    """The block ``[..., start : start + size]`` of the last three axes; parts outside the array are 0.

    ``start`` may be negative or run past the end (padding); only the voxels inside the
    array are read, so on a memmap this touches just the patch's bytes. With ``dtype`` the
    values are converted while they are copied (one pass instead of two).
    """
    out = np.zeros(array.shape[:-3] + tuple(size), dtype=dtype or array.dtype)
    src, dst = [], []
    for begin, length, extent in zip(start, size, array.shape[-3:], strict=True):
        lo, hi = max(begin, 0), min(begin + length, extent)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - begin, max(hi, lo) - begin))
    out[(..., *dst)] = array[(..., *src)]
    return out


def choose_patch_start(shape: Shape3D, patch_size: Shape3D, foreground: np.ndarray,
                       foreground_fraction: float, rng: np.random.Generator) -> Shape3D:
    """Corner of a patch: centred on a tumour voxel with probability ``foreground_fraction``, else uniform.

    ``foreground`` holds rows ``(label, x, y, z)``; a tumour label is first drawn
    uniformly among those present, so small sub-regions (enhancing tumour) are seen as
    often as large ones. Along an axis where the volume is smaller than the patch, the
    volume is centred in the patch (the start is negative: zero padding).
    """
    shape, patch = np.asarray(shape), np.asarray(patch_size)
    fits = shape >= patch
    low = np.where(fits, 0, (shape - patch) // 2)  # negative (volume centred) where it is smaller
    high = np.where(fits, shape - patch, low)
    if len(foreground) and rng.random() < foreground_fraction:
        label = rng.choice(np.unique(foreground[:, 0]))
        rows = foreground[foreground[:, 0] == label]
        centre = rows[rng.integers(len(rows)), 1:]
        start = np.clip(centre - patch // 2, low, high)
    else:
        start = rng.integers(low, high + 1)
    return tuple(int(s) for s in start)


class PatchDataset(Dataset):
    """Random training patches from cache entries, ``samples_per_volume`` per case and epoch.

    ``__getitem__`` returns ``(image float32 [4, *patch_size], labels int64 [*patch_size])``;
    ``patch_size=None`` returns whole cropped volumes. The randomness of item ``index``
    depends only on ``(seed, index)``; indices beyond ``len(self)`` are allowed and stand
    for later epochs (see :class:`EpochShuffleSampler`). Arrays are memory-mapped lazily
    in the process that reads them, so the dataset is safe to share with loader workers.
    ``augment``: a transform called as ``augment(image, labels, rng=rng)`` (see
    :mod:`brats_utils.augment`), or ``None``.
    """

    def __init__(self, entries: Sequence[str | Path], *, patch_size: Shape3D | None = (128, 128, 128),
                 samples_per_volume: int = 2, foreground_fraction: float = 0.5,
                 augment: Callable | None = None, seed: int = 42) -> None:
        if not entries:
            raise CacheError("no cache entries to sample patches from", expected="at least one entry")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.entries = [Path(e) for e in entries]
        self.patch_size = None if patch_size is None else tuple(int(s) for s in patch_size)
        self.samples_per_volume = int(samples_per_volume)
        self.foreground_fraction = float(foreground_fraction)
        self.transform = augment
        self.seed = int(seed)
        self._opened: dict[int, tuple[PreprocessedCase, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        """Workers receive the dataset without open memmaps and open their own."""
        return {**self.__dict__, "_opened": {}}

    def __len__(self) -> int:
        return len(self.entries) * self.samples_per_volume

    def _open(self, volume: int) -> tuple[PreprocessedCase, np.ndarray]:
        if volume not in self._opened:
            case = load_cached(self.entries[volume], mmap=True)
            if case.labels is None:
                raise CacheError("cache entry has no labels to train on", case_id=case.case_id,
                                 path=self.entries[volume], expected="a training case with a segmentation")
            self._opened[volume] = (case, load_foreground(self.entries[volume]))
        return self._opened[volume]

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` as numpy arrays: image float32 ``[4, *patch]``, labels uint8 ``[*patch]``."""
        case, foreground = self._open((index % len(self)) // self.samples_per_volume)
        rng = np.random.default_rng([self.seed, index])
        shape = case.labels.shape
        if self.patch_size is None:
            start, size = (0, 0, 0), shape
        else:
            size = self.patch_size
            start = choose_patch_start(shape, size, foreground, self.foreground_fraction, rng)
        image = extract_patch(case.image, start, size, dtype=np.float32)
        labels = extract_patch(case.labels, start, size)
        if self.transform is not None:
            image, labels = self.transform(image, labels, rng=rng)
        return image, labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.sample(index)
        return torch.from_numpy(image), torch.from_numpy(labels.astype(np.int64))


class EpochShuffleSampler(Sampler[int]):
    """Yields every item of a :class:`PatchDataset` once per epoch in a seeded random order.

    Epoch ``e`` yields indices ``e * size + permutation``, so each epoch draws new patches
    (and new augmentations) while staying reproducible. The epoch advances by itself at
    each pass; :meth:`set_epoch` sets it (when resuming a run). It lives in the main
    process, so this works with persistent loader workers.
    """

    def __init__(self, size: int, seed: int = 42) -> None:
        self.size, self.seed, self.epoch = int(size), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass draws."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size) + self.epoch * self.size
        self.epoch += 1
        return iter(order.tolist())


def pad_collate(batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Stack ``(image [C, *s], labels [*s])`` items, zero-padding each to the largest shape of the batch.

    Patches share one shape and are stacked as they are; whole cropped volumes differ in
    size and are padded at the end of each axis (0 is the background of both arrays).
    """
    shapes = [item[1].shape for item in batch]
    if len(set(shapes)) > 1:
        target = [max(s[axis] for s in shapes) for axis in range(3)]

        def pad(t: torch.Tensor) -> torch.Tensor:
            widths = [w for axis in reversed(range(3)) for w in (0, target[axis] - t.shape[-3 + axis])]
            return torch.nn.functional.pad(t, widths)

        batch = [(pad(image), pad(labels), *rest) for image, labels, *rest in batch]
    return default_collate(batch)


class VolumeDataset(Dataset):
    """Whole cropped validation volumes: ``(image float32 [4, h, w, d], labels int64 [h, w, d], case_id)``."""

    def __init__(self, entries: Sequence[str | Path]) -> None:
        self.entries = [Path(e) for e in entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        case = load_cached(self.entries[index], mmap=True)
        if case.labels is None:
            raise CacheError("cache entry has no labels to validate against", case_id=case.case_id,
                             path=self.entries[index], expected="a training case with a segmentation")
        image = torch.from_numpy(np.asarray(case.image, dtype=np.float32))
        return image, torch.from_numpy(case.labels.astype(np.int64)), case.case_id


def split_volumes(cache_dir: str | Path, split_csv: str | Path, split: str) -> VolumeDataset:
    """The cached volumes of one part (``"train"``, ``"val"``, ``"test"``) of a saved split, in its order.

    ``split_csv`` is a run's ``split.csv`` (written by :func:`split_patients`); a part without cases
    is a ``ValueError`` naming the file and the parts it has.
    """
    table = pd.read_csv(split_csv)
    case_ids = table.loc[table["split"] == split, "case_id"]
    if case_ids.empty:
        raise ValueError(f"{split_csv} has no {split!r} cases (it has: {sorted(set(table['split']))})")
    return VolumeDataset([Path(cache_dir) / case_id for case_id in case_ids])


class SplitSettings(Protocol):
    """The patient split :func:`make_loaders` draws (a profile's ``data`` section has these fields)."""

    max_cases: int | None
    val_fraction: float
    test_fraction: float
    exclude_from_training: Sequence[str]
    stratify_split: Sequence[str]
    fold: int | None
    n_folds: int
    seed: int
    data_seed: int | None  # seeds the patches, their augmentation and their order (None: seed)


class PatchSettings(Protocol):
    """The patches and batches :func:`make_loaders` draws (a profile's ``loader`` section has these)."""

    patch_size: Shape3D | None
    samples_per_volume: int
    foreground_fraction: float
    augmentation: str
    batch_size: int
    num_workers: int


def make_loaders(cache_dir: str | Path, split: SplitSettings, patches: PatchSettings, *,
                 split_csv: str | Path | None, batch_size: int | None = None,
                 sampler: Callable[..., Sampler[int]] | None = None) -> tuple[DataLoader, VolumeDataset]:
    """Training patches (a DataLoader) and validation volumes of the cached cases in ``cache_dir``.

    The cached cases (the first ``split.max_cases`` if set) are split with :func:`split_patients`
    (``val_fraction``, ``test_fraction``, ``seed``, ``exclude_from_training``, ``fold`` of ``n_folds``,
    ``stratify_split`` as the stratum); the split is saved to ``split_csv`` (None: not saved, e.g. on
    the ranks of a distributed run other than 0). The test cases reach neither loader: nothing in
    training sees them. ``sampler(size, seed)`` builds the patch order (default
    :class:`EpochShuffleSampler`; a distributed run passes its ``ShardedEpochSampler`` and its
    per-rank ``batch_size``, default ``patches.batch_size``). The patches follow
    :class:`PatchDataset`'s arguments from ``patches``, with the transform that
    ``patches.augmentation`` names (:func:`brats_utils.augment.augmentation_for`); memory is pinned
    only when CUDA is available. ``split.data_seed`` (default ``split.seed``) seeds the patches, their
    augmentation and their order; the split always follows ``split.seed``. A run profile passes its
    ``data`` and ``loader`` sections.
    """
    seed = split.seed
    patch_seed = seed if split.data_seed is None else split.data_seed
    entries = cache_entries(cache_dir)[:split.max_cases]
    if not entries:
        raise CacheError("the cache holds no entries", path=cache_dir,
                         expected="a cache built by build_cache")
    by_id = {entry.name: entry for entry in entries}
    parts = split_patients(list(by_id), val_fraction=split.val_fraction, test_fraction=split.test_fraction,
                           seed=seed, exclude_from_training=split.exclude_from_training, fold=split.fold,
                           n_folds=split.n_folds, stratum=split.stratify_split, csv_path=split_csv)
    train_ids, val_ids = parts["train"], parts["val"]
    dataset = PatchDataset([by_id[i] for i in train_ids], patch_size=patches.patch_size,
                           samples_per_volume=patches.samples_per_volume,
                           foreground_fraction=patches.foreground_fraction,
                           augment=augmentation_for(patches.augmentation), seed=patch_seed)
    order = (sampler or EpochShuffleSampler)(len(dataset), seed=patch_seed)
    loader = DataLoader(dataset, batch_size=batch_size or patches.batch_size, sampler=order,
                        num_workers=patches.num_workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=patches.num_workers > 0, collate_fn=pad_collate)
    return loader, VolumeDataset([by_id[i] for i in val_ids])
