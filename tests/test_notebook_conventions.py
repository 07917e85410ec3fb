"""Every notebook of the series follows the same shape (nbval runs them; this checks their form)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brats_utils.config import REPO_SLUG, REPO_URL

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def test_the_series_is_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_title_cell_has_badges_for_this_notebook_and_learning_goals(path):
    title = _source(_cells(path)[0])
    colab = f"https://colab.research.google.com/github/{REPO_SLUG}/blob/main/notebooks/{path.name}"
    kaggle = f"https://kaggle.com/kernels/welcome?src=https://github.com/{REPO_SLUG}/blob/main/notebooks/{path.name}"
    assert colab in title and kaggle in title
    assert "learn" in title.lower()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_is_the_shared_one_and_never_installs_torch(path):
    setup = (NOTEBOOK_DIR / "_setup_cell.py").read_text().strip()
    assert _source(_cells(path)[1]).strip() == setup
    assert REPO_URL in setup and "torch" not in setup.split("pip")[1].split("\n")[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_reads_the_profile(path):
    cell = _cells(path)[2]
    assert "parameters" in cell.get("metadata", {}).get("tags", [])
    assert "BRATS_PROFILE" in _source(cell)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_ends_with_exercises_and_tucked_away_solutions(path):
    tail = "\n".join(_source(c) for c in _cells(path)[-3:])
    assert "Exercise" in tail and "<details>" in tail


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_only_checked_cells_carry_outputs(path):
    """nbval compares saved outputs: checked cells need them, every other cell is committed clean."""
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            checked = "# NBVAL_CHECK_OUTPUT" in _source(cell)
            assert bool(cell.get("outputs")) == checked, _source(cell)[:80]
            # nbval treats a cell without an execution count as never run and compares nothing
            assert (cell.get("execution_count") is not None) == checked, _source(cell)[:80]
