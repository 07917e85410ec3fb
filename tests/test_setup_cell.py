"""The notebooks' setup cell, run as Colab and Kaggle run it, in a temporary folder standing in for "/".

Nothing is fetched or installed for real: a local bare repository stands in for GitHub (``git clone``
works on it as on the real address), and a stand-in ``pip`` (first on ``PYTHONPATH``) logs its calls
and writes the ``direct_url.json`` record a real ``pip install -e`` leaves. A stand-in ``torch`` says a
GPU is there, and a stand-in ``google.colab`` makes the process look like Colab.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from brats_utils.demo.sources import REPO_REF, REPO_REF_ENV, REPO_URL, REPO_URL_ENV, setup_cell_source

ROOT = Path(__file__).resolve().parents[1]
TAG = "v-test"

FAKE_PIP = """
import json, sys
from pathlib import Path
here = Path(__file__).resolve().parents[1]
with open(here / "pip-calls.log", "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
repo = Path(sys.argv[sys.argv.index("-e") + 1]).resolve()
info = here / "brats_utils-0.1.0.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text("Metadata-Version: 2.1\\nName: brats_utils\\nVersion: 0.1.0\\n")
(info / "direct_url.json").write_text(json.dumps({"url": repo.as_uri(), "dir_info": {"editable": True}}))
"""

FAKE_COLAB_DRIVE = """
import os
from pathlib import Path

def mount(path):
    (Path(path) / "MyDrive").mkdir(parents=True)
    with open(Path(os.environ["BRATS_TEST_PLATFORM_ROOT"]) / "mounts.log", "a") as log:
        log.write(path + "\\n")
"""


def _write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture(scope="module")
def remote(tmp_path_factory) -> Path:
    """A bare repository named like the real one, with a package layout and the tag the cell clones."""
    work = tmp_path_factory.mktemp("upstream") / "work"
    _write(work / "pyproject.toml", '[project]\nname = "brats_utils"\n')
    _write(work / "brats_utils" / "__init__.py")
    _write(work / "notebooks" / "01_x.ipynb", "{}")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "first"], check=True)
    subprocess.run([*git, "-C", str(work), "tag", TAG], check=True)
    bare = work.parent / "brats3d-unet.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


def _stand_ins(folder: Path, *, colab: bool) -> Path:
    """pip, torch (with a GPU) and, for Colab, google.colab: importable before anything installed."""
    _write(folder / "pip" / "__init__.py")
    _write(folder / "pip" / "__main__.py", FAKE_PIP)
    _write(folder / "torch" / "__init__.py", "class cuda:\n    is_available = staticmethod(lambda: True)\n")
    _write(folder / "torch-2.13.0.dist-info" / "METADATA",
           "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n")
    if colab:
        _write(folder / "google" / "__init__.py")
        _write(folder / "google" / "colab" / "__init__.py", "from google.colab import drive\n")
        _write(folder / "google" / "colab" / "drive.py", FAKE_COLAB_DRIVE)
    return folder


def _run_cell(cwd: Path, env: dict, times: int) -> subprocess.CompletedProcess:
    """The cell executed ``times`` times in one process (one kernel), reporting the kernel's state."""
    cell = setup_cell_source()
    script = (f"import os, json\ncell = {cell!r}\nfor _ in range({times}):\n    exec(cell, {{}})\n"
              "print(json.dumps({'cwd': os.getcwd(), **{k: os.environ.get(k) for k in "
              "('BRATS_PROFILE', 'BRATS_DATA_DIR', 'BRATS_CACHE_DIR')}}))\n")
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True)


def _platform_env(tmp_path: Path, remote: Path, stand_ins: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BRATS_", "KAGGLE_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PYTHONPATH": str(stand_ins), "BRATS_TEST_PLATFORM_ROOT": str(tmp_path / "root"),
            REPO_URL_ENV: str(remote), REPO_REF_ENV: TAG, **extra}


PLATFORMS = {
    "colab": dict(colab=True, env={}, home="content",
                  folders={"BRATS_DATA_DIR": "content/drive/MyDrive/brats3d-data",
                           "BRATS_CACHE_DIR": "content/brats3d-cache"}),
    "kaggle": dict(colab=False, env={"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, home="kaggle/working",
                   folders={"BRATS_DATA_DIR": "kaggle/working/brats3d-data",
                            "BRATS_CACHE_DIR": "kaggle/temp/brats3d-cache"}),
}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_run_twice_and_again_after_a_restart_it_clones_and_installs_once(platform, tmp_path, remote):
    facts = PLATFORMS[platform]
    root = tmp_path / "root"
    home = root / facts["home"]
    home.mkdir(parents=True)
    stand_ins = _stand_ins(tmp_path / "stand-ins", colab=facts["colab"])
    env = _platform_env(tmp_path, remote, stand_ins, **facts["env"])

    first = _run_cell(home, env, times=2)
    assert first.returncode == 0, first.stderr
    restart = _run_cell(home, env, times=1)  # a new kernel in the same session: same disk, same packages
    assert restart.returncode == 0, restart.stderr

    checkout = home / "brats3d-unet"
    assert sorted(p.name for p in home.iterdir() if p.name.startswith("brats3d-unet")) == ["brats3d-unet"]
    assert not (checkout / "brats3d-unet").exists() and not (checkout / "notebooks" / "brats3d-unet").exists()
    tag = subprocess.run(["git", "-C", str(checkout), "describe", "--tags"], capture_output=True, text=True)
    assert tag.stdout.strip() == TAG
    calls = [json.loads(line) for line in (stand_ins / "pip-calls.log").read_text().splitlines()]
    assert len(calls) == 1
    assert calls[0][:4] == ["install", "-q", "-e", str(checkout)]
    keep = Path(calls[0][calls[0].index("-c") + 1])
    assert keep.read_text().strip() == "torch==2.13.0"  # pip may never replace the platform's torch

    lines = [line for line in (first.stdout + restart.stdout).splitlines() if line.startswith("brats setup:")]
    assert len(lines) == 3 and "cloned" in lines[0]
    assert "installed it with pip (torch 2.13.0 kept)" in lines[0]
    assert lines[1].startswith("brats setup: nothing to do"), lines  # same kernel: all done already
    # a new kernel has lost the variables, so it picks the GPU defaults again, and nothing else
    assert lines[2].startswith("brats setup: GPU: BRATS_PROFILE=gpu"), lines
    state = json.loads(restart.stdout.splitlines()[-1])
    assert state["cwd"] == str(checkout / "notebooks")
    assert state["BRATS_PROFILE"] == "gpu"
    for variable, folder in facts["folders"].items():
        assert state[variable] == str(root / folder)
    mounts = (root / "mounts.log").read_text().split() if (root / "mounts.log").exists() else []
    assert mounts == ([str(root / "content" / "drive")] if platform == "colab" else [])


def test_what_the_user_set_stays(tmp_path, remote):
    (tmp_path / "root" / "kaggle" / "working").mkdir(parents=True)
    stand_ins = _stand_ins(tmp_path / "stand-ins", colab=False)
    env = _platform_env(tmp_path, remote, stand_ins, KAGGLE_KERNEL_RUN_TYPE="Batch", BRATS_PROFILE="paper",
                        BRATS_DATA_DIR="/mine")
    result = _run_cell(tmp_path / "root" / "kaggle" / "working", env, times=1)
    state = json.loads(result.stdout.splitlines()[-1])
    assert (state["BRATS_PROFILE"], state["BRATS_DATA_DIR"]) == ("paper", "/mine")
    assert state["BRATS_CACHE_DIR"] == str(tmp_path / "root" / "kaggle" / "temp" / "brats3d-cache")


def test_a_wrong_address_fails_saying_how_to_set_it_and_leaves_nothing(tmp_path, remote):
    home = tmp_path / "root" / "content"
    home.mkdir(parents=True)
    stand_ins = _stand_ins(tmp_path / "stand-ins", colab=True)
    env = _platform_env(tmp_path, remote, stand_ins)
    env[REPO_URL_ENV] = str(tmp_path / "no-such-repository.git")
    result = _run_cell(home, env, times=1)
    assert result.returncode != 0
    assert "could not clone" in result.stderr and f"os.environ['{REPO_URL_ENV}']" in result.stderr
    assert "Internet" in result.stderr
    assert list(home.iterdir()) == [] and not (stand_ins / "pip-calls.log").exists()


def test_inside_the_repository_it_neither_clones_nor_installs(tmp_path):
    """CI and `make lab`: the notebook runs from notebooks/ of a checkout whose package is importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRATS_", "KAGGLE_"))}
    env["PYTHONPATH"] = str(ROOT)
    result = _run_cell(ROOT / "notebooks", env, times=2)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("brats setup:")]
    assert lines == [f"brats setup: nothing to do (repository {ROOT})"] * 2
    assert json.loads(result.stdout.splitlines()[-1])["cwd"] == str(ROOT / "notebooks")


def test_the_cell_carries_the_one_address_and_tag_and_every_notebook_carries_the_cell():
    cell = (ROOT / "notebooks" / "_setup_cell.py").read_text()
    assert cell == setup_cell_source()  # generated from config (brats_utils.demo.sources)
    assert f'os.environ.get("{REPO_URL_ENV}") or "{REPO_URL}"' in cell
    assert f'os.environ.get("{REPO_REF_ENV}") or "{REPO_REF}"' in cell
    version = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version ="))
    assert REPO_REF == "v" + version.split('"')[1]  # the tag of this release
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        setup = json.loads(path.read_text())["cells"][1]
        assert "".join(setup["source"]) == cell.strip(), path.name
        # folded where the notebook opens: a title line, the code one click away
        assert setup["metadata"]["cellView"] == "form" and setup["metadata"]["jupyter"]["source_hidden"]
    assert cell.startswith("# @title ")


def test_kaggle_is_kaggle_even_where_google_colab_can_be_imported(tmp_path, remote):
    home = tmp_path / "root" / "kaggle" / "working"
    home.mkdir(parents=True)
    stand_ins = _stand_ins(tmp_path / "stand-ins", colab=True)
    env = _platform_env(tmp_path, remote, stand_ins, KAGGLE_KERNEL_RUN_TYPE="Interactive")
    result = _run_cell(home, env, times=1)
    assert result.returncode == 0, result.stderr
    assert (home / "brats3d-unet" / "notebooks").is_dir() and not (tmp_path / "root" / "content").exists()
    assert json.loads(result.stdout.splitlines()[-1])["BRATS_CACHE_DIR"].endswith("kaggle/temp/brats3d-cache")
