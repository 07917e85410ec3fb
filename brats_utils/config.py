"""Project-wide constants, folder locations and the named run profiles.

Every notebook's first code cell (tagged ``parameters``) calls :func:`get_profile`,
which reads ``BRATS_PROFILE`` from the environment, so one variable switches the
whole series between a seconds-long CI run, a CPU demo and real GPU training.

Profiles are frozen dataclasses: derive a variant with :func:`dataclasses.replace`
(or ``profile.with_overrides(epochs=3)``), never by mutating one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# --- conventions that never change -------------------------------------------------

#: Channel order of every image tensor: the authors' order, needed to load their weights.
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
#: Label values found in BraTS 2020 segmentation files (there is no label 3).
FILE_LABELS: tuple[int, ...] = (0, 1, 2, 4)
#: Contiguous labels used for training (file label 4 becomes 3).
TRAIN_LABELS: tuple[int, ...] = (0, 1, 2, 3)
#: Names of the tumour sub-regions, keyed by file label.
LABEL_NAMES: dict[int, str] = {0: "background", 1: "NCR/NET", 2: "ED", 4: "ET"}
#: One colour per tumour label, used by every figure of the project.
LABEL_COLORS: dict[int, str] = {1: "#e41a1c", 2: "#4daf4a", 4: "#ffd92f"}
#: BraTS evaluation regions as sets of file labels.
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
#: One colour per evaluation region.
REGION_COLORS: dict[str, str] = {"WT": "#4daf4a", "TC": "#e41a1c", "ET": "#ffd92f"}

#: The Kaggle copy of BraTS 2020 the paper used, version-pinned so a cached copy works offline.
KAGGLE_HANDLE = "awsaf49/brats20-dataset-training-validation/versions/1"
TRAINING_DIR_NAME = "MICCAI_BraTS2020_TrainingData"
VALIDATION_DIR_NAME = "MICCAI_BraTS2020_ValidationData"

#: Where the notebooks live on GitHub (badges and the Colab/Kaggle setup cell).
REPO_SLUG = "brats-teaching/brats3d-unet"
REPO_URL = f"https://github.com/{REPO_SLUG}"

# --- folders -----------------------------------------------------------------------


def _repo_root() -> Path:
    """The checkout this package lives in, or the working directory when installed."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


REPO_ROOT = _repo_root()
#: Everything the project writes (synthetic data, caches, runs); override with BRATS_DATA_DIR.
DATA_DIR = Path(os.environ.get("BRATS_DATA_DIR", REPO_ROOT / "data")).expanduser()
#: Figures the notebooks save and the README shows; override with BRATS_FIGURES_DIR.
FIGURES_DIR = Path(os.environ.get("BRATS_FIGURES_DIR", REPO_ROOT / "figures")).expanduser()


# --- run profiles ------------------------------------------------------------------

Shape3D = tuple[int, int, int]


@dataclass(frozen=True)
class Profile:
    """Every setting of one run, from the data source to the architecture study."""

    name: str
    description: str

    # data: "synthetic" generates the Kaggle layout; "real" needs BraTS 2020 (kagglehub/BRATS_ROOT)
    data_source: Literal["synthetic", "real"] = "synthetic"
    synthetic_train_cases: int = 20
    synthetic_val_cases: int = 4
    synthetic_shape: Shape3D = (240, 240, 155)
    seed: int = 42
    max_cases: int | None = None  # use only the first N training cases (None: all)
    val_fraction: float = 0.2  # patient-level split, as the authors (80/20, seed 42)

    # preprocessing
    crop_margin: int = 2

    # patches and augmentation; patch_size None trains on whole cropped volumes
    patch_size: Shape3D | None = (128, 128, 128)
    samples_per_volume: int = 2
    foreground_fraction: float = 0.5
    augment: bool = True
    batch_size: int = 2
    num_workers: int = 2

    # model
    model_preset: str = "paper"
    dropout: float = 0.1

    # optimisation (the paper's recipe)
    epochs: int = 100
    steps_per_epoch: int | None = None  # None: one pass over the patch dataset
    lr: float = 5e-4
    weight_decay: float = 5e-4
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_lr: float = 1e-6
    early_stop_patience: int = 10
    early_stop_min_delta: float = 1e-3
    grad_clip_norm: float = 1.5
    amp: bool = True  # used only on CUDA
    ce_weight: float = 0.3
    dice_weight: float = 0.7
    checkpoint_every: int = 5
    max_val_cases: int | None = None  # validate on the first N validation cases (None: all)

    # inference
    sw_patch_size: Shape3D = (128, 128, 128)
    sw_overlap: float = 0.5
    sw_batch_size: int = 2
    tta: bool = False

    # architecture study
    compare_presets: tuple[str, ...] = ()
    compare_epochs: int = 1
    compare_steps_per_epoch: int | None = None

    def with_overrides(self, **changes: object) -> Profile:
        """A copy with some fields changed; unknown names raise ``TypeError``."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """Plain-dict form (for checkpoints and JSON)."""
        return dataclasses.asdict(self)

    @property
    def synthetic_dir(self) -> Path:
        """Where this profile's synthetic dataset is generated."""
        shape = "x".join(map(str, self.synthetic_shape))
        return DATA_DIR / "synthetic" / f"{self.name}-{shape}-seed{self.seed}"

    @property
    def cache_dir(self) -> Path:
        """Preprocessed-case cache of this profile."""
        return DATA_DIR / "cache" / self.name

    @property
    def run_dir(self) -> Path:
        """Checkpoints, history and predictions of this profile's training run."""
        return DATA_DIR / "runs" / self.name


_ALL_PRESETS = ("paper", "l4_f16", "l4_f16_as_run", "l4_f32", "l4_f32_as_run",
                "l5_f16", "l5_f16_as_run", "l5_f32", "l5_f32_as_run")

PROFILES: dict[str, Profile] = {
    "ci": Profile(
        name="ci",
        description="Tiny synthetic volumes and a few steps: every notebook in seconds on a CPU.",
        synthetic_train_cases=6,
        synthetic_val_cases=2,
        synthetic_shape=(48, 48, 32),
        crop_margin=1,
        patch_size=(32, 32, 32),
        samples_per_volume=2,
        batch_size=2,
        num_workers=0,
        epochs=2,
        steps_per_epoch=3,
        early_stop_patience=5,
        checkpoint_every=1,
        sw_patch_size=(32, 32, 32),
        compare_presets=("paper", "l4_f16", "l4_f16_as_run"),
        compare_epochs=1,
        compare_steps_per_epoch=2,
    ),
    "demo": Profile(
        name="demo",
        description="Synthetic cases at CPU-friendly size: a few minutes on 2 cores, still learns.",
        synthetic_train_cases=20,
        synthetic_val_cases=3,
        # tuned on 2 CPU cores: 12 epochs x 12 steps of 48^3 patches, each with a validation on 4 whole
        # volumes, take 2.5 minutes (0.8 s per step) and reach a validation WT Dice of 0.85-0.88
        synthetic_shape=(96, 96, 64),
        patch_size=(48, 48, 48),
        samples_per_volume=2,
        batch_size=2,
        num_workers=0,
        epochs=12,
        steps_per_epoch=12,
        early_stop_patience=10,
        checkpoint_every=5,
        sw_patch_size=(64, 64, 64),
        sw_batch_size=1,
        # all nine models would take over half an hour on 2 cores; these three show the as-run
        # finding, each with a third of the main run's budget (about 1, 2 and 2 minutes)
        compare_presets=("paper", "l4_f16", "l4_f16_as_run"),
        compare_epochs=4,
        compare_steps_per_epoch=12,
    ),
    "gpu": Profile(
        name="gpu",
        description="Real BraTS 2020 on a 16 GB GPU (Colab/Kaggle T4): AMP, 128^3 patches.",
        data_source="real",
        patch_size=(128, 128, 128),
        samples_per_volume=2,
        batch_size=2,
        num_workers=2,
        epochs=100,
        compare_presets=_ALL_PRESETS,
        compare_epochs=10,
    ),
    "paper": Profile(
        name="paper",
        description=(
            "The paper's settings as written: whole 240x240x155 volumes, batch 2, dropout 0.3, "
            "AdamW 5e-4/5e-4, plateau x0.5 after 2 epochs, early stop after 10."
        ),
        data_source="real",
        patch_size=None,
        samples_per_volume=1,
        foreground_fraction=0.0,
        batch_size=2,
        num_workers=2,
        dropout=0.3,
        epochs=300,
        sw_patch_size=(240, 240, 160),
        sw_batch_size=1,
        compare_presets=_ALL_PRESETS,
        compare_epochs=90,
    ),
}

DEFAULT_PROFILE = "demo"


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, else ``$BRATS_PROFILE``, else ``demo``.

    Raises ``KeyError`` naming the known profiles when the name is unknown.
    """
    name = name or os.environ.get("BRATS_PROFILE") or DEFAULT_PROFILE
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"Unknown run profile {name!r}; known profiles: {', '.join(PROFILES)}") from None
