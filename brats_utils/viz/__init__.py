"""Figures: volumes and labels (:mod:`.volumes`), the network's diagram and tables (:mod:`.network`),
a training run's history (:mod:`.history`).

Everything that draws lives here, so that the modules computing the results (the model,
the metrics) load neither matplotlib nor pandas. ``from brats_utils import viz`` gives
every public name of them.
"""

from brats_utils.viz.history import plot_history
from brats_utils.viz.network import (
    plot_architecture,
    preset_summary,
    summarize,
)
from brats_utils.viz.volumes import (
    AXES,
    MODALITY_TITLES,
    SliceViewer,
    axis_number,
    blend,
    display_slice,
    grayscale,
    intensity_window,
    label_legend_handles,
    plot_intensity_histograms,
    plot_label_overlay,
    plot_modalities,
    plot_regions,
    render_slice,
    show_viewer,
    slice_with_most_tumour,
    write_figure,
)

__all__ = [
    "AXES",
    "MODALITY_TITLES",
    "SliceViewer",
    "axis_number",
    "blend",
    "display_slice",
    "grayscale",
    "intensity_window",
    "label_legend_handles",
    "plot_architecture",
    "plot_history",
    "plot_intensity_histograms",
    "plot_label_overlay",
    "plot_modalities",
    "plot_regions",
    "preset_summary",
    "render_slice",
    "show_viewer",
    "slice_with_most_tumour",
    "summarize",
    "write_figure",
]
