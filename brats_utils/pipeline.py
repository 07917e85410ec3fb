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

from brats_utils import compare
from brats_utils import train as training
from brats_utils.augment import augmentation_for, tta_flips
from brats_utils.checkpoints import check_compatible, checkpoint_dir, load_checkpoint, load_model
from brats_utils.config import Profile, data_dir
from brats_utils.data import VolumeDataset
from brats_utils.datasets import LAYOUTS, download_brats2021, find_dataset
from brats_utils.download import ROOT_ENV, download_brats2020
from brats_utils.errors import DatasetNotFoundError
from brats_utils.inference import InferenceSettings, predict_folder
from brats_utils.io import Case
from brats_utils.lesion_metrics import get_protocol
from brats_utils.metrics import evaluate
from brats_utils.preprocess import build_cache
from brats_utils.synthetic import write_synthetic_dataset
from brats_utils.synthetic_layouts import write_layout


def ensure_synthetic(profile: Profile, out_dir: str | Path | None = None) -> Path:
    """The profile's synthetic dataset (at ``out_dir``, else ``profile.synthetic_dir``), made on first use.

    It is written in the layout of ``profile.dataset``: the Kaggle BraTS 2020 layout, or that
    dataset re-saved in another one (:func:`brats_utils.synthetic_layouts.write_layout`, into
    ``<synthetic_dir>-<dataset>`` unless ``out_dir`` is given).
    """
    kaggle = profile.synthetic_dir
    if profile.dataset == "brats2020" and out_dir is not None:
        kaggle = Path(out_dir)
    kaggle = write_synthetic_dataset(kaggle, profile.synthetic_train_cases, profile.synthetic_val_cases,
                                     profile.synthetic_shape, seed=profile.seed)
    if profile.dataset == "brats2020":
        return kaggle
    target = Path(out_dir) if out_dir is not None else kaggle.with_name(f"{kaggle.name}-{profile.dataset}")
    return write_layout(kaggle, target, profile.dataset)


def real_dataset(profile: Profile) -> Path:
    """The folder of the real ``profile.dataset``: ``$BRATS_ROOT``, else downloaded where that is possible.

    BraTS 2020 and 2021 come through kagglehub (2021 is unpacked into ``<data_dir>/brats2021``);
    BraTS 2023 (Synapse, registration) and MSD Task01 (its own download) must be at
    ``$BRATS_ROOT``, else :class:`~brats_utils.errors.DatasetNotFoundError` says where to get them.
    """
    layout = LAYOUTS[profile.dataset]
    if profile.dataset == "brats2020":
        return download_brats2020()
    env_root = os.environ.get(ROOT_ENV)
    if env_root:
        return Path(env_root).expanduser()
    if profile.dataset == "brats2021":
        return download_brats2021(data_dir() / "brats2021")
    raise DatasetNotFoundError(f"{layout.title} is not downloaded by this project; set ${ROOT_ENV}",
                               expected=layout.how_to_get)


def ensure_dataset(profile: Profile) -> Path:
    """The dataset root a profile works on, made if missing.

    Real data when ``profile.data_source == "real"`` or ``$BRATS_ROOT`` is set (see
    :func:`brats_utils.download.download_brats2020`); otherwise the profile's synthetic
    dataset (:func:`ensure_synthetic`). Synthetic profiles never touch the network.
    """
    if profile.data_source == "real" or os.environ.get(ROOT_ENV):
        return real_dataset(profile)
    return ensure_synthetic(profile)


def training_cases(profile: Profile) -> list[Case]:
    """The labelled cases a profile trains on: its dataset's training split, the first ``max_cases``."""
    cases = find_dataset(ensure_dataset(profile), split="training", dataset=profile.dataset)
    return cases[: profile.max_cases]


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
                             tta_flips=flips, margin=profile.crop_margin)


def predict_split(profile: Profile, *, checkpoint: str | Path | None = None, root: str | Path | None = None,
                  split: str = "validation", out_dir: str | Path | None = None,
                  progress: bool = True) -> list[Path]:
    """Segment every case of one split into ``<out_dir>/<case_id>.nii.gz``.

    Defaults: the profile's best checkpoint (trained if missing), its dataset, and
    ``<run_dir>/predictions-<split>``. A ``root`` of another dataset is detected by its layout,
    and its predictions are written in that dataset's own labels (a model trained on BraTS 2020
    predicts MSD cases as MSD labels).
    """
    checkpoint = Path(checkpoint) if checkpoint is not None else ensure_trained(profile, progress=progress)
    if root is not None:
        cases = find_dataset(Path(root), split=split)
    else:
        cases = find_dataset(ensure_dataset(profile), split=split, dataset=profile.dataset)
    out_dir = Path(out_dir) if out_dir is not None else profile.run_dir / f"predictions-{split}"
    return predict_folder(load_model(checkpoint), cases, out_dir, inference_settings(profile),
                          progress=progress)


def evaluate_folder(profile: Profile, predictions: str | Path, *, truth: str | Path | None = None,
                    out_csv: str | Path | None = None, protocol: str | None = None,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a folder of predictions against the training split of ``truth`` (default: the profile's data).

    ``protocol`` (default ``profile.protocol``: the dataset's own, lesion-wise for BraTS 2023)
    is ``"brats2020"`` or ``"lesionwise"``. The per-case table goes to ``out_csv`` (default
    ``<predictions>/metrics.csv``); see :func:`brats_utils.metrics.evaluate`.
    """
    cases = (find_dataset(Path(truth), split="training") if truth is not None
             else find_dataset(ensure_dataset(profile), split="training", dataset=profile.dataset))
    out_csv = Path(out_csv) if out_csv is not None else Path(predictions) / "metrics.csv"
    return evaluate(Path(predictions), cases, out_csv=out_csv, progress=progress,
                    protocol=get_protocol(protocol or profile.protocol))
