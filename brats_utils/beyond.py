"""Beyond the paper (notebook 08): the paper's future work and the BraTS 2020 winner's tricks, one study.

Every *variant* changes one thing of the paper's recipe (:data:`VARIANTS`) and is trained with the
architecture study's machinery (:func:`brats_utils.compare.measure_preset`: the same data, split,
budget ``compare_epochs`` x ``compare_steps_per_epoch`` and cost measurements), once per seed
(``profile.beyond_seeds`` seeds: ``init_seed`` = seed, seed + 1, ...; the split keeps ``profile.seed``).
Two more rows need no training of their own, they reuse the paper model's runs:

- ``paper + ET post-processing``: each paper run's predictions with small ET relabelled
  (:mod:`brats_utils.postprocess`), the threshold chosen on that run's predictions of its *training*
  volumes, reported on the held-out ones;
- ``paper ensemble``: the average of the paper runs' probabilities (all seeds), through the same
  sliding window (:func:`ensemble_predictor`); one ensemble, so no standard deviation.

Every run is scored on the held-out volumes (the profile's validation split, which also picked each
run's best epoch, the same for every variant) with the BraTS rules (:func:`brats_utils.metrics.
case_metrics`: Dice and HD95 per region), and on a **foreign-looking copy** of them
(:func:`foreign_copy`: left-right and front-back flipped, as RAS against LPS, and the intensities
scaled by 1.25 and shifted by 0.25 inside the brain), made here because the package has no
foreign dataset of its own.

Files (``data/beyond/<profile>/``)::

    <variant>/seed<k>/           one training run (history, checkpoints) and its row.json
    runs.csv                     one row per run (variant x seed)
    beyond.csv                   the table: mean ± standard deviation per variant

A run whose ``row.json`` matches the current settings and device is reused, as in the architecture
study, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from brats_utils import compare
from brats_utils.checkpoints import load_model
from brats_utils.config import Profile, data_dir
from brats_utils.data import VolumeDataset
from brats_utils.files import write_csv_atomic, write_json_atomic
from brats_utils.inference import Predictor, average_predictors, sliding_window
from brats_utils.labels import REGION_COLORS, to_file_labels
from brats_utils.metrics import case_metrics
from brats_utils.model import build_model, model_costs
from brats_utils.postprocess import choose_et_threshold, suppress_small_et
from brats_utils.regions import output_channels, predictor_for, probs_to_labels
from brats_utils.train import loaders_for, pick_device
from brats_utils.viz import save_figure

#: What each trained variant changes in the paper's recipe (profile overrides).
VARIANTS: dict[str, dict] = {
    "paper": {},
    "regions": {"target": "regions"},
    "batch Dice": {"batch_dice": True},
    "Dice without background": {"dice_include_background": False},
    "attention gates": {"model_preset": "paper_attention"},
    "strong augmentation": {"augmentation": "strong"},
}
POSTPROCESSED = "paper + ET post-processing"
ENSEMBLE = "paper ensemble"
REGIONS = ("WT", "TC", "ET")
#: Per-run quality columns: held-out Dice and HD95 per region, then Dice on the foreign copy.
QUALITY_COLUMNS = (*(f"Dice_{r}" for r in REGIONS), *(f"Hausdorff95_{r}" for r in REGIONS),
                   *(f"foreign Dice_{r}" for r in REGIONS))
COST_COLUMNS = ("parameters", "MACs per voxel", "seconds per training step", "seconds per case inference")
FIGURE = "08_beyond_the_paper.png"


# --- where things go -------------------------------------------------------------------------


def beyond_dir(profile: Profile) -> Path:
    """Folder of the study of ``profile``."""
    return data_dir() / "beyond" / profile.name


def variant_names(profile: Profile) -> tuple[str, ...]:
    """The trained variants of the study: ``profile.beyond_variants`` or all of :data:`VARIANTS`."""
    names = tuple(profile.beyond_variants) or tuple(VARIANTS)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or "paper" not in names:
        raise ValueError(f"beyond_variants must name known variants including 'paper' (known: "
                         f"{', '.join(VARIANTS)}), got {names}")
    return names


def seeds(profile: Profile) -> list[int]:
    """The initialisation seeds of every variant: ``profile.seed``, ``profile.seed + 1``, ..."""
    return [profile.seed + index for index in range(profile.beyond_seeds)]


def variant_profile(profile: Profile, variant: str, seed: int) -> Profile:
    """The profile of one run: the variant's change and the seed, everything else as ``profile``."""
    return profile.with_overrides(**VARIANTS[variant], init_seed=seed, beyond_variants=(), beyond_seeds=1)


# --- ensembles and foreign data ----------------------------------------------------------------


def ensemble_predictor(models: Sequence[nn.Module], target: str = "labels", *,
                       precision: str = "auto") -> Predictor:
    """The mean of the models' softmax (or, for ``target="regions"``, sigmoid) probabilities."""
    if not models:
        raise ValueError("an ensemble needs at least one model")
    return average_predictors([predictor_for(model, target, precision=precision) for model in models])


def ensemble_predict(models: Sequence[nn.Module], image: np.ndarray | torch.Tensor, profile: Profile,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Probabilities ``[K, h, w, d]`` of an ensemble over a whole image, with the profile's window settings.

    An ensemble of one model gives exactly that model's :func:`brats_utils.inference.sliding_window_predict`.
    """
    for model in models:
        model.to(device).eval()
    predictor = ensemble_predictor(models, profile.target, precision=profile.requested_precision)
    return sliding_window(predictor, image, patch_size=profile.sw_patch_size, overlap=profile.sw_overlap,
                          sw_batch_size=profile.sw_batch_size, device=device)


def foreign_copy(image: torch.Tensor, label: torch.Tensor, *, scale: float = 1.25,
                 offset: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """A foreign-looking copy of a cropped case: axes X and Y flipped (RAS instead of LPS), and the
    normalised intensities inside the brain (non-zero voxels) scaled by ``scale``, shifted by ``offset``."""
    flipped = image.flip((1, 2))
    brain = flipped != 0
    return torch.where(brain, flipped * scale + offset, flipped), label.flip((0, 1))


# --- scoring ---------------------------------------------------------------------------------


def predict_volumes(predictor: Predictor, volumes, profile: Profile, device: torch.device, *,
                    foreign: bool = False) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Predicted and true file labels of every volume, and the mean seconds per case."""
    predictions, truths, seconds = [], [], 0.0
    for index in range(len(volumes)):
        image, label, _case_id = volumes[index]
        if foreign:
            image, label = foreign_copy(image, label)
        started = time.perf_counter()
        with torch.inference_mode():
            probs = sliding_window(predictor, image, patch_size=profile.sw_patch_size,
                                   overlap=profile.sw_overlap, sw_batch_size=profile.sw_batch_size,
                                   device=device)
        seconds += time.perf_counter() - started
        predictions.append(to_file_labels(probs_to_labels(probs, profile.target).numpy()))
        truths.append(to_file_labels(label.numpy().astype(np.uint8)))
    return predictions, truths, seconds / max(len(volumes), 1)


def mean_scores(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], prefix: str = "") -> dict:
    """Mean Dice and HD95 per region over cases (BraTS rules), keys ``<prefix>Dice_WT``, ..."""
    per_case = pd.DataFrame([case_metrics(p, t) for p, t in zip(predictions, truths, strict=True)])
    columns = [f"{score}_{r}" for score in ("Dice", "Hausdorff95") for r in REGIONS]
    return {f"{prefix}{column}": float(per_case[column].mean()) for column in columns}


def split_volumes(profile: Profile, cache_dir: Path, run_dir: Path) -> tuple[VolumeDataset, VolumeDataset]:
    """Held-out (validation split) and training volumes of the split saved in ``run_dir``."""
    _, held_out = loaders_for(profile, cache_dir, run_dir)
    split = pd.read_csv(run_dir / "split.csv")
    train_ids = split.loc[split["split"] == "train", "case_id"]
    return held_out, VolumeDataset([Path(cache_dir) / case_id for case_id in train_ids])


def _score(predictor: Predictor, profile: Profile, held_out, device: torch.device) -> tuple[dict, list, list]:
    predictions, truths, seconds = predict_volumes(predictor, held_out, profile, device)
    foreign_predictions, foreign_truths, _ = predict_volumes(predictor, held_out, profile, device,
                                                             foreign=True)
    row = {**mean_scores(predictions, truths),
           **{k: v for k, v in mean_scores(foreign_predictions, foreign_truths, "foreign ").items()
              if "Dice" in k},
           "seconds per case inference": seconds}
    return row, predictions, truths


def measure_run(variant: str, seed: int, profile: Profile, cache_dir: Path, run_dir: Path,
                device: torch.device, *, progress: bool = True) -> dict:
    """Train one variant with one seed (resumable), measure its cost, score it (+ the post-processed row)."""
    study = variant_profile(profile, variant, seed)
    trained = compare.measure_preset(study.model_preset, study, cache_dir, run_dir, device, progress=progress)
    study = compare.study_profile(study, study.model_preset)
    model = load_model(run_dir / "checkpoints" / "best.pt", device=device)
    predictor = predictor_for(model, study.target, precision=study.requested_precision)
    held_out, training = split_volumes(study, cache_dir, run_dir)
    scores, predictions, truths = _score(predictor, study, held_out, device)
    row = {"seconds per training step": trained["seconds per training step"],
           "training minutes": trained["training minutes"], **scores}
    if variant == "paper":  # the post-processing threshold, chosen on the training volumes
        train_predictions, train_truths, _ = predict_volumes(predictor, training, study, device)
        threshold = choose_et_threshold(train_predictions, train_truths)
        processed = [suppress_small_et(p, threshold) for p in predictions]
        row["ET threshold"] = threshold
        row["postprocessed"] = mean_scores(processed, truths)
    return row


def _static(variant: str) -> dict:
    profile_fields = VARIANTS[variant]
    preset = profile_fields.get("model_preset", "paper")
    model = build_model(preset, num_classes=output_channels(profile_fields.get("target", "labels")))
    costs = model_costs(model)
    return {"parameters": int(costs["parameters"]), "MACs per voxel": float(costs["MACs per voxel"])}


def run_study(profile: Profile, cache_dir: str | Path, *, out_dir: Path | None = None, progress: bool = True,
              device: str | torch.device | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train, measure and score every variant x seed; returns ``(runs, table)``, both also written as CSV.

    :func:`brats_utils.pipeline.run_beyond` builds the cache first.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir) if out_dir is not None else beyond_dir(profile)
    device = torch.device(device) if device is not None else pick_device()
    cache_dir = Path(cache_dir)
    runs: list[dict] = []
    jobs = [(variant, seed) for variant in variant_names(profile) for seed in seeds(profile)]
    for variant, seed in tqdm(jobs, desc="variants x seeds", unit="run", disable=not progress):
        run_dir = out_dir / variant.replace(" ", "_") / f"seed{seed}"
        study = variant_profile(profile, variant, seed)
        fingerprint = compare._fingerprint(compare.study_profile(study, study.model_preset), device)
        row = compare._read_row(run_dir / "row.json", fingerprint)
        if row is None:
            row = measure_run(variant, seed, profile, cache_dir, run_dir, device, progress=progress)
            write_json_atomic({"fingerprint": fingerprint, "row": row}, run_dir / "row.json")
        processed = row.pop("postprocessed", None)
        runs.append({"variant": variant, "seed": seed, **_static(variant), **row})
        if processed is not None:
            not_measured = {f"foreign Dice_{r}": np.nan for r in REGIONS}  # scored on held-out cases only
            runs.append({**runs[-1], "variant": POSTPROCESSED, **not_measured, **processed})
        write_csv_atomic(pd.DataFrame(runs), out_dir / "runs.csv")
    runs.append(_ensemble_row(profile, cache_dir, out_dir, device))
    frame = pd.DataFrame(runs)
    write_csv_atomic(frame, out_dir / "runs.csv")
    table = summarize(frame)
    write_csv_atomic(table.reset_index(), out_dir / "beyond.csv")
    import matplotlib.pyplot as plt

    fig = plot_study(table)
    save_figure(fig, FIGURE)
    plt.close(fig)
    return frame, table


def _ensemble_row(profile: Profile, cache_dir: Path, out_dir: Path, device: torch.device) -> dict:
    """The ensemble of every paper run (one per seed), scored and timed like a single model."""
    run_dirs = [out_dir / "paper" / f"seed{seed}" for seed in seeds(profile)]
    models = [load_model(run_dir / "checkpoints" / "best.pt", device=device) for run_dir in run_dirs]
    study = compare.study_profile(variant_profile(profile, "paper", profile.seed), "paper")
    held_out, _ = split_volumes(study, cache_dir, run_dirs[0])
    predictor = ensemble_predictor(models, precision=study.requested_precision)
    scores, _, _ = _score(predictor, study, held_out, device)
    static = _static("paper")
    return {"variant": ENSEMBLE, "seed": -1, "parameters": static["parameters"] * len(models),
            "MACs per voxel": static["MACs per voxel"] * len(models), **scores}


# --- the table and its figure ------------------------------------------------------------------


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (over seeds, ``ddof=1``; NaN for one run) per variant, in study order."""
    columns = [c for c in (*QUALITY_COLUMNS, *COST_COLUMNS) if c in runs]
    grouped = runs.groupby("variant", sort=False)[columns]
    mean, std = grouped.mean(), grouped.std()
    table = pd.concat({"mean": mean, "std": std}, axis=1).swaplevel(axis=1)
    table = table[[(c, stat) for c in columns for stat in ("mean", "std")]]
    table.insert(0, ("seeds", ""), grouped.size())
    return table


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as strings ``mean ± std`` (Dice 3 decimals, HD95 1, costs as counts and seconds)."""
    out = pd.DataFrame(index=table.index)
    out["seeds"] = table[("seeds", "")]
    for column in dict.fromkeys(c for c, _ in table.columns if c != "seeds"):
        mean, std = table[(column, "mean")], table[(column, "std")]
        digits = 3 if "Dice" in column else 1 if "Hausdorff" in column else 4 if "seconds" in column else 0
        out[column] = [f"{m:,.{digits}f}" + ("" if np.isnan(s) or s == 0 else f" ± {s:,.{digits}f}")
                       for m, s in zip(mean, std, strict=True)]
    return out


def plot_study(table: pd.DataFrame) -> Figure:
    """Held-out and foreign-copy Dice per region (mean ± std over seeds), one group of bars per variant."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), layout="constrained", sharey=True)
    x = np.arange(len(table))
    for ax, prefix, title in ((axes[0], "", "held-out cases"), (axes[1], "foreign ", "foreign-looking copy")):
        for offset, region in zip((-0.25, 0.0, 0.25), REGIONS, strict=True):
            column = f"{prefix}Dice_{region}"
            ax.bar(x + offset, table[(column, "mean")], width=0.25, yerr=table[(column, "std")].fillna(0),
                   color=REGION_COLORS[region], edgecolor="black", linewidth=0.5, capsize=2, label=region)
        ax.set_xticks(x, table.index, rotation=30, ha="right", fontsize=8)
        ax.set(title=f"Dice on the {title}", ylim=(0, 1.02))
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("Dice (mean ± std over seeds)")
    axes[0].legend(fontsize="small")
    return fig

