"""Which dataset is in this folder? :func:`detect_layout` tells, :func:`find_dataset` lists its cases.

The shallowest folder that a registered layout recognises by its name decides
(:meth:`~brats_utils.datasets.layouts.DatasetLayout.recognises`): a case folder, or a split folder
that marks its layout. Each case comes back as an :class:`~brats_utils.io.Case` carrying its
dataset's label scheme.
"""

from __future__ import annotations

from pathlib import Path

from brats_utils.datasets.layouts import LAYOUTS, SPLITS, DatasetLayout, walk
from brats_utils.datasets.pairing import SEARCH_DEPTH
from brats_utils.errors import BratsError, DatasetNotFoundError
from brats_utils.io import Case


def detect_layout(root: str | Path) -> DatasetLayout:
    """The layout of the dataset at or below ``root``: the shallowest recognised folder decides.

    Raises :class:`DatasetNotFoundError` when nothing is recognised, and :class:`BratsError` when
    two different datasets are found at the same depth (name the one you mean to
    :func:`find_dataset`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError("dataset folder does not exist", path=root,
                                   expected="a folder holding one of " + ", ".join(LAYOUTS))
    found: dict[str, Path] = {}
    first_depth = None
    for depth, folder, layout in walk(root):
        if first_depth is not None and depth > first_depth:
            break
        if layout is not None:
            first_depth = depth
            found.setdefault(layout, folder)
    if not found:
        raise DatasetNotFoundError(
            "no known dataset layout found", path=root,
            expected="BraTS 2020 split folders, BraTS2021_NNNNN or BraTS-GLI-NNNNN-NNN case folders, or an "
                     f"MSD imagesTr folder, at most {SEARCH_DEPTH} levels below")
    if len(found) > 1:
        shown = ", ".join(f"{name} ({path})" for name, path in found.items())
        raise BratsError(f"more than one dataset found: {shown}", path=root,
                         expected="one dataset below the folder, or the dataset named explicitly")
    return LAYOUTS[next(iter(found))]


def find_dataset(root: str | Path, split: str = "training", *, dataset: str | None = None) -> list[Case]:
    """All cases of one split below ``root``, sorted by id, each carrying its dataset's label scheme.

    ``dataset`` names the layout (a key of :data:`LAYOUTS`); ``None`` detects it
    (:func:`detect_layout`). Raises :class:`DatasetNotFoundError` when the named dataset has no
    case of that split there (saying what the folder holds instead), and the pairing errors of
    the case folders.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    root = Path(root)
    if dataset is not None and dataset not in LAYOUTS:
        raise DatasetNotFoundError(f"unknown dataset {dataset!r}", expected="one of " + ", ".join(LAYOUTS))
    layout = LAYOUTS[dataset] if dataset is not None else detect_layout(root)
    cases = layout.cases(root, split)
    if not cases:
        _not_found(root, layout, split)
    return sorted(cases, key=lambda case: case.case_id)


def _not_found(root: Path, layout: DatasetLayout, split: str) -> None:
    try:
        holds = f"; the folder holds {detect_layout(root).title}"
    except BratsError:
        holds = ""
    if layout.is_case_name(root.name):  # one case folder, not a dataset: say so, not "holds BraTS 2020"
        holds = f"; the folder is one {layout.title} case, not a dataset (predict takes it as it is)"
    raise DatasetNotFoundError(f"no {layout.title} {split} cases found{holds}", path=root,
                               expected=f"case folders like {layout.case_pattern} at most {SEARCH_DEPTH} "
                                        "levels below")
