"""The orchestration layer: every step driven by a run profile, each one made if it is missing.

The modules below this one take what they need as arguments (folders, sizes, settings)
and never read the profile or the environment; this module is where a
:class:`~brats_utils.config.Profile` is turned into those arguments. It is also where
"make it if it is missing" lives, so that every notebook runs on its own: notebook 06
asks :func:`ensure_trained` for a model, which asks :func:`ensure_cache` for the cache,
which asks :func:`ensure_dataset` for the data, each step doing its work only once.

The notebooks and the command line call these functions; nothing below calls them
(an import contract in ``pyproject.toml`` checks it)::

    ensure_dataset -> training_cases -> ensure_cache -> make_loaders -> train -> ensure_trained
                                                                        \\-> run_comparison
    inference_settings -> predict_split -> evaluate_folder
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from brats_utils import beyond, compare
from brats_utils import train as training
from brats_utils.augment import augmentation_for, tta_flips
from brats_utils.checkpoints import check_compatible, checkpoint_dir, load_checkpoint, load_model
from brats_utils.config import Profile
from brats_utils.data import VolumeDataset
from brats_utils.download import ROOT_ENV, download_brats2020, find_dataset
from brats_utils.inference import InferenceSettings, predict_folder
from brats_utils.io import Case
from brats_utils.metrics import evaluate
from brats_utils.preprocess import build_cache
from brats_utils.synthetic import write_synthetic_dataset


def ensure_synthetic(profile: Profile, out_dir: str | Path | None = None) -> Path:
    """The profile's synthetic dataset (at ``out_dir``, else ``profile.synthetic_dir``), made on first use."""
    folder = Path(out_dir) if out_dir is not None else profile.synthetic_dir
    return write_synthetic_dataset(folder, profile.synthetic_train_cases, profile.synthetic_val_cases,
                                   profile.synthetic_shape, seed=profile.seed)


def ensure_dataset(profile: Profile) -> Path:
    """The dataset root a profile works on, made if missing.

    Real data when ``profile.data_source == "real"`` or ``$BRATS_ROOT`` is set (see
    :func:`brats_utils.download.download_brats2020`); otherwise the profile's synthetic
    dataset (:func:`ensure_synthetic`). Synthetic profiles never touch the network.
    """
    if profile.data_source == "real" or os.environ.get(ROOT_ENV):
        return download_brats2020()
    return ensure_synthetic(profile)


def training_cases(profile: Profile) -> list[Case]:
    """The labelled cases a profile trains on: its dataset's training split, the first ``max_cases``."""
    return find_dataset(ensure_dataset(profile), split="training")[: profile.max_cases]


def ensure_cache(profile: Profile, *, progress: bool = True) -> Path:
    """The profile's cache folder, built (or brought up to date) from its training cases if needed."""
    build_cache(training_cases(profile), profile.cache_dir, margin=profile.crop_margin,
                workers=profile.num_workers, progress=progress)
    return profile.cache_dir


def make_loaders(profile: Profile, *, progress: bool = True) -> tuple[DataLoader, VolumeDataset]:
    """Training patches and validation volumes of the profile's cache (the split saved in its run folder)."""
    return training.loaders_for(profile, ensure_cache(profile, progress=progress), profile.run_dir)


def train(profile: Profile, *, run_dir: Path | None = None, resume: bool = True,
          max_epochs: int | None = None, progress: bool = True,
          device: str | torch.device | None = None) -> training.TrainResult:
    """Train the profile's U-Net on its cache (built first if needed); see :func:`brats_utils.train.train`."""
    return training.train(profile, ensure_cache(profile, progress=progress), run_dir=run_dir, resume=resume,
                          max_epochs=max_epochs, progress=progress, device=device)


def ensure_trained(profile: Profile, *, progress: bool = True) -> Path:
    """The profile's best checkpoint, training (or finishing an interrupted run) first if needed.

    Raises :class:`~brats_utils.errors.CheckpointError` when the existing run used other settings
    (start it over with ``train(profile, resume=False)`` or ``python -m brats_utils train --restart``).
    """
    folder = checkpoint_dir(profile.run_dir)
    last_path, best_path = folder / "last.pt", folder / "best.pt"
    if last_path.exists() and best_path.exists():
        checkpoint = load_checkpoint(last_path)
        check_compatible(checkpoint, profile, last_path)
        if training.is_finished(checkpoint, profile):
            return best_path
    return train(profile, resume=True, progress=progress).best_checkpoint


def run_comparison(profile: Profile, *, out_dir: Path | None = None, progress: bool = True,
                   device: str | torch.device | None = None) -> pd.DataFrame:
    """The architecture study of the profile on its cache; see :func:`brats_utils.compare.run_comparison`."""
    return compare.run_comparison(profile, ensure_cache(profile, progress=progress), out_dir=out_dir,
                                  progress=progress, device=device)


def run_beyond(profile: Profile, *, out_dir: Path | None = None, progress: bool = True,
               device: str | torch.device | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The beyond-the-paper study of the profile on its cache; see :func:`brats_utils.beyond.run_study`."""
    return beyond.run_study(profile, ensure_cache(profile, progress=progress), out_dir=out_dir,
                            progress=progress, device=device)


def inference_settings(profile: Profile, *, tta: bool | None = None) -> InferenceSettings:
    """The profile's preprocessing margin and sliding-window settings; ``tta`` overrides the profile's.

    Test-time flips are the ones the profile's training augmentation produced
    (:func:`brats_utils.augment.tta_flips`): all 8 after ``"mirror"``, the 4 in-plane ones
    after the paper's ``"in_plane"``, none (TTA off) after ``"none"``.
    """
    flips = tta_flips(augmentation_for(profile.augmentation))
    use_tta = (profile.tta if tta is None else tta) and len(flips) > 1
    return InferenceSettings(patch_size=tuple(profile.sw_patch_size), overlap=profile.sw_overlap,
                             sw_batch_size=profile.sw_batch_size, amp=profile.amp, tta=use_tta,
                             tta_flips=flips, margin=profile.crop_margin, target=profile.target)


def predict_split(profile: Profile, *, checkpoint: str | Path | None = None, root: str | Path | None = None,
                  split: str = "validation", out_dir: str | Path | None = None,
                  progress: bool = True) -> list[Path]:
    """Segment every case of one split into ``<out_dir>/<case_id>.nii.gz``.

    Defaults: the profile's best checkpoint (trained if missing), its dataset, and
    ``<run_dir>/predictions-<split>``.
    """
    checkpoint = Path(checkpoint) if checkpoint is not None else ensure_trained(profile, progress=progress)
    cases = find_dataset(Path(root) if root is not None else ensure_dataset(profile), split=split)
    out_dir = Path(out_dir) if out_dir is not None else profile.run_dir / f"predictions-{split}"
    return predict_folder(load_model(checkpoint), cases, out_dir, inference_settings(profile),
                          progress=progress)


def evaluate_folder(profile: Profile, predictions: str | Path, *, truth: str | Path | None = None,
                    out_csv: str | Path | None = None,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a folder of predictions against the training split of ``truth`` (default: the profile's data).

    The per-case table goes to ``out_csv`` (default ``<predictions>/metrics.csv``); see
    :func:`brats_utils.metrics.evaluate`.
    """
    root = Path(truth) if truth is not None else ensure_dataset(profile)
    out_csv = Path(out_csv) if out_csv is not None else Path(predictions) / "metrics.csv"
    return evaluate(Path(predictions), find_dataset(root, split="training"), out_csv=out_csv,
                    progress=progress)
