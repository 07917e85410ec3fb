"""Whole-volume prediction in stages: predictor, sliding window, test-time flips, back to NIfTI.

A network trained on 128^3 patches (or any size) segments a volume of any size by
sliding a window over it. Windows overlap (by half by default) and each window's
softmax is weighted by a Gaussian that peaks at its centre (sigma = patch / 8, as in
nnU-Net), because a convolutional network sees the least context, and errs the most,
near a window's border. The weighted sums divided by the summed weights give the
probabilities of every voxel.

The stages, each usable alone (as in MONAI and nnU-Net):

1. a **predictor** maps a batch of windows to probabilities: one network's softmax
   (:func:`softmax_predictor`), an ensemble (:func:`average_predictors`), or any callable
   with that contract (a region model's sigmoid);
2. the **sliding window** (:func:`sliding_window`) blends a predictor over a volume;
3. **test-time flips** (:func:`with_flips`) wrap a predictor: same contract, 8 passes;
4. **export**: :func:`to_original_grid` takes the argmax, puts it back on the original
   240 x 240 x 155 grid (outside the crop: background) in the file labels of the case's
   label scheme, and :func:`brats_utils.io.save_segmentation` writes a uint8 NIfTI with
   the input's affine and header.

:func:`sliding_window_predict` chains stages 1-3 for one model; :func:`predict_case` and
:func:`predict_folder` take any predictor and run stages 2-4 on a case, cropping and normalising
exactly as for training (``preprocess.preprocess_case``) with a profile's ``preprocessing`` and
``inference`` sections. Loading a trained network is :mod:`brats_utils.checkpoints`'
job (:func:`~brats_utils.checkpoints.load_model`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from brats_utils.config import InferenceSettings, PreprocessingSettings
from brats_utils.files import write_text_atomic
from brats_utils.io import Case, LoadedCase, load_case, save_segmentation
from brats_utils.labels import BRATS2020, LabelScheme, to_file_labels
from brats_utils.postprocess import et_and_ncr_labels, suppress_small_et, voxel_volume_mm3
from brats_utils.precision import to_channels_last, use_channels_last
from brats_utils.preprocess import CropMeta, PreprocessedCase, load_cached, preprocess_case, uncrop
from brats_utils.regions import predictor_for, probs_to_labels

#: All 8 combinations of flipping the three spatial axes (the empty one is the identity).
ALL_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    combo for n in range(4) for combo in itertools.combinations((2, 3, 4), n)
)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of windows of length ``patch`` covering ``size`` voxels with the given overlap.

    The step is at most ``patch * (1 - overlap)``; the windows are spread evenly from the
    first voxel to the last, so the last window ends exactly at the border.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= patch:
        return [0]
    count = math.ceil((size - patch) / (patch * (1.0 - overlap))) + 1
    return [round(i * (size - patch) / (count - 1)) for i in range(count)]


def importance_map(patch_size: Sequence[int], mode: str = "gaussian") -> torch.Tensor:
    """Weights of one window: a separable Gaussian (sigma = patch / 8, peak 1) or ones.

    The Gaussian is symmetric about the window's centre, so a flipped window gets the
    same weights. Its smallest value (a corner) is about e^-24, still a normal float32.
    """
    if mode == "constant":
        return torch.ones(tuple(patch_size), dtype=torch.float32)
    if mode != "gaussian":
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    axes = []
    for n in patch_size:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (x / (n / 8)) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weights / weights.max()).float()


def _windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """Spatial slices of every window over a (padded) volume of ``shape``."""
    starts = [window_starts(s, p, overlap) for s, p in zip(shape, patch, strict=True)]
    return [tuple(slice(o, o + p) for o, p in zip(origin, patch, strict=True))
            for origin in itertools.product(*starts)]


def windows_per_pass(device: str | torch.device) -> int:
    """Windows per forward pass when ``sw_batch_size`` is None: 1 on a CPU, 2 elsewhere.

    On a CPU a second window in the same pass does not make a window cheaper: measured on 2 AVX-512
    cores (paper model, bf16, ``tests/benchmarks/bench_inference.py``, side by side), one window per
    pass took 0.76-0.87 of the time per window of two at 64³ and 96³ and 0.91-0.97 at 128³ (the working
    set of one window stays closer to the caches; the convolutions are already parallel within one
    window); at 48³ the two were within the machine's noise (0.84-1.17). On a GPU two windows stay the
    default, as before (a GPU is kept busier by a larger batch; not measured here: no GPU was lent).
    """
    return 1 if torch.device(device).type == "cpu" else 2


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _pad_to_patch(image: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad ``[C, *spatial]`` (zero is background after z-scoring) up to ``patch`` where
    smaller, centred; returns the padded tensor and the slices that undo it."""
    spatial = image.shape[1:]
    before = [max(p - s, 0) // 2 for s, p in zip(spatial, patch, strict=True)]
    after = [max(p - s, 0) - b for s, p, b in zip(spatial, patch, before, strict=True)]
    if not any(before) and not any(after):
        return image, tuple(slice(None) for _ in spatial)
    pad = [v for b, a in zip(reversed(before), reversed(after), strict=True) for v in (b, a)]
    unpad = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    return F.pad(image, pad), unpad


def _choose_stitch_device(device: torch.device, num_classes: int, shape: Sequence[int]) -> torch.device:
    """Stitch on the GPU when the accumulators take under a quarter of its free memory, else on the CPU."""
    if device.type != "cuda":
        return torch.device("cpu")
    needed = (num_classes + 1) * math.prod(shape) * 4
    free, _ = torch.cuda.mem_get_info(device)
    return device if needed < free / 4 else torch.device("cpu")


# --- stage 1: the predictor ---------------------------------------------------------------

#: A predictor maps a batch of windows ``[B, 4, *patch]`` to probabilities ``[B, K, *patch]``:
#: a model's softmax (:func:`softmax_predictor`), an average of several, a region model's sigmoid...
Predictor = Callable[[torch.Tensor], torch.Tensor]


def softmax_predictor(model: nn.Module, *, precision: str = "auto") -> Predictor:
    """The predictor of one network: its softmax, the network run in ``precision``.

    ``precision`` is one of :data:`brats_utils.precision.PRECISIONS`, resolved for the batch's device
    (``"auto"``: fp16 autocast on CUDA, bf16 on a CPU with native bf16, fp32 elsewhere). Where
    :func:`~brats_utils.precision.use_channels_last` says so, the batch is handed to the network as
    ``channels_last_3d`` (convert the model once with :func:`~brats_utils.precision.to_channels_last`).
    """
    return predictor_for(model, "labels", precision=precision)


def average_predictors(predictors: Sequence[Predictor]) -> Predictor:
    """An ensemble: the mean of several predictors' probabilities (the one place models are averaged:
    fold ensembles, seed ensembles). Each member keeps its own activation, so an ensemble of region
    models averages sigmoids and one of label models averages softmaxes."""
    if not predictors:
        raise ValueError("an ensemble needs at least one predictor")

    def predict(batch: torch.Tensor) -> torch.Tensor:
        total = predictors[0](batch)
        for predictor in predictors[1:]:
            total = total + predictor(batch)
        return total / len(predictors)

    return predict


# --- stage 3: test-time flips, a wrapper around any predictor --------------------------------


def with_flips(predictor: Predictor, flips: Sequence[tuple[int, ...]] = ALL_FLIPS) -> Predictor:
    """Test-time augmentation: ``predictor`` on each flipped copy, flipped back and averaged.

    ``flips`` are tuples of tensor dimensions (2, 3, 4 are the spatial axes of a batch);
    the default is all 8 combinations. The Gaussian window weights are symmetric, so
    flipping inside the sliding window changes nothing else.
    """

    def predict(batch: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in flips:
            probs = predictor(batch.flip(dims) if dims else batch)
            if dims:
                probs = probs.flip(dims)
            total = probs if total is None else total.add_(probs)
        return total.div_(len(flips)) if len(flips) > 1 else total

    return predict


# --- stage 2: the sliding window ---------------------------------------------------------------


def sliding_window(
    predictor: Predictor,
    image: np.ndarray | torch.Tensor,
    *,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int | None = None,
    device: str | torch.device = "cpu",
    stitch_device: str | torch.device | None = None,
) -> torch.Tensor:
    """Probabilities ``[K, h, w, d]`` (float32, CPU) of ``predictor`` blended over a whole image.

    ``image`` is ``[4, h, w, d]`` (numpy or torch), moved to ``device`` window by window's
    batch. Windows of ``patch_size`` overlap by ``overlap`` and are blended with ``mode``
    "gaussian" (sigma = patch / 8) or "constant" weights; ``sw_batch_size`` windows go
    through the predictor together (``None``: :func:`windows_per_pass` for ``device``).
    Volumes smaller than the patch are zero-padded (centred) and cropped back. The accumulators
    live on ``stitch_device`` (default: the GPU if they fit comfortably, else the CPU). Runs under
    ``torch.inference_mode``.
    """
    device = torch.device(device)
    patch = tuple(int(p) for p in patch_size)
    if isinstance(image, torch.Tensor):
        volume = image.detach().to(device=device, dtype=torch.float32)
    else:
        volume = torch.from_numpy(np.array(image, dtype=np.float32)).to(device)
    if volume.ndim != 4 or len(patch) != 3:
        raise ValueError(f"expected an image [C, X, Y, Z] and a 3D patch size, got {tuple(volume.shape)} "
                         f"and {patch}")
    volume, unpad = _pad_to_patch(volume, patch)
    shape = volume.shape[1:]
    with torch.inference_mode():
        acc = weights = None
        per_pass = windows_per_pass(device) if sw_batch_size is None else max(1, sw_batch_size)
        for group in _batches(_windows(shape, patch, overlap), per_pass):
            probs = predictor(torch.stack([volume[(slice(None), *w)] for w in group]))
            if acc is None:
                target = (torch.device(stitch_device) if stitch_device is not None
                          else _choose_stitch_device(device, probs.shape[1], shape))
                acc = torch.zeros((probs.shape[1], *shape), dtype=torch.float32, device=target)
                weights = torch.zeros(shape, dtype=torch.float32, device=target)
                window_weights = importance_map(patch, mode).to(target)
            probs = probs.to(acc.device)
            for w, p in zip(group, probs, strict=True):
                acc[(slice(None), *w)].addcmul_(p, window_weights)
                weights[w] += window_weights
        acc /= weights
    return acc[(slice(None), *unpad)].cpu().contiguous()


def sliding_window_predict(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    *,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    tta: bool = False,
    tta_flips: Sequence[tuple[int, ...]] = ALL_FLIPS,
    stitch_device: str | torch.device | None = None,
    target: str = "labels",
) -> torch.Tensor:
    """Softmax probabilities ``[C, h, w, d]`` (float32, CPU) of ``model`` over a whole image.

    The three stages in one call: :func:`softmax_predictor` (the network in ``precision``,
    ``"auto"`` by default), wrapped in
    :func:`with_flips` when ``tta`` (one pass per flip of ``tta_flips``,
    by default all 8: pair them with the training augmentation, ``augment.tta_flips``), slid
    over the image by :func:`sliding_window` (see there for the other arguments). The
    model runs on ``device`` (default: where its parameters are), in eval mode (restored
    after). When a single window covers the volume the result is one forward pass's softmax.
    Where :func:`~brats_utils.precision.use_channels_last` says so (CUDA with fp16/bf16) the model is
    converted to ``channels_last_3d`` in place (values unchanged, only strides).
    ``target="regions"`` (a region model, :mod:`brats_utils.regions`) gives sigmoid WT/TC/ET instead.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if use_channels_last(precision, device):
        to_channels_last(model)
    predictor = predictor_for(model, target, precision=precision)
    if tta:
        predictor = with_flips(predictor, tta_flips)
    was_training = model.training
    model.eval()
    try:
        return sliding_window(predictor, image, patch_size=patch_size, overlap=overlap, mode=mode,
                              sw_batch_size=sw_batch_size, device=device, stitch_device=stitch_device)
    finally:
        model.train(was_training)


# --- stage 4: back onto the original grid, and to NIfTI ----------------------------------------


def to_original_grid(probs: torch.Tensor, meta: CropMeta, scheme: LabelScheme = BRATS2020,
                     target: str = "labels") -> np.ndarray:
    """Argmax of cropped probabilities ``[K, h, w, d]``, on the original grid, in ``scheme``'s file labels.

    Outside the crop there is no brain: background with probability 1, i.e. label 0. For
    ``target="regions"`` the three sigmoids go through :func:`brats_utils.regions.regions_to_labels`.
    """
    train_labels = uncrop(probs_to_labels(probs, target).numpy(), meta, fill=0)
    return to_file_labels(train_labels, scheme=scheme).astype(np.uint8)


def predict_case(
    predictor: Predictor,
    case: Case,
    settings: InferenceSettings,
    preprocessing: PreprocessingSettings,
    *,
    target: str = "labels",
    out_path: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Segment one :class:`~brats_utils.io.Case`: file labels (uint8) on its original grid.

    Loads the case, crops and normalises it as for training (``preprocessing``: a profile's
    ``preprocessing`` section), slides ``predictor`` (a callable from a batch of windows to
    probabilities: :func:`brats_utils.regions.predictor_for` of a model, :func:`average_predictors`
    of several, :func:`with_flips` for test-time flips) over it with ``settings`` (a profile's
    ``inference`` section: window, overlap, windows per pass) on ``device``, and turns the
    probabilities of ``target`` into labels on the original grid in the case's label scheme.
    With ``out_path`` the labels are also saved as a NIfTI file with the input's affine and header.
    :func:`brats_utils.pipeline.predictor` builds the predictor a profile describes.
    """
    return _predict_prepared(predictor, case, prepare_case(case, preprocessing), settings, target=target,
                             out_path=out_path, device=device)


def prepare_case(case: Case, preprocessing: PreprocessingSettings) -> tuple[LoadedCase, PreprocessedCase]:
    """The CPU half of :func:`predict_case`: the loaded case and its crop, normalised as for training."""
    loaded = load_case(case)
    return loaded, preprocess_case(loaded, margin=preprocessing.margin,
                                   normalisation=preprocessing.normalisation, crop=preprocessing.crop)


def _predict_prepared(predictor: Predictor, case: Case, prepared: tuple[LoadedCase, PreprocessedCase],
                      settings: InferenceSettings, *, target: str, out_path: str | Path | None,
                      device: str | torch.device) -> np.ndarray:
    loaded, cropped = prepared
    labels = segment_cropped(predictor, cropped, settings, scheme=case.scheme, target=target, device=device)
    if out_path is not None:
        save_segmentation(labels, out_path, affine=loaded.affine, header=loaded.header, scheme=case.scheme)
    return labels


def segment_cropped(predictor: Predictor, cropped: PreprocessedCase, settings: InferenceSettings, *,
                    scheme: LabelScheme, target: str, device: str | torch.device) -> np.ndarray:
    """:func:`sliding_window` over a cropped, normalised case, then :func:`to_original_grid`: file labels
    of ``scheme`` on the case's original grid (the shared core of every prediction of a case).

    A ``settings.min_et_volume_mm3`` above 0 then applies the enhancing-tumour rule
    (:func:`~brats_utils.postprocess.suppress_small_et`, the voxel volume from the case's affine); None
    (not chosen yet) and 0 leave the labels as predicted.
    """
    probs = sliding_window(predictor, cropped.image, patch_size=settings.patch_size, overlap=settings.overlap,
                           sw_batch_size=settings.sw_batch_size, device=device)
    labels = to_original_grid(probs, cropped.meta, scheme, target)
    if settings.min_et_volume_mm3:
        et_label, ncr_label = et_and_ncr_labels(scheme)
        labels = suppress_small_et(labels, settings.min_et_volume_mm3,
                                   voxel_volume_mm3=voxel_volume_mm3(cropped.meta.affine_array),
                                   et_label=et_label, replacement=ncr_label)
    return labels


class Predictions(list):
    """The segmentation files of :func:`predict_folder`, one per case in order; ``skipped`` of them were
    already complete in the output folder and were not predicted again."""

    def __init__(self, paths: Sequence[Path] = (), skipped: int = 0) -> None:
        super().__init__(paths)
        self.skipped = skipped


#: File in an output folder naming the network and settings its segmentations came from.
PREDICTIONS_MARKER = ".predicted-by"


def prediction_fingerprint(models: Sequence[nn.Module], *settings: object) -> str:
    """SHA-256 of the networks' weights and of the settings that change a segmentation (their ``repr``).

    An inference section's ``sw_batch_size`` is left out: it changes how many windows go through at
    once, not the result (so lowering it after running out of memory keeps the finished cases).
    :func:`brats_utils.pipeline.predict_cases` passes the profile's inference and preprocessing
    sections, target, precision and test-time flips.
    """
    digest = hashlib.sha256()
    for item in settings:
        if isinstance(item, InferenceSettings):
            item = dataclasses.replace(item, sw_batch_size=None)
        digest.update(repr(item).encode())
    for model in models:
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def is_complete_prediction(path: Path, case: Case) -> bool:
    """Whether ``path`` is a whole segmentation of ``case``: a readable NIfTI of the case's shape.

    Outputs are written under a temporary name and renamed, so a half-written file never has the
    final name; a file cut short later (a copy, a full disk under another tool) fails to read here.
    """
    if not path.is_file():
        return False
    try:
        expected = nib.load(case.modalities["flair"]).shape
        image = nib.load(path)
        return image.shape == expected and np.asarray(image.dataobj).shape == expected
    except Exception:  # nibabel raises many kinds (ImageFileError, EOFError, zlib.error, OSError ...)
        return False


def predict_folder(predictor: Predictor, cases: Sequence[Case], out_dir: str | Path,
                   settings: InferenceSettings, preprocessing: PreprocessingSettings, *,
                   target: str = "labels", device: str | torch.device = "cpu", progress: bool = True,
                   prefetch: bool = True, overwrite: bool = False,
                   fingerprint: str | None = None) -> Predictions:
    """Segment every case into ``<out_dir>/<case_id>.nii.gz`` (the BraTS submission layout).

    The arguments are :func:`predict_case`'s. ``fingerprint`` names what computes the segmentations
    (:func:`prediction_fingerprint` of the networks and settings behind ``predictor``; a predictor
    alone cannot tell): a case whose output is already complete (:func:`is_complete_prediction`) and
    was written under the same fingerprint (kept in ``out_dir/.predicted-by``) is skipped, so an
    interrupted prediction continues where it stopped; ``overwrite``, another fingerprint or none
    predict every case again. Returns every case's path (:class:`Predictions`, with the number skipped).

    With ``prefetch`` (default) one helper thread prepares the next case (load, crop, normalise:
    :func:`prepare_case`, mostly NumPy and file reading, which release the GIL) while the current
    one is on the network; the results are the same as one case after the other (``prefetch=False``).
    A full disk raises :class:`~brats_utils.errors.DiskFullError` naming ``out_dir``; the
    segmentations written before stay complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{case.case_id}.nii.gz" for case in cases]
    marker = out_dir / PREDICTIONS_MARKER
    if fingerprint is None:
        marker.unlink(missing_ok=True)  # what follows is no known network's: a later run never keeps it
    elif not marker.is_file() or marker.read_text().strip() != fingerprint:
        for path in paths:  # another model's outputs: never to be taken for this one's if it is interrupted
            path.unlink(missing_ok=True)
        write_text_atomic(fingerprint, marker)
    done = [fingerprint is not None and not overwrite and is_complete_prediction(path, case)
            for path, case in zip(paths, cases, strict=True)]
    todo = [case for case, complete in zip(cases, done, strict=True) if not complete]
    if todo:
        _predict_cases(predictor, todo, out_dir, settings, preprocessing, target=target, device=device,
                       progress=progress, prefetch=prefetch)
    return Predictions(paths, skipped=sum(done))


def _predict_cases(predictor: Predictor, cases: Sequence[Case], out_dir: Path, settings: InferenceSettings,
                   preprocessing: PreprocessingSettings, *, target: str, device: str | torch.device,
                   progress: bool, prefetch: bool) -> None:
    """Predict ``cases`` one after the other into ``out_dir``, preparing the next one meanwhile."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        upcoming = pool.submit(prepare_case, cases[0], preprocessing) if prefetch else None
        for index, case in enumerate(tqdm(cases, desc="predict", unit="case", disable=not progress)):
            if prefetch:
                prepared = upcoming.result()
                if index + 1 < len(cases):
                    upcoming = pool.submit(prepare_case, cases[index + 1], preprocessing)
            else:
                prepared = prepare_case(case, preprocessing)
            _predict_prepared(predictor, case, prepared, settings, target=target,
                              out_path=out_dir / f"{case.case_id}.nii.gz", device=device)


def predict_cached(predictor: Predictor, entries: Sequence[Path], out_dir: str | Path,
                   settings: InferenceSettings, *, scheme: LabelScheme = BRATS2020, target: str = "labels",
                   device: str | torch.device = "cpu", progress: bool = True) -> Predictions:
    """Segment cached cases (:func:`~brats_utils.preprocess.load_cached` entries) into
    ``<out_dir>/<case_id>.nii.gz``, for when their dataset is gone.

    Each cached image (cropped and normalised, stored as float16) goes through :func:`segment_cropped`
    and is saved on the original grid with the original affine and header of its ``meta.json``, in
    ``scheme``'s file labels. Every case is predicted (the fingerprint of :func:`predict_folder` is
    removed, so a later prediction from the raw data predicts them again).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PREDICTIONS_MARKER).unlink(missing_ok=True)
    paths = []
    for entry in tqdm(entries, desc="predict (cache)", unit="case", disable=not progress):
        cropped = load_cached(entry)
        labels = segment_cropped(predictor, cropped, settings, scheme=scheme, target=target, device=device)
        paths.append(save_segmentation(labels, out_dir / f"{cropped.case_id}.nii.gz",
                                       affine=cropped.meta.affine_array, header=cropped.meta.header,
                                       scheme=scheme))
    return Predictions(paths)
