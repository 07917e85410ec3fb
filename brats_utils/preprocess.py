"""Preprocessing of one case and the disk cache of preprocessed cases.

The steps, in order (notebook 03 shows each one):

1. **Brain mask**: every voxel that is non-zero in any modality. BraTS volumes are
   skull-stripped, so the background is exactly 0 everywhere.
2. **Crop** to the bounding box of the brain (and of the tumour, should a label poke
   out of it) plus a small margin: about 60 % of a 240 x 240 x 155 volume is empty air.
3. **z-score per modality inside the brain**: MRI intensities are arbitrary scanner
   units, different in every case; subtracting the brain's mean and dividing by its
   standard deviation puts all cases on one scale. The background stays exactly 0.

Steps 2 and 3 are named settings of a profile: ``crop`` (on, or the whole grid) and
``normalisation`` (``"brain"``, or ``"volume"``: over every voxel, background included,
as the authors' code did); the cache key includes both.
4. **Labels** {0, 1, 2, 4} become {0, 1, 2, 3} so they can index the network's output
   channels; :func:`~brats_utils.labels.to_file_labels` maps predictions back (both
   conversions live in :mod:`brats_utils.labels`, with the label schemes).

:func:`preprocess_case` returns the arrays plus a JSON-able :class:`CropMeta` that puts
a prediction back on the original grid (:func:`uncrop`) with the original affine and
header. :func:`build_cache` stores every case once (float16 image, uint8 labels, a few
thousand tumour-voxel coordinates for patch sampling, ``meta.json``) so that training
reads small memory-mapped arrays instead of decoding four NIfTI files per sample.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from brats_utils.errors import CacheError, DamagedCacheWarning, ShapeMismatchError
from brats_utils.files import crc32_of, disk_full_errors, folder_lock
from brats_utils.io import Case, LoadedCase, load_case
from brats_utils.labels import (
    BRATS2020,
    MODALITIES,
    TRAIN_LABELS,
    Shape3D,
    to_file_labels,  # noqa: F401  (step 4's inverse, kept beside it for notebook 03)
    to_train_labels,
)

#: Bump when the layout or content of a cache entry changes: every entry is then rebuilt.
#: 2: ``meta.json`` records each array file's shape, dtype, size and CRC-32, so an entry proves it is whole.
CACHE_FORMAT_VERSION = 2
#: Tumour voxels remembered per training label (1, 2, 3) for foreground-centred patches.
FOREGROUND_SAMPLES_PER_LABEL = 2000

IMAGE_FILE = "image.npy"
LABELS_FILE = "labels.npy"
FOREGROUND_FILE = "foreground.npy"
META_FILE = "meta.json"
#: How to rebuild an entry, for the errors about one that is unusable.
REBUILD_HINT = ("rebuild it from the source dataset with `python -m brats_utils cache --profile <the run's "
                "profile>` (the damaged entry is then rebuilt)")

# --- one case ------------------------------------------------------------------------


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Boolean ``[H, W, D]`` mask of the voxels that are non-zero in any modality of ``[C, H, W, D]``."""
    return np.any(image != 0, axis=0)


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """Slices of the smallest box holding every ``True`` voxel, grown by ``margin`` and clipped to the array.

    An empty mask gives the whole array (there is nothing to crop away).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    slices = []
    for axis, size in enumerate(mask.shape):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return tuple(slice(0, s) for s in mask.shape)
        slices.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, size)))
    return tuple(slices)


def zscore_in_mask(image: np.ndarray, mask: np.ndarray, *, case_id: str | None = None) -> np.ndarray:
    """Normalise each modality of ``[C, H, W, D]`` to mean 0, std 1 over the ``mask`` voxels.

    Returns float32; voxels outside the mask are 0. Statistics are accumulated in float64.
    A modality that is constant inside the mask carries no information: it becomes all
    zeros and a ``UserWarning`` names it (never a division by zero and NaN).
    """
    out = np.zeros(image.shape, dtype=np.float32)
    for channel in range(image.shape[0]):
        values = image[channel][mask].astype(np.float64)
        if values.size == 0 or values.max() == values.min():
            name = MODALITIES[channel] if image.shape[0] == len(MODALITIES) else f"channel {channel}"
            where = f" of case {case_id}" if case_id else ""
            warnings.warn(f"{name}{where} is constant inside the brain: set to 0", UserWarning, stacklevel=2)
            continue
        out[channel][mask] = (values - values.mean()) / values.std()
    return out


def zscore_volume(image: np.ndarray, *, case_id: str | None = None) -> np.ndarray:
    """Normalise each modality of ``[C, H, W, D]`` over **every** voxel, background zeros included.

    The authors' normalisation (``(x - x.mean()) / x.std()`` per modality of the whole
    240 x 240 x 155 volume): the background becomes a negative constant, not 0. A constant
    modality becomes all zeros (with a ``UserWarning``, as :func:`zscore_in_mask`).
    """
    return zscore_in_mask(image, np.ones(image.shape[1:], dtype=bool), case_id=case_id)


#: The named intensity normalisations: z-score inside the brain mask, or over the whole volume.
NORMALISATIONS = ("brain", "volume")


@dataclass(frozen=True)
class CropMeta:
    """Everything needed to put a prediction on the cropped grid back into the original file's grid.

    All fields are plain JSON types; ``header_b64`` is the NIfTI header's 348 raw bytes
    (base64), so a prediction is saved with exactly the header of the input.
    """

    case_id: str
    bbox: tuple[tuple[int, int], ...]  # (start, stop) per spatial axis
    original_shape: Shape3D
    affine: list[list[float]]
    header_b64: str | None = None
    margin: int = 2

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """The crop box as slices of the original grid."""
        return tuple(slice(start, stop) for start, stop in self.bbox)

    @property
    def cropped_shape(self) -> Shape3D:
        """Spatial shape after cropping."""
        return tuple(stop - start for start, stop in self.bbox)

    @property
    def affine_array(self) -> np.ndarray:
        """The original 4x4 voxel-to-world affine."""
        return np.asarray(self.affine, dtype=np.float64)

    @property
    def header(self) -> nib.Nifti1Header | None:
        """The original NIfTI header, or ``None`` when the case did not come from a file."""
        if self.header_b64 is None:
            return None
        return nib.Nifti1Header(binaryblock=base64.b64decode(self.header_b64))

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CropMeta:
        """Inverse of :meth:`to_dict` (tuples restored from JSON lists)."""
        return cls(case_id=data["case_id"], bbox=tuple(tuple(b) for b in data["bbox"]),
                   original_shape=tuple(data["original_shape"]), affine=data["affine"],
                   header_b64=data.get("header_b64"), margin=data.get("margin", 2))


@dataclass
class PreprocessedCase:
    """A cropped, normalised case: image ``[4, h, w, d]`` (float32, or a float16 memmap from the cache)."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray | None  # uint8 training labels {0, 1, 2, 3}, or None without a segmentation
    meta: CropMeta


def preprocess_case(loaded: LoadedCase, *, margin: int = 2, normalisation: str = "brain",
                    crop: bool = True) -> PreprocessedCase:
    """Brain mask, crop (brain and tumour box + ``margin``), z-score inside the brain, training labels.

    The two named settings of a profile change steps 2 and 3: ``crop=False`` keeps the whole grid
    (the box is the volume), ``normalisation="volume"`` z-scores over every voxel of the (cropped or
    whole) volume, background included, as the authors did (:func:`zscore_volume`). The file
    labels become training labels through the case's own scheme (``loaded.scheme``: BraTS 2020
    4 -> 3, MSD Task01 1 <-> 2, BraTS 2023 unchanged).
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    mask = brain_mask(loaded.image)
    keep = mask if loaded.labels is None else mask | (loaded.labels != 0)
    box = bounding_box(keep, margin) if crop else tuple(slice(0, n) for n in mask.shape)
    if normalisation == "volume":
        image = zscore_volume(loaded.image[(slice(None), *box)], case_id=loaded.case_id)
    else:
        image = zscore_in_mask(loaded.image[(slice(None), *box)], mask[box], case_id=loaded.case_id)
    labels = None if loaded.labels is None else to_train_labels(loaded.labels[box], case_id=loaded.case_id,
                                                                scheme=getattr(loaded, "scheme", BRATS2020))
    header = getattr(loaded.header, "binaryblock", None)
    meta = CropMeta(
        case_id=loaded.case_id,
        bbox=tuple((s.start, s.stop) for s in box),
        original_shape=tuple(int(n) for n in loaded.image.shape[1:]),
        affine=np.asarray(loaded.affine, dtype=float).tolist(),
        header_b64=base64.b64encode(header).decode("ascii") if header is not None else None,
        margin=margin,
    )
    return PreprocessedCase(loaded.case_id, image, labels, meta)


def uncrop(array: np.ndarray, meta: CropMeta, fill: float = 0) -> np.ndarray:
    """Place a cropped ``(..., h, w, d)`` array back on the original grid; outside the box is ``fill``."""
    if tuple(array.shape[-3:]) != meta.cropped_shape:
        raise ShapeMismatchError(f"array of spatial shape {tuple(array.shape[-3:])} cannot be un-cropped",
                                 case_id=meta.case_id, expected=f"the crop box shape {meta.cropped_shape}")
    out = np.full(array.shape[:-3] + tuple(meta.original_shape), fill, dtype=array.dtype)
    out[(..., *meta.slices)] = array
    return out


def foreground_coordinates(labels: np.ndarray, *, per_label: int = FOREGROUND_SAMPLES_PER_LABEL,
                           seed: int = 0) -> np.ndarray:
    """Up to ``per_label`` random voxels of each tumour label, as rows ``(label, x, y, z)`` (int32).

    Remembering a sample of tumour voxels per label lets the patch sampler centre patches
    on tumour, and on each sub-region equally often (rare enhancing tumour included),
    without scanning the volume for every patch.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for label in TRAIN_LABELS[1:]:
        coords = np.argwhere(labels == label)
        if len(coords) > per_label:
            coords = coords[np.sort(rng.choice(len(coords), per_label, replace=False))]
        rows.append(np.column_stack([np.full(len(coords), label), coords]))
    return np.concatenate(rows).astype(np.int32)


# --- the cache -----------------------------------------------------------------------


def cache_key(case: Case, *, margin: int, normalisation: str = "brain", crop: bool = True) -> str:
    """Fingerprint of an entry: format version, preprocessing settings and the source files' size and time.

    Any change (another margin, normalisation or cropping, a new format, a re-downloaded file) gives a new
    key, and
    :func:`build_cache` rebuilds the entry instead of trusting it.
    """
    files = [*case.modalities.values(), *([case.seg] if case.seg is not None else [])]
    sources = [[Path(f).name, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]
    # the brain-normalised, cropped key is spelled as before these settings existed, so old caches stay valid
    settings = {"format_version": CACHE_FORMAT_VERSION, "margin": margin,
                "normalisation": f"zscore-{normalisation}",
                **({} if crop else {"crop": False}),
                "image_dtype": "float16", "foreground_per_label": FOREGROUND_SAMPLES_PER_LABEL,
                "sources": sources}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _read_meta(entry_dir: Path) -> dict:
    try:
        return json.loads((entry_dir / META_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CacheError(f"cache entry has no readable {META_FILE} ({err})", path=entry_dir,
                         expected="a folder written by build_cache") from err


def damage_of(entry_dir: Path, meta: dict, *, checksums: bool = True) -> str | None:
    """What is wrong with an entry's array files, or None when each is as ``meta.json`` recorded it.

    Every file must exist with the recorded size (a copy cut short, a full disk under another tool);
    with ``checksums`` also with the recorded CRC-32 (a file overwritten in place). The CRC-32 of a
    full-size BraTS case (25 MiB) takes about 17 ms when the file is in the page cache.
    """
    for name, record in meta.get("arrays", {}).items():
        path = Path(entry_dir) / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != record["bytes"]:
            return f"{name} has {size} bytes, {record['bytes']} were written"
        if checksums and crc32_of(path) != record["crc32"]:
            return f"{name} has another CRC-32 than was written"
    return None


def _entry_problem(entry_dir: Path, key: str, *, checksums: bool = True) -> tuple[str, str] | None:
    """Why ``entry_dir`` must be (re)built: ``("missing" | "stale" | "damaged", reason)``; None if whole."""
    if not entry_dir.exists():
        return "missing", ""
    try:
        meta = _read_meta(entry_dir)
    except CacheError as error:
        return "damaged", error.problem
    if meta.get("key") != key or meta.get("format_version") != CACHE_FORMAT_VERSION:
        return "stale", "other settings, sources or format"
    damage = damage_of(entry_dir, meta, checksums=checksums)
    return ("damaged", damage) if damage else None


def is_up_to_date(entry_dir: Path, key: str, *, checksums: bool = True) -> bool:
    """True when ``entry_dir`` is a whole entry written with ``key`` (every array as recorded; the
    CRC-32 too with ``checksums``, else only the sizes, which needs no reading)."""
    return _entry_problem(Path(entry_dir), key, checksums=checksums) is None


def write_entry(pre: PreprocessedCase, cache_dir: str | Path, *, key: str) -> Path:
    """Store a preprocessed case as ``cache_dir/<case_id>``, atomically; returns the entry folder.

    Everything is written into a temporary folder (``meta.json`` last), which is then
    renamed into place: a crash at any point leaves either the old entry or none, never
    a half-written one under the case's name. A full disk raises
    :class:`~brats_utils.errors.DiskFullError` naming ``cache_dir`` and its free space.
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / pre.case_id
    tmp = cache_dir / f".tmp-{pre.case_id}-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        with disk_full_errors(cache_dir):
            _write_files(pre, tmp, key)
        if final.exists():  # a stale entry: move it aside first (a folder cannot replace a non-empty one)
            stale = cache_dir / f".old-{pre.case_id}-{uuid.uuid4().hex}"
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_files(pre: PreprocessedCase, tmp: Path, key: str) -> None:
    """The arrays and ``meta.json`` (last) of one entry, into the folder ``tmp``."""
    np.save(tmp / IMAGE_FILE, pre.image.astype(np.float16))
    foreground = np.zeros((0, 4), np.int32)
    if pre.labels is not None:
        np.save(tmp / LABELS_FILE, pre.labels)
        foreground = foreground_coordinates(pre.labels)
    np.save(tmp / FOREGROUND_FILE, foreground)
    arrays = {}
    for name in (IMAGE_FILE, LABELS_FILE, FOREGROUND_FILE):
        if (tmp / name).is_file():
            header = np.load(tmp / name, mmap_mode="r")
            arrays[name] = {"shape": list(header.shape), "dtype": str(header.dtype),
                            "bytes": (tmp / name).stat().st_size, "crc32": crc32_of(tmp / name)}
    meta = {"format_version": CACHE_FORMAT_VERSION, "key": key, "case_id": pre.case_id,
            "has_labels": pre.labels is not None, "shape": list(pre.image.shape[1:]),
            "crop": pre.meta.to_dict(), "arrays": arrays}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))


def _cache_case(case: Case, cache_dir: Path, settings: dict, key: str) -> Path:
    """Load, preprocess (``settings``: margin, normalisation, crop) and store one case (runs in a worker)."""
    return write_entry(preprocess_case(load_case(case), **settings), cache_dir, key=key)


def build_cache(cases: Sequence[Case], cache_dir: str | Path, *, margin: int = 2,
                normalisation: str = "brain", crop: bool = True, workers: int = 2,
                progress: bool = True, wait: float = 0.0) -> list[Path]:
    """Preprocess ``cases`` into ``cache_dir`` (one folder per case); returns the entry folders in order.

    ``margin``, ``normalisation`` and ``crop`` are :func:`preprocess_case`'s; they are part of every
    entry's key. Up-to-date entries are skipped; stale ones (other settings, format or source files)
    are rebuilt. Cases are processed in ``workers`` processes (``workers <= 1``: in this
    process). Each entry appears atomically, so an interrupted build never leaves an entry
    that a later run trusts. The cache must not live inside the dataset folder. The folder
    is locked during the build: a second process waits up to ``wait`` seconds for it (one line
    names the builder), then finds the entries written and only reads them; after ``wait`` it gets
    :class:`~brats_utils.errors.FolderLockedError`. An entry whose files are not as its ``meta.json``
    recorded them (:func:`damage_of`) is rebuilt with a
    :class:`~brats_utils.errors.DamagedCacheWarning` naming the case.
    """
    cache_dir = Path(cache_dir).resolve()
    for case in cases:
        if cache_dir.is_relative_to(Path(case.folder).resolve().parent):
            raise CacheError("refusing to write the cache next to the input data", case_id=case.case_id,
                             path=cache_dir, expected="a cache folder outside the dataset")
    with folder_lock(cache_dir, wait=wait):
        for leftover in [*cache_dir.glob(".tmp-*"), *cache_dir.glob(".old-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        settings = {"margin": margin, "normalisation": normalisation, "crop": crop}
        keys = {case.case_id: cache_key(case, **settings) for case in cases}
        todo = []
        for case in cases:
            problem = _entry_problem(cache_dir / case.case_id, keys[case.case_id])
            if problem is None:
                continue
            if problem[0] == "damaged":
                warnings.warn(f"the cache entry of case {case.case_id} is damaged ({problem[1]}); rebuilding "
                              f"it from {case.folder}", DamagedCacheWarning, stacklevel=2)
            todo.append((case, keys[case.case_id]))
        _cache_cases(todo, cache_dir, settings, workers, total=len(cases), progress=progress)
    return [cache_dir / case.case_id for case in cases]


def _cache_cases(todo: list[tuple[Case, str]], cache_dir: Path, settings: dict, workers: int, *, total: int,
                 progress: bool) -> None:
    """Write the entries of ``todo`` (case, key), in this process or in ``workers`` processes."""
    bar = tqdm(total=total, initial=total - len(todo), desc="caching cases", unit="case",
               disable=not progress or not todo)  # an up-to-date cache shows no bar
    with bar:
        if workers <= 1 or len(todo) <= 1:
            for case, key in todo:
                _cache_case(case, cache_dir, settings, key)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                futures = [pool.submit(_cache_case, case, cache_dir, settings, key) for case, key in todo]
                for future in as_completed(futures):
                    future.result()
                    bar.update()


def load_cached(entry_dir: str | Path, *, mmap: bool = True) -> PreprocessedCase:
    """Read a cache entry; with ``mmap`` the arrays are memory-mapped (read-only, nothing loaded yet).

    The image stays float16 (cast patches, not the volume); labels are uint8 {0..3} or ``None``.
    An entry whose files are not the size its ``meta.json`` recorded raises
    :class:`~brats_utils.errors.CacheError` naming the case and the command that rebuilds it.
    """
    entry_dir = Path(entry_dir)
    meta = _read_meta(entry_dir)
    if meta.get("format_version") != CACHE_FORMAT_VERSION:
        raise CacheError(f"cache entry has format {meta.get('format_version')}", path=entry_dir,
                         expected=f"format {CACHE_FORMAT_VERSION}: {REBUILD_HINT}")
    mode = "r" if mmap else None
    damage = damage_of(entry_dir, meta, checksums=False)
    try:
        if damage is None:
            image = np.load(entry_dir / IMAGE_FILE, mmap_mode=mode)
            labels = np.load(entry_dir / LABELS_FILE, mmap_mode=mode) if meta["has_labels"] else None
    except (OSError, ValueError) as error:
        damage = f"{type(error).__name__}: {error}"
    if damage is not None:
        raise CacheError(f"the cache entry is damaged ({damage})", case_id=meta.get("case_id"),
                         path=entry_dir, expected=f"a whole entry: {REBUILD_HINT}")
    return PreprocessedCase(meta["case_id"], image, labels, CropMeta.from_dict(meta["crop"]))


def load_foreground(entry_dir: str | Path) -> np.ndarray:
    """The entry's remembered tumour voxels, rows ``(label, x, y, z)``."""
    return np.load(Path(entry_dir) / FOREGROUND_FILE)


def cache_entries(cache_dir: str | Path) -> list[Path]:
    """The complete entries of a cache folder, sorted by case id (temporary folders are ignored)."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return sorted(p for p in cache_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).is_file())


def cache_size_bytes(entry_dirs: Sequence[Path]) -> int:
    """Bytes on disk taken by the given entries."""
    return sum(f.stat().st_size for d in entry_dirs for f in Path(d).iterdir() if f.is_file())
