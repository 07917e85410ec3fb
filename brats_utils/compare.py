"""The paper's architecture study (its section 5.1): every model on the same data, budget and seed.

For each preset in ``profile.compare_presets`` (see :data:`brats_utils.model.PRESETS`),
:func:`run_comparison` trains the model with :func:`brats_utils.train.train` on the profile's split
for ``compare_epochs`` x ``compare_steps_per_epoch`` steps, then measures what it costs, and returns
one table row per preset:

- architecture: levels, wired levels, base filters, conv units per block;
- size: parameters *built* (the paper's count, ``sum(p.numel())``) and *trained* (those the forward
  pass uses, so they receive a gradient), size in MiB at fp32, multiply-accumulates per input voxel
  (all from :func:`brats_utils.viz.preset_summary`, traced for free on the ``meta`` device);
- cost, measured here on the device training uses: seconds per training step (one
  :func:`brats_utils.train.train_step` on a random batch of the profile's batch and patch size),
  seconds per full-volume inference (:func:`brats_utils.inference.sliding_window_predict` with the
  profile's window settings on a random volume of the dataset's size: 240x240x155 for real data),
  and peak memory of each (see :func:`peak_memory` for what exactly is measured on GPU and CPU);
- quality at the best epoch: the paper's metric (hard Dice over the four labels, background
  included) and the BraTS region Dice WT, TC, ET on the validation cases (which chose that epoch, so
  they only describe the run);
- the result: the best checkpoint scored **once** on the held-out cases (``report_split``: the test
  cases; the validation cases only for a profile without test cases), case by case, and the study's
  conclusions drawn from those per-case scores by the protocol of :mod:`brats_utils.stats`: per preset
  and score the mean with a 95 % bootstrap CI over cases, and a paired Wilcoxon test against the first
  preset (:func:`study_report`).

Files (``data/compare/<profile>/`` unless ``out_dir`` says otherwise)::

    <preset>/                 the training run of one preset (history, checkpoints)
    <preset>/row.json         its finished table row, per-case scores and the settings that produced it
    comparison.csv            the table, rewritten atomically
    cases.csv                 every preset's Dice and HD95 per region on every held-out case
    report.csv                the study's conclusions (:func:`study_report`)

A preset whose ``row.json`` matches the current settings and device is reused as it is, so a second
call (or a call after an interruption) neither retrains nor re-measures the finished presets; an
interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from brats_utils import stats
from brats_utils.augment import augmentation_for, tta_flips
from brats_utils.checkpoints import load_model
from brats_utils.config import Profile, data_dir, figures_dir, fingerprint_fields
from brats_utils.data import split_volumes
from brats_utils.errors import CheckpointError
from brats_utils.files import write_csv_atomic, write_json_atomic
from brats_utils.inference import Predictor, sliding_window, sliding_window_predict
from brats_utils.labels import MODALITIES, REGION_COLORS, TRAIN_LABELS, Shape3D, to_file_labels
from brats_utils.metrics import case_metrics
from brats_utils.model import FULL_VOLUME, PRESETS, build_model
from brats_utils.precision import grad_scaler, pick_device, resolve_precision
from brats_utils.regions import loss_for, output_channels, predictor_for, probs_to_labels
from brats_utils.train import train, train_step
from brats_utils.viz import preset_summary, write_figure

#: The names the paper gives its five models (section 5.1).
PAPER_NAMES: dict[str, str] = {
    "paper": "the paper's selected model",
    "l4_f16": "4 levels, small",
    "l4_f32": "4 levels, large",
    "l5_f16": "5-level encoder / 4-level decoder, small",
    "l5_f32": "5-level encoder / 4-level decoder, large",
}
AS_RUN_SUFFIX = "_as_run"
#: Columns of the paper's metric and the region Dice in the table, as named in the training history.
DICE_COLUMNS = ("val_paper_dice", "val_dice_mean", "val_dice_WT", "val_dice_TC", "val_dice_ET")
#: File names of the two figures in ``config.figures_dir()``.
DICE_FIGURE = "07_dice_vs_parameters.png"
COST_FIGURE = "07_cost_vs_parameters.png"
_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


# --- where things go -------------------------------------------------------------------------


def comparison_dir(profile: Profile) -> Path:
    """Folder of the study of ``profile``: one training run per preset and the table."""
    return data_dir() / "compare" / profile.name


def comparison_csv_path(profile: Profile, out_dir: Path | None = None) -> Path:
    """The table of the study (``comparison.csv`` in ``out_dir`` or :func:`comparison_dir`)."""
    return Path(out_dir or comparison_dir(profile)) / "comparison.csv"


def study_profile(profile: Profile, preset: str) -> Profile:
    """The profile one preset is trained with: same data, split, seed and recipe, the study's budget."""
    return profile.with_overrides(model_preset=preset, epochs=profile.compare_epochs,
                                  steps_per_epoch=profile.compare_steps_per_epoch)


def describe(preset: str) -> str:
    """A human name for a preset, e.g. ``"4 levels, small, as the authors ran it (top 3 levels wired)"``."""
    base = preset.removesuffix(AS_RUN_SUFFIX)
    name = PAPER_NAMES.get(base, base)
    if preset.endswith(AS_RUN_SUFFIX):
        name += f", as the authors ran it (top {PRESETS[preset]['wired_levels']} levels wired)"
    return name


def full_volume_shape(profile: Profile) -> Shape3D:
    """The size of one whole input volume of the profile's dataset (240x240x155 for real BraTS)."""
    return tuple(profile.synthetic_shape) if profile.data_source == "synthetic" else FULL_VOLUME


# --- measuring -------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _PROC_STATUS.read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _release_free_memory() -> None:
    """Return heap memory that is free but still held by the C allocator to the system (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _can_reset_rss_peak() -> bool:
    return sys.platform.startswith("linux") and _CLEAR_REFS.exists() and os.access(_CLEAR_REFS, os.W_OK)


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Measure the peak memory the enclosed code adds, in MiB: ``with peak_memory(d) as m: ...; m["MiB"]``.

    - CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated on entry, i.e. the tensors
      the code creates at their peak (weights, gradients, optimizer state, activations, workspaces);
      the caching allocator's reserve beyond that is not counted.
    - CPU on Linux: the process's resident-set high-water mark (``VmHWM``, reset on entry through
      ``/proc/self/clear_refs``) minus the resident set on entry. On entry glibc's ``malloc_trim`` hands
      memory freed by earlier work back to the system, so what the code allocates shows up as new
      pages; everything the process touches counts (tensors, workspaces, the Python objects).
    - elsewhere (macOS, Windows, other accelerators): NaN.
    """
    result = {"MiB": math.nan}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["MiB"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
    elif device.type == "cpu" and _can_reset_rss_peak():
        _release_free_memory()
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set
        start = _status_kib("VmRSS")
        yield result
        result["MiB"] = max(_status_kib("VmHWM") - start, 0) / 2**10
    else:
        yield result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training_step(preset: str, profile: Profile, device: torch.device, *,
                          steps: int = 1) -> dict[str, float]:
    """Seconds per training step and peak training memory of a freshly built ``preset``.

    One :func:`brats_utils.train.train_step` (loss, backward, clipping, AdamW update, the profile's
    precision as in training) warms up, then ``steps`` more are timed, on a random batch of the
    profile's batch size and patch size (the whole volume when the profile trains on whole volumes).
    The cost of a convolution does not depend on the values, so random data times it exactly; the
    memory includes the weights, gradients and AdamW state that a training run holds.
    """
    shape = tuple(profile.patch_size) if profile.patch_size is not None else full_volume_shape(profile)
    precision = resolve_precision(profile.requested_precision, device)
    generator = torch.Generator().manual_seed(profile.seed)
    image = torch.randn((profile.batch_size, len(MODALITIES), *shape), generator=generator)
    label = torch.randint(0, len(TRAIN_LABELS), (profile.batch_size, *shape), generator=generator)
    with peak_memory(device) as memory:
        model = build_model(preset, dropout=profile.dropout, num_classes=output_channels(profile.target))
        model = model.to(device).train()
        loss_fn = loss_for(profile.target, loss=profile.loss, ce_weight=profile.ce_weight,
                           dice_weight=profile.dice_weight, batch_dice=profile.batch_dice,
                           include_background=profile.dice_include_background)
        optimizer = torch.optim.AdamW(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
        scaler = grad_scaler(precision, device)
        image, label = image.to(device), label.to(device)

        started = 0.0
        for index in range(1 + steps):  # the first step warms up and is not timed
            if index == 1:
                _synchronize(device)
                started = time.perf_counter()
            train_step(model, image, label, loss_fn, optimizer, scaler, clip_norm=profile.grad_clip_norm,
                       precision=precision)
        _synchronize(device)
        seconds = (time.perf_counter() - started) / steps
    return {"seconds per training step": seconds, "peak training memory (MiB)": memory["MiB"]}


def measure_inference(model: torch.nn.Module, profile: Profile, device: torch.device) -> dict[str, float]:
    """Seconds and peak memory of one full-volume sliding-window prediction with the profile's settings.

    The volume is random, of :func:`full_volume_shape` (uncropped, so an upper bound for a real case
    after brain cropping). One window-sized prediction warms up first. On a GPU the memory is the
    GPU's; the probabilities handed back on the CPU are not part of it.
    """
    model = model.to(device)
    generator = torch.Generator().manual_seed(profile.seed)
    volume = torch.randn((len(MODALITIES), *full_volume_shape(profile)), generator=generator)
    settings = {"patch_size": profile.sw_patch_size, "overlap": profile.sw_overlap,
                "sw_batch_size": profile.sw_batch_size, "device": device,
                "precision": profile.requested_precision, "tta": profile.tta,
                "tta_flips": tta_flips(augmentation_for(profile.augmentation)), "target": profile.target}
    sliding_window_predict(model, volume[(slice(None), *(slice(0, p) for p in profile.sw_patch_size))],
                           **settings)
    with peak_memory(device) as memory:
        _synchronize(device)
        started = time.perf_counter()
        sliding_window_predict(model, volume, **settings)
        _synchronize(device)
        seconds = time.perf_counter() - started
    return {"seconds per full-volume inference": seconds, "peak inference memory (MiB)": memory["MiB"]}


# --- the study ------------------------------------------------------------------------------


def architecture_table(presets: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """What needs no training: architecture, built and trained parameters, size, MACs per voxel."""
    summary = preset_summary(tuple(presets)).reset_index()
    table = pd.DataFrame({
        "preset": summary["preset"],
        "description": [describe(p) for p in summary["preset"]],
        "levels": summary["levels"],
        "wired levels": summary["wired levels"],
        "base filters": summary["base filters"],
        "units per block": summary["units per block"],
        "built parameters": summary["parameters"],
        "trained parameters": summary["parameters used"],
        "size MiB (fp32)": summary["fp32 MiB"],
        "MACs per voxel": summary["MACs per voxel"],
    })
    return table


def row_fingerprint(profile: Profile, device: torch.device) -> dict:
    """What a finished row depends on (the acting settings of :func:`~brats_utils.config.fingerprint_fields`),
    as JSON reads it."""
    enters = fingerprint_fields()
    settings = {k: v for k, v in profile.acting_settings().items() if k in enters}
    return json.loads(json.dumps({"profile": settings, "device": device.type}))


def read_row(path: Path, fingerprint: dict) -> dict | None:
    """The row saved in ``path`` (a ``row.json``) if it was measured with ``fingerprint``, else None."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("row") if saved.get("fingerprint") == fingerprint else None


def measure_preset(preset: str, profile: Profile, cache_dir: Path, run_dir: Path, device: torch.device, *,
                   progress: bool = True) -> dict:
    """Train one preset with the study's budget and measure it: one table row (without the static columns).

    An interrupted run resumes from its last checkpoint, a finished one is not trained again (and a
    larger ``compare_epochs`` continues it); a run whose checkpoint is damaged or was trained with
    other settings starts over, with a warning.
    """
    study = study_profile(profile, preset)
    try:
        result = train(study, cache_dir, run_dir=run_dir, resume=True, progress=progress, device=device)
    except CheckpointError as error:  # a damaged run, or one trained with other settings
        warnings.warn(f"{error} -- training {preset} again from the start", stacklevel=2)
        result = train(study, cache_dir, run_dir=run_dir, resume=False, progress=progress, device=device)
    best = result.best
    row = {
        **{column: float(best[column]) for column in DICE_COLUMNS},
        "best epoch": int(best["epoch"]),
        "training minutes": float(result.history["seconds"].sum()) / 60,
        **measure_training_step(preset, study, device),
        **measure_inference(load_model(result.best_checkpoint, device=device), study, device),
        "device": str(device),
    }
    return row


#: Per-case scores of the held-out cases (BraTS rules): Dice and HD95 per region; HD95 lower is better.
CASE_SCORES = tuple(f"{score}_{region}" for score in ("Dice", "Hausdorff95") for region in ("WT", "TC", "ET"))


def predict_labels(predictor: Predictor, image: torch.Tensor, profile: Profile,
                   device: torch.device) -> np.ndarray:
    """File labels of one whole (cached) volume, through the profile's sliding window and target."""
    with torch.inference_mode():
        probs = sliding_window(predictor, image, patch_size=profile.sw_patch_size, overlap=profile.sw_overlap,
                               sw_batch_size=profile.sw_batch_size, device=device)
    return to_file_labels(probs_to_labels(probs, profile.target).numpy())


def score_cases(checkpoint: Path, profile: Profile, volumes, device: torch.device) -> list[dict]:
    """Dice and HD95 per region (:data:`CASE_SCORES`) of a finished run's best checkpoint on every volume,
    one dict per case with its ``case`` id."""
    model = load_model(checkpoint, device=device)
    predictor = predictor_for(model, profile.target, precision=profile.requested_precision)
    rows = []
    for image, label, case_id in (volumes[i] for i in range(len(volumes))):
        scores = case_metrics(predict_labels(predictor, image, profile, device),
                              to_file_labels(label.numpy().astype(np.uint8)))
        rows.append({"case": case_id, **{column: float(scores[column]) for column in CASE_SCORES}})
    return rows


def study_report(cases: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The study's conclusions (:func:`brats_utils.stats.compare_to_baseline`): per preset and score the mean
    over the held-out cases with a 95 % bootstrap CI, and a paired Wilcoxon p-value and verdict against
    ``baseline``."""
    return stats.compare_to_baseline(cases, CASE_SCORES, baseline=baseline, method="preset",
                                     lower_is_better=[c for c in CASE_SCORES if "Hausdorff" in c])


def run_comparison(profile: Profile, cache_dir: str | Path, *, out_dir: Path | None = None,
                   progress: bool = True, device: str | torch.device | None = None,
                   report_split: str = "test") -> pd.DataFrame:
    """Train and measure every preset of ``profile.compare_presets`` on the cached cases of ``cache_dir``.

    Returns the table (also written as CSV); :func:`brats_utils.pipeline.run_comparison`
    builds the cache first. Each finished preset is scored once on the ``report_split`` cases
    (``cases.csv``) and the presets are compared with the first one (``report.csv``, :func:`study_report`).

    All presets share the profile's data, split, seed and training recipe; only the architecture
    changes, and the budget is ``compare_epochs`` epochs of ``compare_steps_per_epoch`` steps. Finished
    presets are reused (see the module docstring). The table is written to
    :func:`comparison_csv_path` after every preset, so a partial study can be inspected while it runs;
    the two figures (:func:`save_figures`) at the end.
    """
    from tqdm.auto import tqdm

    presets = tuple(profile.compare_presets)
    if not presets or len(set(presets)) != len(presets):
        raise ValueError(f"profile {profile.name!r} must name distinct compare_presets, got {presets}")
    out_dir = Path(out_dir) if out_dir is not None else comparison_dir(profile)
    device = torch.device(device) if device is not None else pick_device()
    static = architecture_table(presets).set_index("preset")
    rows, cases = [], []
    for preset in tqdm(presets, desc="architectures", unit="model", disable=not progress):
        run_dir = out_dir / preset
        fingerprint = {**row_fingerprint(study_profile(profile, preset), device),
                       "report_split": report_split}
        row = read_row(run_dir / "row.json", fingerprint)
        if row is None:
            row = measure_preset(preset, profile, Path(cache_dir), run_dir, device, progress=progress)
            row["cases"] = score_cases(run_dir / "checkpoints" / "best.pt", study_profile(profile, preset),
                                       split_volumes(cache_dir, run_dir / "split.csv", report_split), device)
            write_json_atomic({"fingerprint": fingerprint, "row": row}, run_dir / "row.json")
        cases += [{"preset": preset, **case} for case in row.pop("cases")]
        rows.append({"preset": preset, **static.loc[preset].to_dict(), **row})
        write_csv_atomic(pd.DataFrame(rows), comparison_csv_path(profile, out_dir))
    table = pd.DataFrame(rows)
    write_csv_atomic(pd.DataFrame(cases), out_dir / "cases.csv")
    write_csv_atomic(study_report(pd.DataFrame(cases), baseline=presets[0]), out_dir / "report.csv")
    save_figures(table)
    return table


# --- figures -------------------------------------------------------------------------------


def _label_points(ax, table: pd.DataFrame, y: pd.Series) -> None:
    for x, value, preset in zip(table["trained parameters"], y, table["preset"], strict=True):
        ax.annotate(preset, (x, value), textcoords="offset points", xytext=(4, 4), fontsize=7)


def plot_dice_vs_parameters(table: pd.DataFrame) -> Figure:
    """Validation Dice against parameters (log scale), one point per preset.

    Each model sits at its *trained* parameters; a model that was built bigger than it ran (the
    ``*_as_run`` presets) also gets a grey cross at its *built* count, the number the paper reports,
    joined by a dotted line: the distance is the part of the network that never learned anything.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    as_run = table["trained parameters"] < table["built parameters"]
    for _, row in table[as_run].iterrows():
        ax.plot([row["trained parameters"], row["built parameters"]], [row["val_paper_dice"]] * 2,
                ":", color="grey", linewidth=1)
    ax.scatter(table.loc[as_run, "built parameters"], table.loc[as_run, "val_paper_dice"], marker="x",
               s=110, linewidths=2.5, color="grey", zorder=4,  # above the dots: it may land on one
               label="as counted in the paper (built)")
    ax.scatter(table["trained parameters"], table["val_paper_dice"], s=60, color="black", zorder=3,
               label="paper metric (4 labels incl. background)")
    for region in ("WT", "TC", "ET"):
        ax.scatter(table["trained parameters"], table[f"val_dice_{region}"], s=25, marker="s",
                   color=REGION_COLORS[region], edgecolor="black", linewidth=0.5, label=f"{region} Dice")
    _label_points(ax, table, table["val_paper_dice"])
    ax.set(xscale="log", xlabel="parameters (trained; log scale)", ylabel="best validation Dice",
           ylim=(0, 1.02), title="Quality against model size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_cost_vs_parameters(table: pd.DataFrame) -> Figure:
    """Seconds per training step, seconds per full-volume inference and peak training memory against
    parameters (log scale), one point per preset; the device is in the title."""
    import matplotlib.pyplot as plt

    panels = (("seconds per training step", "training step (s)"),
              ("seconds per full-volume inference", "full-volume inference (s)"),
              ("peak training memory (MiB)", "peak training memory (MiB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.2), layout="constrained")
    for ax, (column, label) in zip(axes, panels, strict=True):
        values = table[column]
        ax.scatter(table["trained parameters"], values, s=50, color="tab:blue", zorder=3)
        _label_points(ax, table, values)
        ax.set(xscale="log", xlabel="parameters (trained; log scale)", ylabel=label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, which="both")
    devices = ", ".join(sorted(set(table["device"])))
    fig.suptitle(f"What each model costs (measured on {devices})")
    return fig


def save_figures(table: pd.DataFrame) -> list[Path]:
    """Draw both figures, save them to ``config.figures_dir()`` and return their paths."""
    import matplotlib.pyplot as plt

    paths = []
    for plot, name in ((plot_dice_vs_parameters, DICE_FIGURE), (plot_cost_vs_parameters, COST_FIGURE)):
        fig = plot(table)
        paths.append(write_figure(fig, figures_dir() / name))
        plt.close(fig)
    return paths
