# @title Setup: run it as it is (its one line says what it did)
# Setup: safe to run any number of times, nothing to edit. In a checkout of this repository (your machine,
# `make lab`, CI) it uses that checkout. On Colab or Kaggle it clones the repository once, at a pinned tag,
# to /content/<repo> or /kaggle/working/<repo> and installs it with pip, keeping the preinstalled torch; on a
# GPU there it also picks the `gpu` profile and the platform's folders (docs/platforms.md) unless you set
# BRATS_PROFILE, BRATS_DATA_DIR or BRATS_CACHE_DIR before. A fork: set BRATS_REPO_URL (and BRATS_REPO_REF).
def _brats_setup() -> str:
    import importlib.metadata
    import importlib.util
    import json
    import os
    import re
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    url = os.environ.get("BRATS_REPO_URL") or "https://github.com/brats-teaching/brats3d-unet"
    ref = os.environ.get("BRATS_REPO_REF") or "v0.1.0"
    root = Path(os.environ.get("BRATS_TEST_PLATFORM_ROOT") or "/")  # only tests move "/" elsewhere
    platform = "kaggle" if "KAGGLE_KERNEL_RUN_TYPE" in os.environ else None
    try:
        from google.colab import drive
        platform = platform or "colab"
    except ImportError:
        pass
    home = {"colab": root / "content", "kaggle": root / "kaggle" / "working"}.get(platform)
    done = []

    def is_checkout(folder: Path) -> bool:
        return (folder / "pyproject.toml").is_file() and (folder / "brats_utils" / "__init__.py").is_file()

    here = Path.cwd().resolve()
    repo = next((d for d in (here, *here.parents) if is_checkout(d)), None)
    if repo is None and home is not None:
        repo = home / re.sub(r"\.git$", "", url.rstrip("/").rsplit("/", 1)[-1])
        if not is_checkout(repo):
            partial = repo.with_name(repo.name + ".partial")  # renamed once complete: never half a clone
            shutil.rmtree(partial, ignore_errors=True)
            if re.fullmatch(r"[0-9a-f]{7,40}", ref):
                steps = [["git", "clone", "-q", url, str(partial)],
                         ["git", "-C", str(partial), "checkout", "-q", ref]]
            else:
                steps = [["git", "clone", "-q", "--depth", "1", "--branch", ref, url, str(partial)]]
            for step in steps:
                result = subprocess.run(step, capture_output=True, text=True)
                if result.returncode:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise RuntimeError(
                        f"could not clone {url} at {ref}: {result.stderr.strip()}\nSet the repository in a "
                        "cell above this one, e.g. os.environ['BRATS_REPO_URL'] = 'https://github.com/<you>/"
                        "<repo>' and os.environ['BRATS_REPO_REF'] = 'main' (a tag, branch or commit), then "
                        "run this cell again. On Kaggle the notebook needs Settings -> Internet -> On.")
            partial.rename(repo)
            done.append(f"cloned {url} at {ref} into {repo}")
    if repo is None:
        return (f"brats setup: not inside a checkout and not on Colab or Kaggle: clone {url} and open the "
                "notebooks from it (README, 'Quick start')")

    def installed() -> bool:
        spec = importlib.util.find_spec("brats_utils")
        if spec and spec.origin and Path(spec.origin).resolve().is_relative_to(repo.resolve()):
            return True
        try:
            direct = importlib.metadata.distribution("brats_utils").read_text("direct_url.json") or "{}"
        except importlib.metadata.PackageNotFoundError:
            return False
        return json.loads(direct).get("url") == repo.resolve().as_uri()

    if not installed():
        command = [sys.executable, "-m", "pip", "install", "-q", "-e", str(repo)]
        try:  # pin the torch that is there, so pip can never replace it
            torch_version = importlib.metadata.version("torch")
            keep = Path(tempfile.gettempdir()) / "brats-keep-torch.txt"
            keep.write_text(f"torch=={torch_version}\n")
            command += ["-c", str(keep)]
        except importlib.metadata.PackageNotFoundError:
            torch_version = None
        subprocess.run(command, check=True)
        importlib.invalidate_caches()
        done.append("installed it with pip" + (f" (torch {torch_version} kept)" if torch_version else ""))
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))  # an editable install is seen only after a restart otherwise
    os.chdir(repo / "notebooks")
    if platform is not None:
        import torch

        if torch.cuda.is_available():
            folders = {"colab": {"BRATS_DATA_DIR": root / "content" / "drive" / "MyDrive" / "brats3d-data",
                                 "BRATS_CACHE_DIR": root / "content" / "brats3d-cache"},
                       "kaggle": {"BRATS_DATA_DIR": root / "kaggle" / "working" / "brats3d-data",
                                  "BRATS_CACHE_DIR": root / "kaggle" / "temp" / "brats3d-cache"}}[platform]
            chosen = {key: str(value) for key, value in {"BRATS_PROFILE": "gpu", **folders}.items()
                      if key not in os.environ}
            mount = root / "content" / "drive"
            if platform == "colab" and "BRATS_DATA_DIR" in chosen and not mount.is_dir():
                drive.mount(str(mount))  # the runs and studies outlive the session there
            os.environ.update(chosen)
            if chosen:
                done.append("GPU: " + ", ".join(f"{key}={value}" for key, value in chosen.items()))
    return f"brats setup: {'; '.join(done) or 'nothing to do'} (repository {repo})"


print(_brats_setup())
