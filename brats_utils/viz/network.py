"""Tables and a diagram of the U-Net: the figures side of :mod:`brats_utils.model`.

:func:`summarize` gives the per-layer table of one model, :func:`preset_summary` one row per
preset, :func:`plot_architecture` draws the U from the model object itself. The numbers come
from :func:`brats_utils.model.trace_layers` and :func:`brats_utils.model.model_costs`, traced on
PyTorch's ``meta`` device, so even the 46M model on a full volume costs nothing; this module
only turns them into pandas tables and matplotlib figures, so that the model stays pure torch.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from brats_utils.model import (
    PAPER_PRESETS,
    PATCH_128,
    UNet3D,
    build_model,
    count_parameters,
    model_costs,
    trace_layers,
    used_parameters,
)


def summarize(model: UNet3D, input_shape: tuple[int, ...] = (1, 4, *PATCH_128)) -> pd.DataFrame:
    """Per-layer table for one input of ``input_shape``: output shape, parameters, MACs; a total row.

    Layers are traced with forward hooks on a ``meta``-device copy, so any model and any input size is
    free. ``df.attrs["costs"]`` holds :func:`model_costs` (size, MACs per voxel, GFLOPs for a 128³ patch
    and a whole volume, receptive field). Built-but-unwired levels do not appear as rows.
    """
    table = pd.DataFrame(trace_layers(model, input_shape))
    total = {"layer": "total", "block": "", "type": "", "kernel": pd.NA, "stride": pd.NA, "padding": pd.NA,
             "output shape": "",
             "parameters": table["parameters"].sum(), "MACs": table["MACs"].sum()}
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    table.attrs["costs"] = model_costs(model)
    return table


def preset_summary(presets: tuple[str, ...] = PAPER_PRESETS) -> pd.DataFrame:
    """One row per preset: architecture, parameters built and used, size, cost and receptive field."""
    rows = []
    for name in presets:
        with torch.device("meta"):  # the 46M model too: built without allocating a single weight
            model = build_model(name)
        config = model.config
        rows.append({"preset": name, "levels": config["levels"], "wired levels": config["wired_levels"],
                     "units per block": config["units_per_block"], "base filters": config["base_filters"],
                     **model_costs(model)})
    return pd.DataFrame(rows).set_index("preset")


# --- the diagram ----------------------------------------------------------------------------


_BOX_WIDTH, _BOX_HEIGHT = 1.35, 0.95


def _box(ax, x: float, y: float, title: str, lines: str, *, level: int, wired: int, levels: int) -> None:
    """One block as a rounded box, shaded by its level; dashed and grey when the level is not wired."""
    used = level <= wired
    colour = plt.cm.Blues(0.25 + 0.6 * (level - 1) / max(levels - 1, 1)) if used else "#eeeeee"
    ax.add_patch(FancyBboxPatch((x - _BOX_WIDTH / 2, y - _BOX_HEIGHT / 2), _BOX_WIDTH, _BOX_HEIGHT,
                                boxstyle="round,pad=0.02", facecolor=colour, edgecolor="#333333",
                                linestyle="-" if used else "--", linewidth=1.2))
    text_colour = "white" if used and level > (levels + 1) / 2 else "black"
    ax.text(x, y + 0.2, title, ha="center", va="center", fontsize=9, weight="bold", color=text_colour)
    ax.text(x, y - 0.15, lines, ha="center", va="center", fontsize=7.5, color=text_colour)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], colour: str, label: str = "",
           style: str = "-", used: bool = True) -> None:
    """An arrow with an optional label beside it (above a horizontal one); grey when not used."""
    props = {"arrowstyle": "-|>", "linestyle": style, "linewidth": 1.4}
    ax.annotate("", xy=end, xytext=start, arrowprops={**props, "color": colour if used else "#bbb"})
    if label:
        horizontal = start[1] == end[1]
        ax.text((start[0] + end[0]) / 2 + (0 if horizontal else 0.08), (start[1] + end[1]) / 2 +
                (0.08 if horizontal else 0), label, fontsize=7, color=colour if used else "#999999",
                ha="center" if horizontal else "left", va="bottom" if horizontal else "center")


def _draw_levels(ax, model: UNet3D, shapes: dict[str, tuple], step_x: float, step_y: float) -> float:
    """Encoder boxes down the left, decoder boxes up the right, with their arrows; returns the right edge."""
    config = model.config
    levels, wired, units = config["levels"], config["wired_levels"], config["units_per_block"]
    channels = [config["base_filters"] * 2**level for level in range(levels)]
    width, height = _BOX_WIDTH, _BOX_HEIGHT

    def spatial(name: str) -> str:
        return "×".join(map(str, shapes[name][1:])) if name in shapes else "built, not run"

    right = 2 * (levels - 1) * step_x
    for level in range(1, levels + 1):
        x_enc, y = (level - 1) * step_x, -(level - 1) * step_y
        c_in = config["in_channels"] if level == 1 else channels[level - 2]
        name = model.encoder_name(level)
        _box(ax, x_enc, y, name, f"{c_in}→{channels[level - 1]} ch, {units}× conv 3³\n{spatial(name)}",
             level=level, wired=wired, levels=levels)
        if level < levels:
            below = (level * step_x, -level * step_y)
            _arrow(ax, (x_enc + 0.2, y - height / 2), (below[0] - 0.2, below[1] + height / 2), "#c0392b",
                   "max-pool ÷2", used=level < wired)
            x_dec = right - (level - 1) * step_x
            dec_used = level < wired
            _box(ax, x_dec, y, f"dec{level}", f"{2 * channels[level - 1]}→{channels[level - 1]} ch, "
                 f"{units}× conv 3³\n{spatial(f'dec{level}')}", level=level if dec_used else levels + 1,
                 wired=wired, levels=levels)
            _arrow(ax, (x_enc + width / 2, y), (x_dec - width / 2, y), "#7f8c8d", "skip: concat", "--",
                   dec_used)
            # the upsampling input: the decoder one level down, or, at the deepest wired level of
            # an as-run model, that level's encoder (the unwired levels below it never run)
            source_x = (wired - 1) * step_x if level == wired - 1 else right - level * step_x
            _arrow(ax, (source_x + 0.2, -level * step_y + height / 2),
                   (x_dec - 0.2, y - height / 2), "#27ae60", f"upconv{level} ×2", used=dec_used)
    return right


def plot_architecture(model: UNet3D, input_shape: tuple[int, ...] = (1, 4, *PATCH_128)) -> Figure:
    """Draw ``model`` as a U: one box per block with its channels and output size, arrows for pooling,
    upsampling and skip connections. Everything is read from the model (its config and a traced forward
    pass on ``input_shape``), so the picture is right for any preset; unwired levels are drawn dashed.
    """
    config = model.config
    levels, wired, units = config["levels"], config["wired_levels"], config["units_per_block"]
    rows = trace_layers(model, input_shape)
    shapes = {row["block"]: row["output shape"] for row in rows}  # a block's last layer gives its output
    step_x, step_y, width, height = 1.5, 1.45, _BOX_WIDTH, _BOX_HEIGHT
    fig, ax = plt.subplots(figsize=(2.5 + 3.0 * (levels - 1), 1.8 + 1.45 * levels))
    right = _draw_levels(ax, model, shapes, step_x, step_y)
    ax.text(-width / 2 - 0.1, height / 2 + 0.25, f"input {config['in_channels']}×" + "×".join(
        map(str, input_shape[2:])), fontsize=8, ha="left")
    ax.text(right + width / 2 + 0.1, height / 2 + 0.25,
            f"Dropout3d({config['dropout']}) → final_conv 1³ "
            f"{config['base_filters']}→{config['num_classes']}",
            fontsize=8, ha="right")
    used = used_parameters(rows)
    built = count_parameters(model)
    title = f"UNet3D: {levels} levels, f={config['base_filters']}, {units} units/block — {built:,} parameters"
    if used != built:
        title += f" ({used:,} used: {wired} of {levels} levels wired)"
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-width, right + width)
    ax.set_ylim(-(levels - 1) * step_y - height, height + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return fig
