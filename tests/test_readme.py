"""The README a newcomer reads in five minutes, and the pages its detail moved to: size, the two
commands first, links that resolve (files and headings), numbers that agree with their one source."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The pages that took over the README's detail, and the README itself: their links are checked.
PAGES = [README, *(ROOT / "docs" / name for name in ("benchmarks.md", "results.md", "running.md",
                                                     "own-scans.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|^\[[^\]]+\]:\s*(\S+)", re.M)


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)


def _github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # '#' in code is no heading
    return {_github_anchor(match) for match in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_is_at_most_12_kb():
    assert len(README.read_bytes()) <= 12 * 1024


def test_the_two_commands_and_their_times_come_first():
    text = README.read_text()
    first_block = _code_blocks(text)[0]
    assert text.index(first_block) < text.index("## The series")
    for command in ("make demo", "make test"):
        line = next(line for line in first_block.splitlines() if line.startswith(command))
        assert re.search(r"about \d+ min", line), line


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_reaches_a_file_and_heading(page):
    text = page.read_text()
    targets = [a or b for a, b in LINK.findall(text)]
    assert targets
    for target in targets:
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        assert path.exists(), f"{page.name}: {target} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{page.name}: no heading #{anchor} in {path.name}"


def _published_outputs(name: str) -> str:
    notebook = json.loads((ROOT / "docs" / "notebooks" / name).read_text())
    outputs = [output for cell in notebook["cells"] if cell["cell_type"] == "code"
               for output in cell["outputs"]]
    return "\n".join("".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", ""))
                     for output in outputs)


def test_the_sample_output_shows_the_published_runs_numbers():
    """The README's sample of `make demo` restates no number of its own: each row is in the published run."""
    sample = next(block for block in _code_blocks(README.read_text()) if "Architecture study" in block)
    scores, study = sample.split("Architecture study")
    rows = re.findall(r"^(Dice_\w+|Hausdorff95_\w+) +([\d.]+) +([\d.]+)$", scores, re.M)
    assert len(rows) >= 4
    published = _published_outputs("06_evaluation.ipynb")
    for name, mean, median in rows:  # the notebook's table has Mean, StdDev, Median, ... columns
        assert re.search(rf"^{name} +{mean} +[\d.]+ +{median} ", published, re.M), name
    models = re.findall(r"^ *(\w+) +… +([\d.]+) +([\d.]+)$", study, re.M)
    assert {name for name, _, _ in models} == {"paper", "l4_f16"}
    training_logs = _published_outputs("07_architecture_comparison.ipynb")
    for _, paper_dice, wt in models:
        assert re.search(rf"paper Dice {paper_dice} .* WT {wt} ", training_logs), (paper_dice, wt)


def test_the_cache_speedup_is_one_number_and_is_the_benchmarks_ratio():
    """The issue found 22x and 23x both quoted; the benchmark table's patches per second decide."""
    texts = "\n".join(page.read_text() for page in PAGES)
    quoted = {*re.findall(r"(\d+)× faster patches", texts), *re.findall(r"patches/s: \*\*(\d+)×\*\*", texts)}
    cache, nifti = map(float, re.search(r"([\d.]+) vs ([\d.]+) patches/s", texts).groups())
    (speedup,) = quoted  # one number, the table's ratio rounded (34.4 / 1.6 = 21.5 -> 22)
    assert abs(int(speedup) - cache / nifti) <= 0.5 + 1e-9


def test_the_evaluate_recipe_names_the_profile_that_trained():
    commands = [line for block in _code_blocks(README.read_text()) for line in block.splitlines()
                if line.startswith("python -m brats_utils ")]
    evaluate = [line for line in commands if " evaluate " in line]
    assert evaluate and all("--profile" in line and "--split" in line for line in evaluate)
    predict = next(line for line in commands if " predict " in line)
    profiles = {re.search(r"--profile (\w+)", line).group(1) for line in (predict, *evaluate)}
    assert len(profiles) == 1


def test_the_voxel_classifier_numbers_are_those_notebook_06_printed():
    """The skeptic's baseline beside the U-Net: the README quotes the published run, never its own numbers."""
    quoted = re.search(r"voxel classifier.*?scores WT / TC / ET ([\d.]+) / ([\d.]+) / ([\d.]+)",
                       README.read_text(), re.S)
    assert quoted, "the README quotes the voxel classifier's WT / TC / ET"
    published = _published_outputs("06_evaluation.ipynb")
    for region, value in zip(("WT", "TC", "ET"), quoted.groups(), strict=True):
        assert re.search(rf"^Dice_{region} +[\d.]+ +{re.escape(value)} ", published, re.M), region
