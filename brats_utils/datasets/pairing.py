"""Pairing the NIfTI files of one case folder, and listing the folders below a dataset root.

Cases are paired *inside each case folder*, never by sorting lists of files: the real BraTS 2020
training case 355 has its segmentation named ``W39_1998.09.19_Segm.nii``, so a sorted glob of
``*seg.nii`` pairs every later case with the wrong mask. Here the segmentation is the file ending
in ``_seg``, or else the one NIfTI file left once the four modalities are found.
"""

from __future__ import annotations

from pathlib import Path

from brats_utils.errors import BratsError, MissingModalityError
from brats_utils.io import Case, is_nifti, nifti_stem
from brats_utils.labels import MODALITIES

#: How deep below a given folder a dataset's folders are searched for.
SEARCH_DEPTH = 8


def files_ending(files: list[Path], role: str) -> list[Path]:
    """The NIfTI files whose name (without extension) ends in ``_<role>``, e.g. ``_t1`` but not ``_t1ce``."""
    return [p for p in files if nifti_stem(p).lower().endswith(f"_{role}")]


def case_from_folder(folder: str | Path) -> Case:
    """Pair the files of one case folder into a :class:`Case`.

    Modality files end in ``_flair``, ``_t1``, ``_t1ce`` or ``_t2`` (``.nii`` or ``.nii.gz``,
    any case). The segmentation ends in ``_seg``; failing that, it is the single NIfTI file
    left over (the misnamed case 355). Non-NIfTI files are ignored. Raises
    :class:`MissingModalityError` or, for two candidates of one role, :class:`BratsError`.
    """
    folder = Path(folder)
    case_id = folder.name
    files = sorted(p for p in folder.iterdir() if is_nifti(p))
    modalities: dict[str, Path] = {}
    for modality in MODALITIES:
        matches = files_ending(files, modality)
        if not matches:
            raise MissingModalityError(f"no {modality} file", case_id=case_id, path=folder,
                                       expected=f"a file ending in _{modality}.nii or _{modality}.nii.gz")
        if len(matches) > 1:
            raise BratsError(f"{len(matches)} {modality} files: {', '.join(p.name for p in matches)}",
                             case_id=case_id, path=folder, expected=f"exactly one {modality} file")
        modalities[modality] = matches[0]
    rest = [p for p in files if p not in modalities.values()]
    named = files_ending(rest, "seg")
    candidates = named or rest
    if len(candidates) > 1:
        raise BratsError(f"cannot tell the segmentation among {', '.join(p.name for p in candidates)}",
                         case_id=case_id, path=folder, expected="one segmentation file (ending in _seg)")
    return Case(case_id, modalities, candidates[0] if candidates else None, folder)


def subdirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted by name (none when it cannot be read)."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:  # unreadable folder: not ours to judge
        return []


def nifti_folders(folder: Path) -> list[Path]:
    """Sub-folders holding at least one NIfTI file, sorted by name (= case id)."""
    return [d for d in subdirs(folder) if any(is_nifti(p) for p in d.iterdir())]
