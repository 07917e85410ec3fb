"""brats_utils.viz.widgets: the numbers each widget draws, and that its figure follows its parameter."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.figure import Figure

from brats_utils.inference import importance_map, window_starts
from brats_utils.viz import widgets


def _pixels(fig: Figure) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    buffer.seek(0)
    return mpimg.imread(buffer)


def _differ(a: Figure, b: Figure) -> bool:
    pa, pb = _pixels(a), _pixels(b)
    return pa.shape != pb.shape or not np.array_equal(pa, pb)


# --- the shared wrapper ----------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: widgets.loss_weighting_widget(static=True),
    lambda: widgets.seam_widget(static=True),
    lambda: widgets.et_threshold_widget([10, 900], [0.0, 0.8], [1.0, 0.0], static=True),
    lambda: widgets.patch_centres_widget(np.zeros((8, 8)), (8, 8, 8), (4, 4, 4),
                                         np.array([[1, 4, 4, 4]]), samples=5, static=True),
])
def test_static_fallback_is_a_figure(make):
    assert isinstance(make(), Figure)


def test_outside_a_kernel_the_widget_falls_back_to_the_figure():
    assert isinstance(widgets.seam_widget(), Figure)  # pytest has no Jupyter kernel


def test_interactive_version_has_one_slider_per_parameter():
    ipywidgets = pytest.importorskip("ipywidgets")
    widget = widgets.seam_widget(overlap=0.25, static=False)
    assert isinstance(widget, ipywidgets.interactive)
    sliders = {child.description: child.value for child in widget.children if hasattr(child, "step")}
    assert sliders == {"overlap": 0.25, "σ / patch (0: uniform)": 0.125}


def test_a_saved_widget_output_carries_the_default_figure_as_a_png():
    """GitHub and nbviewer cannot draw widget state: the published copy shows the PNG of the default."""
    pytest.importorskip("ipywidgets")
    import base64

    widget = widgets.seam_widget(overlap=0.25, static=False)
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # still live where widgets run
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG")
    assert png == widgets._figure_png(widgets.seam_figure(0.25, 0.125))  # the default state, not another
    assert "overlap = 0.25" in bundle["text/plain"]


# --- 03: patch centres -----------------------------------------------------------------------


def test_patch_centres_land_on_the_tumour_with_fraction_one():
    foreground = np.array([[1, 10, 10, 10], [3, 12, 9, 11]])  # two labels, one voxel each
    centres = widgets.patch_centres((24, 24, 24), (8, 8, 8), foreground, 1.0, samples=50)
    assert {tuple(c) for c in centres.tolist()} == {(10, 10, 10), (12, 9, 11)}
    assert widgets._share_on_tumour(centres, foreground) == 1.0


def test_patch_centres_are_uniform_with_fraction_zero():
    foreground = np.array([[1, 10, 10, 10]])
    centres = widgets.patch_centres((24, 24, 24), (8, 8, 8), foreground, 0.0, samples=400)
    assert centres.min() >= 4 and centres.max() <= 20  # every start in 0..16, centre = start + 4
    assert widgets._share_on_tumour(centres, foreground) < 0.05
    assert len({tuple(c) for c in centres.tolist()}) > 300


def test_patch_centres_figure_changes_with_the_fraction():
    plane = np.zeros((24, 24))
    foreground = np.array([[1, 10, 10, 10]])
    low, high = (widgets.patch_centres_figure(plane, (24, 24, 24), (8, 8, 8), foreground, f, samples=100)
                 for f in (0.0, 1.0))
    assert "100% of 100 centres on tumour" in high.axes[0].get_title()
    assert _differ(low, high)


# --- 05: CE / Dice weighting -----------------------------------------------------------------


def test_toy_losses_are_the_package_loss_and_mix_linearly():
    losses = widgets.toy_losses(0.3, [0.02, 0.5, 0.98])
    np.testing.assert_allclose(losses["loss"], losses["paper"])
    np.testing.assert_allclose(losses["loss"], 0.3 * losses["ce"] + 0.7 * losses["dice"])
    np.testing.assert_allclose(widgets.toy_losses(1.0, [0.5])["loss"], losses["ce"][1])
    np.testing.assert_allclose(widgets.toy_losses(0.0, [0.5])["loss"], losses["dice"][1])
    assert np.all(np.diff(losses["ce"]) < 0) and np.all(np.diff(losses["dice"]) < 0)  # better p, lower loss


def test_toy_losses_by_hand():
    # p(tumour) = 0.5 on the 4 tumour voxels, 0.005 on the 196 others
    ce = -(4 * np.log(0.5) + 196 * np.log(0.995)) / 200
    tumour_dice = 2 * 4 * 0.5 / (4 * 0.5 + 196 * 0.005 + 4)
    background_dice = 2 * 196 * 0.995 / (4 * 0.5 + 196 * 0.995 + 196)
    losses = widgets.toy_losses(0.5, [0.5])
    np.testing.assert_allclose(losses["ce"], ce, rtol=1e-6)
    np.testing.assert_allclose(losses["dice"], 1 - (tumour_dice + background_dice) / 2, rtol=1e-5)


def test_dice_rewards_finding_a_small_tumour_more_than_cross_entropy():
    ends = widgets.toy_losses(0.0, [0.02, 0.98])
    assert ends["dice"][0] - ends["dice"][1] > 4 * (ends["ce"][0] - ends["ce"][1])


def test_loss_weighting_figure_changes_with_the_weight():
    assert _differ(widgets.loss_weighting_figure(0.3), widgets.loss_weighting_figure(0.9))


# --- 06: seams ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size, patch, overlap", [(240, 128, 0.5), (155, 128, 0.5), (160, 64, 0.0),
                                                  (100, 32, 0.25), (20, 32, 0.5)])
def test_window_starts_agree_with_the_inference_module(size, patch, overlap):
    assert widgets._window_starts(size, patch, overlap) == window_starts(size, patch, overlap)


def test_gaussian_at_one_eighth_is_the_inference_importance_map():
    np.testing.assert_allclose(widgets.window_profile(64, 1 / 8), importance_map((64, 1, 1))[:, 0, 0].numpy(),
                               rtol=1e-6)
    assert np.array_equal(widgets.window_profile(64, 0), np.ones(64))


def test_blend_without_overlap_is_each_windows_prediction():
    blended, summed = widgets.blend_plane((16, 8), 8, 0.0, 0.0, border_error=0.5)
    assert np.array_equal(summed, np.ones((16, 8)))
    np.testing.assert_allclose(blended[:8], blended[8:])  # two identical windows side by side
    assert blended[0, 4] == pytest.approx(0.5)  # border of a window: 1 - 0.5 · 1²
    assert widgets._seam_depth(blended, 2) == pytest.approx(0.5)  # x = 7, 8: the seam between the windows


def test_overlap_and_gaussian_weights_make_the_seams_shallower():
    depth = {(overlap, sigma): widgets._seam_depth(widgets.blend_plane((192, 128), 64, overlap, sigma)[0], 16)
             for overlap in (0.0, 0.5) for sigma in (0.0, 0.125)}
    assert depth[(0.0, 0.0)] == depth[(0.0, 0.125)] == pytest.approx(0.3)  # no overlap: full error
    assert depth[(0.5, 0.0)] < depth[(0.0, 0.0)]
    assert depth[(0.5, 0.125)] < depth[(0.5, 0.0)]


def test_seam_figure_changes_with_overlap_and_sigma():
    base = widgets.seam_figure(0.0, 0.0)
    assert _differ(base, widgets.seam_figure(0.5, 0.0))
    assert _differ(base, widgets.seam_figure(0.0, 0.125))


# --- 06: the ET threshold ----------------------------------------------------------------------


def test_relabel_rule_on_a_hand_made_case():
    labels = np.array([0, 4, 4, 2, 1])
    prediction, truth = labels, np.array([0, 0, 0, 2, 1])  # 2 predicted ET voxels, none true
    assert widgets.et_case_scores(prediction, truth) == (2, 0.0, 1.0)
    assert widgets.et_case_scores(prediction, labels) == (2, 1.0, 0.0)


def test_et_case_scores_by_hand():
    truth_without_et = np.array([0, 2, 2, 0])
    false_et = np.array([0, 4, 2, 0])
    assert widgets.et_case_scores(false_et, truth_without_et) == (1, 0.0, 1.0)
    truth_with_et = np.array([0, 4, 4, 0])
    assert widgets.et_case_scores(false_et, truth_with_et) == (1, pytest.approx(2 / 3), 0.0)


def test_et_dice_curves_step_at_each_case_size():
    sizes, kept, relabelled = [5, 50, 500], [0.0, 0.6, 0.9], [1.0, 0.0, 0.0]
    means, medians = widgets.et_dice_curves(sizes, kept, relabelled, [0, 6, 51, 501])
    np.testing.assert_allclose(means, [0.5, 2.5 / 3, 1.9 / 3, 1 / 3])
    np.testing.assert_allclose(medians, [0.6, 0.9, 0.9, 0.0])


def test_et_threshold_figure_changes_with_the_threshold():
    sizes, kept, relabelled = [5, 50, 500], [0.0, 0.6, 0.9], [1.0, 0.0, 0.0]
    low = widgets.et_threshold_figure(sizes, kept, relabelled, 0)
    high = widgets.et_threshold_figure(sizes, kept, relabelled, 100)
    assert "2 of 3 cases relabelled" in high.axes[0].get_title()
    assert _differ(low, high)
