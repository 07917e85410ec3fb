"""Whole-volume prediction: sliding window, test-time flips, back onto the original grid, NIfTI.

A network trained on 128^3 patches (or any size) segments a volume of any size by
sliding a window over it. Windows overlap (by half by default) and each window's
softmax is weighted by a Gaussian that peaks at its centre (sigma = patch / 8, as in
nnU-Net), because a convolutional network sees the least context, and errs the most,
near a window's border. The weighted sums divided by the summed weights give the
probabilities of every voxel.

The whole pipeline of one case (:func:`predict_case`): load the four modalities, crop
to the brain and z-score them exactly as for training (``preprocess.preprocess_case``),
slide the window over the crop, take the argmax, place it back on the original
240 x 240 x 155 grid (outside the crop: background), map training label 3 back to
file label 4 and save a uint8 NIfTI with the input's affine and header.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Shape3D = tuple[int, int, int]

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


def _forward_probabilities(model: nn.Module, batch: torch.Tensor, *, amp: bool,
                           flips: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """Softmax of the model on a batch of windows, averaged over the flipped copies."""
    use_amp = amp and batch.device.type == "cuda"
    total = None
    for dims in flips:
        view = batch.flip(dims) if dims else batch
        with torch.autocast(device_type=batch.device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(view)
        probs = torch.softmax(logits.float(), dim=1)
        if dims:
            probs = probs.flip(dims)
        total = probs if total is None else total.add_(probs)
    return total.div_(len(flips)) if len(flips) > 1 else total


def sliding_window_predict(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    *,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 2,
    device: str | torch.device | None = None,
    amp: bool = True,
    tta: bool = False,
    stitch_device: str | torch.device | None = None,
) -> torch.Tensor:
    """Softmax probabilities ``[C, h, w, d]`` (float32, CPU) of ``model`` over a whole image.

    ``image`` is ``[4, h, w, d]`` (numpy or torch). Windows of ``patch_size`` overlap by
    ``overlap`` and are blended with ``mode`` "gaussian" (sigma = patch / 8) or "constant"
    weights; ``sw_batch_size`` windows go through the network together. Volumes smaller
    than the patch are zero-padded (centred) and cropped back. On CUDA the forward pass
    runs under float16 autocast when ``amp``; the accumulators live on ``stitch_device``
    (default: the GPU if they fit comfortably, else the CPU). With ``tta`` each window
    is also predicted flipped along every combination of the three axes (8 passes) and
    the probabilities are averaged. The model is put in eval mode (and restored after).
    When a single window covers the volume the result is one forward pass's softmax.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
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
    windows = _windows(shape, patch, overlap)
    flips = ALL_FLIPS if tta else ((),)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            acc = weights = None
            for group in _batches(windows, max(1, sw_batch_size)):
                batch = torch.stack([volume[(slice(None), *w)] for w in group])
                probs = _forward_probabilities(model, batch, amp=amp, flips=flips)
                if acc is None:
                    target = (torch.device(stitch_device) if stitch_device is not None
                              else _choose_stitch_device(device, probs.shape[1], shape))
                    acc = torch.zeros((probs.shape[1], *shape), dtype=torch.float32, device=target)
                    weights = torch.zeros(shape, dtype=torch.float32, device=target)
                    window_weights = importance_map(patch, mode).to(target)
                probs = probs.to(acc.device).mul_(window_weights)
                for w, p in zip(group, probs, strict=True):
                    acc[(slice(None), *w)] += p
                    weights[w] += window_weights
            acc /= weights
    finally:
        model.train(was_training)
    return acc[(slice(None), *unpad)].cpu().contiguous()


def load_model(checkpoint_path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The network saved in a training checkpoint, rebuilt from its ``model_config``, in eval mode.

    Raises :class:`~brats_utils.errors.CheckpointError` for a missing, damaged or foreign file.
    """
    from brats_utils.model import UNet3D, load_pretrained
    from brats_utils.train import load_checkpoint

    checkpoint = load_checkpoint(Path(checkpoint_path))
    model = UNet3D(**checkpoint["model_config"])
    load_pretrained(model, checkpoint)
    return model.to(device).eval()


def predict_case(
    model: nn.Module,
    case,
    *,
    profile=None,
    out_path: str | Path | None = None,
    device: str | torch.device | None = None,
    tta: bool | None = None,
) -> np.ndarray:
    """Segment one ``download.Case``: file labels {0,1,2,4} uint8 on its original grid.

    Cropping, normalisation and the sliding-window settings (patch, overlap, windows per
    pass, TTA, AMP) come from ``profile`` (default: the current profile); ``tta``
    overrides the profile's. With ``out_path`` the labels are also saved as a NIfTI file
    with the input's affine and header.
    """
    from brats_utils.config import get_profile
    from brats_utils.io import load_case, save_segmentation
    from brats_utils.preprocess import preprocess_case, to_file_labels, uncrop

    profile = profile or get_profile()
    loaded = load_case(case)
    cropped = preprocess_case(loaded, margin=profile.crop_margin)
    probs = sliding_window_predict(
        model, cropped.image, patch_size=profile.sw_patch_size, overlap=profile.sw_overlap,
        sw_batch_size=profile.sw_batch_size, device=device, amp=profile.amp,
        tta=profile.tta if tta is None else tta,
    )
    # Outside the crop there is no brain: background with probability 1, i.e. label 0.
    train_labels = uncrop(probs.argmax(dim=0).to(torch.uint8).numpy(), cropped.meta, fill=0)
    labels = to_file_labels(train_labels).astype(np.uint8)
    if out_path is not None:
        save_segmentation(labels, out_path, affine=loaded.affine, header=loaded.header)
    return labels


def predict_folder(model: nn.Module, cases: Sequence, out_dir: str | Path, *, profile=None,
                   device: str | torch.device | None = None, tta: bool | None = None,
                   progress: bool = True) -> list[Path]:
    """Segment every case into ``<out_dir>/<case_id>.nii.gz`` (the BraTS submission layout)."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
        path = out_dir / f"{case.case_id}.nii.gz"
        predict_case(model, case, profile=profile, out_path=path, device=device, tta=tta)
        paths.append(path)
    return paths
