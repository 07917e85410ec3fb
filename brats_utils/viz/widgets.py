"""Change a parameter, see the effect: four small interactive figures for notebooks 03, 05 and 06.

Each widget comes in two parts:

* a **pure drawing function**, state (numbers and arrays) → matplotlib :class:`~matplotlib.figure.Figure`
  (outside pyplot), with the numbers it draws computed by small functions of their own, so that
  ``tests/test_widgets.py`` checks them without a browser;
* a thin **wrapper** ``*_widget(...)``: an ``ipywidgets.interactive`` with one slider per parameter inside
  a Jupyter kernel, and the static figure of the default state elsewhere or with ``static=True`` (like
  :func:`brats_utils.viz.volumes.show_viewer`). Inside a kernel the widget's saved output also carries that
  figure as a PNG, so a published copy (GitHub, nbviewer) shows the default state, not ``interactive(...)``.

The widgets:

==========================  =====================================================  ========
widget                      what changes                                           notebook
==========================  =====================================================  ========
:func:`patch_centres_widget`   ``foreground_fraction``: where training patches land    03
:func:`loss_weighting_widget`  the CE / Dice weights on a toy prediction               05
:func:`seam_widget`            window overlap and Gaussian σ: the seams they leave     06
:func:`et_threshold_widget`    ET post-processing threshold: mean and median ET Dice   06
==========================  =====================================================  ========

The sliding window lives in :mod:`brats_utils.inference`, a layer above this one, so the seam widget
repeats its two rules (window starts, Gaussian weights) with σ free; the tests check that they agree
with ``inference.window_starts`` and ``inference.importance_map`` at σ = patch / 8. The ET relabelling
rule is :func:`brats_utils.postprocess.suppress_small_et`.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from brats_utils.data import choose_patch_start
from brats_utils.losses import CombinedLoss
from brats_utils.metrics import dice
from brats_utils.postprocess import ET_LABEL, suppress_small_et
from brats_utils.viz.volumes import _in_widget_kernel

__all__ = [
    "blend_plane", "et_dice_curves", "et_case_scores", "et_threshold_figure", "et_threshold_widget",
    "loss_weighting_figure", "loss_weighting_widget", "patch_centres", "patch_centres_figure",
    "patch_centres_widget", "seam_figure", "seam_widget", "toy_losses", "window_profile",
]

#: The paper's weights: 0.3 · cross-entropy + 0.7 · soft Dice.
PAPER_CE_WEIGHT = 0.3


# --- the wrapper shared by every widget ------------------------------------------------------


def _figure_png(fig: Figure, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _interactive(draw: Callable[..., Figure], controls: dict[str, dict], static: bool | None):
    """``ipywidgets.interactive(draw, **sliders)`` showing each figure as a PNG, or the static figure.

    ``controls`` maps each keyword of ``draw`` to a slider spec (:func:`_slider`); the static figure
    is drawn at the specs' values, so both show the same default state. Without ipywidgets or outside
    a kernel (``static=None``), or with ``static=True``, the result is that figure.
    """
    if static is None:
        static = not _in_widget_kernel()
    default = {name: spec["value"] for name, spec in controls.items()}
    if static:
        return draw(**default)
    import ipywidgets as widgets
    from IPython.display import Image, display

    class WithStill(widgets.interactive):
        """The widget, whose saved output also holds the default figure (see :meth:`_repr_mimebundle_`)."""

        def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
            """The live widget, plus the default state's figure as a PNG for GitHub, nbviewer and exports
            (a saved notebook keeps a widget's view only as a reference to widget state that they cannot
            draw; the slice viewer does the same)."""
            import base64

            bundle = super()._repr_mimebundle_(include=include, exclude=exclude) or {}
            bundle["image/png"] = base64.b64encode(_figure_png(draw(**default))).decode("ascii")
            bundle["text/plain"] = ("interactive figure, shown at "
                                    + ", ".join(f"{name} = {value}" for name, value in default.items())
                                    + " (sliders in a running notebook)")
            return bundle

    def show(**state):
        display(Image(_figure_png(draw(**state))))

    sliders = {name: getattr(widgets, spec.pop("kind"))(**spec, continuous_update=False,
                                                       style={"description_width": "initial"})
               for name, spec in ((name, dict(spec)) for name, spec in controls.items())}
    return WithStill(show, **sliders)


def _slider(kind: str, value: float, low: float, high: float, step: float, description: str) -> dict:
    """The spec of an ipywidgets slider (``kind``: ``"FloatSlider"`` or ``"IntSlider"``)."""
    return {"kind": kind, "value": value, "min": low, "max": high, "step": step, "description": description}


# --- 03: foreground fraction against where patches land ---------------------------------------


def patch_centres(shape: Sequence[int], patch_size: Sequence[int], foreground: np.ndarray,
                  foreground_fraction: float, *, samples: int = 300, seed: int = 0) -> np.ndarray:
    """Centres ``[samples, 3]`` of patches drawn by :func:`brats_utils.data.choose_patch_start`."""
    rng = np.random.default_rng(seed)
    starts = np.array([choose_patch_start(tuple(shape), tuple(patch_size), foreground,
                                          foreground_fraction, rng) for _ in range(samples)])
    return starts + np.asarray(patch_size) // 2


def _share_on_tumour(centres: np.ndarray, foreground: np.ndarray) -> float:
    tumour = {tuple(row) for row in np.asarray(foreground)[:, 1:].tolist()}
    return float(np.mean([tuple(c) in tumour for c in centres.tolist()])) if len(centres) else 0.0


def patch_centres_figure(plane: np.ndarray, shape: Sequence[int], patch_size: Sequence[int],
                         foreground: np.ndarray, foreground_fraction: float, *, samples: int = 300,
                         seed: int = 0) -> Figure:
    """Patch centres (x, y; every z) over an axial ``plane`` ``[x, y]`` or ``[x, y, 3]`` of the volume.

    Args:
        plane: the background, indexed ``[x, y]`` like the volume (grey values or RGB).
        shape, patch_size, foreground, foreground_fraction: as for ``choose_patch_start``
            (``foreground`` holds rows ``(label, x, y, z)``).
        samples, seed: how many patches, drawn from ``np.random.default_rng(seed)``.
    """
    centres = patch_centres(shape, patch_size, foreground, foreground_fraction, samples=samples, seed=seed)
    on_tumour = _share_on_tumour(centres, foreground)
    fig = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(np.swapaxes(plane, 0, 1), origin="lower", cmap="gray")
    ax.scatter(centres[:, 0], centres[:, 1], s=6, c="cyan", alpha=0.5)
    ax.set(xlabel="x", ylabel="y", xlim=(-0.5, shape[0] - 0.5), ylim=(-0.5, shape[1] - 0.5),
           title=f"foreground_fraction = {foreground_fraction:.2f}: {on_tumour:.0%} of {samples} centres "
                 f"on tumour")
    return fig


def patch_centres_widget(plane: np.ndarray, shape: Sequence[int], patch_size: Sequence[int],
                         foreground: np.ndarray, *, foreground_fraction: float = 0.5, samples: int = 300,
                         static: bool | None = None):
    """:func:`patch_centres_figure` with a ``foreground_fraction`` slider (and the seed)."""

    def draw(foreground_fraction: float, seed: int) -> Figure:
        return patch_centres_figure(plane, shape, patch_size, foreground, foreground_fraction,
                                    samples=samples, seed=seed)

    return _interactive(draw, {
        "foreground_fraction": _slider("FloatSlider", foreground_fraction, 0.0, 1.0, 0.05,
                                       "foreground_fraction"),
        "seed": _slider("IntSlider", 0, 0, 9, 1, "seed"),
    }, static)


# --- 05: the CE / Dice weighting on a toy prediction -----------------------------------------

#: The toy: 200 voxels in a row, 2 classes, a 4-voxel tumour at 98..101 (2 %); background voxels get
#: p(tumour) = 0.005, tumour voxels the probability on the x-axis.
_TOY_SIZE, _TOY_TUMOUR, _TOY_BACKGROUND_P = 200, slice(98, 102), 0.005
#: "Missed" and "found": the tumour voxels' p(tumour) at the two ends of the right-hand panel.
_MISSED, _FOUND = 0.02, 0.98


def toy_losses(ce_weight: float,
               tumour_probabilities: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Losses of the toy prediction as the network's p(tumour) on the tumour voxels goes from 0 to 1.

    Returns ``{"p": ..., "ce": ..., "dice": ..., "loss": ..., "paper": ...}``: cross-entropy, soft Dice,
    ``ce_weight · CE + (1 - ce_weight) · Dice`` and the paper's 0.3 / 0.7, one value per probability,
    each computed by :class:`brats_utils.losses.CombinedLoss`.
    """
    p = (np.linspace(0.01, 0.99, 50) if tumour_probabilities is None
         else np.asarray(tumour_probabilities, dtype=float))
    truth = torch.zeros(1, _TOY_SIZE, dtype=torch.long)
    truth[0, _TOY_TUMOUR] = 1
    weighted = CombinedLoss(ce_weight=ce_weight, dice_weight=1 - ce_weight)
    paper = CombinedLoss(ce_weight=PAPER_CE_WEIGHT, dice_weight=1 - PAPER_CE_WEIGHT)
    rows = {"ce": [], "dice": [], "loss": [], "paper": []}
    for value in p:
        p_tumour = torch.full((_TOY_SIZE,), _TOY_BACKGROUND_P, dtype=torch.float64)
        p_tumour[_TOY_TUMOUR] = float(value)
        logits = torch.stack([torch.zeros_like(p_tumour), torch.log(p_tumour / (1 - p_tumour))])[None]
        parts = weighted.components(logits, truth)
        rows["ce"].append(float(parts["ce"]))
        rows["dice"].append(float(parts["dice"]))
        rows["loss"].append(float(parts["loss"]))
        rows["paper"].append(float(paper(logits, truth)))
    return {"p": p, **{key: np.array(values) for key, values in rows.items()}}


def loss_weighting_figure(ce_weight: float) -> Figure:
    """Left: CE, Dice, the chosen mix and the paper's mix against p(tumour) on the tumour voxels.
    Right: what finding the tumour is worth (loss at p = 0.02 minus loss at p = 0.98) for every weight.
    """
    losses = toy_losses(ce_weight)
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(losses["p"], losses["ce"], color="tab:blue", label="cross-entropy")
    left.plot(losses["p"], losses["dice"], color="tab:orange", label="soft Dice loss")
    left.plot(losses["p"], losses["paper"], "k--", label="0.3 CE + 0.7 Dice (paper)")
    left.plot(losses["p"], losses["loss"], color="tab:red", lw=2.5,
              label=f"{ce_weight:.2f} CE + {1 - ce_weight:.2f} Dice")
    left.set(xlabel="p(tumour) on the 4 tumour voxels", ylabel="loss", ylim=(0, None),
             title="a 4-voxel tumour in 200 voxels")
    left.legend(fontsize=8)
    weights = np.linspace(0, 1, 21)
    ends = toy_losses(0.0, [_MISSED, _FOUND])

    def gap(w):
        return w * (ends["ce"][0] - ends["ce"][1]) + (1 - w) * (ends["dice"][0] - ends["dice"][1])

    right.plot(weights, gap(weights), color="0.5")
    right.plot([ce_weight], [gap(ce_weight)], "o", color="tab:red", ms=9)
    right.plot([PAPER_CE_WEIGHT], [gap(PAPER_CE_WEIGHT)], "kx", ms=9)
    right.set(xlabel="ce_weight (dice_weight = 1 - ce_weight)", ylabel="loss(missed) - loss(found)",
              title=f"what finding the tumour is worth: {gap(ce_weight):.3f}")
    return fig


def loss_weighting_widget(ce_weight: float = PAPER_CE_WEIGHT, *, static: bool | None = None):
    """:func:`loss_weighting_figure` with a ``ce_weight`` slider."""
    return _interactive(loss_weighting_figure,
                        {"ce_weight": _slider("FloatSlider", ce_weight, 0.0, 1.0, 0.05, "ce_weight")}, static)


# --- 06: window overlap and Gaussian σ against seams -----------------------------------------


def _window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """``brats_utils.inference.window_starts`` (one layer up): evenly spread, the last at the border."""
    if size <= patch:
        return [0]
    count = math.ceil((size - patch) / (patch * (1.0 - overlap))) + 1
    return [round(i * (size - patch) / (count - 1)) for i in range(count)]


def window_profile(patch: int, sigma_fraction: float) -> np.ndarray:
    """Weights of one window along one axis: a Gaussian with σ = ``sigma_fraction`` · patch, peak 1;
    ``sigma_fraction = 0`` gives uniform weights (``mode="constant"``). The package uses 1/8."""
    if sigma_fraction <= 0:
        return np.ones(patch)
    x = np.arange(patch) - (patch - 1) / 2
    weights = np.exp(-0.5 * (x / (patch * sigma_fraction)) ** 2)
    return weights / weights.max()


def blend_plane(shape: Sequence[int], patch: int, overlap: float, sigma_fraction: float, *,
                border_error: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Blend a toy model over a 2D plane: ``(blended prediction, summed weights)``, both of ``shape``.

    The model should say 1 everywhere, but, like a network short of context, it is off by up to
    ``border_error`` towards its window's border: ``1 - border_error · r²`` with ``r`` the distance
    from the window's centre (0 at the centre, 1 at the border, the larger of the two axes).
    """
    r = np.abs(np.linspace(-1, 1, patch))
    window_prediction = 1 - border_error * np.maximum(r[:, None], r[None, :]) ** 2
    weights_1d = window_profile(patch, sigma_fraction)
    window_weights = weights_1d[:, None] * weights_1d[None, :]
    accumulated, summed = np.zeros(shape), np.zeros(shape)
    for sx, sy in itertools.product(*(_window_starts(n, patch, overlap) for n in shape)):
        box = (slice(sx, sx + patch), slice(sy, sy + patch))
        accumulated[box] += window_weights * window_prediction
        summed[box] += window_weights
    return accumulated / summed, summed


def _seam_depth(blended: np.ndarray, margin: int) -> float:
    """How far the worst voxel falls below 1, ``margin`` voxels or more inside the plane's border
    (the plane's own border is seen by one window only, whatever the overlap)."""
    return float(1 - blended[margin:-margin, margin:-margin].min())


def seam_figure(overlap: float, sigma_fraction: float, *, shape: Sequence[int] = (192, 128), patch: int = 64,
                border_error: float = 0.3) -> Figure:
    """Left: window weights and the blended toy prediction along the middle row. Right: the blend
    over the plane; every dark line is a seam. Title: how far the worst voxel at least patch / 4
    inside the plane falls below 1."""
    blended, _ = blend_plane(shape, patch, overlap, sigma_fraction, border_error=border_error)
    row = shape[1] // 2
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1.3, 1))
    profile = window_profile(patch, sigma_fraction)
    for start in _window_starts(shape[0], patch, overlap):
        left.plot(np.arange(start, start + patch), profile, color="0.6", lw=1)
    left.plot(blended[:, row], color="tab:red", lw=2, label="blended prediction (should be 1)")
    left.set(xlabel="x", ylabel="weight / prediction", ylim=(1 - border_error - 0.05, 1.05),
             title="grey: each window's weight")
    left.legend(fontsize=8, loc="lower right")
    shown = right.imshow(blended.T, origin="lower", cmap="magma", vmin=1 - border_error, vmax=1)
    fig.colorbar(shown, ax=right)
    weighting = "uniform" if sigma_fraction <= 0 else f"Gaussian σ = {sigma_fraction:.3f}·patch"
    depth = _seam_depth(blended, patch // 4)
    right.set(xlabel="x", ylabel="y",
              title=f"overlap {overlap:.2f}, {weighting}\nworst inner voxel {depth:.3f} below 1")
    return fig


def seam_widget(overlap: float = 0.5, sigma_fraction: float = 0.125, *, static: bool | None = None):
    """:func:`seam_figure` with sliders for the overlap and σ / patch (0 = uniform weights)."""
    return _interactive(seam_figure, {
        "overlap": _slider("FloatSlider", overlap, 0.0, 0.75, 0.05, "overlap"),
        "sigma_fraction": _slider("FloatSlider", sigma_fraction, 0.0, 0.5, 0.025, "σ / patch (0: uniform)"),
    }, static)


# --- 06: the ET post-processing threshold ----------------------------------------------------

#: File label of the enhancing tumour.
_ET = ET_LABEL


def et_case_scores(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, float, float]:
    """``(predicted ET voxels, ET Dice as predicted, ET Dice after relabelling)`` of one case (file labels).

    Relabelling removes all predicted ET, so its Dice is 1 for a case without ET and 0 otherwise.
    """
    size = int(np.count_nonzero(np.asarray(prediction) == _ET))
    kept = dice(np.asarray(prediction) == _ET, np.asarray(truth) == _ET)
    relabelled = dice(suppress_small_et(prediction, math.inf) == _ET, np.asarray(truth) == _ET)
    return size, kept, relabelled


def et_dice_curves(et_sizes: Sequence[int], dice_kept: Sequence[float], dice_relabelled: Sequence[float],
                   thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and median ET Dice over the cases for each threshold (a case is relabelled when its
    predicted ET has fewer voxels than the threshold)."""
    sizes, kept, relabelled = (np.asarray(v, dtype=float) for v in (et_sizes, dice_kept, dice_relabelled))
    per_case = np.where(sizes[None, :] < np.asarray(thresholds, dtype=float)[:, None], relabelled, kept)
    return per_case.mean(axis=1), np.median(per_case, axis=1)


def et_threshold_figure(et_sizes: Sequence[int], dice_kept: Sequence[float], dice_relabelled: Sequence[float],
                        threshold: float, *, max_threshold: float | None = None) -> Figure:
    """Mean and median ET Dice against the threshold, the chosen one marked, the cases as ticks."""
    sizes = np.asarray(et_sizes, dtype=float)
    top = max_threshold if max_threshold is not None else max(1000.0, 1.2 * float(sizes.max(initial=0)))
    thresholds = np.linspace(0, top, 201)
    means, medians = et_dice_curves(sizes, dice_kept, dice_relabelled, thresholds)
    mean_at, median_at = (float(v[0]) for v in et_dice_curves(sizes, dice_kept, dice_relabelled, [threshold]))
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(thresholds, means, color="tab:red", label="mean ET Dice")
    ax.plot(thresholds, medians, color="tab:blue", label="median ET Dice")
    ax.axvline(threshold, color="k", ls="--")
    ax.plot(sizes, np.full_like(sizes, -0.03), "|", color="0.3", ms=12, label="cases' predicted ET size")
    ax.set(xlabel="threshold (voxels of predicted ET)", ylabel="ET Dice", ylim=(-0.06, 1.02),
           title=f"threshold {threshold:.0f}: mean {mean_at:.3f}, median {median_at:.3f} "
                 f"({int(np.sum((sizes > 0) & (sizes < threshold)))} of {len(sizes)} cases relabelled)")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def et_threshold_widget(et_sizes: Sequence[int], dice_kept: Sequence[float], dice_relabelled: Sequence[float],
                        *, threshold: float = 500, max_threshold: float | None = None,
                        static: bool | None = None):
    """:func:`et_threshold_figure` with a threshold slider."""
    top = max_threshold if max_threshold is not None else max(1000.0, 1.2 * float(max(et_sizes, default=0)))

    def draw(threshold: float) -> Figure:
        return et_threshold_figure(et_sizes, dice_kept, dice_relabelled, threshold, max_threshold=top)

    step = max(1, round(top / 100))
    return _interactive(draw, {"threshold": _slider("IntSlider", int(threshold), 0, int(math.ceil(top)), step,
                                                    "ET threshold (voxels)")}, static)
