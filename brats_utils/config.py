"""Run profiles as plain data, and the folders everything goes to.

Every notebook's first code cell (tagged ``parameters``) calls :func:`get_profile`,
which reads ``BRATS_PROFILE`` from the environment, so one variable switches the
whole series between a seconds-long CI run, a CPU demo and real GPU training.
``$BRATS_SET`` (``key=value`` items separated by ``;``, as ``--set`` on the command
line) changes single fields of it, which is how ``brats demo --set epochs=3`` reaches
the notebooks' kernels.

A profile is a few small frozen dataclasses by concern (:data:`SECTIONS`: data, preprocessing,
loader, model, training, inference, study), written as differences from the defaults
(:func:`make_profile`) and checked when built (every field of its declared type and in its
range, known presets). Each field declares its metadata with :func:`setting` (:class:`Meta`:
range, may change on resume, enters a study fingerprint, acts only with another setting,
legacy value), and every list of setting names is derived from it (:func:`resumable_fields`,
:func:`fingerprint_fields`, :func:`acts_only_with`, :func:`legacy_values`).

Names, one mechanism: every setting has one *flat name* (its field name, or the ``flat`` it
declares: ``sw_patch_size`` for ``inference.patch_size``). ``profile.epochs`` reads
``profile.training.epochs``; ``profile.with_overrides(epochs=3)``, ``--set epochs=3`` and
``--set training.epochs=3`` change it; checkpoints and study fingerprints store the flat form
(:meth:`Profile.as_dict`), so files written before the sections still read. ``amp`` is a
deprecated alias of ``precision`` (``amp=False`` is ``precision="fp32"``, with a FutureWarning).
Derive a variant, never mutate one. Nothing here reads the environment at import:
:func:`data_dir`, :func:`cache_dir`, :func:`runs_dir`, :func:`figures_dir` and :func:`brats_root`
resolve the folders when they are asked.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from brats_utils.errors import ProfileError
from brats_utils.labels import Shape3D

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


#: Environment variable naming your own copy of a real dataset (read only by :func:`brats_root`).
ROOT_ENV = "BRATS_ROOT"


def brats_root() -> Path | None:
    """Your own copy of the real dataset: ``$BRATS_ROOT``, or None when it is not set.

    The one place the variable is read; :mod:`brats_utils.pipeline` (and the command line) hand the
    folder to :mod:`brats_utils.download` and :mod:`brats_utils.datasets` as an argument.
    """
    value = os.environ.get(ROOT_ENV)
    return Path(value).expanduser() if value else None


def figures_dir() -> Path:
    """Figures the notebooks save and the README shows: ``$BRATS_FIGURES_DIR`` or ``figures/``."""
    return Path(os.environ.get("BRATS_FIGURES_DIR") or repo_root() / "figures").expanduser()


def cache_dir() -> Path:
    """Preprocessed-case caches of every profile: ``$BRATS_CACHE_DIR`` or ``<data_dir>/cache``.

    Kept apart from the runs (:func:`runs_dir`) so each can sit where it fits: the cache (about
    11 GB for BraTS 2020, rebuilt from the data when lost) on fast local disk, the runs (small,
    not rebuilt) on storage that outlives the session (docs/platforms.md).
    """
    return Path(os.environ.get("BRATS_CACHE_DIR") or data_dir() / "cache").expanduser()


def runs_dir() -> Path:
    """Checkpoints, histories and predictions of every profile: ``$BRATS_RUNS_DIR`` or ``<data_dir>/runs``."""
    return Path(os.environ.get("BRATS_RUNS_DIR") or data_dir() / "runs").expanduser()


# --- run profiles: settings in sections, metadata on every field -----------------------



@dataclass(frozen=True)
class Range:
    """The values a number (or every number of a shape) may take; ``None`` always passes."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: object) -> bool:
        if value is None:
            return True
        if isinstance(value, tuple):
            return all(self.holds(v) for v in value)
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'above' if self.low_open else 'at least'} {self.low:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


AT_LEAST_1 = Range(low=1)
NOT_NEGATIVE = Range(low=0)
ABOVE_0 = Range(low=0, low_open=True)
UNIT_OPEN = Range(0, 1, low_open=True, high_open=True)  # (0, 1)
UNIT_HALF_OPEN = Range(0, 1, high_open=True)  # [0, 1)
UNIT_CLOSED = Range(0, 1)  # [0, 1]


#: ``Meta.legacy`` of a field whose default is also what checkpoints written before it meant.
NO_LEGACY = type("NoLegacy", (), {"__repr__": lambda self: "NO_LEGACY"})()


@dataclass(frozen=True)
class Meta:
    """What a profile field declares besides its type and default (read with :func:`field_meta`).

    - ``range``: the values it may take (:class:`Range`), checked when a profile is built.
    - ``resumable``: it may change between a run and its resumption (it does not alter what the
      epochs already trained computed): :func:`resumable_fields`.
    - ``fingerprint``: it enters a study row's fingerprint (a changed value trains the row again):
      :func:`fingerprint_fields`.
    - ``acts_only_with``: ``(flat name, value)`` of the setting it acts with (``region_prior`` only
      with ``target="regions"``); otherwise it is left out of comparisons: :func:`acts_only_with`.
    - ``legacy``: what a checkpoint written before the field existed meant, where that is not the
      default today: :func:`legacy_values`.
    - ``registry``: the registry (``module.NAME``) whose entries are its values; checked where the
      entries are looked up (:func:`brats_utils.pipeline.check_registered`), as config sits below them.
    - ``flat``: its name in the flat form (checkpoints, ``--set`` and ``profile.<flat>``) where that
      differs from the field's own name in its section.
    """

    range: Range | None = None
    resumable: bool = False
    fingerprint: bool = True
    acts_only_with: tuple[str, object] | None = None
    legacy: object = NO_LEGACY
    registry: str | None = None
    flat: str | None = None


def setting(default: object, **meta: object) -> dataclasses.Field:
    """A section field with its default and its :class:`Meta` (``range``, ``resumable``, ...)."""
    return dataclasses.field(default=default, metadata={"meta": Meta(**meta)})


class _Section:
    """Type and range checks every section runs when it is built."""

    def __post_init__(self) -> None:
        problems = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            flat = flat_name(type(self), field)
            _check_type(flat, value, _hints(type(self))[field.name])
            meta = field_meta(field)
            if meta.range is not None and not meta.range.holds(value):
                problems.append(f"{flat}={value} is not {meta.range}")
        problems += self._problems()
        if problems:
            raise ProfileError(f"{SECTION_NAMES[type(self)]} settings: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        """Checks across fields of the section (none by default)."""
        return []


@dataclass(frozen=True)
class DataSettings(_Section):
    """Which cases: the data source and dataset, the synthetic stand-in, the patient split."""

    # "synthetic" generates the Kaggle layout; "real" needs BraTS 2020 (kagglehub/BRATS_ROOT)
    data_source: Literal["synthetic", "real"] = setting("synthetic")
    # which dataset (its layout, label scheme and metrics protocol: datasets.LAYOUTS); synthetic data is
    # written in its layout
    dataset: str = setting("brats2020", registry="datasets.LAYOUTS")
    # "brats2020": Dice/HD95 per region; "lesionwise": BraTS 2023's; "brats2025": the challenge's package
    # (extra "official"; the project's lesion-wise without it); None: the dataset's own
    # (pipeline.metrics_protocol)
    metrics_protocol: str | None = setting(None, resumable=True, registry="lesion_metrics.PROTOCOLS")
    synthetic_train_cases: int = setting(20, range=AT_LEAST_1)
    synthetic_val_cases: int = setting(4, range=NOT_NEGATIVE)
    synthetic_shape: Shape3D = setting((240, 240, 155), range=AT_LEAST_1)
    seed: int = setting(42)
    # seeds the patches, augmentation and order (None: seed); not the split
    data_seed: int | None = setting(None)
    max_cases: int | None = setting(None, range=AT_LEAST_1)  # the first N training cases (None: all)
    # seconds a process waits for another that is building the shared synthetic dataset or cache
    lock_timeout: float = setting(3600.0, range=NOT_NEGATIVE, resumable=True, fingerprint=False)
    val_fraction: float = setting(0.2, range=UNIT_OPEN)  # patient-level split, as the authors (80/20)
    # share of the patients held out as a test set before the train/validation split (0: none)
    test_fraction: float = setting(0.0, range=UNIT_HALF_OPEN)
    # case ids removed from the training cases after the split (the authors dropped case 355)
    exclude_from_training: tuple[str, ...] = setting(())
    # case ids of one stratum (e.g. the low-grade cases): test and validation cases are drawn
    # proportionally from them and from the others (data.split_patients); () draws from all alike
    stratify_split: tuple[str, ...] = setting(())
    # k-fold cross-validation (nnU-Net's practice): with fold=k the non-test patients are cut into n_folds
    # seeded folds, fold k validates and the others train; each fold trains into run_dir/fold<k>
    fold: int | None = setting(None, range=NOT_NEGATIVE)
    n_folds: int = setting(5, range=Range(low=2))

    def _problems(self) -> list[str]:
        if self.fold is not None and self.fold >= self.n_folds:
            return [f"fold={self.fold} is not in [0, n_folds={self.n_folds})"]
        return []


@dataclass(frozen=True)
class PreprocessingSettings(_Section):
    """How a case becomes network input, in training and prediction alike."""

    # z-score "brain" (inside the brain mask) or "volume" (every voxel, background included: the authors)
    normalisation: Literal["brain", "volume"] = setting("brain")
    crop: bool = setting(True)  # crop to the brain's bounding box (+ margin)
    margin: int = setting(2, range=NOT_NEGATIVE, flat="crop_margin")


@dataclass(frozen=True)
class LoaderSettings(_Section):
    """Training patches and their augmentation (:func:`brats_utils.data.make_loaders` takes this)."""

    patch_size: Shape3D | None = setting((128, 128, 128), range=AT_LEAST_1)  # None: whole cropped volumes
    samples_per_volume: int = setting(2, range=AT_LEAST_1)
    foreground_fraction: float = setting(0.5, range=UNIT_CLOSED)
    # "none" | "in_plane" (the paper) | "mirror" (all three axes: pairs with 8-flip TTA) | "strong"
    augmentation: str = setting("mirror", registry="augment.AUGMENTATIONS")
    batch_size: int = setting(2, range=AT_LEAST_1)
    num_workers: int = setting(2, range=NOT_NEGATIVE, resumable=True, fingerprint=False)


@dataclass(frozen=True)
class ModelSettings(_Section):
    """The network and what it predicts."""

    model_preset: str = setting("paper", registry="model.PRESETS")  # a preset of the model (model.PRESETS)
    dropout: float = setting(0.1, range=UNIT_HALF_OPEN)
    # "paper": Kaiming as the text states; "authors": their code's (model.init_weights_authors_)
    init: Literal["paper", "authors"] = setting("paper")
    # "labels": the paper's 4-class softmax; "regions": 3 sigmoids WT/TC/ET (nnU-Net)
    target: str = setting("labels", registry="regions.TARGETS")
    # regions: the sigmoids start at this probability of a voxel being in a region (their biases at
    # logit(region_prior), Lin et al. 2017); None: bias 0, every voxel 50 % tumour at the start (nnU-Net);
    # region models trained before this setting existed started at bias 0
    region_prior: float | None = setting(0.01, range=UNIT_OPEN, acts_only_with=("target", "regions"),
                                         legacy=None)


@dataclass(frozen=True)
class TrainingSettings(_Section):
    """The optimisation (the paper's recipe by default), the loss, precision and checkpoints."""

    epochs: int = setting(100, range=AT_LEAST_1, resumable=True)
    steps_per_epoch: int | None = setting(None, range=AT_LEAST_1)  # None: one pass over the patches
    lr: float = setting(5e-4, range=ABOVE_0)
    weight_decay: float = setting(5e-4, range=NOT_NEGATIVE)
    # "plateau": ReduceLROnPlateau on the validation loss; "cosine": CosineAnnealingLR(T_max=cosine_t_max,
    # eta_min=min_lr) stepped once per epoch (the authors' final run)
    lr_schedule: Literal["plateau", "cosine"] = setting("plateau")
    cosine_t_max: int = setting(30, range=AT_LEAST_1)
    plateau_factor: float = setting(0.5, range=UNIT_OPEN)
    plateau_patience: int = setting(2, range=NOT_NEGATIVE)
    min_lr: float = setting(1e-6, range=NOT_NEGATIVE)
    early_stop_patience: int = setting(10, range=AT_LEAST_1, resumable=True)
    early_stop_min_delta: float = setting(1e-3, range=NOT_NEGATIVE)
    # "strict": improvement means loss < best - min_delta; "authors": any loss up to min_delta above
    # the best becomes the best and resets the counter (schedules.EarlyStopping)
    early_stop_rule: Literal["strict", "authors"] = setting("strict")
    grad_clip_norm: float = setting(1.5, range=ABOVE_0)
    # "auto": fp16 on CUDA, bf16 on a CPU with native bf16, fp32 elsewhere (brats_utils.precision)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting("auto", resumable=True)
    compile: bool = setting(False, resumable=True)  # torch.compile the network for training and prediction
    # the loss (regions.LOSSES): "ce_dice" is ce_weight x cross-entropy + dice_weight x soft Dice
    loss: str = setting("ce_dice", registry="regions.LOSSES")
    ce_weight: float = setting(0.3, range=NOT_NEGATIVE)
    dice_weight: float = setting(0.7, range=NOT_NEGATIVE)
    batch_dice: bool = setting(False)  # one Dice per class over the whole batch (the paper's wording)
    dice_include_background: bool = setting(True)  # False: Dice over the tumour classes only
    init_seed: int | None = setting(None)  # seeds initialisation and dropout (None: seed); not the split
    checkpoint_every: int = setting(5, range=AT_LEAST_1, resumable=True, fingerprint=False)
    max_val_cases: int | None = setting(None, range=AT_LEAST_1)  # validate on the first N (None: all)
    # the validation score that picks best.pt: "val_dice_mean" (mean of WT, TC and ET Dice, what BraTS
    # scores) or "val_paper_dice" (the paper's mean over the four labels, background included: the
    # authors'); runs before this setting chose by the paper's metric
    best_metric: Literal["val_dice_mean", "val_paper_dice"] = setting("val_dice_mean",
                                                                      legacy="val_paper_dice")
    # validate in fp32 whatever ``precision`` trains in (the authors did)
    fp32_validation: bool = setting(False, resumable=True)


@dataclass(frozen=True)
class InferenceSettings(_Section):
    """The sliding window and test-time augmentation (validation during training uses it too)."""

    patch_size: Shape3D = setting((128, 128, 128), range=AT_LEAST_1, flat="sw_patch_size")
    overlap: float = setting(0.5, range=UNIT_HALF_OPEN, flat="sw_overlap")
    # windows per forward pass; None: 1 on a CPU, 2 on a GPU (the same numbers either way)
    sw_batch_size: int | None = setting(None, range=AT_LEAST_1, resumable=True)
    tta: bool = setting(False, resumable=True)
    # the enhancing-tumour rule (brats_utils.postprocess): a predicted ET smaller than this (mm³) becomes
    # NCR/NET. None: chosen on the run's validation predictions (pipeline.et_rule_for) whenever other
    # cases are predicted; 0: off (the paper and the authors' code have no post-processing)
    min_et_volume_mm3: float | None = setting(None, range=NOT_NEGATIVE, resumable=True)


@dataclass(frozen=True)
class StudySettings(_Section):
    """The architecture study (notebook 07) and the future-work study (notebook 08): never a run's result."""

    compare_presets: tuple[str, ...] = setting((), resumable=True, fingerprint=False,
                                               registry="model.PRESETS")
    compare_epochs: int = setting(1, range=AT_LEAST_1, resumable=True, fingerprint=False)
    compare_steps_per_epoch: int | None = setting(None, range=AT_LEAST_1, resumable=True, fingerprint=False)
    beyond_variants: tuple[str, ...] = setting((), resumable=True)  # (): every variant of beyond.VARIANTS
    beyond_seeds: int = setting(3, range=AT_LEAST_1, resumable=True)


#: The sections of a profile, by attribute name, in the order of :meth:`Profile.as_dict`.
SECTIONS: dict[str, type[_Section]] = {
    "data": DataSettings, "preprocessing": PreprocessingSettings, "loader": LoaderSettings,
    "model": ModelSettings, "training": TrainingSettings, "inference": InferenceSettings,
    "study": StudySettings,
}
SECTION_NAMES: dict[type, str] = {cls: name for name, cls in SECTIONS.items()}
#: Flat names that are no setting any more, with what replaced them (read and set with a FutureWarning).
DEPRECATED = {"amp": "training.precision (amp=False is precision='fp32')"}


def field_meta(field: dataclasses.Field) -> Meta:
    """The :class:`Meta` a section field declares."""
    return field.metadata.get("meta", Meta())


def flat_name(section: type, field: dataclasses.Field) -> str:
    """The field's name in the flat form: its own name unless it declares ``flat``."""
    return field_meta(field).flat or field.name


@functools.cache
def _hints(section: type) -> dict[str, object]:
    return typing.get_type_hints(section, globalns={**globals(), "Shape3D": Shape3D})


@functools.cache
def flat_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every setting by flat name: ``{flat name: (section, field)}`` (``epochs``, ``sw_patch_size``, ...)."""
    found: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            name = flat_name(cls, field)
            assert name not in found, f"two settings are called {name}"
            found[name] = (section, field)
    return found


def _resolve(key: str) -> tuple[str, str]:
    """``(section, field)`` of a flat name or a ``section.field`` name; :class:`ProfileError` otherwise."""
    section, dot, name = key.partition(".")
    if dot and section in SECTIONS and name in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        return section, name
    if key in flat_fields():
        section, field = flat_fields()[key]
        return section, field.name
    raise ProfileError(f"unknown profile field {key!r}",
                       expected=f"one of {', '.join(flat_fields())}, or section.field")


def resumable_fields() -> frozenset[str]:
    """Flat names that may change when a run is resumed (plus the profile's name and description)."""
    return frozenset({"name", "description"} | {name for name, (_, field) in flat_fields().items()
                                                 if field_meta(field).resumable})


def fingerprint_fields() -> frozenset[str]:
    """Flat names that enter a study row's fingerprint (every other setting leaves the row valid)."""
    return frozenset(name for name, (_, field) in flat_fields().items() if field_meta(field).fingerprint)


def acts_only_with() -> dict[str, tuple[str, object]]:
    """``{flat name: (flat name, value)}``: settings that act only when another has that value."""
    return {name: field_meta(field).acts_only_with for name, (_, field) in flat_fields().items()
            if field_meta(field).acts_only_with is not None}


def registered_fields() -> dict[str, str]:
    """``{flat name: registry}``: settings whose value names an entry of a registry (``"regions.LOSSES"``)."""
    return {name: field_meta(field).registry for name, (_, field) in flat_fields().items()
            if field_meta(field).registry is not None}


def legacy_values() -> dict[str, object]:
    """``{flat name: value}``: what checkpoints written before a field existed meant, if not its default."""
    return {name: field_meta(field).legacy for name, (_, field) in flat_fields().items()
            if field_meta(field).legacy is not NO_LEGACY}


def defaults() -> dict[str, object]:
    """Every setting's default, by flat name."""
    return {name: field.default for name, (_, field) in flat_fields().items()}


def _deprecated(key: str) -> None:
    warnings.warn(f"profile setting {key!r} is deprecated: use {DEPRECATED[key]}", FutureWarning,
                  stacklevel=3)


def _translate_deprecated(changes: dict[str, object]) -> dict[str, object]:
    """``changes`` with deprecated names replaced by their settings (``amp=False``: ``precision="fp32"``)."""
    if "amp" not in changes:
        return changes
    changes = dict(changes)
    amp = changes.pop("amp")
    if not isinstance(amp, bool):
        raise ProfileError(f"profile field amp cannot be {amp!r}", expected="a value of type bool")
    if not amp:
        changes["precision"] = "fp32"
    return changes


def saved_settings(config: dict) -> dict:
    """A checkpoint's saved flat ``config`` as today's flat settings: fields added since count as their
    default, or their legacy meaning (:func:`legacy_values`); ``amp=False`` counts as ``precision="fp32"``."""
    known = {key: value for key, value in config.items() if key in flat_fields() or key in DEPRECATED
             or key in ("name", "description")}
    return {**defaults(), **legacy_values(), **_translate_deprecated(known)}


@dataclass(frozen=True)
class Profile:
    """Every setting of one run, in sections by concern (:data:`SECTIONS`).

    Read a setting as ``profile.training.epochs`` or, the flat alias every earlier notebook used,
    ``profile.epochs`` (:func:`flat_fields` lists the flat names; ``sw_patch_size`` is
    ``inference.patch_size``, ``sw_overlap`` is ``inference.overlap``, ``crop_margin`` is
    ``preprocessing.margin``). Change one with :meth:`with_overrides`, by flat or ``section.field`` name.
    """

    name: str
    description: str
    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    preprocessing: PreprocessingSettings = dataclasses.field(default_factory=PreprocessingSettings)
    loader: LoaderSettings = dataclasses.field(default_factory=LoaderSettings)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    training: TrainingSettings = dataclasses.field(default_factory=TrainingSettings)
    inference: InferenceSettings = dataclasses.field(default_factory=InferenceSettings)
    study: StudySettings = dataclasses.field(default_factory=StudySettings)

    def __post_init__(self) -> None:
        for key in ("name", "description"):
            if not isinstance(getattr(self, key), str):
                raise ProfileError(f"profile field {key} cannot be {getattr(self, key)!r}", expected="a str")
        for section, cls in SECTIONS.items():
            if not isinstance(getattr(self, section), cls):
                raise ProfileError(f"profile section {section} cannot be {getattr(self, section)!r}",
                                   expected=f"a {cls.__name__}")

    def __getattr__(self, key: str) -> object:
        """Flat read access: ``profile.epochs`` is ``profile.training.epochs`` (see the class docstring)."""
        if key in DEPRECATED:  # amp: the older switch, on unless precision is fp32
            _deprecated(key)
            return self.training.precision != "fp32"
        entry = flat_fields().get(key)
        if entry is None or key.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        section, field = entry
        return getattr(object.__getattribute__(self, section), field.name)

    def with_overrides(self, **changes: object) -> Profile:
        """A copy with some settings changed (checked again): by flat name (``epochs=3``) or
        ``section.field`` (``**{"inference.tta": True}``), or whole sections (``training=...``).
        Unknown names raise ``TypeError``; ``amp`` is read as ``precision`` with a ``FutureWarning``."""
        if any(key in DEPRECATED for key in changes):
            for key in DEPRECATED.keys() & changes.keys():
                _deprecated(key)
            changes = _translate_deprecated(changes)
        top = {key: changes.pop(key) for key in list(changes) if key in ("name", "description", *SECTIONS)}
        by_section: dict[str, dict[str, object]] = {}
        for key, value in changes.items():
            try:
                section, name = _resolve(key)
            except ProfileError as error:
                raise TypeError(str(error)) from None
            by_section.setdefault(section, {})[name] = value
        for section, fields in by_section.items():
            top[section] = dataclasses.replace(top.get(section, getattr(self, section)), **fields)
        return dataclasses.replace(self, **top)

    @property
    def requested_precision(self) -> str:
        """``training.precision`` (resolved per device by :func:`brats_utils.precision.resolve_precision`)."""
        return self.training.precision

    def as_dict(self) -> dict:
        """Flat plain-dict form, by flat names (checkpoints, study fingerprints, JSON)."""
        flat = {"name": self.name, "description": self.description}
        for section in SECTIONS:
            values = getattr(self, section)
            flat.update({flat_name(type(values), field): getattr(values, field.name)
                         for field in dataclasses.fields(values)})
        return flat

    def acting_settings(self) -> dict:
        """:meth:`as_dict` without the settings that do nothing in this run (:func:`acting_settings`)."""
        return acting_settings(self.as_dict())

    @property
    def _folder_name(self) -> str:
        """The profile's name, with the dataset when it is not BraTS 2020 (caches and runs never mix)."""
        return self.name if self.data.dataset == "brats2020" else f"{self.name}-{self.data.dataset}"

    @property
    def synthetic_dir(self) -> Path:
        """Where this profile's synthetic dataset is generated."""
        shape = "x".join(map(str, self.data.synthetic_shape))
        return data_dir() / "synthetic" / f"{self.name}-{shape}-seed{self.data.seed}"

    @property
    def cache_dir(self) -> Path:
        """Preprocessed-case cache of this profile."""
        return cache_dir() / self._folder_name

    @property
    def run_dir(self) -> Path:
        """Checkpoints, history and predictions of this profile's run (``.../fold<k>`` for one fold)."""
        base = runs_dir() / self._folder_name
        return base if self.data.fold is None else base / f"fold{self.data.fold}"


def make_profile(name: str, description: str, base: Profile | None = None, **changes: object) -> Profile:
    """A profile written as its differences from ``base`` (default: every setting's default)."""
    base = base or Profile(name=name, description=description)
    return base.with_overrides(name=name, description=description, **changes)


# --- checking fields ---------------------------------------------------------------------


def acting_settings(settings: dict) -> dict:
    """``settings`` (a profile's :meth:`Profile.as_dict`, or a checkpoint's saved copy) without the settings
    whose :func:`acts_only_with` condition does not hold, so that two runs that compute the same thing
    compare equal (a softmax run is the same run whatever its ``region_prior``)."""
    conditions = acts_only_with()
    return {key: value for key, value in settings.items()
            if key not in conditions or settings.get(conditions[key][0]) == conditions[key][1]}


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` as a checked ``(field, value)``: the value is read as a Python literal when it is one.

    ``epochs=3`` gives ``("epochs", 3)``, ``patch_size=(64,64,64)`` a tuple,
    ``model_preset=l4_f16`` the plain string, ``training.lr=1e-3`` names the section. The value
    must fit the field's declared type (``amp=yes`` is refused, not taken as a truthy string);
    raises :class:`ProfileError`.
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


def _fits(value: object, hint: object) -> bool:
    """Whether ``value`` is of the type ``hint`` (the few kinds of type a setting has)."""
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


def _check_type(name: str, value: object, hint: object) -> None:
    if not _fits(value, hint):
        shown = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        raise ProfileError(f"profile field {name} cannot be {value!r}", expected=f"a value of type {shown}")


def check_field(name: str, value: object) -> object:
    """``value`` if it fits the declared type of the setting ``name`` (flat or ``section.field``), else
    :class:`ProfileError`. ``amp`` (deprecated) must be a bool."""
    if name in DEPRECATED:
        _check_type(name, value, bool)
        return value
    if name in ("name", "description"):
        _check_type(name, value, str)
        return value
    section, field = _resolve(name)
    _check_type(name, value, _hints(SECTIONS[section])[field])
    return value


# --- the named profiles ------------------------------------------------------------------

#: The paper's five models and the four deeper ones as the authors ran them (model.PAPER_PRESETS, as_run).
_ALL_PRESETS = ("paper", "l4_f16", "l4_f16_as_run", "l4_f32", "l4_f32_as_run", "l5_f16", "l5_f16_as_run",
                "l5_f32", "l5_f32_as_run")

PROFILES: dict[str, Profile] = {
    "ci": make_profile(
        "ci",
        "Tiny synthetic volumes and a few steps: every notebook in seconds on a CPU.",
        # 8 labelled cases: 2 test, 2 validation, 4 training (the split of demo and gpu, in small)
        synthetic_train_cases=8,
        test_fraction=0.2,
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
    "demo": make_profile(
        "demo",
        "Synthetic cases at CPU-friendly size: a few minutes on 2 cores, still learns.",
        # 50 labelled cases: 30 test (enough for a paired test to separate methods: docs/reproduction.md),
        # 4 validation, 16 training; the split stratified by grade so that test and validation hold
        # their share of the ten low-grade cases, 6 and 1 (036-045, where synthetic.is_low_grade places
        # them on the real numbering; config sits below synthetic, so a test checks the two agree)
        synthetic_train_cases=50,
        test_fraction=0.6,
        stratify_split=tuple(f"BraTS20_Training_{i:03d}" for i in range(36, 46)),
        synthetic_val_cases=3,
        # tuned on 2 CPU cores: 30 epochs x 20 steps of 48^3 patches, each with a validation on 4 whole
        # volumes, take about 3.5 minutes in bf16 (6.5 s an epoch). At 12 epochs (the budget until
        # 2026-12-07) the validation mean region Dice was still rising (0.61 at the last epoch); a run
        # of 48 epochs on the phantoms of generator 3 reached 0.74 at epoch 21 and then wavered
        # between 0.61 and 0.70 (4 validation cases), the learning rate halving first at epoch 32. On
        # the harder phantoms of generator 4, 12 steps an epoch still improved at the last epoch, and
        # 20 steps raised the validation Dice WT / TC / ET from 0.750 / 0.844 / 0.651 to 0.767 / 0.858
        # / 0.657 (on the trial phantoms of docs/phantoms.md; 3.3 min of training on 2 idle cores)
        synthetic_shape=(96, 96, 64),
        patch_size=(48, 48, 48),
        samples_per_volume=2,
        batch_size=2,
        num_workers=0,
        epochs=30,
        steps_per_epoch=20,
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
    "gpu": make_profile(
        "gpu",
        ("Real BraTS 2020 on a 16 GB GPU (Colab/Kaggle T4): AMP, 128^3 patches; "
                     "train / validation / test at patient level."),
        data_source="real",
        test_fraction=0.2,
        patch_size=(128, 128, 128),
        samples_per_volume=2,
        batch_size=2,
        num_workers=2,
        epochs=100,
        compare_presets=_ALL_PRESETS,
        compare_epochs=10,
    ),
    "paper": make_profile(
        "paper",
        (
            "The paper's text where it is unambiguous: whole volumes cropped to the brain's bounding box "
            "(the text's 240x240x155 input read together with its 'within the brain region'; see "
            "docs/reproduction.md), z-score inside the brain, batch 2, in-plane flips and rot90, "
            "dropout 0.3, "
            "AdamW 5e-4/5e-4, plateau x0.5 after 2 epochs, early stop after 10; 80/20 split, seed 42."
        ),
        data_source="real",
        patch_size=None,
        samples_per_volume=1,
        foreground_fraction=0.0,
        batch_size=2,
        num_workers=2,
        augmentation="in_plane",
        dropout=0.3,
        min_et_volume_mm3=0.0,  # no post-processing in the paper
        best_metric="val_paper_dice",  # "the best by validation Dice", the paper's Dice being its metric
        epochs=300,
        sw_patch_size=(240, 240, 160),
        sw_batch_size=1,
        compare_presets=_ALL_PRESETS,
        compare_epochs=90,
    ),
    "authors": make_profile(
        "authors",
        (
            "The authors' final run as their code did it: whole uncropped 240x240x155 volumes, z-score over "
            "the whole volume (background included), batch 2, no augmentation, dropout 0.1, their init, "
            "AdamW 5e-4/5e-3, cosine T_max 30, their early stopping; 294/74 with the best epoch chosen on "
            "the 74 reported cases (docs/reproduction.md)."
        ),
        data_source="real",
        test_fraction=0.0,
        exclude_from_training=("BraTS20_Training_355",),
        normalisation="volume",
        crop=False,
        patch_size=None,
        samples_per_volume=1,
        foreground_fraction=0.0,
        augmentation="none",
        batch_size=2,
        num_workers=2,
        dropout=0.1,
        init="authors",
        weight_decay=5e-3,
        lr_schedule="cosine",
        cosine_t_max=30,
        min_et_volume_mm3=0.0,  # their code has no post-processing
        early_stop_rule="authors",
        best_metric="val_paper_dice",
        fp32_validation=True,
        epochs=300,
        sw_patch_size=(240, 240, 155),
        sw_batch_size=1,
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
