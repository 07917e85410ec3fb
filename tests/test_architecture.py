"""The package's shape: the import graph (a pure-torch model, a config that reads no environment early)."""

from __future__ import annotations

import subprocess
import sys


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
