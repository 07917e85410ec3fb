"""The parts of the notebooks and the README that are written from one source, never by hand.

- the setup cell (``notebooks/_setup_cell.py``, copied into every notebook's second cell), whose
  repository address and pinned tag are :data:`REPO_URL` and :data:`REPO_REF` (defined here), and the
  switch cell (``notebooks/_switch_cell.md``, copied after every notebook's parameters cell);
- the glossary links: absolute addresses of the repository's published ``docs/glossary.md``
  (:func:`glossary_url`), so they resolve on GitHub, nbviewer, Colab and Kaggle alike;
- the running times in each notebook's header and the README's table (between
  :data:`README_TIMES_START` and :data:`README_TIMES_END`), from ``docs/notebook_times.json``,
  which ``make publish`` rewrites with the times it measured (:func:`record_notebook_times`).

:func:`sync_notebook_sources` writes them all (``make publish`` calls it); a test checks that it
has nothing left to change.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path

from brats_utils.config import repo_root
from brats_utils.files import atomic_path, write_json_atomic

#: Where the notebooks live on GitHub: the one place of the address. The badges, the glossary links and
#: the Colab/Kaggle setup cell (``notebooks/_setup_cell.py``) are generated from it
#: (:func:`sync_notebook_sources`); a fork sets ``$BRATS_REPO_URL`` instead.
REPO_SLUG = "brats-teaching/brats3d-unet"
REPO_URL = f"https://github.com/{REPO_SLUG}"
#: The tag (or commit) the setup cell clones, so a notebook runs the code it was written for:
#: ``v`` + the package version; ``$BRATS_REPO_REF`` overrides it (``main`` for the newest).
REPO_REF = "v0.1.0"
REPO_URL_ENV = "BRATS_REPO_URL"
REPO_REF_ENV = "BRATS_REPO_REF"

#: The published glossary's address (GitHub renders it and scrolls to the ``<a id>`` anchors).
GLOSSARY_URL = f"{REPO_URL}/blob/main/docs/glossary.md"
#: A glossary link as the notebooks once wrote it (relative: it breaks outside the repository).
RELATIVE_GLOSSARY_LINK = re.compile(r"\]\((?:\.\./)?docs/glossary\.md(#[\w-]+)?\)")
README_TIMES_START = "<!-- notebook-times:start -->"
README_TIMES_END = "<!-- notebook-times:end -->"
#: The header's running-time block: from this line to the next blank line.
RUNNING_TIME_LINE = "- **Running time**, top to bottom"
#: Which profiles the times cover, in the order the headers list them.
TIMED_PROFILES = ("ci", "demo", "gpu")


def setup_cell_path() -> Path:
    """The one source of the notebooks' setup cell."""
    return repo_root() / "notebooks" / "_setup_cell.py"


def switch_cell_path() -> Path:
    """The one source of the notebooks' "switching to real data or a GPU" cell."""
    return repo_root() / "notebooks" / "_switch_cell.md"


def times_path() -> Path:
    """The measured per-notebook times: ``docs/notebook_times.json``."""
    return repo_root() / "docs" / "notebook_times.json"


def series_notebooks(notebook_dir: Path | None = None) -> list[Path]:
    """The numbered notebooks of the series (default: the repository's ``notebooks/``), in order."""
    return sorted((notebook_dir or repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def setup_cell_source(text: str | None = None) -> str:
    """The setup cell (``text``, default the file's) with its address and tag set from ``config``."""
    text = setup_cell_path().read_text() if text is None else text
    for variable, value in ((REPO_URL_ENV, REPO_URL), (REPO_REF_ENV, REPO_REF)):
        pattern = re.compile(rf'(os\.environ\.get\("{variable}"\) or )"[^"]*"')
        if not pattern.search(text):
            raise ValueError(f"the setup cell has no line reading ${variable} with a default")
        text = pattern.sub(lambda m, value=value: f'{m.group(1)}"{value}"', text)
    return text


def glossary_url(anchor: str | None = None) -> str:
    """The published glossary, at ``anchor`` if given (e.g. ``"dice"``)."""
    return GLOSSARY_URL + (f"#{anchor}" if anchor else "")


def absolute_glossary_links(markdown: str) -> str:
    """``markdown`` with every relative link to the glossary made absolute (:func:`glossary_url`)."""
    return RELATIVE_GLOSSARY_LINK.sub(lambda m: f"]({glossary_url(m.group(1) and m.group(1)[1:])})", markdown)


def github_anchors(markdown: str) -> set[str]:
    """The fragment identifiers GitHub gives a Markdown page: explicit ``<a id|name>`` and the headings.

    A heading's anchor is its text in lower case, with everything but letters, digits, spaces,
    hyphens and underscores removed and spaces turned into hyphens; repeats get ``-1``, ``-2``, ...
    """
    anchors = set(re.findall(r'<a\s+(?:id|name)="([^"]+)"', markdown))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


# --- running times ---------------------------------------------------------------------------


def load_times() -> dict:
    """``docs/notebook_times.json``: for each profile, where it was measured and each notebook's time."""
    return json.loads(times_path().read_text())


def format_time(value: float | str) -> str:
    """Seconds as the headers write them (``34 s``, ``6.6 min``); a string (a note, an estimate) as it is."""
    if isinstance(value, str):
        return value
    return f"{value:.0f} s" if value < 100 else f"{value / 60:.1f} min"


def _entry(profile: dict, notebook: str) -> str:
    value = profile["notebooks"].get(notebook)
    if value is None:
        return "not measured"
    if isinstance(value, str):
        return value if profile.get("measured") else f"{value}; an estimate, not measured yet"
    return f"{format_time(value)}, measured in {profile['measured']}"


def running_time_block(notebook: str, times: dict) -> str:
    """The header's running-time lines of ``notebook`` (a file name), from ``times``."""
    lines = [f"{RUNNING_TIME_LINE} (`docs/notebook_times.json`):"]
    for name in TIMED_PROFILES:
        profile = times["profiles"][name]
        lines.append(f"  - {profile['label']}: {_entry(profile, notebook)};")
    lines[-1] = lines[-1].rstrip(";") + "."
    return "\n".join(lines)


def readme_times_block(times: dict) -> str:
    """The README's table of every notebook's time per profile, between the two markers."""
    profiles = [times["profiles"][name] for name in TIMED_PROFILES]
    rows = [README_TIMES_START, "| notebook | " + " | ".join(p["label"] for p in profiles) + " |",
            "|---" * (len(profiles) + 1) + "|"]
    for path in series_notebooks():
        cells = [format_time(p["notebooks"][path.name]) if path.name in p["notebooks"] else "not measured"
                 for p in profiles]
        rows.append(f"| [{path.stem}](notebooks/{path.name}) | " + " | ".join(cells) + " |")
    notes = [f"{p['label']}: measured in {p['measured']}" if p.get("measured")
             else f"{p['label']}: estimates, not measured yet" for p in profiles]
    rows += ["", "; ".join(notes) + " (`docs/notebook_times.json`, written by `make publish`).",
             README_TIMES_END]
    return "\n".join(rows)


def record_notebook_times(profile_name: str, seconds: dict[str, float], *,
                          command: str | None = None) -> Path:
    """Store the times a run of ``profile_name`` measured (notebook file name -> seconds); returns the file.

    Notebooks the run did not execute keep their entries; the profile's ``measured`` note says which
    run the numbers come from (``command``, default ``python -m brats_utils demo``, the date and the CPU).
    """
    times = load_times()
    profile = times["profiles"][profile_name]
    profile["notebooks"].update({name: round(value, 1) for name, value in seconds.items()})
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    command = command or f"`python -m brats_utils demo --profile {profile_name} --publish`"
    profile["measured"] = f"{command} of {date} on a {os.cpu_count()}-core CPU"
    return write_json_atomic(times, times_path())


# --- writing them ------------------------------------------------------------------------------


def _notebook_text(path: Path, setup: str, switch: str, times: dict) -> str:
    """The notebook's file with its generated parts rewritten, in nbformat's own layout."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    title = notebook.cells[0]
    block = re.compile(re.escape(RUNNING_TIME_LINE) + r".*?(?=\n\n)", re.DOTALL)
    if not block.search(title.source):
        raise ValueError(f"{path.name}: the title cell has no '{RUNNING_TIME_LINE}' block")
    title.source = block.sub(lambda m: running_time_block(path.name, times), title.source, count=1)
    notebook.cells[1].source = setup.strip()
    # folded: JupyterLab and nbviewer show a bar, Colab the @title line as a form, both open on a click
    notebook.cells[1].metadata.update({"cellView": "form", "jupyter": {"source_hidden": True}})
    tags = [cell.metadata.get("tags", []) for cell in notebook.cells]
    notebook.cells[next(i for i, t in enumerate(tags) if "parameters" in t) + 1].source = switch.strip()
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = absolute_glossary_links(cell.source)
    return nbformat.writes(notebook) + "\n"


def _published_text(path: Path) -> str:
    """A published copy (``docs/notebooks``) with absolute glossary links; code and outputs as they ran."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = absolute_glossary_links(cell.source)
    return nbformat.writes(notebook) + "\n"


def _readme_text(text: str, times: dict) -> str:
    if README_TIMES_START not in text or README_TIMES_END not in text:
        raise ValueError(f"README.md lacks the markers {README_TIMES_START} ... {README_TIMES_END}")
    head, rest = text.split(README_TIMES_START, 1)
    return head + readme_times_block(times) + rest.split(README_TIMES_END, 1)[1]


def sync_notebook_sources(*, check: bool = False) -> list[Path]:
    """Rewrite every generated part from its source; return the files that changed (``check``: would change).

    The setup cell file and its copy in each notebook, the switch cell's copies, the notebooks'
    glossary links and header times, the glossary links of the published copies (``docs/notebooks``)
    and the README's times table. Cell ids, outputs and metadata
    stay as they are.
    """
    times = load_times()
    setup = setup_cell_source()
    readme = repo_root() / "README.md"
    wanted = {setup_cell_path(): setup, readme: _readme_text(readme.read_text(), times)}
    switch = switch_cell_path().read_text()
    wanted.update({nb: _notebook_text(nb, setup, switch, times) for nb in series_notebooks()})
    wanted.update({nb: _published_text(nb) for nb in series_notebooks(repo_root() / "docs" / "notebooks")})
    changed = [path for path, text in wanted.items() if path.read_text() != text]
    if not check:
        for path in changed:
            with atomic_path(path) as tmp:
                tmp.write_text(wanted[path])
    return changed
