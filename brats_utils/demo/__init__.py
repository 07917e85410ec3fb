"""The main job (``make demo``): run the notebook series 01-07 in order and summarise it.

Notebook 08 (beyond the paper) is left out of the demo (:data:`NOT_IN_DEMO`): its study trains
every variant with several seeds, far more than the demo's 15 minutes allow on a CPU.

Each notebook is executed by a fresh Jupyter kernel with ``BRATS_PROFILE`` set, exactly
as a student would run it top to bottom. Everything a run makes stays under ``data/demo/``
(git ignores it): the executed copies in ``notebooks/``, the figures in ``figures/``
(unless ``$BRATS_FIGURES_DIR`` says otherwise), so a checkout stays clean. ``make publish``
(``run_series(publish=True)``) then refreshes the tracked copies: the figures into ``figures/``,
each executed notebook into ``docs/notebooks/`` (:func:`publish_notebook`, size-capped, so that a
reader on GitHub or nbviewer sees the figures and outputs without running anything) and the
measured times into ``docs/notebook_times.json``, from which the notebooks' headers and the
README's table are written (:mod:`brats_utils.demo.sources`).

The notebook tools (nbformat, nbclient, a Jupyter kernel) are the ``demo`` extra, imported only
when a notebook is run: without them the rest of the package works and this module says what to install.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from brats_utils.config import OVERRIDES_ENV, Profile, data_dir, figures_dir, get_profile, repo_root
from brats_utils.demo.solutions import collapse_solutions, runnable
from brats_utils.demo.sources import record_notebook_times, series_notebooks, sync_notebook_sources
from brats_utils.errors import BratsError
from brats_utils.files import atomic_path

if TYPE_CHECKING:
    import nbformat

#: The extra that brings the notebook tools (``pip install -e ".[demo]"``; ``make demo`` has them).
DEMO_EXTRA = "demo"


def notebook_tools():
    """nbformat and nbclient, imported when a notebook is run; a missing one says what to install."""
    try:
        import nbclient
        import nbformat
    except ImportError as error:
        raise BratsError(f"running the notebooks needs {error.name}, which is not installed",
                         expected=f'the notebook tools: pip install -e ".[{DEMO_EXTRA}]" in the checkout '
                                  "(make demo installs them)") from error
    return nbformat, nbclient


def demo_dir() -> Path:
    """Everything ``make demo`` writes: ``<data_dir>/demo`` (git ignores it)."""
    return data_dir() / "demo"


def executed_dir() -> Path:
    """Where the executed copies of the notebooks go: ``<data_dir>/demo/notebooks``."""
    return demo_dir() / "notebooks"


def demo_figures_dir() -> Path:
    """Where the demo's kernels save their figures, unless ``$BRATS_FIGURES_DIR`` is set."""
    return demo_dir() / "figures"


CHECK_TAG = "nbval-check-output"
"""nbval's cell tag for "compare this cell's outputs" (kept out of the students' sight, in the metadata)."""

PUBLISH_BUDGET_BYTES = 2_000_000
"""Largest size of a published notebook (``docs/notebooks/``): 2 MB, what GitHub still renders quickly."""
PUBLISH_IMAGE_WIDTH = 900
"""Published figures wider than this many pixels are downscaled to it (a page column on GitHub)."""


def published_dir() -> Path:
    """Where :func:`run_series` publishes the executed demo notebooks: ``docs/notebooks`` (committed)."""
    return repo_root() / "docs" / "notebooks"


def published_figures_dir() -> Path:
    """Where :func:`run_series` publishes the demo's figures: ``figures/`` (committed, in the README)."""
    return repo_root() / "figures"


def is_checked(cell: nbformat.NotebookNode) -> bool:
    """Whether nbval compares this code cell's outputs (its ``nbval-check-output`` tag)."""
    return CHECK_TAG in cell.get("metadata", {}).get("tags", [])


#: Notebooks of the series that ``make demo`` skips (they still run under nbval in the ci profile).
NOT_IN_DEMO: tuple[str, ...] = ("08_beyond_the_paper.ipynb",)


def _execute(notebook: nbformat.NotebookNode, folder: Path) -> float:
    """Run a notebook in place in a fresh kernel whose working directory is ``folder``."""
    _, nbclient = notebook_tools()
    client = nbclient.NotebookClient(notebook, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}},
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])  # no transport chatter
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def _write_atomic(notebook: nbformat.NotebookNode, target: Path) -> None:
    nbformat, _ = notebook_tools()
    with atomic_path(target) as tmp:
        nbformat.write(notebook, tmp)


def execute_notebook(path: Path, out_dir: Path | None = None) -> float:
    """Run one notebook top to bottom in its own folder; save the executed copy; return seconds.

    The copy goes to ``out_dir`` (default :func:`executed_dir`). The exercises' solutions run too, each
    right after its exercise (:func:`~brats_utils.demo.solutions.runnable`): a failing solution fails
    the run, and the executed copy holds them as code cells (:func:`publish_notebook` folds them again).

    The copy keeps every output, figures included (a non-interactive ``MPLBACKEND`` such as
    Agg is not passed on to the kernel, since it would silently drop them).

    A failing cell still leaves the executed copy (up to the error) in ``out_dir`` and
    re-raises nbclient's ``CellExecutionError``, whose message shows the cell and traceback.
    """
    nbformat, _ = notebook_tools()
    notebook = runnable(nbformat.read(path, as_version=4))
    backend = os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend keeps the figures
    try:
        return _execute(notebook, path.parent)
    finally:
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
        _write_atomic(notebook, (out_dir or executed_dir()) / path.name)


def record_checked_outputs(path: Path) -> None:
    """Execute ``path`` and save it back with outputs only in its ``nbval-check-output`` cells.

    nbval compares a cell only against outputs saved in the notebook, so the checked cells
    must carry them, with their execution count (nbval skips cells it sees as never run);
    every other cell is committed clean. Run it with the environment of
    ``make test`` (``make notebook-outputs`` does) so the recorded outputs are the ones CI sees:
    the solutions run in their places, as under ``make notebooks``, and stay ``<details>`` cells.
    Only text survives (plain and HTML): images and widget states are never compared.
    """
    nbformat, _ = notebook_tools()
    notebook = nbformat.read(path, as_version=4)
    executed = runnable(notebook)  # one cell for one cell: the solutions become code in place
    _execute(executed, path.parent)
    notebook.metadata.pop("widgets", None)  # saved widget states (progress bars) are never compared
    for cell, ran in zip(notebook.cells, executed.cells, strict=True):
        if cell.cell_type != "code":
            continue
        keep = is_checked(cell)
        cell.outputs = [_text_only(o) for o in ran.outputs if keep and _has_text(o)]
        cell.execution_count = ran.execution_count if keep else None
        cell.metadata.pop("execution", None)
    _write_atomic(notebook, path)


def _is_compared(mime: str) -> bool:
    """nbval compares every output field except images and widget views."""
    return not mime.startswith("image/") and mime != "application/vnd.jupyter.widget-view+json"


def _has_text(output: nbformat.NotebookNode) -> bool:
    return output.output_type == "stream" or any(map(_is_compared, output.get("data", {})))


def _text_only(output: nbformat.NotebookNode) -> nbformat.NotebookNode:
    if output.output_type != "stream":
        output.data = {mime: value for mime, value in output.data.items() if _is_compared(mime)}
        output.metadata = {}
    return output


def _downscaled_png(data: str, width: int) -> str:
    """A base64 PNG at most ``width`` pixels wide (aspect kept), or the original when it already is."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    if image.width <= width:
        return data
    height = max(1, round(image.height * width / image.width))
    buffer = io.BytesIO()
    image.resize((width, height), Image.LANCZOS).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_outputs(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
            if any(mime.startswith("image/") for mime in output.get("data", {}))]


def _hide_repo_folder(notebook: nbformat.NotebookNode, folder: str) -> None:
    """Write ``folder`` as ``<repo>`` in every text output: a reader needs no one's home directory."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                output.text = output.text.replace(folder, "<repo>")
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    output.data[mime] = value.replace(folder, "<repo>")


def _size(notebook: nbformat.NotebookNode) -> int:
    nbformat, _ = notebook_tools()
    return len(nbformat.writes(notebook).encode())


def publish_notebook(executed: Path, out_dir: Path | None = None, *,
                     budget_bytes: int = PUBLISH_BUDGET_BYTES,
                     image_width: int = PUBLISH_IMAGE_WIDTH) -> Path:
    """Copy an executed notebook to ``out_dir`` (default :func:`published_dir`), at most ``budget_bytes``.

    Saved widget states go (they only replay in a live kernel), PNG figures are downscaled to
    ``image_width`` pixels, and if the copy is still over the budget the largest figures are
    replaced, one by one, by a line saying so. Text outputs are always kept, with this machine's
    repository folder written as ``<repo>``. Each exercise's solution, executed as a code cell, is folded
    back into its ``<details>`` cell with its output inside, after the code
    (:func:`~brats_utils.demo.solutions.collapse_solutions`). Returns the copy's path.
    """
    nbformat, _ = notebook_tools()
    notebook = nbformat.read(executed, as_version=4)
    notebook.metadata.pop("widgets", None)
    _hide_repo_folder(notebook, str(repo_root()))
    for output in _image_outputs(notebook):
        if "image/png" in output.data:
            output.data["image/png"] = _downscaled_png(output.data["image/png"], image_width)
    for output in sorted(_image_outputs(notebook), key=lambda o: -len(str(o.data))):
        if _size(notebook) <= budget_bytes:
            break
        output.data = {"text/plain": f"[figure left out of this copy to keep it under "
                                     f"{budget_bytes / 1e6:g} MB: run the notebook to see it]"}
        output.metadata = {}
    collapse_solutions(notebook)
    target = (out_dir or published_dir()) / executed.name
    _write_atomic(notebook, target)
    return target


#: Profiles whose measured times :func:`run_series` records when publishing (``docs/notebook_times.json``);
#: only the ``demo`` run also publishes its notebooks and figures.
PUBLISHED_PROFILES: tuple[str, ...] = ("demo", "ci")


def run_series(profile_name: str = "demo", overrides: Sequence[str] = (),
               notebooks: list[Path] | None = None, publish: bool = False, record_times: bool = True) -> None:
    """Execute the series with ``profile_name`` and ``key=value`` overrides; print timings and results.

    The kernels receive both through the environment (``BRATS_PROFILE``, ``BRATS_SET``,
    ``BRATS_FIGURES_DIR``: :func:`demo_figures_dir` unless already set), which every notebook's
    parameters cell reads with :func:`brats_utils.config.get_profile`. Nothing tracked by git
    changes unless ``publish`` (``make publish``), which needs a profile of :data:`PUBLISHED_PROFILES`
    without overrides: it records the times (:func:`~brats_utils.demo.sources.record_notebook_times`)
    and rewrites the notebooks' headers and the README's table from them; for ``demo`` it also copies
    the figures into ``figures/`` and each executed notebook into ``docs/notebooks/``
    (:func:`publish_notebook`). ``record_times=False`` (``demo --only NN``: a part of the series, such as
    notebook 08 after its study) publishes the copies and figures and leaves the recorded times alone.
    """
    os.environ["BRATS_PROFILE"] = profile_name
    items = [item for item in (os.environ.get(OVERRIDES_ENV, ""), *overrides) if item]
    if items:
        os.environ[OVERRIDES_ENV] = ";".join(items)
    profile = get_profile(profile_name)
    if publish and (profile.name not in PUBLISHED_PROFILES or items):
        raise BratsError(f"publishing a run of the {profile.name!r} profile with overrides {items}",
                         expected=f"one of the profiles {', '.join(PUBLISHED_PROFILES)} without --set: the "
                                  "published notebooks, figures and times are those of the documented runs")
    os.environ.setdefault("BRATS_FIGURES_DIR", str(demo_figures_dir()))
    notebook_tools()  # says what to install before the first notebook starts
    from nbclient.exceptions import CellExecutionError

    if notebooks is None:
        notebooks = [path for path in series_notebooks() if path.name not in NOT_IN_DEMO]
    print(f"Running {len(notebooks)} notebooks with the {profile.name!r} profile: {profile.description}")
    seconds = {}
    for path in notebooks:
        print(f"  {path.name:<36}", end="", flush=True)
        try:
            seconds[path.name] = execute_notebook(path)
        except CellExecutionError:
            print("FAILED")
            print(f"The executed copy up to the error is in {executed_dir() / path.name}")
            raise
        print(f"{seconds[path.name]:6.0f} s")
    print(f"All notebooks ran in {sum(seconds.values()) / 60:.1f} min.")
    print(f"Executed notebooks: {executed_dir()}\nFigures:            {figures_dir()}")
    if publish:
        _publish(profile.name, seconds, record_times=record_times)
    print(results_summary(profile))


def _publish(profile_name: str, seconds: dict[str, float], *, record_times: bool = True) -> None:
    """Write a run's products into the tracked files (see :func:`run_series`)."""
    if record_times:
        times = record_notebook_times(profile_name, seconds)
        changed = sync_notebook_sources()
        rewritten = ", ".join(p.name for p in changed) or "nothing"
        print(f"Times recorded in {times}; rewritten from it: {rewritten}")
    else:
        print("Times not recorded: a part of the series ran (notebook_times.json keeps the series' times)")
    if profile_name != "demo":
        return
    for name in seconds:
        publish_notebook(executed_dir() / name)
    print(f"Published copies:   {published_dir()} (at most {PUBLISH_BUDGET_BYTES / 1e6:g} MB each)")
    if figures_dir().resolve() != published_figures_dir().resolve():
        numbers = {name[:2] for name in seconds}  # a figure is named after its notebook: 06_best_case.png
        for figure in sorted(p for p in figures_dir().iterdir() if p.is_file() and p.name[:2] in numbers):
            with atomic_path(published_figures_dir() / figure.name) as tmp:
                shutil.copyfile(figure, tmp)
        print(f"Published figures:  {published_figures_dir()}")


def results_summary(profile: Profile) -> str:
    """A short text table of what the series produced: held-out scores and the architecture study."""
    import pandas as pd

    from brats_utils.compare import comparison_csv_path

    data = "synthetic data" if profile.data_source == "synthetic" else "BraTS 2020"
    lines = []
    summary_csv = profile.run_dir / "predictions-heldout" / "metrics_summary.csv"
    if summary_csv.exists():
        summary = pd.read_csv(summary_csv, index_col=0)
        columns = [c for c in summary.columns if c.startswith(("Dice_", "Hausdorff95_")) or c == "PaperDice"]
        from brats_utils.pipeline import heldout_split, split_label

        cases = split_label(profile, heldout_split(profile))
        lines += [f"\nPaper model on the held-out {cases} ({data}; notebook 06):",
                  summary.loc[["Mean", "Median"], columns].T.round(3).to_string()]
    table_csv = comparison_csv_path(profile)
    if table_csv.exists():
        table = pd.read_csv(table_csv)
        keep = [c for c in table.columns if c in STUDY_COLUMNS]
        lines += [f"\nArchitecture study ({data}, short budget; notebook 07):",
                  table[keep].round(3).to_string(index=False)]
    return "\n".join(lines)


STUDY_COLUMNS = ("preset", "built parameters", "trained parameters", "MACs per voxel",
                 "seconds per training step", "val_paper_dice", "val_dice_WT", "val_dice_TC", "val_dice_ET")
