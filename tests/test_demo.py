"""The main job's notebook runner, on throwaway notebooks (the real series runs under nbval)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from brats_utils import demo
from brats_utils.demo import sources


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


# --- where a demo run writes, and what publishing refreshes -----------------------------------------


def _fake_series(tmp_path, monkeypatch, names=("01_a.ipynb", "02_b.ipynb")):
    """Stand-ins for the notebooks and the kernel: each "run" saves one figure where the kernel is told."""
    import time

    seen = {}

    def execute(path):
        figures = Path(os.environ["BRATS_FIGURES_DIR"])
        figures.mkdir(parents=True, exist_ok=True)
        (figures / f"{path.stem}.png").write_bytes(b"png of " + path.stem.encode())
        demo.executed_dir().mkdir(parents=True, exist_ok=True)
        _write_notebook(demo.executed_dir() / path.name, f"print({path.stem!r})")
        seen[path.name] = os.environ["BRATS_FIGURES_DIR"]
        time.sleep(0.01)
        return 1.5

    notebooks = [tmp_path / "notebooks" / name for name in names]
    monkeypatch.setattr(demo, "execute_notebook", execute)
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BRATS_FIGURES_DIR", raising=False)
    monkeypatch.delenv("BRATS_SET", raising=False)
    repo = tmp_path / "repo"
    tracked = {"figures": repo / "figures", "notebooks": repo / "docs" / "notebooks"}
    monkeypatch.setattr(demo, "published_figures_dir", lambda: tracked["figures"])
    monkeypatch.setattr(demo, "published_dir", lambda: tracked["notebooks"])
    return notebooks, seen, tracked


def test_a_demo_run_writes_only_under_data_demo(tmp_path, monkeypatch):
    notebooks, seen, tracked = _fake_series(tmp_path, monkeypatch)
    recorded = []
    monkeypatch.setattr(demo, "record_notebook_times", lambda *a, **k: recorded.append(a))
    demo.run_series("ci", notebooks=notebooks)
    demo_dir = tmp_path / "data" / "demo"
    assert set(seen.values()) == {str(demo_dir / "figures")}
    assert sorted(p.name for p in (demo_dir / "figures").iterdir()) == ["01_a.png", "02_b.png"]
    assert sorted(p.name for p in (demo_dir / "notebooks").iterdir()) == ["01_a.ipynb", "02_b.ipynb"]
    assert not tracked["figures"].exists() and not tracked["notebooks"].exists() and recorded == []


def test_publishing_the_demo_refreshes_the_tracked_copies_and_the_times(tmp_path, monkeypatch):
    notebooks, _, tracked = _fake_series(tmp_path, monkeypatch)
    tracked["figures"].mkdir(parents=True)
    (tracked["figures"] / "08_other.png").write_bytes(b"kept")  # a figure the demo does not make
    recorded, synced = [], []
    monkeypatch.setattr(demo, "record_notebook_times",
                        lambda name, seconds: recorded.append((name, seconds)) or tmp_path / "times.json")
    monkeypatch.setattr(demo, "sync_notebook_sources", lambda: synced.append(True) or [])
    demo.run_series("demo", notebooks=notebooks, publish=True)
    assert recorded == [("demo", {"01_a.ipynb": 1.5, "02_b.ipynb": 1.5})] and synced == [True]
    assert (tracked["figures"] / "01_a.png").read_bytes() == b"png of 01_a"
    assert (tracked["figures"] / "08_other.png").read_bytes() == b"kept"
    assert sorted(p.name for p in tracked["notebooks"].iterdir()) == ["01_a.ipynb", "02_b.ipynb"]


def test_publishing_the_ci_run_records_its_times_only(tmp_path, monkeypatch):
    notebooks, _, tracked = _fake_series(tmp_path, monkeypatch)
    recorded = []
    monkeypatch.setattr(demo, "record_notebook_times", lambda name, _: recorded.append(name) or tmp_path)
    monkeypatch.setattr(demo, "sync_notebook_sources", lambda: [])
    demo.run_series("ci", notebooks=notebooks, publish=True)
    assert recorded == ["ci"] and not tracked["figures"].exists() and not tracked["notebooks"].exists()


@pytest.mark.parametrize("profile, overrides", [("paper", ()), ("demo", ("epochs=3",))])
def test_publishing_another_run_is_refused_before_anything_runs(profile, overrides, tmp_path, monkeypatch):
    from brats_utils.errors import BratsError

    notebooks, seen, _ = _fake_series(tmp_path, monkeypatch)
    with pytest.raises(BratsError, match="publishing a run"):
        demo.run_series(profile, overrides=overrides, notebooks=notebooks, publish=True)
    assert seen == {}


def test_without_the_notebook_tools_the_package_works_and_the_demo_says_what_to_install(tmp_path):
    import subprocess
    import sys

    from brats_utils.config import repo_root

    script = ("import sys\nsys.modules['nbformat'] = sys.modules['nbclient'] = None  # not installed\n"
              "import brats_utils.demo, brats_utils.pipeline\nfrom brats_utils import cli\n"
              "sys.exit(cli.main(['demo', '--profile', 'ci']))\n")
    env = {**os.environ, "PYTHONPATH": str(repo_root()), "BRATS_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()  # one line, no traceback
    assert "needs nbclient" in line and 'pip install -e ".[demo]"' in line
    assert not (tmp_path / "demo").exists()


# --- the parts of the notebooks and the README written from one source -------------------------------


def test_every_generated_part_agrees_with_its_source():
    """Setup cell, glossary links, header times and the README's table: nothing left for the sync to do."""
    assert sources.sync_notebook_sources(check=True) == []


def test_headers_and_readme_state_the_times_of_the_times_file():
    """Read back independently: every measured time, formatted, is in its notebook's line and README row."""
    from brats_utils.config import repo_root

    times = sources.load_times()["profiles"]
    readme = (repo_root() / "README.md").read_text()
    block = readme.split(sources.README_TIMES_START)[1].split(sources.README_TIMES_END)[0]
    for path in sources.series_notebooks():
        header = "".join(json.loads(path.read_text())["cells"][0]["source"])
        row = next(line for line in block.splitlines() if f"(notebooks/{path.name})" in line)
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        for (name, profile), cell in zip(times.items(), cells, strict=True):
            value = profile["notebooks"][path.name]
            line = next(line for line in header.splitlines() if line.startswith(f"  - {profile['label']}:"))
            expected = value if isinstance(value, str) else (f"{value:.0f} s" if value < 100
                                                             else f"{value / 60:.1f} min")
            assert line.split(": ", 1)[1].startswith(expected), (path.name, name, line)
            assert cell == expected, (path.name, name, cell)


def test_times_read_as_the_headers_write_them():
    assert [sources.format_time(v) for v in (9, 99.4, 114, 393, "about 1 min")] == \
        ["9 s", "99 s", "1.9 min", "6.5 min", "about 1 min"]


def test_recording_times_replaces_only_what_the_run_measured(tmp_path, monkeypatch):
    from brats_utils.config import repo_root

    copy = tmp_path / "notebook_times.json"
    copy.write_text((repo_root() / "docs" / "notebook_times.json").read_text())
    monkeypatch.setattr(sources, "times_path", lambda: copy)
    before = sources.load_times()["profiles"]
    sources.record_notebook_times("demo", {"02_visualize_modalities.ipynb": 12.34})
    after = sources.load_times()["profiles"]
    assert after["demo"]["notebooks"]["02_visualize_modalities.ipynb"] == 12.3
    assert "--profile demo --publish" in after["demo"]["measured"]
    untouched = {k: v for k, v in after["demo"]["notebooks"].items() if k != "02_visualize_modalities.ipynb"}
    assert untouched == {k: v for k, v in before["demo"]["notebooks"].items()
                         if k != "02_visualize_modalities.ipynb"}
    assert after["ci"] == before["ci"] and after["gpu"] == before["gpu"]


def test_relative_glossary_links_become_absolute_and_others_stay():
    text = ("a [Dice](../docs/glossary.md#dice), the [glossary](../docs/glossary.md), "
            "[README](../README.md), [web](https://example.org/docs/glossary.md#x)")
    assert sources.absolute_glossary_links(text) == (
        f"a [Dice]({sources.GLOSSARY_URL}#dice), the [glossary]({sources.GLOSSARY_URL}), "
        "[README](../README.md), [web](https://example.org/docs/glossary.md#x)")
    assert sources.GLOSSARY_URL == "https://github.com/brats-teaching/brats3d-unet/blob/main/docs/glossary.md"


def test_anchors_follow_githubs_rules():
    """GitHub: lower case, punctuation dropped (not - and _), spaces to hyphens, -1 for a repeat."""
    markdown = ("# Glossary\n## Prerequisites and time\n### What's new? (2024)\n## Dice & HD95\n"
                "## Setup\n## Setup\n<a id=\"wt\"></a>**WT** and <a name=\"et-x\"></a>\n")
    assert sources.github_anchors(markdown) == {"glossary", "prerequisites-and-time", "whats-new-2024",
                                                "dice--hd95", "setup", "setup-1", "wt", "et-x"}


def test_every_glossary_link_of_every_notebook_and_published_copy_resolves_outside_the_repository():
    from brats_utils.config import repo_root

    anchors = sources.github_anchors((repo_root() / "docs" / "glossary.md").read_text())
    notebooks = [*sources.series_notebooks(), *sources.series_notebooks(repo_root() / "docs" / "notebooks")]
    assert len(notebooks) == 16
    linked = 0
    for path in notebooks:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            text = "".join(cell["source"])
            assert "](../" not in text and "](docs/" not in text, (path, text[:80])
            for anchor in re.findall(re.escape(sources.GLOSSARY_URL) + r"#([\w-]+)\)", text):
                assert anchor in anchors, (path.name, anchor)
                linked += 1
    assert linked >= 200  # 236 when written: 118 with an anchor in the notebooks, as many in the copies


# --- exercise solutions: <details> cells in the sources, run in place, folded again when published ----


def _solution(code, conclusion="So it is.", cell_id="solution-1"):
    from brats_utils.demo.solutions import Solution, solution_markdown

    cell = nbformat.v4.new_markdown_cell(solution_markdown(Solution(code, conclusion)),
                                         metadata={"tags": ["solution"]})
    cell.id = cell_id
    return cell


def test_a_solution_runs_right_after_the_cells_it_follows_and_a_failing_one_fails_the_run(tmp_path):
    cells = [nbformat.v4.new_code_cell("x = 6"), nbformat.v4.new_markdown_cell("**Exercise 1.** x?"),
             _solution("print(x * 7)"), nbformat.v4.new_code_cell("x = 0")]
    nb = tmp_path / "01_sol.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), nb)
    demo.execute_notebook(nb, tmp_path / "executed")
    ran = nbformat.read(tmp_path / "executed" / nb.name, as_version=4).cells[2]
    assert ran.cell_type == "code" and ran.id == "solution-1" and ran.outputs[0]["text"] == "42\n"

    cells[2] = _solution("assert x == 7, 'wrong answer'")
    nbformat.write(nbformat.v4.new_notebook(cells=cells), nb)
    with pytest.raises(CellExecutionError, match="wrong answer"):
        demo.execute_notebook(nb, tmp_path / "executed")


def test_published_solutions_are_folded_with_their_output_after_the_code(tmp_path):
    cells = [nbformat.v4.new_markdown_cell("**Exercise 1.** Print and plot."),
             _solution("print('the answer is 42')\nimport matplotlib.pyplot as plt\n"
                       "plt.plot([1, 2])\nplt.show()", "Forty-two, and a line.")]
    nb = tmp_path / "02_pub.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), nb)
    demo.execute_notebook(nb, tmp_path / "executed")
    published = demo.publish_notebook(tmp_path / "executed" / nb.name, tmp_path / "docs")
    copy = nbformat.read(published, as_version=4)
    folded = copy.cells[1]
    assert folded.cell_type == "markdown" and folded.id == "solution-1"
    assert folded.metadata["tags"] == ["solution"]
    text = folded.source
    assert text.startswith("<details><summary>Solution (click to expand)</summary>")
    assert text.endswith("</details>")
    code, output, conclusion = (text.index("print('the answer"), text.index("the answer is 42\n```"),
                                text.index("Forty-two, and a line."))
    assert code < output < conclusion  # the code, what it printed, then the written conclusion
    (name,) = folded.attachments
    assert f"(attachment:{name})" in text and "image/png" in folded.attachments[name]
    assert "<Figure" not in text  # the figure is shown, not its text stand-in
    nbformat.validate(copy)


def test_recording_runs_the_solutions_and_keeps_them_folded(tmp_path):
    cells = [nbformat.v4.new_code_cell("x = 1"), _solution("x = 41"), _checked("print(x + 1)")]
    nb = tmp_path / "03_rec.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), nb)
    demo.record_checked_outputs(nb)
    recorded = nbformat.read(nb, as_version=4).cells
    assert recorded[1].cell_type == "markdown" and recorded[1].source == cells[1].source
    assert recorded[2].outputs[0]["text"] == "42\n"  # the solution ran first, as under nbval


def test_runnable_copies_turn_each_solution_into_a_code_cell_in_place(tmp_path):
    from brats_utils.demo.solutions import write_runnable_copies

    cells = [nbformat.v4.new_markdown_cell("**Exercise 1.**"), _solution("y = 2", cell_id="s1"),
             nbformat.v4.new_markdown_cell("<details><summary>Answers</summary>\n\n1. Yes.\n\n</details>")]
    nb = tmp_path / "04_copy.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), nb)
    (copy,) = write_runnable_copies([nb], tmp_path / "runnable")
    ran = nbformat.read(copy, as_version=4).cells
    assert [c.cell_type for c in ran] == ["markdown", "code", "markdown"]
    assert ran[1].source == "y = 2" and ran[1].id == "s1" and ran[1].metadata["tags"] == ["solution"]
    assert ran[2].source == cells[2].source  # a questionnaire's answers are prose, never run


def test_publishing_a_part_of_the_series_refreshes_its_copy_and_leaves_the_times(tmp_path, monkeypatch):
    """`demo --only 08 --publish`: notebook 08 after its study; the series' times stay make publish's."""
    notebooks, _, tracked = _fake_series(tmp_path, monkeypatch)
    recorded, synced = [], []
    monkeypatch.setattr(demo, "record_notebook_times", lambda *a: recorded.append(a) or tmp_path)
    monkeypatch.setattr(demo, "sync_notebook_sources", lambda: synced.append(True) or [])
    demo.run_series("demo", notebooks=notebooks[:1], publish=True, record_times=False)
    demo.run_series("demo", notebooks=notebooks[1:], publish=True, record_times=False)
    assert recorded == [] and synced == []
    assert sorted(p.name for p in tracked["notebooks"].iterdir()) == ["01_a.ipynb", "02_b.ipynb"]
    (tracked["figures"] / "01_a.png").write_bytes(b"as published")
    demo.run_series("demo", notebooks=notebooks[1:], publish=True, record_times=False)
    assert (tracked["figures"] / "02_b.png").read_bytes() == b"png of 02_b"
    assert (tracked["figures"] / "01_a.png").read_bytes() == b"as published"  # only the figures of 02
