"""brats_utils.viz: orientation, colours and windowing of render_slice, the viewer and the figures."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest
from matplotlib.figure import Figure

from brats_utils import viz
from brats_utils.labels import LABEL_COLORS, MODALITIES

#: The affine of every BraTS 2020 volume (DATA-FACTS.md), axis codes ('L', 'P', 'S').
BRATS_AFFINE = np.array([[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
SHAPE = (5, 6, 7)  # distinct sides, so a transposed slice cannot pass for the right one


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _hex_bytes(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def _one_voxel_image(voxel: tuple[int, int, int]) -> np.ndarray:
    """[4, 5, 6, 7] image: background 10 (window 0..100 maps it to 26/255), one voxel at 100."""
    image = np.full((4, *SHAPE), 10.0, dtype=np.float32)
    image[(slice(None), *voxel)] = 100.0
    return image


def _bright_pixel(voxel, axis) -> tuple[int, int]:
    rgb = viz.render_slice(_one_voxel_image(voxel), axis=axis, index=voxel[viz.AXES[axis]], window=(0, 100))
    rows, columns = np.nonzero(rgb[..., 0] == 255)
    assert len(rows) == 1
    return int(rows[0]), int(columns[0])


def _phantom(shape=(12, 10, 8)):
    """A small case: a brain box with per-modality intensities and a nested tumour."""
    image = np.zeros((4, *shape), dtype=np.float32)
    image[:, 1:-1, 1:-1, 1:-1] = np.array([100, 200, 300, 400], dtype=np.float32)[:, None, None, None]
    labels = np.zeros(shape, dtype=np.uint8)
    labels[3:9, 3:8, 2:6] = 2
    labels[4:8, 4:7, 3:5] = 1
    labels[5:7, 5:6, 3:5] = 4
    return image, labels


# --- orientation -----------------------------------------------------------------------


@pytest.mark.parametrize(("axis", "expected_shape", "expected_pixel"), [
    ("axial", (6, 5), (2, 1)),      # rows y (anterior first), columns x
    ("coronal", (7, 5), (3, 1)),    # rows z from the top (6 - 3), columns x
    ("sagittal", (7, 6), (3, 2)),   # rows z from the top, columns y (anterior first)
])
def test_a_known_voxel_lands_on_the_expected_pixel(axis, expected_shape, expected_pixel):
    voxel = (1, 2, 3)
    rgb = viz.render_slice(_one_voxel_image(voxel), axis=axis, index=voxel[viz.AXES[axis]], window=(0, 100))
    assert rgb.shape == (*expected_shape, 3) and rgb.dtype == np.uint8
    assert _bright_pixel(voxel, axis) == expected_pixel


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_display_follows_the_radiological_convention_in_world_coordinates(axis):
    """Anterior/superior up; patient's left on the right (axial, coronal); anterior left (sagittal)."""
    assert nib.aff2axcodes(BRATS_AFFINE) == ("L", "P", "S")
    rng = np.random.default_rng(0)
    fixed = viz.AXES[axis]
    for _ in range(20):
        a, b = (tuple(int(rng.integers(0, n)) for n in SHAPE) for _ in range(2))
        b = tuple(a[i] if i == fixed else b[i] for i in range(3))  # same slice
        (row_a, col_a), (row_b, col_b) = _bright_pixel(a, axis), _bright_pixel(b, axis)
        # RAS+ world coordinates: x grows to the patient's right, y anterior, z superior
        world_a, world_b = (BRATS_AFFINE @ np.array([*v, 1.0]) for v in (a, b))
        up = 1 if axis == "axial" else 2  # anterior up in axial, superior up otherwise
        right = 1 if axis == "sagittal" else 0
        # higher up in the body -> smaller row; right edge = patient's left (-x) or posterior (-y)
        assert np.sign(row_b - row_a) == np.sign(world_a[up] - world_b[up])
        assert np.sign(col_b - col_a) == np.sign(world_a[right] - world_b[right])


# --- colours and windowing -------------------------------------------------------------


def test_overlay_at_full_opacity_paints_each_label_in_its_project_colour():
    image, labels = _phantom()
    rgb = viz.render_slice(image, labels, axis=2, index=3, alpha=1.0)
    plane = labels[:, :, 3].T  # axial display is [y, x]
    for label, color in LABEL_COLORS.items():
        assert (plane == label).any()
        assert {tuple(p) for p in rgb[plane == label]} == {_hex_bytes(color)}


def test_overlay_blends_linearly_with_opacity():
    image, labels = _phantom()
    rgb = viz.render_slice(image, labels, axis=2, index=3, alpha=0.25, window=(0, 200))
    gray = 100 / 200  # flair 100 in a 0..200 window
    expected = [round((0.75 * gray + 0.25 * c / 255) * 255) for c in _hex_bytes(LABEL_COLORS[4])]
    assert rgb[labels[:, :, 3].T == 4][0].tolist() == expected


def test_zero_opacity_or_overlay_off_leaves_the_grayscale_picture():
    image, labels = _phantom()
    plain = viz.render_slice(image, axis=2, index=3)
    assert np.array_equal(plain[..., 0], plain[..., 1]) and np.array_equal(plain[..., 0], plain[..., 2])
    assert np.array_equal(viz.render_slice(image, labels, axis=2, index=3, alpha=0.0), plain)
    assert np.array_equal(viz.render_slice(image, labels, axis=2, index=3, overlay=False), plain)


def test_modality_is_chosen_by_name_or_channel():
    image, _ = _phantom()
    window = (0, 400)
    for channel, name in enumerate(MODALITIES):
        by_name = viz.render_slice(image, axis=2, index=3, modality=name, window=window)
        assert by_name[6, 6, 0] == round((channel + 1) * 100 / 400 * 255)
        assert np.array_equal(by_name, viz.render_slice(image, axis=2, index=3, modality=channel,
                                                        window=window))


def test_window_uses_brain_percentiles_and_ignores_the_zero_background():
    volume = np.zeros((10, 10, 10), dtype=np.float32)
    volume.flat[:200] = np.arange(1, 201)
    # linear interpolation between order statistics: 1 + 0.005 * 199 and 1 + 0.995 * 199
    assert viz.intensity_window(volume) == pytest.approx((1.995, 199.005))
    assert viz.intensity_window(np.zeros((3, 3, 3))) == (0.0, 1.0)


def test_default_slice_is_the_one_with_most_tumour():
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[0, 0, 2] = 1
    labels[1:4, 2, 4] = 2
    assert viz.slice_with_most_tumour(labels, "axial") == 4
    assert viz.slice_with_most_tumour(labels, "coronal") == 2
    assert viz.slice_with_most_tumour(np.zeros(SHAPE, np.uint8), 0) == SHAPE[0] // 2
    image = _one_voxel_image((0, 0, 0))
    assert np.array_equal(viz.render_slice(image, labels, axis=2),
                          viz.render_slice(image, labels, axis=2, index=4))


def test_training_labels_and_wrong_shapes_are_refused():
    image, labels = _phantom()
    with pytest.raises(ValueError, match=r"\[3\].*to_file_labels"):
        viz.render_slice(image, np.where(labels == 4, 3, labels), axis=2, index=3)
    with pytest.raises(ValueError, match="shape"):
        viz.render_slice(image, labels[:-1], axis=2, index=3)
    with pytest.raises(ValueError, match="axis"):
        viz.render_slice(image, labels, axis="transverse", index=3)
    with pytest.raises(IndexError):
        viz.render_slice(image, labels, axis=2, index=8)


# --- viewer ----------------------------------------------------------------------------


def _decoded(png: bytes) -> np.ndarray:
    return np.round(mpimg.imread(io.BytesIO(png), format="png")[..., :3] * 255).astype(np.uint8)


def test_viewer_shows_exactly_what_render_slice_draws_and_follows_its_controls():
    image, labels = _phantom()
    prediction = np.where(labels == 4, 1, labels).astype(np.uint8)
    viewer = viz.SliceViewer(image, labels, prediction, display_size=24)
    assert len(viewer.views) == 2
    assert viewer.index.value == viz.slice_with_most_tumour(labels, 2)

    viewer.modality.value = "t1ce"
    viewer.alpha.value = 1.0
    viewer.index.value = 4
    expected = viz.render_slice(image, prediction, axis=2, index=4, modality="t1ce", alpha=1.0,
                                window=viz.intensity_window(image[2]))
    shown = _decoded(viewer.views[1].value)
    assert np.array_equal(shown, expected.repeat(2, axis=0).repeat(2, axis=1))  # 24 px / 12 px = x2

    viewer.axis.value = "sagittal"
    assert viewer.index.max == image.shape[1] - 1
    assert viewer.index.value == viz.slice_with_most_tumour(labels, 0)
    assert _decoded(viewer.views[0].value).shape[:2] == (2 * 8, 2 * 10)  # [z, y] enlarged x2

    viewer.overlay.value = False
    assert np.array_equal(viewer.panels()[0][1], viewer.panels()[1][1])  # both plain now
    assert isinstance(viewer.figure(), Figure)


def test_viewer_without_labels_disables_the_overlay_controls():
    image, _ = _phantom()
    viewer = viz.SliceViewer(image)
    assert viewer.overlay.disabled and viewer.alpha.disabled and len(viewer.views) == 1


def test_static_fallback_returns_a_figure_with_one_panel_per_label_map():
    image, labels = _phantom()
    fig = viz.show_viewer(image, labels, labels, static=True, axis="coronal")
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["ground truth", "prediction"]
    # outside a Jupyter kernel (here) the automatic choice is the static figure too
    assert isinstance(viz.show_viewer(image, labels), Figure)


# --- figures and saving ----------------------------------------------------------------


def test_write_figure_writes_where_it_is_told_atomically_and_as_png_by_default(tmp_path):
    target = tmp_path / "figures" / "nested"
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = viz.write_figure(fig, target / "02_example")
    assert path == target / "02_example.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in target.iterdir()) == ["02_example.png"]  # no temporary file left
    assert viz.write_figure(fig, target / "02_example.svg").read_text().lstrip().startswith("<?xml")


def test_plot_modalities_shows_four_modalities_and_an_overlay_row_with_a_named_legend():
    image, labels = _phantom()
    fig = viz.plot_modalities(image, labels)
    assert len(fig.axes) == 8
    assert fig.axes[0].get_title().startswith("FLAIR") and fig.axes[2].get_title().startswith("T1ce")
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == ["1: NCR/NET", "2: ED", "4: ET"]
    assert len(viz.plot_modalities(image).axes) == 4


def test_plot_label_overlay_and_regions_count_what_they_show():
    image, labels = _phantom()
    assert len(viz.plot_label_overlay(image, labels, slice_index=3).axes) == 2
    assert len(viz.plot_label_overlay(image, labels, prediction=labels).axes) == 3
    fig = viz.plot_regions(image, labels, slice_index=3)
    plane = labels[:, :, 3]
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles == [f"WT: {np.isin(plane, (1, 2, 4)).sum()} voxels",
                      f"TC: {np.isin(plane, (1, 4)).sum()} voxels", f"ET: {(plane == 4).sum()} voxels"]


def test_histograms_of_integer_intensities_have_no_binning_comb():
    """Integers 1..300 equally often: with whole-number bins every bar has the same height."""
    image = np.zeros((4, 30, 30, 30), dtype=np.float32)
    image[:, :10, :30, :30] = (np.arange(9000) % 300 + 1).reshape(10, 30, 30)
    fig = viz.plot_intensity_histograms(image, bins=100)
    heights = fig.axes[0].patches[0].get_xy()[:, 1]
    assert np.allclose(heights[heights > 0], 1 / 300)


def test_histogram_axes_stop_at_the_999th_percentile_so_hot_voxels_do_not_squeeze_the_curves():
    rng = np.random.default_rng(0)
    image = np.zeros((4, 20, 20, 25), dtype=np.float32)
    image[:, :, :, :] = rng.normal(100.0, 10.0, size=image.shape)
    image[:, 0, 0, :3] = 1e5  # three hot voxels per modality: 0.03 % of the brain
    ax = viz.plot_intensity_histograms(image).axes[0]
    high = np.percentile(image[0], 99.9)
    assert ax.get_xlim()[1] == pytest.approx(high, rel=1e-6) and high < 200  # not 1e5
    everything = viz.plot_intensity_histograms(image, clip_percentile=100).axes[0]
    assert everything.get_xlim()[1] == pytest.approx(1e5)


def test_histograms_use_the_mask_and_overlay_several_images():
    image = np.zeros((4, 4, 4, 4), dtype=np.float32)
    image[:, :2] = 5.0
    image[:, 2:] = 50.0
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[:2] = True
    xs = viz.plot_intensity_histograms(image, mask).axes[0].patches[0].get_xy()[:, 0]
    assert xs.min() == pytest.approx(4.5) and xs.max() == pytest.approx(5.5)  # only the 5s
    fig = viz.plot_intensity_histograms({"case a": image, "case b": 2 * image})
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["case a", "case b"]
    with pytest.raises(ValueError, match="mask"):
        viz.plot_intensity_histograms({"a": image, "b": image}, mask)


@pytest.mark.parametrize("preset", ["l4_f16_as_run", "l4_f16", "paper"])
def test_upsampling_arrows_start_at_the_block_that_feeds_them(preset):
    """As run, upconv2 reads enc3 (the deepest wired level), not the unwired dec3 below it."""
    from matplotlib.text import Annotation

    from brats_utils.model import build_model

    model = build_model(preset)
    fig = viz.plot_architecture(model, (1, 4, 16, 16, 16))
    texts = fig.axes[0].texts
    centres = {t.get_text(): t.get_position() for t in texts if t.get_fontweight() == "bold"}
    wired = model.config["wired_levels"]
    deepest = model.encoder_name(wired)
    for level in range(1, wired):
        label = next(i for i, t in enumerate(texts) if t.get_text() == f"upconv{level} ×2")
        arrow = texts[label - 1]
        assert isinstance(arrow, Annotation)
        source = deepest if level == wired - 1 else f"dec{level + 1}"
        assert arrow.xyann[0] == pytest.approx(centres[source][0] + 0.2), (level, source)
    plt.close(fig)
