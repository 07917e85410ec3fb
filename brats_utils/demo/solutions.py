"""Exercise solutions: collapsed ``<details>`` cells in the notebooks, code cells when they run.

Each exercise of the series is followed by one markdown cell tagged ``solution``, written as::

    <details><summary>Solution (click to expand)</summary>

    ```python
    the solution's code
    ```

    Its written conclusion.

    </details>

A ``<details>`` element is folded wherever the markdown's HTML is rendered: nbviewer (nbconvert renders
the code block, output and figure inside it), GitHub (its sanitiser keeps ``details`` and ``summary``),
JupyterLab and Colab; a code cell marked ``jupyter.source_hidden`` is folded only in JupyterLab (Colab
needs a form cell), and GitHub and nbviewer would show the answer in full. The blank lines around the
code block matter: without them a CommonMark renderer reads the fence as part of the HTML. The code
still runs wherever the notebooks are tested or executed: :func:`runnable` turns each solution into a
code cell in place (same id, same tags), which ``make notebooks`` runs under nbval
(:func:`write_runnable_copies`) and the demo runner executes; :func:`collapse_solutions` turns an
executed solution back into its ``<details>`` cell with the printed output inside, after the code.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from brats_utils.files import atomic_path

if TYPE_CHECKING:
    import nbformat

#: Tag of an exercise's solution cell (a ``<details>`` markdown cell in the sources).
SOLUTION_TAG = "solution"
#: The folded line a reader clicks.
SUMMARY = "Solution (click to expand)"
#: Where a runnable copy keeps a solution's conclusion, so that :func:`collapse_solutions` can write it back.
CONCLUSION_KEY = "solution_conclusion"

_OPEN = f"<details><summary>{SUMMARY}</summary>"
_SOLUTION = re.compile(r"\A" + re.escape(_OPEN) + r"\n\n```python\n(?P<code>.*?)\n```\n\n"
                       r"(?P<conclusion>.*?)\n\n</details>\Z", re.DOTALL)


@dataclass(frozen=True)
class Solution:
    """A solution's two parts: the code that runs, and the written conclusion a reader keeps."""

    code: str
    conclusion: str


def is_solution(cell: nbformat.NotebookNode | dict) -> bool:
    """Whether ``cell`` is an exercise's solution (its ``solution`` tag)."""
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def parse_solution(markdown: str) -> Solution:
    """The code and conclusion of a solution cell's markdown; ``ValueError`` naming what is missing."""
    match = _SOLUTION.match(markdown.strip())
    if match is None:
        raise ValueError(f"a solution cell is not '{_OPEN}', a blank line, one ```python block, a blank "
                         f"line, its written conclusion, a blank line and '</details>': {markdown[:80]!r}")
    code, conclusion = match["code"].strip("\n"), match["conclusion"].strip()
    if not code.strip() or not conclusion or "```" in conclusion:
        raise ValueError(f"a solution needs code and a written conclusion after it: {markdown[:80]!r}")
    return Solution(code, conclusion)


def solution_markdown(solution: Solution, output: str = "", attachments: tuple[str, ...] = ()) -> str:
    """The ``<details>`` cell of ``solution``; an executed one shows ``output`` and figures after its code."""
    parts = [_OPEN, f"```python\n{solution.code}\n```"]
    if output.strip():
        parts.append(f"Output:\n\n```text\n{output.strip(chr(10))}\n```")
    parts += [f"![figure {i + 1} of the solution](attachment:{name})" for i, name in enumerate(attachments)]
    return "\n\n".join([*parts, solution.conclusion, "</details>"])


def runnable(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with each solution turned into a code cell in place (id, tags kept)."""
    import nbformat

    copied = copy.deepcopy(notebook)
    for i, cell in enumerate(copied.cells):
        if cell.cell_type != "markdown" or not is_solution(cell):
            continue
        solution = parse_solution(cell.source)
        metadata = {**cell.metadata, CONCLUSION_KEY: solution.conclusion}
        code = nbformat.v4.new_code_cell(solution.code, metadata=metadata)
        if "id" in cell:
            code.id = cell.id
        copied.cells[i] = code
    return copied


def _text(output: nbformat.NotebookNode) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return f"{output.ename}: {output.evalue}\n"
    return output.get("data", {}).get("text/plain", "") + "\n"


def collapse_solutions(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``notebook`` (a runnable copy, executed) with each solution back in its ``<details>`` cell.

    The printed text of the solution (streams, results, plain-text views of tables) goes after the code,
    its PNG figures become attachments of the cell, shown after the text, so the whole answer stays folded.
    """
    import nbformat

    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or not is_solution(cell):
            continue
        metadata = dict(cell.metadata)
        solution = Solution(cell.source, metadata.pop(CONCLUSION_KEY))
        for key in ("execution", "collapsed", "scrolled"):
            metadata.pop(key, None)
        figures = {f"solution-figure-{n + 1}.png": {"image/png": data["image/png"]}
                   for n, data in enumerate(o.data for o in cell.outputs if "image/png" in o.get("data", {}))}
        text = "".join(_text(o) for o in cell.outputs if "image/png" not in o.get("data", {}))
        markdown = nbformat.v4.new_markdown_cell(solution_markdown(solution, text, tuple(figures)),
                                                 metadata=metadata)
        if figures:
            markdown.attachments = figures
        if "id" in cell:
            markdown.id = cell.id
        notebook.cells[i] = markdown
    return notebook


def write_runnable_copies(notebooks: list[Path], out_dir: Path) -> list[Path]:
    """Write :func:`runnable` copies of ``notebooks`` into ``out_dir`` (inside the checkout, for nbval)."""
    import nbformat

    written = []
    for path in notebooks:
        target = out_dir / path.name
        with atomic_path(target) as tmp:
            nbformat.write(runnable(nbformat.read(path, as_version=4)), tmp)
        written.append(target)
    return written

