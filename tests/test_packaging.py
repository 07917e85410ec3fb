"""The set-up files agree with each other: pyproject, environment.yml, Makefile, CI."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

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


def test_environment_yml_installs_the_package_with_its_dev_extra_and_the_makefile_torch():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e .[dev]" in pip_section
    makefile_torch = re.search(r"^TORCH_SPEC \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert makefile_torch in pip_section
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
