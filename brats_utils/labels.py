"""The vocabulary of the project: modality order, label schemes, regions and one label check.

Every dataset writes its segmentations in its own *label scheme*: BraTS 2020 uses
{0, 1, 2, 4} (there is no 3), BraTS 2023 renumbered enhancing tumour to 3, and the
Medical Segmentation Decathlon's Task01 names its labels differently again. The network
only ever sees one internal set of **training labels 0..3** (0 background, 1 NCR/NET,
2 ED, 3 ET), so a scheme is declared once as data (:class:`LabelScheme`) and every file
label goes through it: reading a new dataset means declaring its scheme, not editing code.

:func:`check_labels` is the one label check of the package: readers, writers, the
preprocessing, the metrics and the figures all call it, so a foreign label value always
raises the same :class:`~brats_utils.errors.LabelValueError` with the same message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brats_utils.errors import LabelValueError

#: Channel order of every image tensor: the authors' order, needed to load their weights.
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
#: A 3D shape or size (x, y, z), in voxels: the one definition (volumes, patches, windows).
Shape3D = tuple[int, int, int]

#: The internal training labels: 0 background, 1 NCR/NET, 2 ED, 3 ET.
TRAIN_LABELS: tuple[int, ...] = (0, 1, 2, 3)
#: Names of the training labels.
TRAIN_LABEL_NAMES: dict[int, str] = {0: "background", 1: "NCR/NET", 2: "ED", 3: "ET"}


@dataclass(frozen=True)
class LabelScheme:
    """How one dataset writes its segmentation files, and how that maps to the training labels.

    ``to_train`` maps every file label to a training label (0..3); ``regions`` are the
    evaluation regions as sets of *file* labels; ``modalities`` is the dataset's own
    channel naming, listed in the package's channel order.
    """

    name: str
    to_train: Mapping[int, int]
    names: Mapping[int, str]
    regions: Mapping[str, tuple[int, ...]]
    modalities: tuple[str, ...] = MODALITIES
    to_file: Mapping[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if set(self.to_train.values()) - set(TRAIN_LABELS):
            raise ValueError(f"label scheme {self.name}: training labels must be in {TRAIN_LABELS}")
        if set(self.names) != set(self.to_train):
            raise ValueError(f"label scheme {self.name}: every file label needs a name")
        inverse = {train: file for file, train in self.to_train.items()}
        object.__setattr__(self, "to_file", inverse)

    @property
    def file_labels(self) -> tuple[int, ...]:
        """The label values a segmentation file of this scheme may hold, sorted."""
        return tuple(sorted(self.to_train))

    @property
    def train_regions(self) -> dict[str, tuple[int, ...]]:
        """The evaluation regions as sets of training labels."""
        return {name: tuple(sorted(self.to_train[v] for v in values))
                for name, values in self.regions.items()}

    def expected(self) -> str:
        """The allowed file labels in words, for error messages: ``labels in {0, 1, 2, 4}``."""
        return describe_labels(self.file_labels)


#: BraTS 2020 (the paper's data): 1 NCR/NET, 2 ED, 4 ET; file label 4 is training label 3.
BRATS2020 = LabelScheme(
    name="BraTS 2020",
    to_train={0: 0, 1: 1, 2: 2, 4: 3},
    names={0: "background", 1: "NCR/NET", 2: "ED", 4: "ET"},
    regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
)
#: BraTS 2023 glioma: 1 NETC, 2 SNFH, 3 ET (the file labels are already the training labels).
BRATS2023 = LabelScheme(
    name="BraTS 2023",
    to_train={0: 0, 1: 1, 2: 2, 3: 3},
    names={0: "background", 1: "NETC", 2: "SNFH", 3: "ET"},
    regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
)
#: Medical Segmentation Decathlon Task01 (BrainTumour): 1 oedema, 2 non-enhancing, 3 enhancing;
#: its four channels are FLAIR, T1w, T1gd and T2w (the package's order under other names).
MSD_TASK01 = LabelScheme(
    name="MSD Task01",
    to_train={0: 0, 1: 2, 2: 1, 3: 3},
    names={0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
    regions={"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
    modalities=("FLAIR", "T1w", "T1gd", "T2w"),
)
#: Every declared scheme by name.
SCHEMES: dict[str, LabelScheme] = {s.name: s for s in (BRATS2020, BRATS2023, MSD_TASK01)}

# --- BraTS 2020, the scheme of this series, as plain constants -----------------------

#: Label values found in BraTS 2020 segmentation files (there is no label 3).
FILE_LABELS: tuple[int, ...] = BRATS2020.file_labels
#: Names of the tumour sub-regions, keyed by file label.
LABEL_NAMES: dict[int, str] = dict(BRATS2020.names)
#: BraTS evaluation regions as sets of file labels.
REGIONS: dict[str, tuple[int, ...]] = dict(BRATS2020.regions)
#: BraTS evaluation regions as sets of training labels.
TRAIN_REGIONS: dict[str, tuple[int, ...]] = BRATS2020.train_regions
#: One colour per tumour label, used by every figure of the project.
LABEL_COLORS: dict[int, str] = {1: "#e41a1c", 2: "#4daf4a", 4: "#ffd92f"}
#: One colour per evaluation region, none of them a label's colour: a region is not a label
#: (WT blue, TC orange, ET magenta; the labels stay red, green and yellow).
REGION_COLORS: dict[str, str] = {"WT": "#1f78b4", "TC": "#ff7f00", "ET": "#e7298a"}


# --- the one label check -------------------------------------------------------------


def describe_labels(allowed: Iterable[int]) -> str:
    """``labels in {0, 1, 2, 4}``: the expectation part of a label error."""
    return "labels in {" + ", ".join(str(v) for v in sorted(allowed)) + "}"


def label_values(labels: np.ndarray) -> np.ndarray:
    """The distinct values of a label array (counting for uint8, which is cheaper than sorting)."""
    labels = np.asarray(labels)
    if labels.dtype == np.uint8:
        return np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    return np.unique(labels)


def check_labels(labels: np.ndarray, allowed: Iterable[int] = FILE_LABELS, *, case_id: str | None = None,
                 path: str | Path | None = None, hint: str = "") -> None:
    """Raise :class:`~brats_utils.errors.LabelValueError` unless ``labels`` holds only ``allowed`` values.

    The message lists the offending values (at most ten), the case and the file when
    known, and the expected set; ``hint`` is appended to the expectation (e.g. how to
    convert training labels). Non-numeric arrays are refused too.
    """
    allowed = tuple(allowed)
    expected = describe_labels(allowed) + hint
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biuf":
        raise LabelValueError(f"stored as {labels.dtype}", case_id=case_id, path=path, expected=expected)
    unexpected = [v for v in label_values(labels).tolist() if v not in allowed]
    if unexpected:
        shown = ", ".join(f"{v:g}" for v in unexpected[:10]) + (" ..." if len(unexpected) > 10 else "")
        raise LabelValueError(f"unexpected label values [{shown}]", case_id=case_id, path=path,
                              expected=expected)


def likely_schemes(values: Iterable[int]) -> list[LabelScheme]:
    """The declared schemes whose file labels include every one of ``values`` (declaration order)."""
    values = set(int(v) for v in values)
    return [scheme for scheme in SCHEMES.values() if values <= set(scheme.file_labels)]


def check_scheme(labels: np.ndarray, scheme: LabelScheme, *, case_id: str | None = None,
                 path: str | Path | None = None) -> None:
    """:func:`check_labels` against ``scheme``'s file labels, naming the likely scheme when they do not fit.

    A BraTS 2023 segmentation read as BraTS 2020 holds a 3, which BraTS 2020 does not have:
    instead of a bare "unexpected value 3", the error lists every value found and the
    declared schemes they do fit (``BraTS 2023 or MSD Task01``), so the fix, declaring
    the right dataset, is in the message.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biuf" or set(label_values(labels).tolist()) <= set(scheme.file_labels):
        check_labels(labels, scheme.file_labels, case_id=case_id, path=path)
        return
    found = label_values(labels).tolist()
    shown = "{" + ", ".join(f"{v:g}" for v in found[:12]) + (" ..." if len(found) > 12 else "") + "}"
    others = [s.name for s in likely_schemes(found) if s is not scheme] if all(
        float(v).is_integer() for v in found) else []
    guess = (f"; these fit {' or '.join(others)}: is the dataset declared right?" if others
             else "; they fit no declared label scheme")
    check_labels(labels, scheme.file_labels, case_id=case_id, path=path,
                 hint=f" for {scheme.name}; the file holds {shown}{guess}")


def _remap(labels: np.ndarray, mapping: Mapping[int, int], *, case_id: str | None) -> np.ndarray:
    labels = np.asarray(labels)
    check_labels(labels, mapping, case_id=case_id)
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[labels if labels.dtype.kind in "ui" else labels.astype(np.intp)]


def to_train_labels(labels: np.ndarray, *, scheme: LabelScheme = BRATS2020,
                    case_id: str | None = None) -> np.ndarray:
    """File labels of ``scheme`` (BraTS 2020: {0, 1, 2, 4}) to training labels {0, 1, 2, 3} (uint8).

    Raises :class:`~brats_utils.errors.LabelValueError` on any other value (e.g. a 3 from
    another label scheme), instead of silently training on it.
    """
    return _remap(labels, scheme.to_train, case_id=case_id)


def to_file_labels(labels: np.ndarray, *, scheme: LabelScheme = BRATS2020,
                   case_id: str | None = None) -> np.ndarray:
    """Training labels {0, 1, 2, 3} back to the file labels of ``scheme`` (BraTS 2020: {0, 1, 2, 4})."""
    return _remap(labels, scheme.to_file, case_id=case_id)
