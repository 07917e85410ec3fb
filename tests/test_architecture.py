"""The package's shape: the import graph (a pure-torch model, a config that reads no environment early)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:  # Python 3.11+; the dev extra brings the backport before
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - exercised on Python 3.10
    import tomli as tomllib


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_importing_the_model_loads_neither_matplotlib_nor_pandas():
    loaded = _loaded_after("import brats_utils.model")
    assert "torch" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("matplotlib", "pandas")}


def test_config_reads_no_environment_at_import(tmp_path):
    code = ("import os\nimport brats_utils.config as c\nos.environ['BRATS_DATA_DIR'] = os.environ['TARGET']\n"
            "print(c.get_profile('ci').run_dir)")
    env = {"PATH": "/usr/bin:/bin", "TARGET": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == str(tmp_path / "runs" / "ci")


# --- the import contracts hold what docs/architecture.md says: each probe of issue 22 breaks one ----------

REPO = Path(__file__).parents[1]
#: (module, the import a careless change could add, the contract that must catch it)
PROBES = [
    ("model", "from brats_utils import files", "The model is pure torch"),
    ("regions", "from brats_utils.viz import volumes", "Layers"),
    ("preprocess", "from brats_utils.config import get_profile", "Pieces and ground take explicit arguments"),
]


@pytest.fixture(scope="module")
def scratch_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package and of pyproject.toml (its contracts) to add imports to."""
    root = tmp_path_factory.mktemp("contracts")
    shutil.copytree(REPO / "brats_utils", root / "brats_utils", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_the_contracts_hold_on_the_package_as_it_is(scratch_package):
    result = lint_imports(scratch_package)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("module, statement, contract", PROBES)
def test_each_probe_breaks_a_contract(scratch_package, module, statement, contract):
    path = scratch_package / "brats_utils" / f"{module}.py"
    original = path.read_text()
    try:
        path.write_text(f"{original}\n{statement}  # the probe\n")
        result = lint_imports(scratch_package)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    assert contract_status(result.stdout)[contract] == "BROKEN", result.stdout


def contract_status(report: str) -> dict[str, str]:
    """``{start of a contract's name: "KEPT" or "BROKEN"}`` from lint-imports' summary (names wrap)."""
    names = [c["name"] for c in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
             ["contracts"]]
    flat = " ".join(report.split())
    status = {}
    for name in names:
        found = re.search(re.escape(" ".join(name.split())) + r" (KEPT|BROKEN)", flat)
        assert found, f"{name!r} not in the report"
        status.update({probe: found.group(1) for _, _, probe in PROBES if name.startswith(probe)})
    return status


def test_the_layer_table_of_the_docs_is_the_layers_contract():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c for c in contracts if c["type"] == "layers"]
    assert layers.get("exhaustive") is True
    text = (REPO / "docs" / "architecture.md").read_text().split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[2] for line in text.replace("\\|", "¦").splitlines()
            if line.startswith("| ") and not line.startswith("| layer")]
    documented = [" ".join(cell.replace("`", "").replace("¦", "|").split()) for cell in rows]
    in_pyproject = [" ".join(layer.split()) for layer in layers["layers"]]
    assert documented == in_pyproject
