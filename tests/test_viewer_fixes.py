"""brats_utils.viz.SliceViewer: the fixes the browser check showed, tested without a browser.

The browser test itself (``tests/browser``, ``make test-browser``) proves the same viewer in
JupyterLab; these tests pin each fix in plain pytest: the slider's length, the 1-based slice
text, the number box that takes the arrow keys, the overlay controls greyed out with the labels
off, the even label column and the static picture in the output bundle.
"""

from __future__ import annotations

import base64
import io
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from brats_utils.viz import volumes as viz

pytest.importorskip("ipywidgets")

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _case(shape: tuple[int, int, int] = (48, 40, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A brain box with per-modality intensities and a small nested tumour."""
    image = np.zeros((4, *shape), dtype=np.float32)
    image[:, 2:-2, 2:-2, 2:-2] = np.array([100, 200, 300, 400], dtype=np.float32)[:, None, None, None]
    labels = np.zeros(shape, dtype=np.uint8)
    labels[10:30, 10:25, 8:20] = 2
    labels[14:24, 14:20, 10:16] = 1
    labels[16:20, 15:18, 11:14] = 4
    return image, labels


def _px(width: str) -> int:
    assert width.endswith("px"), width
    return int(width[:-2])


def test_slice_slider_gives_every_slice_several_pixels_and_follows_the_plane():
    image, labels = _case()
    viewer = viz.SliceViewer(image, labels)
    track = _px(viewer.index.layout.width) - viz._SLIDER_EXTRA_PX
    assert track / viewer.index.max >= viz._SLIDER_PX_PER_SLICE  # 32 axial slices: 8 px or more each
    viewer.axis.value = "sagittal"  # 48 slices: a longer track
    assert _px(viewer.index.layout.width) - viz._SLIDER_EXTRA_PX >= viz._SLIDER_PX_PER_SLICE * 47
    # a real BraTS volume (155 or 240 slices) stays within the bounds, still above 3-4 px per slice
    assert _px(viz._slider_width(240)) - viz._SLIDER_EXTRA_PX == viz._SLIDER_TRACK_PX[1]
    assert viz._SLIDER_TRACK_PX[1] / 154 > 5


def test_slice_text_counts_from_one_and_names_the_array_index():
    image, labels = _case()
    viewer = viz.SliceViewer(image, labels)
    viewer.index.value = 0
    assert viewer.state_text().startswith("axial slice 1 of 32 (index 0), flair, labels on")
    assert "slice 1 of 32 (index 0)" in viewer.caption.value
    viewer.index.value = 31
    assert "slice 32 of 32 (index 31)" in viewer.caption.value
    assert "slice 0 of" not in viewer.caption.value
    assert viewer.figure().get_suptitle().startswith("axial slice 32 of 32 (index 31)")


def test_each_panel_heading_names_its_state_and_images_carry_no_tooltip():
    image, labels = _case()
    viewer = viz.SliceViewer(image, labels, np.where(labels == 4, 1, labels).astype(np.uint8))
    viewer.modality.value = "t2"
    viewer.alpha.value = 0.6
    titles = [re.search(r'title="([^"]*)"', header.value)[1] for header in viewer.headers]
    assert titles == [f"ground truth: {viewer.state_text()}", f"prediction: {viewer.state_text()}"]
    assert re.fullmatch(r"prediction: axial slice \d+ of 32 \(index \d+\), t2, labels on, opacity 0\.60",
                        titles[1])
    # ipywidgets 8.1's ImageView cannot be created with a tooltip (the browser test found it)
    assert all(not getattr(view, "tooltip", None) for view in viewer.views)


def test_number_box_and_slider_stay_one_value_across_planes():
    image, labels = _case()
    viewer = viz.SliceViewer(image, labels)
    viewer.index_box.value = 5  # the arrow keys in the box change it like this
    assert viewer.index.value == 5 and "(index 5)" in viewer.caption.value
    viewer.index.value = 7
    assert viewer.index_box.value == 7
    viewer.axis.value = "sagittal"  # 48 slices, start slice past the axial range
    assert viewer.index_box.max == viewer.index.max == 47
    assert viewer.index_box.value == viewer.index.value == viz.slice_with_most_tumour(labels, 0)
    viewer.axis.value = "axial"
    assert viewer.index_box.max == viewer.index.max == 31
    assert viewer.index_box.value == viewer.index.value
    assert not viewer.index.readout  # the box is the readout: one number on screen, not two


def test_labels_off_greys_out_opacity_and_legend():
    image, labels = _case()
    viewer = viz.SliceViewer(image, labels)
    assert not viewer.alpha.disabled and "opacity:0.35" not in viewer.legend.value
    viewer.overlay.value = False
    assert viewer.alpha.disabled
    assert "opacity:0.35" in viewer.legend.value and "labels off" in viewer.caption.value
    viewer.overlay.value = True
    assert not viewer.alpha.disabled and "opacity:0.35" not in viewer.legend.value
    plain = viz.SliceViewer(image)  # nothing to overlay: no legend, controls off for good
    assert plain.overlay.disabled and plain.alpha.disabled and plain.legend.value == ""


def test_controls_share_one_label_column():
    image, labels = _case()
    viewer = viz.SliceViewer(image, labels)
    rows = viewer.widget.children[:4]
    assert [row.children[0].value for row in rows] == ["plane", "modality", "slice", "labels"]
    assert {row.children[0].layout.width for row in rows} == {viz._DESCRIPTION_WIDTH}
    # the controls bring no labels of their own (ipywidgets 8 would put the buttons' under them)
    assert viewer.axis.description == viewer.modality.description == viewer.index.description == ""
    assert [row.children[1] for row in rows] == [viewer.axis, viewer.modality, viewer.index, viewer.overlay]


def test_output_bundle_holds_the_widget_a_png_and_readable_text():
    image, labels = _case()
    viewer = viz.SliceViewer(image, labels)
    bundle = viewer._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == viewer.widget.model_id
    assert bundle[WIDGET_VIEW]["version_major"] == 2
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG")
    assert mpimg.imread(io.BytesIO(png), format="png").shape[1] > 200  # a picture, not a pixel
    assert "VBox" not in bundle["text/plain"] and viewer.state_text() in bundle["text/plain"]
    assert not hasattr(viewer, "_ipython_display_")  # it would hide the bundle from IPython


def test_ipython_displays_the_whole_bundle():
    from IPython.core.formatters import DisplayFormatter

    image, labels = _case()
    data, _ = DisplayFormatter().format(viz.SliceViewer(image, labels))
    assert {WIDGET_VIEW, "image/png", "text/plain"} <= set(data)


def test_an_exported_notebook_without_widget_state_shows_the_picture():
    nbformat = pytest.importorskip("nbformat")
    nbconvert = pytest.importorskip("nbconvert")

    image, labels = _case()
    bundle = viz.SliceViewer(image, labels)._repr_mimebundle_()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("viz.show_viewer(image, labels)", outputs=[
        nbformat.v4.new_output("execute_result", data=bundle, execution_count=1)])]
    html, _ = nbconvert.HTMLExporter().from_notebook_node(notebook)
    assert f'src="data:image/png;base64,{bundle["image/png"][:40]}' in html
    markdown, resources = nbconvert.MarkdownExporter().from_notebook_node(notebook)
    assert "![png]" in markdown and "VBox(" not in markdown
