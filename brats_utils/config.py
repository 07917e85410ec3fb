"""Run profiles as plain data, the model presets they name, and the folders everything goes to.

Every notebook's first code cell (tagged ``parameters``) calls :func:`get_profile`,
which reads ``BRATS_PROFILE`` from the environment, so one variable switches the
whole series between a seconds-long CI run, a CPU demo and real GPU training.
``$BRATS_SET`` (``key=value`` items separated by ``;``, as ``--set`` on the command
line) changes single fields of it, which is how ``brats demo --set epochs=3`` reaches
the notebooks' kernels.

Profiles are frozen dataclasses written as differences from the defaults, checked when
they are built (fractions in range, positive sizes, known presets, every field of its
declared type): derive a variant with ``profile.with_overrides(epochs=3)``, never by
mutating one. Nothing here reads the environment at import: :func:`data_dir` and
:func:`figures_dir` resolve the folders when they are asked.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from brats_utils.errors import ProfileError

# --- where the data comes from --------------------------------------------------------

#: The Kaggle copy of BraTS 2020 the paper used, version-pinned so a cached copy works offline.
KAGGLE_HANDLE = "awsaf49/brats20-dataset-training-validation/versions/1"
TRAINING_DIR_NAME = "MICCAI_BraTS2020_TrainingData"
VALIDATION_DIR_NAME = "MICCAI_BraTS2020_ValidationData"

#: The paper's five architectures (parameter counts as the paper reports them, i.e. every built weight)
#: and, for the four deeper ones, ``<name>_as_run``: the same modules with only the top three levels
#: wired into the forward pass, which is what the authors' code trained (ARCHITECTURES.md, section 5).
#: :func:`brats_utils.model.build_model` builds them; a profile names one as ``model_preset``.
PRESETS: dict[str, dict] = {
    "paper": {"base_filters": 16, "levels": 3, "units_per_block": 2},  # 340,596
    "l4_f16": {"base_filters": 16, "levels": 4, "units_per_block": 4},  # 2,867,956
    "l4_f32": {"base_filters": 32, "levels": 4, "units_per_block": 4},  # 11,465,188
    "l5_f16": {"base_filters": 16, "levels": 5, "units_per_block": 4},  # 11,536,756
    "l5_f32": {"base_filters": 32, "levels": 5, "units_per_block": 4},  # 46,137,060
}
PRESETS.update({f"{name}_as_run": {**PRESETS[name], "wired_levels": 3} for name in list(PRESETS)[1:]})
#: Presets beyond the paper (notebook 08), kept out of PRESETS so that the paper's tables list its models:
#: attention gates (Oktay et al., 2018) on the paper model's skip connections.
EXTRA_PRESETS: dict[str, dict] = {"paper_attention": {**PRESETS["paper"], "attention_gates": True}}  # +1,330
#: The five models of the paper, smallest first.
PAPER_PRESETS: tuple[str, ...] = ("paper", "l4_f16", "l4_f32", "l5_f16", "l5_f32")

#: Where the notebooks live on GitHub (badges and the Colab/Kaggle setup cell).
REPO_SLUG = "brats-teaching/brats3d-unet"
REPO_URL = f"https://github.com/{REPO_SLUG}"

# --- folders -----------------------------------------------------------------------


def repo_root() -> Path:
    """The checkout this package lives in, or the working directory when installed."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def data_dir() -> Path:
    """Everything the project writes (synthetic data, caches, runs): ``$BRATS_DATA_DIR`` or ``data/``.

    Read at each call, never at import, so a notebook or test that sets the variable is obeyed.
    """
    return Path(os.environ.get("BRATS_DATA_DIR") or repo_root() / "data").expanduser()


def figures_dir() -> Path:
    """Figures the notebooks save and the README shows: ``$BRATS_FIGURES_DIR`` or ``figures/``."""
    return Path(os.environ.get("BRATS_FIGURES_DIR") or repo_root() / "figures").expanduser()


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
    # "none" | "in_plane" (the paper) | "mirror" (all three axes: pairs with 8-flip TTA) | "strong"
    augmentation: Literal["none", "in_plane", "mirror", "strong"] = "mirror"
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

    # beyond the paper (notebook 08, brats_utils.regions and brats_utils.beyond)
    target: Literal["labels", "regions"] = "labels"  # "regions": 3 sigmoids WT/TC/ET (nnU-Net's BraTS)
    batch_dice: bool = False  # one Dice per class over the whole batch (the paper's wording)
    dice_include_background: bool = True  # False: Dice over the tumour classes only
    init_seed: int | None = None  # seeds initialisation and dropout (None: seed); the split keeps seed
    beyond_variants: tuple[str, ...] = ()  # () : every variant of brats_utils.beyond.VARIANTS
    beyond_seeds: int = 3

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check_field(field.name, getattr(self, field.name))
        _check_ranges(self)

    def with_overrides(self, **changes: object) -> Profile:
        """A copy with some fields changed (checked again); unknown names raise ``TypeError``."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """Plain-dict form (for checkpoints and JSON)."""
        return dataclasses.asdict(self)

    @property
    def synthetic_dir(self) -> Path:
        """Where this profile's synthetic dataset is generated."""
        shape = "x".join(map(str, self.synthetic_shape))
        return data_dir() / "synthetic" / f"{self.name}-{shape}-seed{self.seed}"

    @property
    def cache_dir(self) -> Path:
        """Preprocessed-case cache of this profile."""
        return data_dir() / "cache" / self.name

    @property
    def run_dir(self) -> Path:
        """Checkpoints, history and predictions of this profile's training run."""
        return data_dir() / "runs" / self.name


# --- checking fields ---------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` as a checked ``(field, value)``: the value is read as a Python literal when it is one.

    ``epochs=3`` gives ``("epochs", 3)``, ``patch_size=(64,64,64)`` a tuple,
    ``model_preset=l4_f16`` the plain string. The value must fit the field's declared type
    (``amp=yes`` is refused, not taken as a truthy string); raises :class:`ProfileError`.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ProfileError(f"expected key=value, got {text!r}")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    return key, check_field(key, value)


@functools.cache
def _field_types() -> dict[str, object]:
    return typing.get_type_hints(Profile, globalns={**globals(), "Shape3D": Shape3D})


def _fits(value: object, hint: object) -> bool:
    """Whether ``value`` is of the type ``hint`` (the few kinds of type a Profile field has)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_field(name: str, value: object) -> object:
    """``value`` if it fits the declared type of the Profile field ``name``, else :class:`ProfileError`."""
    hints = _field_types()
    if name not in hints:
        raise ProfileError(f"unknown profile field {name!r}", expected=f"one of {', '.join(hints)}")
    hint = hints[name]
    if not _fits(value, hint):
        shown = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        raise ProfileError(f"profile field {name} cannot be {value!r}", expected=f"a value of type {shown}")
    return value


def _check_ranges(p: Profile) -> None:
    """Raise :class:`ProfileError` for a fraction out of range, a size below 1 or an unknown preset."""
    fractions = {"val_fraction": (0 < p.val_fraction < 1, "in (0, 1)"),
                 "foreground_fraction": (0 <= p.foreground_fraction <= 1, "in [0, 1]"),
                 "sw_overlap": (0 <= p.sw_overlap < 1, "in [0, 1)"),
                 "dropout": (0 <= p.dropout < 1, "in [0, 1)")}
    problems = [f"{name}={getattr(p, name)} is not {interval}" for name, (ok, interval) in fractions.items()
                if not ok]
    sizes = {"synthetic_train_cases": p.synthetic_train_cases, "samples_per_volume": p.samples_per_volume,
             "batch_size": p.batch_size, "epochs": p.epochs, "checkpoint_every": p.checkpoint_every,
             "sw_batch_size": p.sw_batch_size, "compare_epochs": p.compare_epochs,
             "steps_per_epoch": p.steps_per_epoch, "max_cases": p.max_cases, "max_val_cases": p.max_val_cases,
             "compare_steps_per_epoch": p.compare_steps_per_epoch, "beyond_seeds": p.beyond_seeds}
    shapes = {"synthetic_shape": p.synthetic_shape, "patch_size": p.patch_size,
              "sw_patch_size": p.sw_patch_size}
    problems += [f"{name}={value} is not positive" for name, value in sizes.items()
                 if value is not None and value < 1]
    problems += [f"{name}={value} is not positive" for name, value in shapes.items()
                 if value is not None and min(value) < 1]
    problems += [f"{name}={getattr(p, name)} is negative" for name in ("synthetic_val_cases", "crop_margin",
                                                                       "num_workers") if getattr(p, name) < 0]
    if p.lr <= 0:
        problems.append(f"lr={p.lr} is not positive")
    known = PRESETS | EXTRA_PRESETS
    unknown = [preset for preset in (p.model_preset, *p.compare_presets) if preset not in known]
    if unknown:
        problems.append(f"unknown model preset(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if problems:
        raise ProfileError(f"profile {p.name!r}: " + "; ".join(problems))


# --- the named profiles ------------------------------------------------------------------

_ALL_PRESETS = tuple(name for base in PAPER_PRESETS for name in (base, f"{base}_as_run") if name in PRESETS)

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
        beyond_seeds=1,
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
        augmentation="in_plane",
        dropout=0.3,
        epochs=300,
        sw_patch_size=(240, 240, 160),
        sw_batch_size=1,
        compare_presets=_ALL_PRESETS,
        compare_epochs=90,
    ),
}

DEFAULT_PROFILE = "demo"
#: Environment variable with ``key=value`` overrides of the chosen profile, separated by ``;``.
OVERRIDES_ENV = "BRATS_SET"


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, else ``$BRATS_PROFILE``, else ``demo``, with ``$BRATS_SET`` applied.

    Raises ``KeyError`` naming the known profiles when the name is unknown, and
    :class:`~brats_utils.errors.ProfileError` for a bad override.
    """
    name = name or os.environ.get("BRATS_PROFILE") or DEFAULT_PROFILE
    try:
        profile = PROFILES[name]
    except KeyError:
        raise KeyError(f"Unknown run profile {name!r}; known profiles: {', '.join(PROFILES)}") from None
    items = [item for item in os.environ.get(OVERRIDES_ENV, "").split(";") if item.strip()]
    return profile.with_overrides(**dict(parse_override(item) for item in items)) if items else profile
