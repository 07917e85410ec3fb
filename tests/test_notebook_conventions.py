"""Every notebook of the series follows the same shape (nbval runs them; this checks their form)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from brats_utils.demo.solutions import SUMMARY, Solution, is_solution, parse_solution, write_runnable_copies
from brats_utils.demo.sources import GLOSSARY_URL, REPO_SLUG, REPO_URL, github_anchors

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))  # a new notebook (08, ...) is checked too
GLOSSARY = ROOT / "docs" / "glossary.md"
GLOSSARY_LINK = re.compile(r"\]\(" + re.escape(GLOSSARY_URL) + r"#([\w-]+)\)")
CHECK_TAG = "nbval-check-output"


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _parameters_index(cells: list[dict]) -> int:
    return next(i for i, c in enumerate(cells) if "parameters" in _tags(c))


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
    (install,) = [line for line in setup.splitlines() if '"pip", "install"' in line]
    assert REPO_URL in setup and "torch" not in install  # tests/test_setup_cell.py runs it


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_reads_the_profile(path):
    cell = _cells(path)[2]
    assert "parameters" in cell.get("metadata", {}).get("tags", [])
    assert "BRATS_PROFILE" in _source(cell)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_title_cell_gives_prerequisites_and_the_time_of_each_profile(path):
    title = _source(_cells(path)[0])
    assert "## Prerequisites and time" in title
    block = title.split("## Prerequisites and time", 1)[1]
    assert "Before this notebook" in block and re.search(r"Reading time:\*\* about \d+ min", block)
    for profile in ("`ci`", "`demo`", "`gpu`"):
        assert profile in block, profile
    assert "estimate" in block  # GPU times stay marked as estimates until measured


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_switch_cell_follows_the_parameters_cell_and_is_the_shared_one(path):
    """One source (notebooks/_switch_cell.md), copied in by the edit script: never edit a copy."""
    cells = _cells(path)
    switch = cells[_parameters_index(cells) + 1]
    source = (NOTEBOOK_DIR / "_switch_cell.md").read_text().strip()
    assert switch["cell_type"] == "markdown" and _source(switch).strip() == source
    for needed in ("BRATS_PROFILE", "BRATS_DATA_DIR", "Internet", "Google Drive", "gpu"):
        assert needed in source, needed


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_questionnaire_of_8_to_15_numbered_questions_before_the_exercises(path):
    cells = _cells(path)
    at = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
              and re.search(r"^## Questionnaire", _source(c), re.MULTILINE))
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", _source(cells[at]), re.MULTILINE)]
    assert 8 <= len(numbers) <= 15 and numbers == list(range(1, len(numbers) + 1)), numbers
    exercises = next(i for i, c in enumerate(cells) if "## Exercises" in _source(c))
    assert at < exercises


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_is_followed_by_its_folded_solution_that_compiles_and_ends_with_a_conclusion(path):
    """A ``<details>`` markdown cell: GitHub and nbviewer ignore ``source_hidden`` on a code cell, every
    renderer folds ``<details>``; ``make notebooks`` and the demo run its code (demo.solutions)."""
    cells = _cells(path)
    exercises = [i for i, c in enumerate(cells)
                 if c["cell_type"] == "markdown" and re.search(r"\*\*Exercise \d+\.\*\*", _source(c))]
    assert exercises, "no exercise"
    for i in exercises:
        solution = cells[i + 1]
        assert solution["cell_type"] == "markdown" and is_solution(solution), _source(cells[i])[:60]
        parsed = parse_solution(_source(solution))  # one python block, then the written conclusion
        compile(parsed.code, f"{path.name}:{solution.get('id')}", "exec")
        assert re.search(r"[A-Za-z]{3,}.*[.!?)]$", parsed.conclusion), parsed.conclusion[-80:]
    solutions = [i for i, c in enumerate(cells) if is_solution(c)]
    assert solutions == [i + 1 for i in exercises]  # one solution per exercise, nothing else tagged so
    # the old form (a code cell folded only where source_hidden is read) is gone
    assert not any(c["cell_type"] == "code" and "source_hidden" in json.dumps(c["metadata"])
                   for c in cells[2:])


def test_the_solutions_pass_the_linter_as_code_cells_do(tmp_path):
    """``ruff check .`` sees code cells only: the solutions are linted in their runnable copies."""
    copies = write_runnable_copies(NOTEBOOKS, tmp_path)
    command = [sys.executable, "-m", "ruff", "check", "--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    result = subprocess.run([*command, *map(str, copies)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_the_solution_check_rejects_a_solution_without_code_or_conclusion():
    good = (f"<details><summary>{SUMMARY}</summary>\n\n```python\nprint(1)\n```\n\n"
            "It prints one.\n\n</details>")
    assert parse_solution(good) == Solution("print(1)", "It prints one.")
    for broken in (good.replace("It prints one.", ""), good.replace("print(1)", ""),
                   good.replace("```python", "```"), good.replace("</details>", "")):
        with pytest.raises(ValueError, match="solution"):
            parse_solution(broken)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_glossary_terms_are_linked_to_anchors_that_exist(path):
    """Absolute links to the published glossary (they resolve on Colab and Kaggle too), GitHub's anchors."""
    anchors = github_anchors(GLOSSARY.read_text())
    markdown = [_source(c) for c in _cells(path) if c["cell_type"] == "markdown"]
    linked = [anchor for text in markdown for anchor in GLOSSARY_LINK.findall(text)]
    assert not [link for text in markdown for link in re.findall(r"\]\((?!https?://|#)[^)]*\)", text)
                if "docs/" in link or link.startswith("](..")]  # no relative link into the repository
    assert len(linked) >= 5, linked
    assert set(linked) <= anchors, set(linked) - anchors
    assert len(linked) == len(set(linked))  # linked where the term first appears, once


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_checked_cells_are_tagged_not_commented(path):
    """nbval's tag keeps the marker in the metadata, out of the students' sight."""
    for cell in _cells(path):
        assert "NBVAL_CHECK_OUTPUT" not in _source(cell), _source(cell)[:80]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_only_checked_cells_carry_outputs(path):
    """nbval compares saved outputs: checked cells need them, every other cell is committed clean."""
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            checked = CHECK_TAG in _tags(cell)
            assert bool(cell.get("outputs")) == checked, _source(cell)[:80]
            # nbval treats a cell without an execution count as never run and compares nothing
            assert (cell.get("execution_count") is not None) == checked, _source(cell)[:80]


#: Tag of a code cell that scores finished methods on the test cases (and chooses nothing): the only cells
#: of the studies' notebook that may read the test split. Every design choice (budget, start, threshold,
#: variant) is made on validation or out-of-fold predictions.
FINAL_SCORING_TAG = "final-scoring"
#: What reads the test split in a cell: the split's name as a string, the held-out split of a profile, or
#: the test volumes an earlier final-scoring cell loaded.
READS_TEST_SPLIT = re.compile(r"""["']test["']|heldout_split\(|\btest_volumes\b""")


def _runs(cell: dict) -> str:
    """The code a cell runs: a code cell's source, a solution's python block, nothing for other markdown."""
    if cell["cell_type"] == "code":
        return _source(cell)
    return parse_solution(_source(cell)).code if is_solution(cell) else ""


def _cells_reading_the_test_split(cells: list[dict]) -> list[tuple[str, bool]]:
    return [(cell.get("id", "?"), FINAL_SCORING_TAG in _tags(cell)) for cell in cells
            if READS_TEST_SPLIT.search(_runs(cell))]


def test_the_studies_notebook_reads_the_test_split_only_in_final_scoring_cells():
    cells = _cells(NOTEBOOK_DIR / "08_beyond_the_paper.ipynb")
    reading = _cells_reading_the_test_split(cells)
    assert reading, "the notebook scores its methods on the test cases somewhere"
    assert [cell_id for cell_id, tagged in reading if not tagged] == []
    exercise_4 = next(c for c in cells if c.get("id") == "solution-4")  # a design choice: validation
    assert 'report_split="val"' in _source(exercise_4) and FINAL_SCORING_TAG not in _tags(exercise_4)


def test_the_final_scoring_check_catches_an_untagged_cell():
    untagged = {"cell_type": "code", "metadata": {}, "source": ['split_volumes(cache, csv, split="test")\n']}
    tagged = {"cell_type": "code", "metadata": {"tags": [FINAL_SCORING_TAG]}, "id": "t",
              "source": ["report = heldout_split(profile)\n"]}
    validation = {"cell_type": "code", "metadata": {}, "source": ['split_volumes(cache, csv, "val")\n']}
    solution = {"cell_type": "markdown", "metadata": {"tags": ["solution"]}, "id": "s", "source": [
        f"<details><summary>{SUMMARY}</summary>\n\n```python\nheldout_split(profile)\n```\n\nDone.\n\n</details>"]}
    assert _cells_reading_the_test_split([untagged, tagged, validation, solution]) == [
        ("?", False), ("t", True), ("s", False)]


# --- issue 23: further research, references, computed answers, from-scratch cells -------------------

#: The works every notebook's reference list links (arXiv or DOI), as the issue names them.
REQUIRED_REFERENCES = {
    "U-Net": "arxiv.org/abs/1505.04597", "3D U-Net": "arxiv.org/abs/1606.06650",
    "nnU-Net's BraTS 2020 entry": "arxiv.org/abs/2011.00848", "Oktay et al.": "arxiv.org/abs/1804.03999",
    "Lin et al.": "arxiv.org/abs/1708.02002", "Menze et al.": "doi.org/10.1109/TMI.2014.2377694",
    "Bakas et al.": "doi.org/10.1038/sdata.2017.117",
}


def _cell(path: Path, cell_id: str) -> dict:
    return next(c for c in _cells(path) if c.get("id") == cell_id)


def _notebook(prefix: str) -> Path:
    return next(p for p in NOTEBOOKS if p.name.startswith(prefix))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_further_research_of_3_to_5_projects_and_a_linked_reference_list_end_the_notebook(path):
    cells = _cells(path)
    at = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
              and re.search(r"^## Further research", _source(c), re.MULTILINE))
    text = _source(cells[at])
    projects = text.split("## Further research", 1)[1].split("## References", 1)[0]
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", projects, re.MULTILINE)]
    assert 3 <= len(numbers) <= 5 and numbers == list(range(1, len(numbers) + 1)), numbers
    references = text.split("## References", 1)[1]
    for work, link in REQUIRED_REFERENCES.items():
        assert f"(https://{link})" in references, work
    exercises = max(i for i, c in enumerate(cells) if "solution" in _tags(c))
    assert at > exercises  # after the exercises, as fastbook's chapters end


@pytest.mark.parametrize(("prefix", "cell_id", "needed"), [
    ("03", "split-sizes-03", "assert"),  # 295 / 74 and the authors' 294 / 74 computed, not typed
    ("04", "background-share-04", "background_share"),  # notebook 01's share, computed here
    ("05", "loss-rises-05", "assert"),  # how much CE and Dice rise when ET is missed
    ("05", "schedule-replay-05", "assert_allclose"),  # the replayed schedule is the run's own
    ("06", "paper-per-label-06", "assert"),  # the per-label figures are not the 0.7913 epoch
    ("06", "checkerboard-06-code", "by_parity"),  # the transposed convolution's checkerboard measured
    ("06", "solution-3", "assert"),  # HD95 of a 3-voxel shift: at most 3, printed
    ("02", "solution-1", "assert"),  # the asked-for slice exists in the case shown
    ("02", "solution-3", "found_share"),  # how much oedema the threshold finds, printed
])
def test_claims_that_depend_on_a_number_are_computed_or_asserted_in_their_cell(prefix, cell_id, needed):
    cell = _cell(_notebook(prefix), cell_id)
    assert needed in _runs(cell)  # a code cell or a solution's python block, never the prose


@pytest.mark.parametrize(("cell_id", "package_call"), [
    ("scratch-08-regions-code", "regions_to_labels(random_probs)"),
    ("scratch-08-gate-code", "gate(skip, gating)"),
    ("scratch-08-ensemble-code", "average_predictors("),
])
def test_notebook_08_builds_regions_gates_and_ensembles_from_scratch_and_asserts_them(cell_id, package_call):
    source = _source(_cell(_notebook("08"), cell_id))
    assert "by_hand" in source and package_call in source
    assert re.search(r"assert_(close|array_equal)\(", source)


def test_written_conclusions_of_07_and_08_name_what_can_reverse_them():
    conclusion_07 = _source(_cell(_notebook("07"), "00852967"))
    assert "Exercise 4" in conclusion_07 and "reverses" in conclusion_07
    assert "REVERSES" in _source(_cell(_notebook("07"), "solution-4"))
    assert "exercise 4" in _source(_cell(_notebook("08"), "be795e2a"))
    assert "beats both" in _source(_cell(_notebook("08"), "bdb8a7a8"))  # exercise 3 answered by code


def test_published_copies_readme_lists_what_the_folder_holds():
    readme = (ROOT / "docs" / "notebooks" / "README.md").read_text()
    assert "Published so far: 01–04" not in readme


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_questionnaire_answers_follow_the_exercises_collapsed_one_per_question(path):
    cells = _cells(path)
    questions = next(_source(c) for c in cells if re.search(r"^## Questionnaire", _source(c), re.MULTILINE))
    at, answers = next((i, _source(c)) for i, c in enumerate(cells)
                       if re.search(r"^## Answers to the questionnaire", _source(c), re.MULTILINE))
    asked = re.findall(r"^(\d+)\. ", questions, re.MULTILINE)
    assert re.findall(r"^(\d+)\. ", answers, re.MULTILINE) == asked
    assert all(tag in answers for tag in ("<details>", "<summary>", "</details>"))  # collapsed everywhere
    assert at > max(i for i, c in enumerate(cells) if "solution" in _tags(c))
