"""Seeing the data: modality grids, label and region overlays, histograms and a slice viewer.

Orientation. Arrays are indexed as nibabel gives them, ``[x, y, z]`` (image ``[4, x, y, z]``).
BraTS volumes carry the affine ``diag(-1, -1, 1)`` (axis codes ``('L', 'P', 'S')``): ``x`` grows
towards the patient's left, ``y`` towards the back (posterior), ``z`` towards the top (superior).
Every figure here shows slices in the radiological convention:

* axial (``axis=2``, fixed ``z``): anterior up, the patient's left on the image's right;
* coronal (``axis=1``, fixed ``y``): superior up, the patient's left on the image's right;
* sagittal (``axis=0``, fixed ``x``): superior up, anterior on the left.

Colours: the tumour labels use ``labels.LABEL_COLORS`` and the BraTS regions
``labels.REGION_COLORS`` in every figure of the project. :func:`write_figure` writes a figure to the
path it is given; the notebooks call :func:`brats_utils.pipeline.save_figure`, which names the path in
the figures folder.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from brats_utils.files import atomic_path
from brats_utils.labels import FILE_LABELS, LABEL_COLORS, LABEL_NAMES, MODALITIES, REGION_COLORS, check_labels

#: Axis number of each viewing plane (the array axis that is held fixed).
AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
#: What each MRI contrast shows, for figure titles.
MODALITY_TITLES: dict[str, str] = {
    "flair": "FLAIR\noedema bright, CSF dark",
    "t1": "T1\nanatomy, grey vs white matter",
    "t1ce": "T1ce (post-contrast)\nenhancing tumour bright",
    "t2": "T2\nfluid and oedema bright",
}
#: Patient directions at the (top, bottom, left, right) edges of each displayed plane.
_EDGE_LETTERS: dict[int, tuple[str, str, str, str]] = {
    2: ("A", "P", "R", "L"),
    1: ("S", "I", "R", "L"),
    0: ("S", "I", "A", "P"),
}
_TUMOUR_LABELS = tuple(label for label in FILE_LABELS if label != 0)
_WINDOW_PERCENTILES = (0.5, 99.5)


# --- saving ----------------------------------------------------------------------------


def write_figure(fig: Figure, path: Path, *, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (PNG unless ``path`` has another suffix) and return the path written.

    The folder is created when missing and the file is written atomically (a temporary
    name, then a rename), so a figure in ``figures/`` is never half written.
    """
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix[1:])
    return path


# --- slices, windows, colours: the pure drawing logic ----------------------------------


def axis_number(axis: int | str) -> int:
    """``0``/``1``/``2`` or ``"sagittal"``/``"coronal"``/``"axial"`` as an array axis number."""
    if isinstance(axis, str):
        try:
            return AXES[axis.lower()]
        except KeyError:
            raise ValueError(f"unknown axis {axis!r}; use one of {', '.join(AXES)} or 0, 1, 2") from None
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 for an [x, y, z] volume, got {axis!r}")
    return int(axis)


def display_slice(volume: np.ndarray, axis: int | str, index: int) -> np.ndarray:
    """Slice ``index`` of an ``[x, y, z]`` volume along ``axis``, oriented for display.

    Returns a 2D array whose row 0 is the top of the picture (see the module docstring):
    axial ``[y, x]`` (anterior up), coronal ``[z reversed, x]`` and sagittal
    ``[z reversed, y]`` (superior up).
    """
    axis = axis_number(axis)
    if volume.ndim != 3:
        raise ValueError(f"expected an [x, y, z] volume, got shape {volume.shape}")
    if not 0 <= index < volume.shape[axis]:
        raise IndexError(f"slice {index} outside 0..{volume.shape[axis] - 1} along axis {axis}")
    plane = np.take(volume, index, axis=axis).T
    return plane if axis == 2 else plane[::-1]


def slice_with_most_tumour(labels: np.ndarray, axis: int | str = 2) -> int:
    """Index along ``axis`` of the slice with the most tumour voxels (the middle one if none)."""
    axis = axis_number(axis)
    other = tuple(a for a in range(3) if a != axis)
    counts = np.count_nonzero(labels, axis=other)
    return int(np.argmax(counts)) if counts.any() else labels.shape[axis] // 2


def intensity_window(volume: np.ndarray, percentiles: tuple[float, float] = _WINDOW_PERCENTILES
                     ) -> tuple[float, float]:
    """Display range ``(low, high)``: percentiles of the non-zero (brain) voxels of one modality.

    Percentiles instead of min/max keep a few very bright voxels from turning the brain grey;
    computing them over the whole volume keeps the brightness steady while scrolling slices.
    """
    brain = volume[volume != 0]
    if brain.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(brain, percentiles))
    return (low, high) if high > low else (low, low + 1.0)


def _modality_volume(image: np.ndarray, modality: str | int) -> np.ndarray:
    """The ``[x, y, z]`` volume of one modality of ``[4, x, y, z]`` (a 3D image is returned as is)."""
    if image.ndim == 3:
        return image
    if image.ndim != 4:
        raise ValueError(f"expected an image [4, x, y, z] or a volume [x, y, z], got shape {image.shape}")
    channel = MODALITIES.index(modality) if isinstance(modality, str) else int(modality)
    return image[channel]


def _check_shape(labels: np.ndarray, shape: tuple[int, ...], what: str = "labels") -> None:
    if labels.shape != tuple(shape):
        raise ValueError(f"{what} shape {labels.shape} differs from the image's {tuple(shape)}")


def _check_values(labels: np.ndarray, what: str = "labels") -> None:
    """Raise :class:`~brats_utils.errors.LabelValueError` (a ``ValueError``) unless these are file labels."""
    check_labels(labels, FILE_LABELS, hint=f" in the {what}; convert training labels 0..3 with "
                                           "labels.to_file_labels")


def _resolve_index(labels: np.ndarray | None, shape: tuple[int, ...], axis: int, index: int | None) -> int:
    if index is not None:
        return index
    return slice_with_most_tumour(labels, axis) if labels is not None else shape[axis] // 2


def grayscale(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """A 2D slice mapped to ``[0, 1]`` with ``window = (low, high)`` (values outside are clipped)."""
    low, high = window
    return np.clip((plane.astype(np.float32) - low) / (high - low), 0.0, 1.0)


def blend(rgb: np.ndarray, mask: np.ndarray, color: str, alpha: float) -> np.ndarray:
    """``rgb`` (float ``[h, w, 3]`` in [0, 1]) with ``color`` mixed in at opacity ``alpha`` where ``mask``."""
    out = rgb.copy()
    out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(to_rgb(color), dtype=np.float32)
    return out


def render_slice(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    axis: int | str = 2,
    index: int | None = None,
    modality: str | int = "flair",
    overlay: bool = True,
    alpha: float = 0.4,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """One displayed slice as an RGB ``uint8`` array ``[h, w, 3]``: the drawing logic of every view.

    ``image`` is ``[4, x, y, z]`` (pick ``modality`` by name or channel) or one ``[x, y, z]``
    volume; ``labels`` an ``[x, y, z]`` file-label map {0, 1, 2, 4} drawn in
    ``labels.LABEL_COLORS`` at opacity ``alpha`` when ``overlay`` is on. ``index`` defaults to
    the slice with the most tumour; ``window`` to :func:`intensity_window` of the modality.
    Orientation as in the module docstring (axial: anterior up, patient's left on the right).
    """
    volume = _modality_volume(image, modality)
    axis = axis_number(axis)
    if labels is not None:
        _check_shape(labels, volume.shape)
    index = _resolve_index(labels, volume.shape, axis, index)
    gray = grayscale(display_slice(volume, axis, index), window or intensity_window(volume))
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if labels is not None and overlay:
        plane = display_slice(labels, axis, index)
        _check_values(plane)
        for label in _TUMOUR_LABELS:
            rgb = blend(rgb, plane == label, LABEL_COLORS[label], alpha)
    return np.round(rgb * 255).astype(np.uint8)


# --- static figures --------------------------------------------------------------------


def label_legend_handles() -> list[Patch]:
    """Legend entries naming the tumour labels in their project colours (NCR/NET, ED, ET)."""
    return [Patch(color=LABEL_COLORS[label], label=f"{label}: {LABEL_NAMES[label]}")
            for label in _TUMOUR_LABELS]


def _region_legend_handles() -> list[Patch]:
    return [Patch(color=color, label=name) for name, color in REGION_COLORS.items()]


def _show(ax, rgb: np.ndarray, title: str, axis: int, *, letters: bool = False) -> None:
    """Draw a display-oriented picture without ticks; ``letters`` marks the patient directions."""
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if letters:
        top, bottom, left, right = _EDGE_LETTERS[axis]
        style = {"color": "white", "fontsize": 8, "fontweight": "bold"}
        ax.text(0.5, 0.98, top, transform=ax.transAxes, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, transform=ax.transAxes, ha="center", va="bottom", **style)
        ax.text(0.02, 0.5, left, transform=ax.transAxes, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, transform=ax.transAxes, ha="right", va="center", **style)


def _grid_size(rows: int, columns: int, plane_shape: tuple[int, ...], width: float,
               extra_height: float = 0.7) -> tuple[float, float]:
    """Figure size for a grid of ``plane_shape`` pictures, ``width`` inches each, plus room for titles."""
    return width * columns, rows * (width * plane_shape[0] / plane_shape[1] + 0.45) + extra_height


def _plane_name(axis: int) -> str:
    return next(name for name, number in AXES.items() if number == axis)


def plot_modalities(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    axis: int | str = 2,
    slice_index: int | None = None,
    alpha: float = 0.4,
    title: str | None = None,
) -> Figure:
    """The four modalities of one slice side by side (the paper's Figure 1, done well).

    Each modality is windowed to its own brain-intensity percentiles. With ``labels`` a second
    row repeats the slice with the tumour labels overlaid, so one sees which contrast shows
    which sub-region (ED in FLAIR/T2, the ET rim in T1ce). The slice defaults to the one with
    the most tumour.
    """
    if image.ndim != 4 or image.shape[0] != len(MODALITIES):
        raise ValueError(f"expected an image [4, x, y, z] in the order {MODALITIES}, got shape {image.shape}")
    axis = axis_number(axis)
    index = _resolve_index(labels, image.shape[1:], axis, slice_index)
    rows = 1 if labels is None else 2
    plane_shape = display_slice(image[0], axis, index).shape
    fig, axes = plt.subplots(rows, 4, figsize=_grid_size(rows, 4, plane_shape, 3.0), squeeze=False,
                             layout="constrained")
    for column, modality in enumerate(MODALITIES):
        window = intensity_window(image[column])
        plain = render_slice(image, None, axis=axis, index=index, modality=modality, window=window)
        _show(axes[0, column], plain, MODALITY_TITLES[modality], axis, letters=column == 0)
        if labels is not None:
            shaded = render_slice(image, labels, axis=axis, index=index, modality=modality,
                                  alpha=alpha, window=window)
            _show(axes[1, column], shaded, f"{modality} + labels", axis, letters=column == 0)
    if labels is not None:
        fig.legend(handles=label_legend_handles(), loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(title or f"{_plane_name(axis)} slice {index}")
    return fig


def _overlay_panels(image, labels, prediction, *, axis, index, modality, overlay, alpha, window,
                    with_plain: bool) -> list[tuple[str, np.ndarray]]:
    """(title, RGB) panels: the plain modality (optional), then truth and prediction overlays."""
    volume = _modality_volume(image, modality)
    window = window or intensity_window(volume)
    panels = []
    if with_plain or (labels is None and prediction is None):
        panels.append((str(modality), render_slice(volume, axis=axis, index=index, window=window)))
    for name, label_map in (("ground truth", labels), ("prediction", prediction)):
        if label_map is not None:
            rgb = render_slice(volume, label_map, axis=axis, index=index, overlay=overlay,
                               alpha=alpha, window=window)
            panels.append((name, rgb))
    return panels


def _draw_panels(fig: Figure, panels: list[tuple[str, np.ndarray]], axis: int, *, legend: bool,
                 title: str) -> Figure:
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for position, (ax, (name, rgb)) in enumerate(zip(axes, panels, strict=True)):
        _show(ax, rgb, name, axis, letters=position == 0)
    if legend:
        fig.legend(handles=label_legend_handles(), loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_label_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    prediction: np.ndarray | None = None,
    modality: str | int = "flair",
    axis: int | str = 2,
    slice_index: int | None = None,
    alpha: float = 0.5,
) -> Figure:
    """One modality, then its slice with the labels overlaid (and a prediction's, if given).

    ``image`` is ``[4, x, y, z]`` or one ``[x, y, z]`` volume; ``labels`` and ``prediction``
    are file-label maps {0, 1, 2, 4}. The legend names NCR/NET, ED and ET in the project colours.
    """
    axis = axis_number(axis)
    volume = _modality_volume(image, modality)
    index = _resolve_index(labels, volume.shape, axis, slice_index)
    panels = _overlay_panels(volume, labels, prediction, axis=axis, index=index, modality=modality,
                             overlay=True, alpha=alpha, window=None, with_plain=True)
    fig = plt.figure(figsize=_grid_size(1, len(panels), panels[0][1].shape, 3.6), layout="constrained")
    return _draw_panels(fig, panels, axis, legend=True, title=f"{_plane_name(axis)} slice {index}")


def plot_regions(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    modality: str | int = "flair",
    axis: int | str = 2,
    slice_index: int | None = None,
    alpha: float = 0.5,
) -> Figure:
    """The three nested BraTS evaluation regions of one slice: WT, TC, ET, then their outlines together.

    WT = {1, 2, 4} (whole tumour), TC = {1, 4} (tumour core), ET = {4} (enhancing tumour):
    the regions the challenge scores, drawn in ``labels.REGION_COLORS``.
    """
    from brats_utils.metrics import region_masks

    axis = axis_number(axis)
    volume = _modality_volume(image, modality)
    _check_shape(labels, volume.shape)
    _check_values(labels)
    index = _resolve_index(labels, volume.shape, axis, slice_index)
    gray = render_slice(volume, axis=axis, index=index).astype(np.float32) / 255
    planes = {name: display_slice(mask, axis, index) for name, mask in region_masks(labels).items()}
    fig, axes = plt.subplots(1, len(planes) + 1, figsize=_grid_size(1, len(planes) + 1, gray.shape, 3.2),
                             layout="constrained")
    for ax, (name, plane) in zip(axes, planes.items(), strict=False):
        _show(ax, blend(gray, plane, REGION_COLORS[name], alpha), f"{name}: {int(plane.sum())} voxels", axis)
    _show(axes[-1], gray, "outlines", axis, letters=True)
    for name, plane in planes.items():
        if plane.any():
            axes[-1].contour(plane, levels=[0.5], colors=[REGION_COLORS[name]], linewidths=1.2)
    fig.legend(handles=_region_legend_handles(), loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(f"BraTS regions, {_plane_name(axis)} slice {index}", fontsize=10)
    return fig


def _bin_edges(samples: list[np.ndarray], bins: int, clip_percentile: float = 100.0) -> np.ndarray:
    """Shared histogram edges; whole-number wide and centred on integers for integer data.

    Raw BraTS intensities are integers: bins of fractional width would hold alternately one or
    two integer values and draw a comb that is not in the data. The edges span the values from the
    ``100 - clip_percentile``-th to the ``clip_percentile``-th percentile, so that a few hot outlier
    voxels do not squeeze every curve into the left end of the axis.
    """
    values = np.concatenate([np.ravel(sample) for sample in samples])
    if values.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    low, high = (float(v) for v in np.percentile(values, [100.0 - clip_percentile, clip_percentile]))
    if np.array_equal(values, np.round(values)):
        low, high = np.floor(low), np.ceil(high)
    if np.array_equal(values, np.round(values)):
        width = max(1, int(np.ceil((high - low + 1) / bins)))
        return np.arange(low - 0.5, high + width, width)
    return np.linspace(low, high if high > low else low + 1.0, bins + 1)


def plot_intensity_histograms(
    image: np.ndarray | Mapping[str, np.ndarray],
    mask: np.ndarray | None = None,
    *,
    bins: int = 100,
    xlabel: str = "intensity",
    clip_percentile: float = 99.9,
) -> Figure:
    """Per-modality histograms of the brain voxels of one image, or of several overlaid.

    ``image`` is ``[4, x, y, z]`` or a mapping ``{name: image}`` (e.g. several cases, or raw
    vs normalised); each gets a density curve per modality. ``mask`` selects the voxels (default:
    the brain, voxels non-zero in any modality); it applies to a single image only, a mapping
    uses each image's brain. Each axis spans the pooled values between the ``100 - clip_percentile``-th
    and the ``clip_percentile``-th percentile (the rare hot voxels beyond are left out; 100 keeps all).
    """
    from brats_utils.preprocess import brain_mask

    images = dict(image) if isinstance(image, Mapping) else {"": image}
    if mask is not None and len(images) > 1:
        raise ValueError("mask applies to a single image; a mapping of images uses each one's brain")
    values = {name: [volume4d[c][mask if mask is not None else brain_mask(volume4d)]
                     for c in range(len(MODALITIES))] for name, volume4d in images.items()}
    fig, axes = plt.subplots(1, len(MODALITIES), figsize=(13, 3.2), layout="constrained")
    for channel, ax in enumerate(axes):
        edges = _bin_edges([per_modality[channel] for per_modality in values.values()], bins,
                           clip_percentile)
        for name, per_modality in values.items():
            ax.hist(per_modality[channel], bins=edges, density=True, histtype="step", linewidth=1.3,
                    label=name or None)
        ax.set_xlim(edges[0], edges[-1])
    for ax, modality in zip(axes, MODALITIES, strict=True):
        ax.set_title(MODALITY_TITLES[modality].split("\n")[0])
        ax.set_xlabel(xlabel)
        ax.set_yticks([])
    axes[0].set_ylabel("density (brain voxels)")
    if len(images) > 1:
        axes[-1].legend(fontsize=8, frameon=False)
    return fig


# --- interactive viewer ----------------------------------------------------------------


def _in_widget_kernel() -> bool:
    """True inside a Jupyter kernel that has ipywidgets (JupyterLab, Notebook, Colab, VS Code)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _view_figure(image, labels, prediction, *, axis: int, index: int, modality: str, overlay: bool,
                 alpha: float, window: tuple[float, float] | None) -> Figure:
    """The viewer's picture (truth and prediction side by side) as a figure outside pyplot."""
    panels = _overlay_panels(image, labels, prediction, axis=axis, index=index, modality=modality,
                             overlay=overlay, alpha=alpha, window=window, with_plain=False)
    fig = Figure(figsize=_grid_size(1, len(panels), panels[0][1].shape, 4.2), layout="constrained")
    title = f"{_plane_name(axis)} slice {index + 1} of {image.shape[1 + axis]} (index {index}), {modality}"
    return _draw_panels(fig, panels, axis, legend=labels is not None or prediction is not None, title=title)


#: Width of the viewer's label column, so the slider track and the buttons start on one line.
_DESCRIPTION_WIDTH = "70px"
#: Slider track length per slice (px) and the track's bounds: long enough to hit every slice.
_SLIDER_PX_PER_SLICE = 8
_SLIDER_TRACK_PX = (320, 900)
#: Room the slice slider needs besides its track (its margins).
_SLIDER_EXTRA_PX = 20


def _slider_width(n_slices: int) -> str:
    """CSS width of the slice slider: about ``_SLIDER_PX_PER_SLICE`` px of track per slice, bounded."""
    low, high = _SLIDER_TRACK_PX
    track = min(max(_SLIDER_PX_PER_SLICE * max(n_slices - 1, 1), low), high)
    return f"{track + _SLIDER_EXTRA_PX}px"


def _state_text(plane: str, index: int, n_slices: int, modality: str, overlay: bool, alpha: float) -> str:
    """The view's state in words: a 1-based slice number of the count, then its 0-based array index."""
    labels = f"labels on, opacity {alpha:.2f}" if overlay else "labels off"
    return f"{plane} slice {index + 1} of {n_slices} (index {index}), {modality}, {labels}"


class SliceViewer:
    """Interactive slice viewer: slice slider, plane, modality, overlay on/off and opacity.

    Shows the ground-truth labels and, if given, a prediction side by side. Works with
    ipywidgets 7 and 8 (only ``observe`` and long-standing widgets are used). Each change
    re-renders the panels with :func:`render_slice` straight to PNG (no matplotlib on the way),
    so the view updates in place, fast and without flicker. Display it by making it a cell's
    last expression (or ``IPython.display.display(viewer)``): the output holds the live widget
    and, for exported or GitHub-rendered notebooks where widgets cannot run, a PNG of the
    view as displayed (see :meth:`_repr_mimebundle_`). :meth:`figure` gives the current view as
    a static matplotlib figure.

    Keyboard: the slider handle takes the arrow keys once clicked (JupyterLab). Jupyter
    Notebook 7 handles the arrow keys itself before a slider sees them (they move between
    cells), so the slice also has a number box: click it, then the up/down arrow keys step the
    slice in every front end (a text field keeps the notebook's shortcuts out).
    """

    def __init__(
        self,
        image: np.ndarray,
        labels: np.ndarray | None = None,
        prediction: np.ndarray | None = None,
        *,
        modality: str = "flair",
        axis: int | str = "axial",
        alpha: float = 0.4,
        display_size: int = 400,
    ) -> None:
        import ipywidgets as widgets

        if image.ndim != 4 or image.shape[0] != len(MODALITIES):
            raise ValueError(f"expected an image [4, x, y, z] in the order {MODALITIES}, got {image.shape}")
        for what, label_map in (("labels", labels), ("prediction", prediction)):
            if label_map is not None:
                _check_shape(label_map, image.shape[1:], what)
                _check_values(label_map, what)
        self.image, self.labels, self.prediction = image, labels, prediction
        self.display_size = display_size
        self._windows = {m: intensity_window(image[c]) for c, m in enumerate(MODALITIES)}
        self._reference = labels if labels is not None else prediction
        self._has_labels = has_labels = self._reference is not None
        axis = axis_number(axis)
        n_slices = image.shape[1 + axis]

        # no descriptions of their own: ipywidgets 8 puts a ToggleButtons' description above the
        # buttons and a slider's beside its track; every row gets a label of one width instead
        self.axis = widgets.ToggleButtons(options=list(AXES)[::-1], value=_plane_name(axis))
        self.modality = widgets.ToggleButtons(options=list(MODALITIES), value=modality)
        self.index = widgets.IntSlider(min=0, max=n_slices - 1, value=self._start_index(axis), readout=False,
                                       layout=widgets.Layout(width=_slider_width(n_slices)))
        self.index.add_class("brats-slice")
        #: The slice index as a number box (the slider's readout): its arrow keys work in every front end.
        self.index_box = widgets.BoundedIntText(min=0, max=n_slices - 1, value=self.index.value,
                                                continuous_update=True, layout=widgets.Layout(width="70px"))
        self._syncing = False
        self.overlay = widgets.Checkbox(value=has_labels, description="show", disabled=not has_labels,
                                        indent=False, layout=widgets.Layout(width="70px"))
        self.alpha = widgets.FloatSlider(min=0.0, max=1.0, step=0.05, value=alpha, description="opacity",
                                         disabled=not has_labels, style={"description_width": "initial"})
        self.alpha.add_class("brats-opacity")
        names = [name for name, m in (("ground truth", labels), ("prediction", prediction)) if m is not None]
        self.views = [widgets.Image(format="png") for _ in names or ["image"]]
        self._names = names or ["image"]
        self.caption = widgets.HTML()
        #: Each panel's heading; it names the panel's state (see :meth:`state_text`) in its ``title``.
        self.headers = [widgets.HTML() for _ in self.views]
        panels = [widgets.VBox([header, view]) for header, view in zip(self.headers, self.views, strict=True)]
        self.legend = widgets.HTML()
        column = widgets.Layout(width=_DESCRIPTION_WIDTH)
        rows = [widgets.HBox([widgets.Label(name, layout=column), *controls])
                for name, controls in (("plane", [self.axis]), ("modality", [self.modality]),
                                       ("slice", [self.index, self.index_box]),
                                       ("labels", [self.overlay, self.alpha]))]
        self.widget = widgets.VBox([*rows, self.caption, widgets.HBox(panels), self.legend])
        self.axis.observe(self._on_axis, names="value")
        self.index_box.observe(self._on_box, names="value")
        for control in (self.modality, self.index, self.overlay, self.alpha):
            control.observe(self._redraw, names="value")
        self._redraw()

    def _start_index(self, axis: int) -> int:
        return _resolve_index(self._reference, self.image.shape[1:], axis, None)

    def _on_axis(self, change: dict) -> None:
        axis = AXES[change["new"]]
        before = self.index.value
        n_slices = self.image.shape[1 + axis]
        self._set_box(max=n_slices - 1)
        with self.index.hold_trait_notifications():  # new range and start slice as one change
            self.index.max = n_slices - 1
            self.index.value = self._start_index(axis)
        self.index.layout.width = _slider_width(n_slices)
        if self.index.value == before:  # otherwise the slider's own observer redrew
            self._redraw()

    def _on_box(self, change: dict) -> None:
        if not self._syncing:
            self.index.value = change["new"]

    def _set_box(self, **values: int) -> None:
        """Set the number box from the slider's side without echoing back to the slider."""
        self._syncing = True
        try:
            for name, value in values.items():
                setattr(self.index_box, name, value)
        finally:
            self._syncing = False

    def _state(self) -> dict:
        return {"axis": AXES[self.axis.value], "index": self.index.value, "modality": self.modality.value,
                "overlay": self.overlay.value, "alpha": self.alpha.value,
                "window": self._windows[self.modality.value]}

    def state_text(self) -> str:
        """The current view in words, e.g. ``"axial slice 17 of 32 (index 16), flair, labels off"``.

        Each panel's heading carries it (after the panel's name) as its ``title``, so a page
        shows which state its picture is of.
        """
        state = self._state()
        return _state_text(self.axis.value, state["index"], self.index.max + 1, state["modality"],
                           state["overlay"], state["alpha"])

    def panels(self) -> list[tuple[str, np.ndarray]]:
        """The current view as (title, RGB ``uint8``) panels, exactly as the widget shows them."""
        return _overlay_panels(self.image, self.labels, self.prediction, with_plain=False, **self._state())

    def figure(self) -> Figure:
        """The current view as a matplotlib figure (not managed by pyplot)."""
        return _view_figure(self.image, self.labels, self.prediction, **self._state())

    def _redraw(self, change: dict | None = None) -> None:
        state = self._state()
        self._set_box(value=state["index"])
        overlay_on = self._has_labels and state["overlay"]
        self.alpha.disabled = not overlay_on  # opacity and legend mean nothing with the labels off
        self.legend.value = _legend_html(active=overlay_on) if self._has_labels else ""
        top, bottom, left, right = _EDGE_LETTERS[state["axis"]]
        self.caption.value = (f"{self.state_text()} &nbsp;·&nbsp; top {top}, bottom {bottom}, "
                              f"left {left}, right {right} (radiological convention)")
        # the picture first, then the heading naming its state: a page that shows the new state
        # has the new picture too (no tooltip on the Image: ipywidgets 8.1's ImageView fails on it)
        for name, view, header, (_, rgb) in zip(self._names, self.views, self.headers, self.panels(),
                                                strict=True):
            view.value = _png_bytes(rgb, self.display_size)
            shown = name if self.labels is not None or self.prediction is not None else ""
            header.value = (f'<b class="brats-view-state" title="{name}: {self.state_text()}">'
                            f"{shown or '&nbsp;'}</b>")

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The live widget, plus a PNG and a line of text for where widgets cannot run.

        Front ends with widgets (JupyterLab, Notebook, VS Code, Colab) show the widget view;
        ``nbconvert`` exports and GitHub fall back to ``image/png`` (the view as it was displayed)
        and plain text to ``text/plain``, instead of the widget's ``VBox(children=...)`` repr.
        """
        import base64

        fig = self.figure()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        return {
            "application/vnd.jupyter.widget-view+json": {
                "version_major": 2, "version_minor": 0, "model_id": self.widget.model_id},
            "image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "text/plain": f"SliceViewer: {self.state_text()} (interactive in a running notebook)",
        }


def _legend_html(active: bool = True) -> str:
    """The label colours' legend; greyed out (``active=False``) while the labels are hidden."""
    items = "".join(
        f'<span style="display:inline-block;width:12px;height:12px;background:{LABEL_COLORS[label]};'
        f'margin:0 4px 0 12px;vertical-align:middle"></span>{label}: {LABEL_NAMES[label]}'
        for label in _TUMOUR_LABELS)
    style = "" if active else ' style="opacity:0.35" title="labels hidden"'
    return f"<div class=\"brats-legend\"{style}>{items}</div>"


def _png_bytes(rgb: np.ndarray, display_size: int) -> bytes:
    """PNG of an RGB slice, enlarged by a whole factor (sharp voxels) to about ``display_size`` pixels."""
    factor = max(1, round(display_size / max(rgb.shape[:2])))
    enlarged = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
    buffer = io.BytesIO()
    plt.imsave(buffer, enlarged, format="png", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def show_viewer(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    *,
    static: bool | None = None,
    axis: int | str = "axial",
    modality: str = "flair",
    slice_index: int | None = None,
    alpha: float = 0.4,
) -> SliceViewer | Figure:
    """An interactive :class:`SliceViewer`, or a static figure where widgets cannot run.

    ``static=None`` picks the viewer inside a Jupyter kernel with ipywidgets and a static figure
    elsewhere (scripts, plain Python); ``static=True`` forces the figure (for exported or
    printed notebooks). The static figure shows the slice with the most tumour (or
    ``slice_index``) of ``modality`` with the labels and prediction overlaid. Either result is
    displayed when it is a cell's last expression.
    """
    if static is None:
        static = not _in_widget_kernel()
    if not static:
        viewer = SliceViewer(image, labels, prediction, modality=modality, axis=axis, alpha=alpha)
        if slice_index is not None:
            viewer.index.value = slice_index
        return viewer
    axis = axis_number(axis)
    reference = labels if labels is not None else prediction
    index = _resolve_index(reference, image.shape[1:], axis, slice_index)
    return _view_figure(image, labels, prediction, axis=axis, index=index, modality=modality,
                        overlay=True, alpha=alpha, window=None)
