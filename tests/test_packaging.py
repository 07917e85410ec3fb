"""The set-up files agree with each other: pyproject, environment.yml, Makefile, CI."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
import yaml

try:  # Python 3.11+; the dev extra brings the backport before
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - exercised on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_runtime_dependencies_are_the_field_libraries():
    names = _requirement_names(_pyproject()["project"]["dependencies"])
    assert {"torch", "numpy", "nibabel", "pandas", "matplotlib", "ipywidgets",
            "kagglehub", "tqdm", "nilearn", "filelock"} <= names


def test_pins_from_the_data_facts():
    deps = _pyproject()["project"]["dependencies"]
    assert "kagglehub>=1.0,<1.1" in deps
    # augmentation is numpy/torch (OpenCV 5 broke the albumentations path); albumentations stays
    # only as the benchmark's comparison, pinned to the MIT release (its successor is AGPL)
    assert not any(d.startswith("albumentations") for d in deps)
    assert "albumentations==2.0.8" in _pyproject()["project"]["optional-dependencies"]["bench"]


def test_torch_range_never_forces_a_reinstall():
    """Colab/Kaggle torch and the pinned CPU build both satisfy it: a lower bound only."""
    (torch_req,) = [r for r in _pyproject()["project"]["dependencies"] if r.startswith("torch")]
    assert re.fullmatch(r"torch>=2\.\d+", torch_req), torch_req


def _makefile_default(name: str) -> str:
    return re.search(rf"^{name} \?= (\S*)", (ROOT / "Makefile").read_text(), re.M).group(1)


def test_environment_yml_installs_the_package_with_its_dev_extra_and_the_makefile_torch():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e .[dev]" in pip_section
    # the same version and the same build as make: the CPU wheel from PyTorch's CPU index
    assert f"{_makefile_default('TORCH_SPEC')}+cpu" in pip_section
    assert _makefile_default("TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    assert f"--extra-index-url {_makefile_default('TORCH_INDEX')}" in pip_section
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    major_minor = tuple(int(x) for x in python.split("=")[1].split("."))
    required = _pyproject()["project"]["requires-python"].removeprefix(">=")
    assert major_minor >= tuple(int(x) for x in required.split("."))


def test_dev_extra_has_the_test_tools():
    names = _requirement_names(_pyproject()["project"]["optional-dependencies"]["dev"])
    assert {"pytest", "nbval", "jupyterlab", "ruff"} <= names


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


def test_the_demo_extra_brings_the_notebook_tools_and_dev_includes_it():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"nbformat", "nbclient", "ipykernel"} <= _requirement_names(extras["demo"])
    assert "brats_utils[demo]" in extras["dev"]


def _make_dry_run(*args: str) -> str:
    return subprocess.run(["make", "-n", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout


def test_make_installs_the_cpu_torch_unless_asked_otherwise(tmp_path):
    """make -n on a venv without torch: the CPU index first, the configured index if it cannot be reached."""
    venv = f"VENV={tmp_path / 'venv'}"
    default = _make_dry_run("torch", venv)
    assert '"torch==2.13.0" --index-url "https://download.pytorch.org/whl/cpu"' in default
    assert default.count('pip install -q "torch==2.13.0"') == 2  # the fallback names the same torch
    cuda = _make_dry_run("torch", venv, "TORCH_INDEX=https://download.pytorch.org/whl/cu126",
                         "TORCH_SPEC=torch==2.13.0+cu126")
    assert '"torch==2.13.0+cu126" --index-url "https://download.pytorch.org/whl/cu126"' in cuda
    plain = _make_dry_run("torch", venv, "TORCH_INDEX=")
    assert "--index-url" not in plain and 'pip install -q "torch==2.13.0"' in plain
    setup = _make_dry_run("setup", venv)
    assert "apt-get install python3-venv" in setup  # what to do when the venv module is missing


def test_make_demo_writes_nothing_tracked_and_publish_refreshes_it():
    assert "demo --publish" not in _make_dry_run("demo") and "demo --publish" in _make_dry_run("publish")


#: Standard-library modules and names newer than Python 3.10, the oldest version requires-python allows.
NEWER_THAN_310 = {"tomllib", "wsgiref.types", "typing.Self", "typing.LiteralString", "typing.Never",
                  "typing.assert_never", "typing.reveal_type", "typing.Required", "typing.NotRequired",
                  "typing.TypeVarTuple", "typing.Unpack", "typing.override", "enum.StrEnum", "datetime.UTC",
                  "hashlib.file_digest", "asyncio.TaskGroup", "asyncio.timeout", "contextlib.chdir",
                  "itertools.batched", "operator.call"}


def _sources() -> list[Path]:
    return sorted([*(ROOT / "brats_utils").rglob("*.py"), *(ROOT / "tests").rglob("*.py"),
                   ROOT / "notebooks" / "_setup_cell.py"])


def _guarded(tree: ast.Module) -> set[int]:
    """Lines of imports inside ``try: ... except ImportError/ModuleNotFoundError`` (a fallback exists)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if hasattr(n, "lineno")}
    return lines


def _newer_uses(tree: ast.Module) -> list[tuple[int, str]]:
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            uses += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            uses += [(node.lineno, node.module)]
            uses += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            uses.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return [(line, name) for line, name in uses if name in NEWER_THAN_310]


def test_requires_python_matches_the_code():
    """Every file parses as Python 3.10 and uses nothing newer of the standard library without a fallback."""
    required = _pyproject()["project"]["requires-python"]
    assert required == ">=3.10"
    assert _pyproject()["tool"]["ruff"]["target-version"] == "py310"
    problems = []
    for path in _sources():
        text = path.read_text()
        tree = ast.parse(text, feature_version=(3, 10))  # a SyntaxError names 3.11+ grammar
        guarded = _guarded(tree)
        problems += [f"{path.relative_to(ROOT)}:{line} {name}" for line, name in _newer_uses(tree)
                     if line not in guarded]
    assert problems == []


@pytest.mark.parametrize("snippet, found", [("import tomllib", ["tomllib"]),
                                            ("from typing import Self", ["typing.Self"]),
                                            ("import datetime\ndatetime.UTC", ["datetime.UTC"]),
                                            ("try:\n    import tomllib\nexcept ModuleNotFoundError:\n"
                                             "    import tomli as tomllib", [])])
def test_the_version_check_sees_newer_names_and_their_fallbacks(snippet, found):
    tree = ast.parse(snippet)
    assert [name for line, name in _newer_uses(tree) if line not in _guarded(tree)] == found
