"""The main job's notebook runner, on throwaway notebooks (the real series runs under nbval)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from brats_utils import demo


def _write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nbformat.write(nb, path)
    return path


def test_executes_in_the_notebook_folder_with_the_profile_and_keeps_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATS_PROFILE", "ci")
    nb = _write_notebook(tmp_path / "01_x.ipynb",
                         "import os, pathlib\n"
                         "pathlib.Path('ran.txt').write_text(os.environ['BRATS_PROFILE'])",
                         "print(6 * 7)")
    out = tmp_path / "executed"
    demo.execute_notebook(nb, out)
    assert (tmp_path / "ran.txt").read_text() == "ci"
    executed = nbformat.read(out / "01_x.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"
    assert nbformat.read(nb, as_version=4).cells[1].outputs == []  # the source stays clean


def test_executed_copy_keeps_figures_even_under_a_headless_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = _write_notebook(tmp_path / "01_plot.ipynb",
                         "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    demo.execute_notebook(nb, tmp_path / "executed")
    outputs = nbformat.read(tmp_path / "executed" / "01_plot.ipynb", as_version=4).cells[0].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert os.environ["MPLBACKEND"] == "Agg"  # restored for the caller


def test_a_failing_notebook_raises_and_leaves_its_executed_copy(tmp_path):
    nb = _write_notebook(tmp_path / "02_fails.ipynb", "print('before')", "1 / 0", "print('never')")
    out = tmp_path / "executed"
    with pytest.raises(CellExecutionError, match="ZeroDivisionError"):
        demo.execute_notebook(nb, out)
    executed = nbformat.read(out / "02_fails.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "before\n"
    assert executed.cells[2].outputs == []


def test_series_is_found_in_numbered_order(tmp_path):
    for name in ["02_b.ipynb", "01_a.ipynb", "_setup.ipynb", "10_z.ipynb"]:
        _write_notebook(tmp_path / name, "pass")
    assert [p.name for p in demo.series_notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "10_z.ipynb"]


def _checked(source):
    return nbformat.v4.new_code_cell(source, metadata={"tags": [demo.CHECK_TAG]})


def test_recording_keeps_text_outputs_of_checked_cells_only(tmp_path):
    nb = tmp_path / "03_rec.ipynb"
    cells = [_checked("print('kept')\n21 * 2"),
             nbformat.v4.new_code_cell("print('dropped')  # nbval-check-output in a comment is not a tag"),
             _checked("from IPython.display import HTML\nHTML('<b>x</b>')"),
             _checked("from IPython.display import display\n"
                      "display({'image/png': 'iVBORw0KGgo=', 'text/plain': '<Figure>'}, raw=True)")]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nbformat.write(notebook, nb)
    demo.record_checked_outputs(nb)
    cells = nbformat.read(nb, as_version=4).cells
    assert "widgets" not in nbformat.read(nb, as_version=4).metadata
    assert [o.get("text") for o in cells[0].outputs] == ["kept\n", None]
    assert cells[0].outputs[1]["data"] == {"text/plain": "42"}
    assert cells[1].outputs == []
    assert [o["data"] for o in cells[3].outputs] == [{"text/plain": "<Figure>"}]
    assert sorted(cells[2].outputs[0]["data"]) == ["text/html", "text/plain"]
    assert cells[0].execution_count == 1 and cells[2].execution_count == 3  # nbval needs them
    assert cells[1].execution_count is None
    nbformat.validate(nbformat.read(nb, as_version=4))


def _png(width, height, seed=0):
    import base64
    import io

    import numpy as np
    from PIL import Image

    # random pixels do not compress: the PNG's size is known in advance
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_publishing_downscales_figures_and_keeps_the_copy_under_its_budget(tmp_path):
    import base64
    import io

    from PIL import Image

    figures = [nbformat.v4.new_output("display_data",
                                      {"image/png": _png(1200, 300, seed), "text/plain": "<Figure>"})
               for seed in range(3)]
    from brats_utils.config import repo_root

    printed = f"42 in {repo_root() / 'data'}\n"
    cells = [nbformat.v4.new_code_cell("print(42)", outputs=[nbformat.v4.new_output("stream", text=printed)]),
             *(nbformat.v4.new_code_cell("plt.show()", outputs=[figure]) for figure in figures),
             nbformat.v4.new_code_cell("small", outputs=[nbformat.v4.new_output(
                 "display_data", {"image/png": _png(100, 50), "text/plain": "<Figure>"})])]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    executed = tmp_path / "executed" / "05_x.ipynb"
    executed.parent.mkdir()
    nbformat.write(notebook, executed)

    roomy = demo.publish_notebook(executed, tmp_path / "roomy", image_width=600)
    copy = nbformat.read(roomy, as_version=4)
    assert "widgets" not in copy.metadata
    assert copy.cells[0].outputs[0]["text"] == f"42 in {Path('<repo>') / 'data'}\n"  # no one's home folder
    widths = [Image.open(io.BytesIO(base64.b64decode(c.outputs[0]["data"]["image/png"]))).width
              for c in copy.cells[1:]]
    assert widths == [600, 600, 600, 100]  # wide figures downscaled, the small one untouched

    one_figure = len(copy.cells[1].outputs[0]["data"]["image/png"])
    budget = roomy.stat().st_size - one_figure // 2  # room for all but one of the large figures
    tight = demo.publish_notebook(executed, tmp_path / "tight", budget_bytes=budget, image_width=600)
    assert tight.stat().st_size <= budget
    kept = [c.outputs[0]["data"] for c in nbformat.read(tight, as_version=4).cells[1:]]
    assert sum("image/png" in data for data in kept) == 3  # only one figure had to go
    assert any("left out of this copy" in data.get("text/plain", "") for data in kept)
    nbformat.validate(nbformat.read(tight, as_version=4))
    assert nbformat.read(executed, as_version=4).cells[1].outputs == [figures[0]]  # the source is untouched


def test_results_summary_reads_the_evaluation_and_the_study(tmp_path, monkeypatch):
    import pandas as pd

    from brats_utils import compare, config

    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path))
    profile = config.get_profile("ci")
    assert demo.results_summary(profile) == ""  # nothing run yet
    heldout = profile.run_dir / "predictions-heldout"
    heldout.mkdir(parents=True)
    pd.DataFrame({"Dice_WT": [0.91, 0.93], "Hausdorff95_WT": [4.0, 3.0], "PaperDice": [0.8, 0.8],
                  "Sensitivity_WT": [0.9, 0.9]},
                 index=["Mean", "Median"]).to_csv(heldout / "metrics_summary.csv")
    study = compare.comparison_csv_path(profile)
    study.parent.mkdir(parents=True)
    table = pd.DataFrame({"preset": ["paper"], "built parameters": [340596], "device": ["cpu"]})
    table.to_csv(study, index=False)
    text = demo.results_summary(profile)
    assert "0.91" in text and "0.93" in text and "Hausdorff95_WT" in text and "Sensitivity" not in text
    assert "340596" in text and "device" not in text and "synthetic data" in text
