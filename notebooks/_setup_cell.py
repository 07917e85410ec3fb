# Setup. On Colab or Kaggle: fetch this repository and install its package.
# torch is preinstalled there and already satisfies the package's range, so pip leaves it alone.
# Anywhere else (your machine, `make lab`, CI) this cell does nothing.
import os
import subprocess
import sys
from pathlib import Path

if "google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
    repo = Path("brats3d-unet").resolve()
    if not repo.exists():
        url = "https://github.com/brats-teaching/brats3d-unet"
        subprocess.run(["git", "clone", "--depth", "1", url, str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(repo)], check=True)
    sys.path.insert(0, str(repo))  # an editable install is seen only after a restart otherwise
    os.chdir(repo / "notebooks")
