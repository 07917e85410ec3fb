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
    predictor -> predict_cases -> predict_split -> evaluate_folder
    split_of -> heldout_split                 evaluate_pretrained (the authors' weights)
    cross_validate (fold=0..k-1, pooled out-of-fold scores) -> predict_with_folds (their average)

Which cases a number is measured on: :func:`split_of` gives the profile's patient split
(``train`` / ``val`` / ``test``). The validation cases drive the schedule, early stopping
and the best checkpoint; the test cases (``profile.test_fraction``, ``demo`` and ``gpu``)
are only ever predicted by :func:`predict_split` for the final report.
:func:`heldout_split` names the cases a profile reports on and :func:`split_label` says
what they are.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from brats_utils import beyond, compare
from brats_utils import train as training
from brats_utils.augment import AUGMENTATIONS, augmentation_for, tta_flips
from brats_utils.checkpoints import (
    check_compatible,
    checkpoint_dir,
    load_checkpoint,
    load_model,
    load_pretrained,
)
from brats_utils.config import ROOT_ENV, Profile, brats_root, data_dir, figures_dir, registered_fields
from brats_utils.data import VolumeDataset, split_patients, split_volumes
from brats_utils.data import make_loaders as make_patch_loaders
from brats_utils.datasets import LAYOUTS, find_dataset, scan_sets
from brats_utils.distributed import distributed_info, main_process_first
from brats_utils.download import download_brats2020, download_brats2021
from brats_utils.errors import (
    BratsError,
    CacheError,
    CheckpointError,
    DatasetNotFoundError,
    NotCoregisteredError,
    ProfileError,
)
from brats_utils.faults import interrupt_note, out_of_memory_explained, resume_command
from brats_utils.files import write_json_atomic
from brats_utils.inference import (
    Predictions,
    Predictor,
    average_predictors,
    predict_cached,
    predict_folder,
    prediction_fingerprint,
    with_flips,
)
from brats_utils.io import Case, load_case, read_labels
from brats_utils.labels import TRAIN_LABEL_NAMES, LabelScheme, to_train_labels
from brats_utils.lesion_metrics import BRATS2025, PROTOCOLS, MetricsProtocol, get_protocol
from brats_utils.metrics import evaluate, prediction_path, score_volumes
from brats_utils.model import ALL_PRESETS, build_model
from brats_utils.postprocess import et_threshold_table, threshold_record, voxel_volume_mm3
from brats_utils.precision import to_channels_last, use_channels_last
from brats_utils.preprocess import CropMeta, build_cache, cache_key, is_up_to_date, load_cached, uncrop
from brats_utils.regions import LOSSES, TARGETS, predictor_for
from brats_utils.run_state import is_finished
from brats_utils.synthetic import write_layout, write_synthetic_dataset
from brats_utils.viz import write_figure

#: The registries profile settings name (``Meta.registry`` of :mod:`brats_utils.config`).
REGISTRIES: dict[str, dict] = {"augment.AUGMENTATIONS": AUGMENTATIONS, "regions.TARGETS": TARGETS,
                               "regions.LOSSES": LOSSES, "lesion_metrics.PROTOCOLS": {*PROTOCOLS, BRATS2025},
                               "datasets.LAYOUTS": LAYOUTS, "model.PRESETS": ALL_PRESETS}


def save_figure(fig: Figure, name: str, *, dpi: int = 120) -> Path:
    """Save ``fig`` as ``name`` in the figures folder and return its path.

    The folder is ``config.figures_dir()`` (``$BRATS_FIGURES_DIR``, or ``figures/`` of the checkout), the
    format PNG unless ``name`` has another suffix, the write atomic (:func:`brats_utils.viz.write_figure`).
    """
    return write_figure(fig, figures_dir() / name, dpi=dpi)


def metrics_protocol(profile: Profile) -> MetricsProtocol:
    """The metrics protocol the profile reports: its ``metrics_protocol``, else its dataset's own
    (``DatasetLayout.protocol``: region-wise up to BraTS 2021, lesion-wise from 2023)."""
    return get_protocol(profile.metrics_protocol or LAYOUTS[profile.dataset].protocol)


def check_registered(profile: Profile) -> Profile:
    """``profile`` if every setting that names a registry entry (augmentation, target, loss, metrics
    protocol) names a known one; :class:`~brats_utils.errors.ProfileError` naming the setting and the
    known entries otherwise. (``config`` sits below the registries, so they are checked here.)"""
    for name, registry in registered_fields().items():
        value = getattr(profile, name)
        for entry in value if isinstance(value, tuple) else (value,):  # compare_presets: a tuple of names
            if entry is not None and entry not in REGISTRIES[registry]:
                raise ProfileError(f"profile field {name} cannot be {value!r}: no entry {entry!r}",
                                   expected="each one of " + ", ".join(REGISTRIES[registry]))
    return profile


def ensure_synthetic(profile: Profile, out_dir: str | Path | None = None) -> Path:
    """The profile's synthetic dataset (at ``out_dir``, else ``profile.synthetic_dir``), made on first use.

    It is written in the layout of ``profile.dataset``: the Kaggle BraTS 2020 layout, or that
    dataset re-saved in another one (:func:`brats_utils.synthetic.write_layout`, into
    ``<synthetic_dir>-<dataset>`` unless ``out_dir`` is given).
    """
    kaggle = profile.synthetic_dir
    if profile.dataset == "brats2020" and out_dir is not None:
        kaggle = Path(out_dir)
    kaggle = write_synthetic_dataset(kaggle, profile.synthetic_train_cases, profile.synthetic_val_cases,
                                     profile.synthetic_shape, seed=profile.seed, wait=profile.lock_timeout)
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
    own_copy = brats_root()
    if profile.dataset == "brats2020":
        return download_brats2020(own_copy)
    if own_copy is not None:
        return own_copy
    if profile.dataset == "brats2021":
        return download_brats2021(data_dir() / "brats2021")
    raise DatasetNotFoundError(f"{layout.title} is not downloaded by this project; set ${ROOT_ENV}",
                               expected=layout.how_to_get)


def uses_real_data(profile: Profile) -> bool:
    """Whether the profile works on real data: ``data_source="real"``, or your own copy at ``$BRATS_ROOT``."""
    return profile.data_source == "real" or brats_root() is not None


def ensure_dataset(profile: Profile) -> Path:
    """The dataset root a profile works on, made if missing.

    Real data when ``profile.data_source == "real"`` or ``$BRATS_ROOT`` is set (see
    :func:`brats_utils.download.download_brats2020`); otherwise the profile's synthetic
    dataset (:func:`ensure_synthetic`). Synthetic profiles never touch the network. The profile's
    registry names are checked first (:func:`check_registered`).
    """
    check_registered(profile)
    if uses_real_data(profile):
        return real_dataset(profile)
    return ensure_synthetic(profile)


def training_cases(profile: Profile) -> list[Case]:
    """The labelled cases a profile trains on: its dataset's training split, the first ``max_cases``."""
    cases = find_dataset(ensure_dataset(profile), split="training", dataset=profile.dataset)
    return cases[: profile.max_cases]


#: The record a cache folder gets once every entry of a profile's cases is built (:func:`ensure_cache`).
CACHE_MANIFEST = "complete.json"


def cache_request(profile: Profile) -> dict:
    """What decides a profile's cached cases: the data (which dataset, real or which synthetic copy,
    how many cases) and the preprocessing. Two profiles with the same request share a complete cache."""
    real = uses_real_data(profile)
    synthetic = {} if real else {"synthetic_train_cases": profile.synthetic_train_cases,
                                 "synthetic_val_cases": profile.synthetic_val_cases,
                                 "synthetic_shape": list(profile.synthetic_shape), "seed": profile.seed}
    return {"dataset": profile.dataset, "data": "real" if real else "synthetic", **synthetic,
            "max_cases": profile.max_cases, "margin": profile.crop_margin,
            "normalisation": profile.normalisation, "crop": profile.crop}


def _manifest(profile: Profile) -> dict | None:
    """The cache folder's :data:`CACHE_MANIFEST`, if written for the profile's :func:`cache_request`."""
    try:
        manifest = json.loads((profile.cache_dir / CACHE_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("request") == cache_request(profile) and manifest.get("entries") else None


def complete_cache(profile: Profile) -> Path | None:
    """The profile's cache folder when it is complete for :func:`cache_request`, else None.

    Complete means: its :data:`CACHE_MANIFEST` was written for the same request, and every entry it
    lists is still there with the key it was built with and its arrays of the recorded size (the
    CRC-32 is checked when the cache is built). Nothing here opens the dataset.
    """
    manifest = _manifest(profile)
    if manifest is None:
        return None
    folder = profile.cache_dir
    if not all(is_up_to_date(folder / case_id, key, checksums=False)
               for case_id, key in manifest["entries"].items()):
        return None
    return folder


def ensure_cache(profile: Profile, *, progress: bool = True, check_sources: bool = False) -> Path:
    """The profile's cache folder (under :func:`brats_utils.config.cache_dir`), built if needed.

    A complete cache (:func:`complete_cache`) is used as it is, without resolving, let alone
    downloading, the dataset: a new Colab session or a Kaggle run with a saved cache resumes at once.
    Otherwise, or with ``check_sources`` (``python -m brats_utils cache``: every entry checked against
    its source files' size and time), the cases are found and the missing, stale or damaged entries
    built, and the manifest is written. A damaged entry of a cache whose dataset is gone raises
    :class:`~brats_utils.errors.CacheError` naming the case and the command that rebuilds it. Another
    process building the same cache is waited for (up to ``profile.lock_timeout`` seconds).
    """
    folder = profile.cache_dir
    if not check_sources and complete_cache(profile) is not None:
        return folder
    with interrupt_note(lambda: _cached_so_far(folder), resume_command(profile, "cache")):
        cases = _cases_to_cache(profile)
        settings = {"margin": profile.crop_margin, "normalisation": profile.normalisation,
                    "crop": profile.crop}
        build_cache(cases, folder, **settings, workers=profile.num_workers, progress=progress,
                    wait=profile.lock_timeout)
        entries = {case.case_id: cache_key(case, **settings) for case in cases}
        write_json_atomic({"request": cache_request(profile), "entries": entries}, folder / CACHE_MANIFEST)
    return folder


def _cases_to_cache(profile: Profile) -> list[Case]:
    """:func:`training_cases`, or a :class:`CacheError` naming a damaged entry when the dataset is gone."""
    try:
        return training_cases(profile)
    except BratsError as error:
        manifest = _manifest(profile) or {"entries": {}}
        for case_id, key in manifest["entries"].items():
            entry = profile.cache_dir / case_id
            if not is_up_to_date(entry, key, checksums=False):
                raise CacheError(f"the cache entry is damaged and its dataset is not available to rebuild it "
                                 f"({error.problem})", case_id=case_id, path=entry,
                                 expected=f"the dataset back, then {resume_command(profile, 'cache')}",
                                 ) from error
        raise


def _cached_so_far(cache_dir: Path) -> str:
    return f"every case cached so far is kept in {cache_dir}"


def _epochs_so_far(run_dir: Path) -> str:
    last = checkpoint_dir(run_dir) / "last.pt"
    try:
        epochs = load_checkpoint(last)["epoch"]
    except CheckpointError:
        return f"no epoch had finished, nothing is saved in {run_dir}"
    return f"epochs 1-{epochs} are saved in {last}"


def _finished_rows(out_dir: Path, pattern: str, what: str) -> str:
    return (f"{len(list(out_dir.glob(pattern)))} finished {what} are kept in {out_dir} (the one in progress "
            f"continues from its last checkpoint)")


#: Splits of the labelled cases a run uses (:func:`split_of`); "training" and "validation" name the
#: dataset's folders (the official validation folder has no ground truth).
RUN_SPLITS = ("train", "val", "test")


def split_of(profile: Profile, cases: list[Case] | None = None) -> dict[str, list[str]]:
    """The profile's patient split of its labelled cases (or of ``cases``): train, val, test, excluded.

    The same split :func:`make_loaders` saves to ``<run_dir>/split.csv``
    (:func:`brats_utils.data.split_patients` with the profile's fractions and seed).
    """
    ids = [case.case_id for case in (training_cases(profile) if cases is None else cases)]
    return split_patients(ids, val_fraction=profile.val_fraction, test_fraction=profile.test_fraction,
                          seed=profile.seed, exclude_from_training=profile.exclude_from_training,
                          fold=profile.fold, n_folds=profile.n_folds, stratum=profile.stratify_split)


def heldout_split(profile: Profile) -> str:
    """The split a profile's final report is measured on: ``"test"`` if it has test cases, else ``"val"``."""
    return "test" if profile.test_fraction > 0 else "val"


def split_label(profile: Profile, split: str) -> str:
    """What the cases of ``split`` are, for a report: e.g. "test cases (never used for model selection)"."""
    labels = {"test": "test cases (never seen by training or model selection)",
              "val": "validation cases (used for model selection)", "train": "training cases",
              "training": "cases of the training folder",
              "validation": "cases of the unlabelled validation folder"}
    return labels[split]


def _cases_of_split(profile: Profile, root: Path, split: str, dataset: str | None) -> list[Case]:
    """The cases of ``split`` under ``root``: a part of the run's patient split, or a dataset folder.

    ``dataset`` names the layout (the profile's own data); ``None`` detects it (another folder).
    """
    if split not in RUN_SPLITS:
        return find_dataset(root, split=split, dataset=dataset)
    labelled = find_dataset(root, split="training", dataset=dataset)[: profile.max_cases]
    wanted = set(split_of(profile, labelled)[split])
    return [case for case in labelled if case.case_id in wanted]


def make_loaders(profile: Profile, *, progress: bool = True) -> tuple[DataLoader, VolumeDataset]:
    """Training patches and validation volumes of the profile's cache (the split saved in its run folder)."""
    return make_patch_loaders(ensure_cache(profile, progress=progress), profile.data, profile.loader,
                              split_csv=profile.run_dir / "split.csv")


def train(profile: Profile, *, run_dir: Path | None = None, resume: bool = True,
          max_epochs: int | None = None, progress: bool = True,
          device: str | torch.device | None = None) -> training.TrainResult:
    """Train the profile's U-Net on its cache (built first if needed); see :func:`brats_utils.train.train`.

    Under torchrun every rank calls it: rank 0 builds the cache first, the others then find it ready.
    """
    info = distributed_info(device)
    run_dir = Path(run_dir) if run_dir is not None else profile.run_dir
    with interrupt_note(lambda: _epochs_so_far(run_dir), resume_command(profile, "train")):
        with main_process_first():
            cache_dir = ensure_cache(profile, progress=progress and info.is_main)
        with out_of_memory_explained(profile, "training"):
            return training.train(profile, cache_dir, run_dir=run_dir, resume=resume, max_epochs=max_epochs,
                                  progress=progress, device=device)


def ensure_trained(profile: Profile, *, progress: bool = True) -> Path:
    """The profile's best checkpoint, training (or finishing an interrupted run) first if needed.

    Raises :class:`~brats_utils.errors.CheckpointError` when the existing run used other settings
    (start it over with ``train(profile, resume=False)`` or ``python -m brats_utils train --restart``).
    """
    folder = checkpoint_dir(profile.run_dir)
    last_path, best_path = folder / "last.pt", folder / "best.pt"
    if last_path.exists() and best_path.exists():
        try:
            checkpoint = load_checkpoint(last_path)
        except CheckpointError:  # damaged: train() resumes from the newest epoch file that loads, saying so
            checkpoint = None
        if checkpoint is not None:
            check_compatible(checkpoint, profile.as_dict(), last_path)
            if is_finished(checkpoint, profile):
                return best_path
    return train(profile, resume=True, progress=progress).best_checkpoint


def run_comparison(profile: Profile, *, out_dir: Path | None = None, progress: bool = True,
                   device: str | torch.device | None = None) -> pd.DataFrame:
    """The architecture study of the profile on its cache; see :func:`brats_utils.compare.run_comparison`."""
    folder = Path(out_dir) if out_dir is not None else compare.comparison_dir(profile)
    with interrupt_note(lambda: _finished_rows(folder, "*/row.json", "models"),
                        resume_command(profile, "compare")):
        return compare.run_comparison(profile, ensure_cache(profile, progress=progress), out_dir=out_dir,
                                      progress=progress, device=device,
                                      report_split=heldout_split(profile))


#: Seed offset of the foreign phantoms: other patients than every case of the profile's own dataset.
FOREIGN_SEED_OFFSET = 1000


def ensure_foreign_cache(profile: Profile, root: str | Path | None = None, *,
                         progress: bool = True) -> list[Path] | None:
    """Cached labelled cases of a foreign dataset for the beyond study, made if missing.

    ``root``: any labelled dataset in a known layout (detected). It must not hold the patients the
    runs trained on, and the public sets overlap: BraTS 2021 and 2023 contain the BraTS 2020 patients
    under new names, and MSD Task01 is BraTS 2016/2017 data, so against a BraTS 2020 run only a folder
    of their newer cases is foreign. Without it, a synthetic profile gets phantoms of other patients
    (seed + :data:`FOREIGN_SEED_OFFSET`, as many as its test cases) written the way other copies store
    them (``foreign=True``: ``.nii.gz``, RAS voxel order, scaled int16), plus the one whose T2 is not
    co-registered; a profile on real data gets None. A case the loader refuses as not co-registered
    (:class:`~brats_utils.errors.NotCoregisteredError`) is left out with a warning naming it. Either
    way the cases go through the package's own loader and preprocessing.
    """
    if root is None:
        if uses_real_data(profile):
            return None
        seed = profile.seed + FOREIGN_SEED_OFFSET
        shape = "x".join(map(str, profile.synthetic_shape))
        n_cases = max(len(split_of(profile)[heldout_split(profile)]), 1) + 1
        root = data_dir() / "synthetic" / f"{profile.name}-foreign-{shape}-seed{seed}"
        write_synthetic_dataset(root, n_cases, 0, profile.synthetic_shape, seed=seed, foreign=True,
                                wait=profile.lock_timeout)
    root = Path(root)
    cases = []
    for case in find_dataset(root, split="training"):
        try:
            load_case(case)  # the loader's own checks, before anything is cached
        except NotCoregisteredError as error:
            warnings.warn(f"left out of the foreign dataset: {error}", stacklevel=2)
            continue
        cases.append(case)
    return build_cache(cases, profile.cache_dir.with_name(f"{profile.cache_dir.name}-foreign-{root.name}"),
                       margin=profile.crop_margin, normalisation=profile.normalisation, crop=profile.crop,
                       workers=profile.num_workers, progress=progress, wait=profile.lock_timeout)


def run_beyond(profile: Profile, *, foreign_root: str | Path | None = None, out_dir: Path | None = None,
               budget_factor: int = 1, progress: bool = True,
               device: str | torch.device | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The beyond-the-paper study of the profile on its cache; see :func:`brats_utils.beyond.run_study`.

    Scored on the profile's :func:`heldout_split` and on :func:`ensure_foreign_cache` (``foreign_root``).
    ``budget_factor`` 1 is the screening study; ``k`` > 1 the longer run (:func:`beyond.longer_profile`:
    the paper and region models with ``k`` times the epochs) in its own folder
    (``beyond.beyond_dir(profile, k)``) with its own report and figure, the screening study untouched.
    """
    folder = Path(out_dir) if out_dir is not None else beyond.beyond_dir(profile, budget_factor)
    study = beyond.longer_profile(profile, budget_factor) if budget_factor != 1 else profile
    options = ("--foreign-root", str(foreign_root)) if foreign_root is not None else ()
    options += ("--longer", str(budget_factor)) if budget_factor != 1 else ()
    with interrupt_note(lambda: _finished_rows(folder, "*/*/row.json", "runs"),
                        resume_command(profile, "beyond", *options)):
        cache_dir = ensure_cache(profile, progress=progress)
        foreign = ensure_foreign_cache(profile, foreign_root, progress=progress)
        return beyond.run_study(study, cache_dir, report_split=heldout_split(profile),
                                foreign_entries=foreign, out_dir=folder,
                                figure=beyond.figure_name(budget_factor), progress=progress, device=device)


def test_time_flips(profile: Profile) -> tuple[tuple[int, ...], ...]:
    """The flips the profile's training augmentation produced (:func:`brats_utils.augment.tta_flips`):
    all 8 after ``"mirror"``, the 4 in-plane ones after the paper's ``"in_plane"``, none after ``"none"``."""
    return tta_flips(augmentation_for(profile.augmentation))


def applied_flips(profile: Profile, tta: bool | None = None) -> tuple[tuple[int, ...], ...]:
    """The test-time flips a :func:`predictor` applies: :func:`test_time_flips` when ``tta`` (default: the
    profile's) is on and they are more than the identity, else none (``()``)."""
    flips = test_time_flips(profile)
    return flips if (profile.tta if tta is None else tta) and len(flips) > 1 else ()


def predictor(profile: Profile, *models: torch.nn.Module, tta: bool | None = None) -> Predictor:
    """The predictor the profile describes for ``models`` (one model, or several as an ensemble).

    Each model gives its target's probabilities (:func:`~brats_utils.regions.predictor_for`: softmax
    for ``target="labels"``, sigmoid for ``"regions"``) in the profile's precision; several are averaged
    (:func:`~brats_utils.inference.average_predictors`); the test-time flips of :func:`applied_flips`
    (``tta``, default: the profile's) wrap the whole.
    The models are put in eval mode, and in ``channels_last_3d`` where the precision asks for it.
    """
    members = []
    for model in models:
        model.eval()
        if use_channels_last(profile.requested_precision, _device_of(model)):
            to_channels_last(model)
        members.append(predictor_for(model, profile.target, precision=profile.requested_precision))
    combined = members[0] if len(members) == 1 else average_predictors(members)
    flips = applied_flips(profile, tta)
    return with_flips(combined, flips) if flips else combined


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict_cases(profile: Profile, models: list[torch.nn.Module], cases: list[Case], out_dir: Path, *,
                  tta: bool | None = None, progress: bool = True, overwrite: bool = False) -> Predictions:
    """Segment ``cases`` into ``out_dir`` with the :func:`predictor` of ``models`` and the profile's
    preprocessing and inference sections, where the first model's parameters are.

    Cases already segmented there by the same networks and settings (their
    :func:`~brats_utils.inference.prediction_fingerprint`) are kept unless ``overwrite``.
    """
    fingerprint = prediction_fingerprint(models, profile.inference, profile.preprocessing, profile.target,
                                         profile.requested_precision, applied_flips(profile, tta))
    return predict_folder(predictor(profile, *models, tta=tta), cases, out_dir, profile.inference,
                          profile.preprocessing, target=profile.target, device=_device_of(models[0]),
                          progress=progress, overwrite=overwrite, fingerprint=fingerprint)


def predict_split(profile: Profile, *, checkpoint: str | Path | None = None, root: str | Path | None = None,
                  split: str = "validation", out_dir: str | Path | None = None,
                  progress: bool = True, overwrite: bool = False) -> Predictions:
    """Segment every case of one split into ``<out_dir>/<case_id>.nii.gz``.

    ``split``: ``"test"``, ``"val"`` or ``"train"`` (the run's patient split of the labelled cases,
    :func:`split_of`), or a folder of the dataset, ``"training"`` or ``"validation"`` (unlabelled).
    Defaults: the profile's best checkpoint (trained if missing), its dataset, and
    ``<run_dir>/predictions-<split>``. A ``root`` of another dataset is detected by its layout,
    and its predictions are written in that dataset's own labels (a model trained on BraTS 2020
    predicts MSD cases as MSD labels). A ``root`` that is one case folder or a flat folder of
    four-modality scan sets (:func:`brats_utils.datasets.scan_sets`) is predicted whole, whatever
    ``split``, by default into ``<run_dir>/predictions-<folder name>``. Cases already predicted
    completely by the same model and settings are skipped (an interrupted prediction continues);
    ``overwrite`` predicts them again. When the profile's dataset cannot be found but its cache is
    complete, a part of the run's split is predicted from the cached (float16) images instead
    (:func:`~brats_utils.inference.predict_cached`, every case again), saying so in one line.
    """
    own_scans = scan_sets(root) if root is not None else []
    if own_scans:
        cases, out_name = own_scans, Path(root).resolve().name
    elif root is not None:
        cases, out_name = _cases_of_split(profile, Path(root), split, None), split
    else:
        dataset = _dataset_or_cache(profile, split)
        cases = _cases_of_split(profile, dataset, split, profile.dataset) if dataset is not None else None
        out_name = split
    out_dir = Path(out_dir) if out_dir is not None else profile.run_dir / f"predictions-{out_name}"
    options = [*([("--split" if split in RUN_SPLITS else "--folder"), split] if not own_scans else []),
               *(["--checkpoint", str(checkpoint)] if checkpoint is not None else []),
               *(["--input", str(root)] if root is not None else []), "--out", str(out_dir)]
    with interrupt_note(lambda: f"{len(list(out_dir.glob('*.nii.gz')))} segmentations are complete in "
                                f"{out_dir}", resume_command(profile, "predict", *options)):
        checkpoint = ensure_trained(profile, progress=progress) if checkpoint is None else Path(checkpoint)
        model = load_model(checkpoint)
        if profile.compile:
            model = torch.compile(model)
        with out_of_memory_explained(profile, "prediction"):
            profile = with_et_rule(profile, model, split if not own_scans and root is None else None,
                                   from_files=cases is not None, progress=progress)
            if cases is None:
                return predict_cached(predictor(profile, model), _cached_split(profile, split), out_dir,
                                      profile.inference, scheme=LAYOUTS[profile.dataset].scheme,
                                      target=profile.target, device=_device_of(model), progress=progress)
            return predict_cases(profile, [model], cases, out_dir, progress=progress, overwrite=overwrite)


def with_et_rule(profile: Profile, model: torch.nn.Module, split: str | None, *, from_files: bool = True,
                 progress: bool = True) -> Profile:
    """``profile`` with the threshold of its enhancing-tumour rule settled for predicting ``split`` with
    ``model`` (:mod:`brats_utils.postprocess`; ``inference.min_et_volume_mm3``).

    A threshold the profile sets (0 switches the rule off) stays. None is chosen here, on cases no
    model trained on and no report reads: the run's validation cases, predicted by ``model`` without the
    rule into ``<run_dir>/predictions-val`` (kept if already there) and
    :func:`choose_et_threshold`. The validation cases themselves (``split`` ``"val"``) are predicted
    without the rule, since they choose it; so is everything when they are not at hand (``from_files``
    False: predicting from the cache), saying so. One line says which threshold applies.
    """
    if profile.inference.min_et_volume_mm3 is not None:
        return profile
    off = profile.with_overrides(min_et_volume_mm3=0.0)
    if split == "val":
        return off
    try:
        root = ensure_dataset(profile) if from_files else None
    except BratsError:
        root = None
    if root is None:
        print("ET rule off: it is chosen on the run's validation cases, and their files are not here")
        return off
    cases = _cases_of_split(profile, root, "val", profile.dataset)
    chosen_dir = profile.run_dir / "predictions-val"
    predict_cases(off, [model], cases, chosen_dir, progress=progress)
    record = choose_et_threshold(chosen_dir, cases, chosen_on="validation cases")
    print(f"ET rule: a predicted enhancing tumour under {record['min_volume_mm3']:g} mm³ becomes NCR/NET "
          f"(chosen on the {len(cases)} validation cases; {chosen_dir / ET_THRESHOLD_FILE})")
    return profile.with_overrides(min_et_volume_mm3=float(record["min_volume_mm3"]))


def _dataset_or_cache(profile: Profile, split: str, doing: str | None = "predicting") -> Path | None:
    """The profile's dataset root, or None when it cannot be found but the cases of ``split`` (a part of
    the run's split) can come from the complete cache (:func:`complete_cache`); then a line says so,
    ``doing`` (e.g. "predicting") from the cache, unless ``doing`` is None."""
    try:
        return ensure_dataset(profile)
    except BratsError:
        if split not in RUN_SPLITS or complete_cache(profile) is None \
                or not (profile.run_dir / "split.csv").is_file():
            raise
    if doing is not None:
        print(f"the raw dataset is not here: {doing} from the cache in {profile.cache_dir} (float16 images)")
    return None


def _cached_split(profile: Profile, split: str) -> list[Path]:
    """The cache entries of one part of the run's saved split (``<run_dir>/split.csv``)."""
    return split_volumes(profile.cache_dir, profile.run_dir / "split.csv", split).entries


def _cached_truth(entries: list[Path]) -> Iterator[tuple[str, np.ndarray, CropMeta]]:
    """Each entry's case id, cached training labels put back onto the original grid, and crop record."""
    for entry in entries:
        cached = load_cached(entry)
        yield cached.case_id, uncrop(np.asarray(cached.labels), cached.meta, fill=0), cached.meta


def prediction_coverage(profile: Profile, predictions: str | Path, *, truth: str | Path | None = None,
                        split: str | None = None) -> tuple[list[Case] | list[Path], list[str]]:
    """The labelled cases of ``split`` under ``truth`` and the ids of those without a prediction file.

    Without the dataset, but with a complete cache, the cases are the cache entries of a run's split.

    ``truth`` defaults to the profile's dataset (another folder: its layout is detected); ``split``
    is a part of the run's split (``"train"``, ``"val"``, ``"test"``; default :func:`heldout_split`)
    or ``"training"``, every labelled case of the dataset's training folder.
    """
    split = split or heldout_split(profile)
    if truth is not None:
        root, dataset = Path(truth), None  # another folder: its layout is detected
    elif (root := _dataset_or_cache(profile, split, doing=None)) is None:
        entries = _cached_split(profile, split)
        return entries, [entry.name for entry in entries
                         if prediction_path(Path(predictions), entry.name) is None]
    else:
        dataset = profile.dataset
    cases = [case for case in _cases_of_split(profile, root, split, dataset) if case.seg is not None]
    return cases, [case.case_id for case in cases if prediction_path(Path(predictions), case.case_id) is None]


def evaluate_folder(profile: Profile, predictions: str | Path, *, truth: str | Path | None = None,
                    out_csv: str | Path | None = None, protocol: str | None = None, split: str | None = None,
                    partial: bool = False, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a folder of predictions against the labelled cases of one split (:func:`prediction_coverage`).

    Every case of the split must have a prediction: a missing one raises :class:`BratsError`
    listing them, unless ``partial``, which scores only the cases predicted. ``protocol`` (default
    :func:`metrics_protocol`: the dataset's own, lesion-wise for BraTS 2023) is ``"brats2020"``,
    ``"lesionwise"`` or ``"brats2025"`` (the official package where installed). The per-case table
    goes to ``out_csv`` (default ``<predictions>/metrics.csv``); see :func:`brats_utils.metrics.evaluate`.
    Without the dataset but with a complete cache, the truth is the cached labels of the run's split,
    put back onto the original grid (saying so in one line).
    """
    split = split or heldout_split(profile)
    protocol = get_protocol(protocol) if protocol else metrics_protocol(profile)
    out_csv = Path(out_csv) if out_csv is not None else Path(predictions) / "metrics.csv"
    cases, missing = prediction_coverage(profile, predictions, truth=truth, split=split)
    _check_coverage(profile, predictions, split, len(cases), missing, partial=partial)
    if cases and isinstance(cases[0], Path):  # the dataset is gone: the cache's entries
        print(f"the raw dataset is not here: scoring against the labels in the cache in {profile.cache_dir}")
        return _evaluate_cached(Path(predictions), [e for e in cases if e.name not in missing],
                                LAYOUTS[profile.dataset].scheme, out_csv, protocol)
    return evaluate(Path(predictions), cases, out_csv=out_csv, progress=progress, protocol=protocol)


def _check_coverage(profile: Profile, predictions: str | Path, split: str, n_cases: int, missing: list[str],
                    *, partial: bool) -> None:
    """A :class:`BratsError` listing the cases of ``split`` without a prediction, unless ``partial``."""
    if missing and not partial:
        raise BratsError(f"no prediction for {len(missing)} of the {n_cases} "
                         f"{split_label(profile, split)}: {', '.join(missing)}", path=predictions,
                         expected="<case_id>.nii.gz for every case of the split (predict with the same "
                                  "--split), or --partial to score only the cases predicted")


def _evaluate_cached(predictions: Path, entries: list[Path], scheme: LabelScheme, out_csv: Path,
                     protocol: MetricsProtocol) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`evaluate_folder` against cached labels (``entries``), put back onto the original grid."""

    def volumes() -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]]:
        for case_id, truth, meta in _cached_truth(entries):
            pred, _ = read_labels(prediction_path(predictions, case_id), case_id=case_id, scheme=scheme)
            yield (case_id, to_train_labels(pred, scheme=scheme, case_id=case_id), truth,
                   tuple(float(z) for z in nib.affines.voxel_sizes(meta.affine_array)))

    return score_volumes(volumes(), out_csv=out_csv, protocol=protocol)


def evaluate_pretrained(profile: Profile, weights: str | Path, *, split: str | None = None,
                        root: str | Path | None = None, out_dir: str | Path | None = None,
                        progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run published weights (e.g. the authors' ``3D_U_Net_full_slice``) with the profile's preprocessing.

    The weights (any form :func:`~brats_utils.checkpoints.load_pretrained` reads, the authors'
    whole pickled ``DataParallel(ImprovedUNet3D)`` included, never executing the file) go into the
    profile's ``model_preset``; every case of ``split`` (default :func:`heldout_split`: the test
    cases, or for ``paper``/``authors`` the validation cases they selected on) is predicted with
    :func:`predictor` and the profile's sections (``authors``: whole-volume z-score, uncropped, one
    full-volume pass) into ``out_dir`` (default ``<run_dir>/pretrained-<split>``) and scored: the
    per-case table and its summary, with the paper's metric (``PaperDice``) next to the BraTS region
    Dice and HD95.
    """
    split = split or heldout_split(profile)
    model = load_pretrained(build_model(profile.model_preset, dropout=profile.dropout), weights)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    if root is not None:
        cases = _cases_of_split(profile, Path(root), split, None)
    else:
        cases = _cases_of_split(profile, ensure_dataset(profile), split, profile.dataset)
    out_dir = Path(out_dir) if out_dir is not None else profile.run_dir / f"pretrained-{split}"
    with out_of_memory_explained(profile, "prediction"):
        predict_cases(profile, [model], cases, out_dir, progress=progress)
    return evaluate(out_dir, cases, out_csv=out_dir / "metrics.csv", progress=progress,
                    protocol=metrics_protocol(profile))


# --- k-fold cross-validation -----------------------------------------------------------------


def fold_profiles(profile: Profile) -> list[Profile]:
    """The profile once per fold (``fold=0 .. n_folds - 1``), each training into ``<run_dir>/fold<k>``."""
    return [profile.with_overrides(fold=k) for k in range(profile.n_folds)]


def cross_validate(profile: Profile, *, out_dir: str | Path | None = None,
                   progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """k-fold cross-validation: train every fold (if needed), pool the out-of-fold scores.

    Each fold's best checkpoint (chosen on its own validation fold) predicts that fold into
    ``out_dir`` (default ``<run_dir>/cv-oof``); every non-test patient is predicted exactly once,
    by the one model that never trained on it, and the pooled table is scored at once. The test
    cases (``profile.test_fraction``) are in no fold: score them with :func:`predict_with_folds`.
    """
    base = profile.with_overrides(fold=None)
    out_dir = Path(out_dir) if out_dir is not None else base.run_dir / "cv-oof"
    cases = []
    for fold in fold_profiles(base):
        predict_split(fold, checkpoint=ensure_trained(fold, progress=progress), split="val", out_dir=out_dir,
                      progress=progress)
        cases += _cases_of_split(fold, ensure_dataset(fold), "val", fold.dataset)
    choose_et_threshold(out_dir, cases, chosen_on=f"out-of-fold predictions of {profile.n_folds}-fold "
                                                  f"cross-validation")
    return evaluate(out_dir, cases, out_csv=out_dir / "metrics.csv", progress=progress,
                    protocol=metrics_protocol(profile))


#: The enhancing tumour among the training labels (3).
TRAIN_ET_LABEL = next(label for label, name in TRAIN_LABEL_NAMES.items() if name == "ET")
#: Where :func:`choose_et_threshold` keeps its choice, in the folder of the predictions it was chosen on.
ET_THRESHOLD_FILE = "et_threshold.json"


def choose_et_threshold(predictions: str | Path, cases: list[Case], *, chosen_on: str) -> dict:
    """The ET post-processing threshold (mm³, :mod:`brats_utils.postprocess`) chosen on a folder of
    predictions of cases no model trained on, written to ``<predictions>/et_threshold.json``.

    ``predictions``: the pooled out-of-fold predictions of a cross-validation (:func:`cross_validate`
    does this) or, without one, a run's predictions of its validation cases; ``chosen_on`` says which.
    Each case's voxel volume comes from its truth's header. Returns the record
    (:func:`~brats_utils.postprocess.threshold_record`: value, ``chosen_on``, case ids, the curve).
    """
    predictions = Path(predictions)
    labelled = [case for case in cases if case.seg is not None]
    pairs, volumes, ids = [], [], []
    for case in labelled:
        truth, header = read_labels(case.seg, case_id=case.case_id, scheme=case.scheme)
        predicted, _ = read_labels(prediction_path(predictions, case.case_id), case_id=case.case_id,
                                   scheme=case.scheme)
        pairs.append((to_train_labels(predicted, scheme=case.scheme, case_id=case.case_id),
                      to_train_labels(truth, scheme=case.scheme, case_id=case.case_id)))
        volumes.append(voxel_volume_mm3(header.affine))
        ids.append(case.case_id)
    curve = et_threshold_table([p for p, _ in pairs], [t for _, t in pairs], voxel_volumes=volumes,
                               et_label=TRAIN_ET_LABEL)
    record = threshold_record(curve, chosen_on=chosen_on, case_ids=ids)
    write_json_atomic(record, predictions / ET_THRESHOLD_FILE)
    return record


def predict_with_folds(profile: Profile, *, split: str = "test", out_dir: str | Path | None = None,
                       progress: bool = True) -> list[Path]:
    """Segment one split with the fold models' ensemble (the mean of their probabilities, :func:`predictor`),
    trained if missing."""
    base = profile.with_overrides(fold=None)
    models = [load_model(ensure_trained(fold, progress=progress)) for fold in fold_profiles(base)]
    cases = _cases_of_split(base, ensure_dataset(base), split, base.dataset)
    if base.inference.min_et_volume_mm3 is None:  # the ET rule's threshold of the cross-validation
        chosen = base.run_dir / "cv-oof" / ET_THRESHOLD_FILE
        threshold = json.loads(chosen.read_text())["min_volume_mm3"] if chosen.is_file() else 0.0
        print(f"ET rule: {threshold:g} mm³ " + (f"({chosen})" if chosen.is_file() else
                                                  "(off: no cross-validation has chosen it)"))
        base = base.with_overrides(min_et_volume_mm3=float(threshold))
    out_dir = Path(out_dir) if out_dir is not None else base.run_dir / f"predictions-{split}-folds"
    return predict_cases(base, models, cases, out_dir, progress=progress)
