"""Beyond the paper (notebook 08): the paper's future work and the BraTS 2020 winner's tricks, one study.

Every *variant* changes one thing of the paper's recipe (:data:`VARIANTS`) and is trained with the
architecture study's machinery (:func:`brats_utils.compare.measure_preset`: the same data, split,
budget ``compare_epochs`` x ``compare_steps_per_epoch`` and cost measurements), once per seed
(``profile.beyond_seeds`` seeds: ``init_seed`` = ``data_seed`` = seed, seed + 1, ..., so a seed changes the
initialisation, the dropout, the patches and their order; the split keeps ``profile.seed``).
Two more rows need no training of their own, they reuse the paper model's runs:

- ``paper + ET post-processing``: each paper run's predictions with small ET relabelled
  (:mod:`brats_utils.postprocess`), the threshold chosen on that run's predictions of its
  *validation* volumes (as nnU-Net chose it on predictions of cases the model did not train on),
  reported on the test cases, the foreign dataset and the shifted copy;
- ``paper ensemble``: the average of the paper runs' probabilities (all seeds), through the same
  sliding window (:func:`brats_utils.inference.average_predictors`); one ensemble, so no standard deviation.

Every run is scored with the BraTS rules (:func:`brats_utils.metrics.case_metrics`: Dice and HD95
per region) on the **test cases** of the profile's split (``report_split``; they took no part in
training nor in choosing a run's best epoch, which the validation cases did, the same way for every
variant), and, Dice only, on two kinds of unfamiliar data:

- **foreign dataset** (``foreign_entries``): other patients stored the way other copies of BraTS
  store them (for the synthetic profiles, phantoms of another seed written with
  ``write_synthetic_dataset(..., foreign=True)``: ``.nii.gz``, RAS voxel order, scaled int16, one
  case whose T2 is not co-registered), read through the package's own loader and cache. It measures
  the whole pipeline on data from "another site";
- **shifted copy** (:func:`shifted_copy`): the test cases with the pipeline's safeguards bypassed,
  left-right and front-back flipped (a RAS volume nobody reoriented) and the intensities scaled by
  1.25 and shifted by 0.25 inside the brain (a normalisation that does not match). It measures the
  model alone under a shift of orientation and contrast.

Files (``data/beyond/<profile>/``)::

    <variant>/seed<k>/           one training run (history, checkpoints) and its row.json
    runs.csv                     one row per run (variant x seed)
    beyond.csv                   the table: mean ± standard deviation over seeds per variant
    cases.csv                    every run's scores of every reported case (Dice and HD95 per region)
    report.csv                   the study's conclusions (:func:`study_report`, the protocol of
                                 :mod:`brats_utils.stats`): per variant and score, the mean over cases
                                 with a 95 % bootstrap CI, and a paired Wilcoxon test against "paper"

A run whose ``row.json`` matches the current settings and device is reused, as in the architecture
study, so an interrupted study continues where it stopped.

**A screening budget.** ``compare_epochs`` x ``compare_steps_per_epoch`` is far from convergence on every
profile (the best epoch is nearly always the last), so the study *screens* the ideas: a verdict of it
holds for that budget only. Where a verdict depends on the budget (region training's TC reversed at
three times the budget), :func:`longer_profile` retrains the paper and the region model
(:data:`LONGER_VARIANTS`) with ``budget_factor`` times the epochs, into its own folder
(:func:`beyond_dir` with ``budget_factor``: ``data/beyond/<profile>/longer-<k>x/``, with its own
``report.csv`` and figure :func:`figure_name`), and :func:`learning_curves` reads the validation Dice of
every epoch from the runs' histories to show how far from convergence each budget stopped.
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

from brats_utils import compare, stats
from brats_utils.checkpoints import load_model
from brats_utils.config import Profile, data_dir, figures_dir
from brats_utils.data import VolumeDataset, split_volumes
from brats_utils.files import write_csv_atomic, write_json_atomic
from brats_utils.inference import Predictor, average_predictors, sliding_window
from brats_utils.labels import REGION_COLORS, to_file_labels
from brats_utils.metrics import case_metrics
from brats_utils.model import build_model, model_costs
from brats_utils.postprocess import et_threshold_table, suppress_small_et, threshold_record, voxel_volume_mm3
from brats_utils.precision import pick_device
from brats_utils.preprocess import load_cached
from brats_utils.regions import output_channels, predictor_for
from brats_utils.run_state import HISTORY_COLUMNS, history_csv_path
from brats_utils.viz import write_figure

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
#: The variants the longer run trains again: the reference and the variant whose verdict (TC) reversed
#: with the budget.
LONGER_VARIANTS = ("paper", "regions")
REGIONS = ("WT", "TC", "ET")
#: The two kinds of unfamiliar data a run is also scored on (Dice only), as column prefixes.
UNFAMILIAR = ("foreign ", "shifted ")
#: Per-run quality columns: test-case Dice and HD95 per region, then Dice on the foreign dataset and
#: on the shifted copy.
QUALITY_COLUMNS = (*(f"Dice_{r}" for r in REGIONS), *(f"Hausdorff95_{r}" for r in REGIONS),
                   *(f"{prefix}Dice_{r}" for prefix in UNFAMILIAR for r in REGIONS))
COST_COLUMNS = ("parameters", "MACs per voxel", "seconds per training step", "seconds per case inference")
FIGURE = "08_beyond_the_paper.png"
#: Part of every run's fingerprint: raised when the scoring changes, so finished runs are re-scored
#: (their training is reused). 2: ET threshold from the validation cases, post-processing scored everywhere.
#: 3: per-case scores kept (cases.csv), the ET threshold in mm³.
SCORING_VERSION = 3
#: The per-case scores the report tests: Dice and HD95 per region on the reported cases.
REPORTED_SCORES = compare.CASE_SCORES


# --- where things go -------------------------------------------------------------------------


def beyond_dir(profile: Profile, budget_factor: int = 1) -> Path:
    """Folder of the study of ``profile``: the screening budget's (``budget_factor`` 1), or below it
    ``longer-<k>x/`` for the run with ``k`` times the budget (:func:`longer_profile`)."""
    folder = data_dir() / "beyond" / profile.name
    return folder if budget_factor == 1 else folder / f"longer-{budget_factor}x"


def figure_name(budget_factor: int = 1) -> str:
    """The study's figure file: :data:`FIGURE` for the screening budget, else with ``_longer_<k>x``."""
    return FIGURE if budget_factor == 1 else FIGURE.replace(".png", f"_longer_{budget_factor}x.png")


def longer_profile(profile: Profile, budget_factor: int) -> Profile:
    """The longer run's profile: ``budget_factor`` times ``compare_epochs``, only :data:`LONGER_VARIANTS`.

    The seeds, the split and everything else stay the screening study's, so the two reports are read
    side by side; run it with :func:`beyond_dir` ``(profile, budget_factor)`` as the folder.
    """
    if budget_factor < 1:
        raise ValueError(f"budget_factor must be a whole number >= 1, got {budget_factor}")
    return profile.with_overrides(compare_epochs=budget_factor * profile.compare_epochs,
                                  beyond_variants=LONGER_VARIANTS)


def variant_dir(out_dir: Path, variant: str) -> Path:
    """The runs of one variant in a study folder: ``<variant>`` with spaces as ``_``."""
    return Path(out_dir) / variant.replace(" ", "_")


def run_dir_of(out_dir: Path, variant: str, seed: int) -> Path:
    """The training run of one variant and seed in a study folder: ``<variant>/seed<k>``."""
    return variant_dir(out_dir, variant) / f"seed{seed}"


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
    return profile.with_overrides(**VARIANTS[variant], init_seed=seed, data_seed=seed, beyond_variants=(),
                                  beyond_seeds=1)


# --- ensembles and the shifted copy ------------------------------------------------------------


def ensemble_predict(models: Sequence[nn.Module], image: np.ndarray | torch.Tensor, profile: Profile,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Probabilities ``[K, h, w, d]`` of an ensemble over a whole image, with the profile's window settings.

    An ensemble of one model gives exactly that model's :func:`brats_utils.inference.sliding_window_predict`.
    """
    for model in models:
        model.to(device).eval()
    target, precision = profile.target, profile.requested_precision
    predictor = average_predictors([predictor_for(model, target, precision=precision) for model in models])
    return sliding_window(predictor, image, patch_size=profile.sw_patch_size, overlap=profile.sw_overlap,
                          sw_batch_size=profile.sw_batch_size, device=device)


def shifted_copy(image: torch.Tensor, label: torch.Tensor, *, scale: float = 1.25,
                 offset: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """A shifted copy of a cropped case: axes X and Y flipped (RAS instead of LPS, not reoriented),
    and the normalised intensities inside the brain (non-zero voxels) scaled by ``scale``, shifted
    by ``offset``."""
    flipped = image.flip((1, 2))
    brain = flipped != 0
    return torch.where(brain, flipped * scale + offset, flipped), label.flip((0, 1))


# --- scoring ---------------------------------------------------------------------------------


def predict_volumes(predictor: Predictor, volumes, profile: Profile, device: torch.device, *,
                    shifted: bool = False) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Predicted and true file labels of every volume (or of its :func:`shifted_copy`), and the mean
    seconds per case."""
    predictions, truths, seconds = [], [], 0.0
    for index in range(len(volumes)):
        image, label, _case_id = volumes[index]
        if shifted:
            image, label = shifted_copy(image, label)
        started = time.perf_counter()
        predictions.append(compare.predict_labels(predictor, image, profile, device))
        seconds += time.perf_counter() - started
        truths.append(to_file_labels(label.numpy().astype(np.uint8)))
    return predictions, truths, seconds / max(len(volumes), 1)


def case_scores(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> pd.DataFrame:
    """Dice and HD95 per region of every case (BraTS rules): one row per case, :data:`REPORTED_SCORES`."""
    per_case = pd.DataFrame([case_metrics(p, t) for p, t in zip(predictions, truths, strict=True)])
    return per_case[list(REPORTED_SCORES)]


def mean_scores(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], prefix: str = "") -> dict:
    """Mean Dice and HD95 per region over cases (BraTS rules), keys ``<prefix>Dice_WT``, ..."""
    per_case = case_scores(predictions, truths)
    return {f"{prefix}{column}": float(per_case[column].mean()) for column in REPORTED_SCORES}


def _dice_only(scores: dict) -> dict:
    return {key: value for key, value in scores.items() if "Dice" in key}


#: Predicted and true file labels of one set of cases.
Labelled = tuple[list[np.ndarray], list[np.ndarray]]


def scores_of(sets: dict[str, Labelled | None]) -> dict:
    """The quality columns from predictions keyed by column prefix: ``""`` (the reported cases: Dice and
    HD95) and :data:`UNFAMILIAR` (Dice only; NaN where the set is None)."""
    row = mean_scores(*sets[""])
    for prefix in UNFAMILIAR:
        found = sets.get(prefix)
        row.update(_dice_only(mean_scores(*found, prefix)) if found is not None
                   else {f"{prefix}Dice_{r}": np.nan for r in REGIONS})
    return row


def _score(predictor: Predictor, profile: Profile, reported: VolumeDataset, foreign: VolumeDataset | None,
           device: torch.device) -> tuple[dict, dict[str, Labelled | None]]:
    """Scores on the reported cases, the foreign dataset (NaN without one) and the shifted copy, and
    the predictions behind them (keyed like :func:`scores_of`)."""
    predictions, truths, seconds = predict_volumes(predictor, reported, profile, device)
    sets: dict[str, Labelled | None] = {
        "": (predictions, truths),
        "shifted ": predict_volumes(predictor, reported, profile, device, shifted=True)[:2],
        "foreign ": predict_volumes(predictor, foreign, profile, device)[:2] if foreign is not None else None}
    return {**scores_of(sets), "seconds per case inference": seconds}, sets


def voxel_volumes(volumes: VolumeDataset) -> list[float]:
    """The volume of one voxel (mm³) of every cached case, from its original affine."""
    return [voxel_volume_mm3(load_cached(entry).meta.affine_array) for entry in volumes.entries]


def _case_rows(labelled: Labelled, volumes: VolumeDataset) -> list[dict]:
    """Per-case scores (:func:`case_scores`) of the reported cases, each with its ``case`` id."""
    return case_scores(*labelled).assign(case=[entry.name for entry in volumes.entries]).to_dict("records")


def measure_run(variant: str, seed: int, profile: Profile, cache_dir: Path, run_dir: Path,
                device: torch.device, *, report_split: str = "test", foreign: VolumeDataset | None = None,
                progress: bool = True) -> dict:
    """Train one variant with one seed (resumable), measure its cost, score it (+ the post-processed row).

    The row holds the mean scores and, under ``"cases"``, the scores of every reported case. For the
    paper model the ET post-processing threshold (mm³) is chosen on this run's validation cases
    (the study has no cross-validation) and kept with their ids.
    """
    study = variant_profile(profile, variant, seed)
    trained = compare.measure_preset(study.model_preset, study, cache_dir, run_dir, device, progress=progress)
    study = compare.study_profile(study, study.model_preset)
    model = load_model(run_dir / "checkpoints" / "best.pt", device=device)
    predictor = predictor_for(model, study.target, precision=study.requested_precision)
    reported = split_volumes(cache_dir, run_dir / "split.csv", report_split)
    scores, sets = _score(predictor, study, reported, foreign, device)
    row = {"seconds per training step": trained["seconds per training step"],
           "training minutes": trained["training minutes"], **scores, "cases": _case_rows(sets[""], reported)}
    if variant == "paper":  # the post-processing threshold, chosen on the validation volumes
        validation = split_volumes(cache_dir, run_dir / "split.csv", "val")
        curve = et_threshold_table(*predict_volumes(predictor, validation, study, device)[:2],
                                   voxel_volumes=voxel_volumes(validation))
        record = threshold_record(curve, chosen_on="validation cases",
                                  case_ids=[entry.name for entry in validation.entries])
        threshold = record["min_volume_mm3"]
        row["ET threshold (mm³)"] = threshold
        row["ET threshold chosen on"] = f"{record['chosen_on']}: {' '.join(record['case_ids'])}"
        reported_spacing = voxel_volumes(reported)  # the shifted copy has the same voxels
        spacing = {"": reported_spacing, "shifted ": reported_spacing,
                   "foreign ": voxel_volumes(foreign) if foreign is not None else None}
        processed = {prefix: ([suppress_small_et(p, threshold, voxel_volume_mm3=v)
                               for p, v in zip(found[0], spacing[prefix], strict=True)], found[1])
                     if found else None for prefix, found in sets.items()}
        row["postprocessed"] = {**scores_of(processed), "cases": _case_rows(processed[""], reported)}
    return row


def static_costs(variant: str) -> dict:
    """Parameters and MACs per voxel of one variant's network (its preset and output channels)."""
    profile_fields = VARIANTS[variant]
    preset = profile_fields.get("model_preset", "paper")
    model = build_model(preset, num_classes=output_channels(profile_fields.get("target", "labels")))
    costs = model_costs(model)
    return {"parameters": int(costs["parameters"]), "MACs per voxel": float(costs["MACs per voxel"])}


def run_study(profile: Profile, cache_dir: str | Path, *, report_split: str = "test",
              foreign_entries: Sequence[Path] | None = None, out_dir: Path | None = None,
              figure: str = FIGURE, progress: bool = True,
              device: str | torch.device | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train, measure and score every variant x seed; returns ``(runs, table)``, both also written as CSV.

    ``report_split``: the part of the split the scores are measured on (``"test"``; ``"val"`` only for
    a profile without test cases, and then the scores also chose the best epochs). ``foreign_entries``:
    cached cases of a foreign dataset (None: its columns are NaN). ``figure``: the file name of
    :func:`plot_study`'s figure (:func:`figure_name`). :func:`brats_utils.pipeline.run_beyond` builds both
    caches first.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir) if out_dir is not None else beyond_dir(profile)
    device = torch.device(device) if device is not None else pick_device()
    cache_dir = Path(cache_dir)
    foreign = VolumeDataset(foreign_entries) if foreign_entries else None
    foreign_names = sorted(f"{Path(e).parent.name}/{Path(e).name}" for e in foreign_entries or ())
    runs: list[dict] = []
    cases: list[dict] = []
    jobs = [(variant, seed) for variant in variant_names(profile) for seed in seeds(profile)]
    for variant, seed in tqdm(jobs, desc="variants x seeds", unit="run", disable=not progress):
        run_dir = run_dir_of(out_dir, variant, seed)
        study = variant_profile(profile, variant, seed)
        fingerprint = {**compare.row_fingerprint(compare.study_profile(study, study.model_preset), device),
                       "report_split": report_split, "foreign": foreign_names, "scoring": SCORING_VERSION}
        row = compare.read_row(run_dir / "row.json", fingerprint)
        if row is None:
            row = measure_run(variant, seed, profile, cache_dir, run_dir, device, report_split=report_split,
                              foreign=foreign, progress=progress)
            write_json_atomic({"fingerprint": fingerprint, "row": row}, run_dir / "row.json")
        row = dict(row)
        processed = row.pop("postprocessed", None)
        cases += [{"variant": variant, "seed": seed, **case} for case in row.pop("cases")]
        runs.append({"variant": variant, "seed": seed, **static_costs(variant), **row})
        if processed is not None:
            cases += [{"variant": POSTPROCESSED, "seed": seed, **case} for case in processed.pop("cases")]
            runs.append({**runs[-1], "variant": POSTPROCESSED, **processed})
        write_csv_atomic(pd.DataFrame(runs), out_dir / "runs.csv")
    ensemble = _ensemble_row(profile, cache_dir, out_dir, device, report_split, foreign)
    cases += [{"variant": ENSEMBLE, "seed": -1, **case} for case in ensemble.pop("cases")]
    runs.append(ensemble)
    frame = pd.DataFrame(runs)
    write_csv_atomic(frame, out_dir / "runs.csv")
    write_csv_atomic(pd.DataFrame(cases), out_dir / "cases.csv")
    write_csv_atomic(study_report(pd.DataFrame(cases)), out_dir / "report.csv")
    table = summarize(frame)
    write_csv_atomic(table.reset_index(), out_dir / "beyond.csv")
    import matplotlib.pyplot as plt

    fig = plot_study(frame)
    write_figure(fig, figures_dir() / figure)
    plt.close(fig)
    return frame, table


def _ensemble_row(profile: Profile, cache_dir: Path, out_dir: Path, device: torch.device, report_split: str,
                  foreign: VolumeDataset | None) -> dict:
    """The ensemble of every paper run (one per seed), scored and timed like a single model."""
    run_dirs = [run_dir_of(out_dir, "paper", seed) for seed in seeds(profile)]
    models = [load_model(run_dir / "checkpoints" / "best.pt", device=device) for run_dir in run_dirs]
    study = compare.study_profile(variant_profile(profile, "paper", profile.seed), "paper")
    reported = split_volumes(cache_dir, run_dirs[0] / "split.csv", report_split)
    predictor = average_predictors([predictor_for(model, precision=study.requested_precision)
                                    for model in models])
    scores, sets = _score(predictor, study, reported, foreign, device)
    static = static_costs("paper")
    return {"variant": ENSEMBLE, "seed": -1, "parameters": static["parameters"] * len(models),
            "MACs per voxel": static["MACs per voxel"] * len(models), **scores,
            "cases": _case_rows(sets[""], reported)}


# --- the table and its figure ------------------------------------------------------------------


def study_report(cases: pd.DataFrame) -> pd.DataFrame:
    """The study's conclusions from ``cases.csv`` (:func:`brats_utils.stats.compare_to_baseline`): per
    variant and score (:data:`REPORTED_SCORES`), the mean over the reported cases (each case's mean over
    seeds) with a 95 % bootstrap CI, and the paired Wilcoxon p-value and verdict against "paper"."""
    return stats.compare_to_baseline(cases, REPORTED_SCORES, baseline="paper", method="variant",
                                     lower_is_better=[c for c in REPORTED_SCORES if "Hausdorff" in c])


def read_report(out_dir: Path) -> pd.DataFrame:
    """The ``report.csv`` of a study folder (:func:`study_report`; written by :func:`run_study`)."""
    return pd.read_csv(Path(out_dir) / "report.csv").fillna({"verdict": ""})


def learning_curves(out_dir: Path, variants: Sequence[str] = LONGER_VARIANTS) -> pd.DataFrame:
    """Validation Dice per epoch of every run of ``variants`` in a study folder, from the runs' histories.

    One row per variant, seed and epoch: ``variant``, ``seed``, ``epoch`` and the history's validation
    columns (``val_dice_mean``, the mean region Dice that chooses the best epoch, and WT, TC, ET). These
    are **validation** cases (they chose the best epoch), the right ones to ask whether a budget has
    converged. ``FileNotFoundError`` names a variant without a finished run.
    """
    columns = [c for c in HISTORY_COLUMNS if c.startswith("val_dice")]
    frames = []
    for variant in variants:
        histories = sorted(variant_dir(out_dir, variant).glob(f"seed*/{history_csv_path(Path()).name}"))
        if not histories:
            raise FileNotFoundError(f"no run of the variant {variant!r} with a history under {out_dir}")
        for path in histories:
            seed = int(path.parent.name.removeprefix("seed"))
            history = pd.read_csv(path)
            frames.append(history[["epoch", *columns]].assign(variant=variant, seed=seed))
    return pd.concat(frames, ignore_index=True)[["variant", "seed", "epoch", *columns]]


def plot_learning_curves(curves: dict[str, pd.DataFrame], column: str = "val_dice_mean") -> Figure:
    """Validation Dice per epoch (:func:`learning_curves`), one line per run, one colour per variant and
    one line style per budget (the keys of ``curves``, e.g. ``{"screening": ..., "3x": ...}``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    colors = dict(zip(LONGER_VARIANTS, ("tab:blue", "tab:orange"), strict=True))
    for style, (budget, frame) in zip(("-", "--", ":", "-."), curves.items(), strict=False):
        for (variant, seed), run in frame.groupby(["variant", "seed"], sort=False):
            ax.plot(run["epoch"], run[column], style, marker=".", color=colors.get(variant),
                    label=f"{variant}, seed {seed}, {budget}")
    ax.set(xlabel="epoch", ylabel=f"{column} (validation cases)", ylim=(0, 1),
           title="Learning curves: is the budget near convergence?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    return fig


def plot_report(cases: pd.DataFrame, report: pd.DataFrame) -> Figure:
    """Dice per region on the reported cases: one dot per case (its mean over seeds) per variant, and the
    mean with its 95 % bootstrap CI over cases (:func:`study_report`), the paired p against "paper" above."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8), layout="constrained", sharey=True)
    per_case = cases.groupby(["variant", "case"], sort=False)[[f"Dice_{r}" for r in REGIONS]].mean()
    variants = list(dict.fromkeys(cases["variant"]))
    jitter = np.random.default_rng(0)
    for ax, region in zip(axes, REGIONS, strict=True):
        column = f"Dice_{region}"
        for x, variant in enumerate(variants):
            values = per_case.loc[variant, column].to_numpy()
            ax.scatter(x + jitter.uniform(-0.15, 0.15, len(values)), values, s=10, alpha=0.6,
                       color=REGION_COLORS[region], edgecolor="none")
            row = report[(report["variant"] == variant) & (report["score"] == column)].iloc[0]
            error = [[row["mean"] - row["CI low"]], [row["CI high"] - row["mean"]]]
            ax.errorbar(x + 0.25, row["mean"], yerr=error, fmt="o", color="black", capsize=4)
            if row["verdict"]:
                ax.annotate(f"p={row['p']:.2g}\n{row['verdict']}", (x, 1.0), ha="center", va="bottom",
                            fontsize=7)
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
        ax.set(title=f"Dice {region} on the {int(report['n cases'].max())} test cases", ylim=(0, 1.12))
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("Dice (dots: cases, mean over seeds; black: mean, 95 % CI)")
    return fig


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


def plot_study(runs: pd.DataFrame) -> Figure:
    """Dice per region on the test cases, the foreign dataset and the shifted copy: one dot per run (seed)
    and a bar at the mean over seeds, one group per variant (a Dice stays in [0, 1], which a mean ± std
    error bar over three seeds does not)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8), layout="constrained", sharey=True)
    variants = list(dict.fromkeys(runs["variant"]))
    x = np.arange(len(variants))
    panels = (("", "test cases"), ("foreign ", "foreign dataset"),
              ("shifted ", "shifted copy of the test cases"))
    for ax, (prefix, title) in zip(axes, panels, strict=True):
        for offset, region in zip((-0.25, 0.0, 0.25), REGIONS, strict=True):
            column = f"{prefix}Dice_{region}"
            if column not in runs:
                continue
            for position, variant in zip(x + offset, variants, strict=True):
                values = runs.loc[runs["variant"] == variant, column].dropna()  # NaN (not measured): none
                ax.scatter(np.full(len(values), position), values, s=16, color=REGION_COLORS[region],
                           edgecolor="black", linewidth=0.5, zorder=3)
                if len(values):
                    ax.hlines(values.mean(), position - 0.1, position + 0.1, color="black", linewidth=1.5)
            ax.scatter([], [], s=16, color=REGION_COLORS[region], edgecolor="black", linewidth=0.5,
                       label=region)
        ax.set_xticks(x, variants, rotation=30, ha="right", fontsize=8)
        ax.set(title=f"Dice on the {title}", ylim=(0, 1.02))
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("Dice (one dot per seed, line: mean)")
    axes[0].legend(fontsize="small")
    return fig
