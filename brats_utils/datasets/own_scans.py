"""Own scans: one case folder, or a flat folder of four-modality scan sets named like a layout's files."""

from __future__ import annotations

from pathlib import Path

from brats_utils.datasets.layouts import LAYOUTS
from brats_utils.errors import BratsError, MissingModalityError
from brats_utils.io import Case, is_nifti, nifti_stem
from brats_utils.labels import MODALITIES

#: How the files of a scan set may be named: as a layout's case files (the modality part after the
#: separator, e.g. ``<id>_flair.nii.gz`` as BraTS 2020/2021, ``<id>-t2f.nii.gz`` as BraTS 2023), or
#: the modality part alone (``flair.nii.gz``: the case is named after its folder).
SCAN_NAMINGS: tuple[str, ...] = ("brats2020", "brats2023")  # their file names and separators


def scan_file_role(path: Path) -> tuple[str, str, str] | None:
    """``(case prefix, role, naming layout)`` of a NIfTI file named like one file of a scan set.

    ``role`` is a modality of ``MODALITIES`` or ``"seg"``; the prefix keeps the file's own letter
    case and is ``""`` for a bare ``flair.nii.gz``. The match ignores letter case, as the loader's
    (:func:`brats_utils.datasets.pairing.case_from_folder`); ``_t1`` never matches ``_t1ce``. ``None`` for
    any other file.
    """
    if not is_nifti(path):
        return None
    stem = nifti_stem(path)
    lower = stem.lower()
    for layout_name in SCAN_NAMINGS:
        separator = LAYOUTS[layout_name].separator
        for role, part in {**LAYOUTS[layout_name].file_names, "seg": "seg"}.items():
            if lower == part:
                return "", role, layout_name
            if lower.endswith(f"{separator}{part}"):
                return stem[: -len(separator + part)], role, layout_name
    return None


def scan_sets(folder: str | Path) -> list[Case]:
    """The four-modality scan sets lying directly in ``folder`` (one case folder, or a flat folder).

    Files are grouped by the name before their modality part (``patient7_flair.nii.gz``,
    ``patient7_t1.nii.gz`` ... form case ``patient7``; see :func:`scan_file_role`), and a
    ``<id>_seg`` file joins its set as the segmentation. Returns ``[]`` when no file directly in
    ``folder`` is named like a modality (a dataset layout, searched by :func:`find_dataset`).
    Each case carries the label scheme of the layout its names follow.

    Raises :class:`MissingModalityError` for a set lacking a modality and :class:`BratsError` for
    two files of one modality or one set named two ways, each naming the files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    groups: dict[str, dict[str, list[Path]]] = {}
    namings: dict[str, set[str]] = {}
    prefixes: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        role = scan_file_role(path)
        if role is None:
            continue
        prefix, part, layout_name = role
        key = prefix.lower()
        prefixes.setdefault(key, prefix)
        groups.setdefault(key, {}).setdefault(part, []).append(path)
        namings.setdefault(key, set()).add(layout_name)
    cases = []
    for key, roles in groups.items():
        if not set(roles) & set(MODALITIES):
            continue  # segmentations alone (a folder of labels) are no scan set
        case_id = prefixes[key] or folder.name
        files = ", ".join(p.name for paths in roles.values() for p in paths)
        doubled = [p.name for paths in roles.values() if len(paths) > 1 for p in paths]
        if doubled:
            raise BratsError(f"more than one file for one part of a scan set: {', '.join(doubled)}",
                             case_id=case_id, path=folder, expected="one file per modality and case")
        if len(namings[key]) > 1:
            raise BratsError(f"one scan set named in two ways: {files}", case_id=case_id, path=folder,
                             expected="every file of a case named as BraTS 2020 (<id>_flair, _t1, _t1ce, "
                                      "_t2) or as BraTS 2023 (<id>-t2f, -t1n, -t1c, -t2w)")
        layout = LAYOUTS[namings[key].pop()]
        missing = [modality for modality in MODALITIES if modality not in roles]
        if missing:
            separator = layout.separator if prefixes[key] else ""
            wanted = ", ".join(f"{prefixes[key]}{separator}{layout.file_names[m]}.nii.gz" for m in missing)
            raise MissingModalityError(f"incomplete scan set: only {files}", case_id=case_id, path=folder,
                                       expected=f"also {wanted} (co-registered FLAIR, T1, T1ce, T2)")
        modalities = {modality: roles[modality][0] for modality in MODALITIES}
        seg = roles["seg"][0] if "seg" in roles else None
        cases.append(Case(case_id, modalities, seg, folder, scheme=layout.scheme))
    return sorted(cases, key=lambda case: case.case_id)
