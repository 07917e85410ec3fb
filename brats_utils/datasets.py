"""Which dataset is in this folder? Four layouts, each with its declared label scheme.

The same network can train on, and predict, any of the public brain-tumour datasets, as long
as every file label goes through the dataset's :class:`~brats_utils.labels.LabelScheme`. This
module declares each layout once (:data:`LAYOUTS`): how to recognise its folder, how to list its
cases as :class:`~brats_utils.io.Case` records carrying the scheme, and how its predictions are
named. :func:`find_dataset` detects the layout of a folder (or takes the name you give) and lists
the cases of one split.

* ``brats2020``: ``MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_{flair,
  t1,t1ce,t2,seg}.nii`` (the Kaggle copy, paired by :mod:`brats_utils.download`); labels 1 NCR/NET,
  2 ED, 4 ET.
* ``brats2021``: ``BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz``; labels as 2020.
* ``brats2023``: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz`` (FLAIR, T1,
  T1ce, T2); labels 1 NETC, 2 SNFH, 3 ET.
* ``msd``: ``imagesTr/BRATS_001.nii.gz``, one 4D file (H, W, D, 4: FLAIR, T1w, T1gd, T2w), and
  ``labelsTr/BRATS_001.nii.gz``; ``imagesTs/`` has no labels; labels 1 oedema, 2 non-enhancing
  tumour, 3 enhancing tumour (macOS ``._*`` files in the released tar are ignored).

Splits: ``"training"`` are the cases released with segmentations, ``"validation"`` those
without. BraTS 2020 tells them apart by its split folders, BraTS 2021 and 2023 by a folder name
containing "Validation" above the case folders, MSD by ``imagesTr`` / ``imagesTs``.

Getting the data (only BraTS 2020 and 2021 are downloaded from here, through kagglehub): see
``LAYOUTS[name].how_to_get`` and the README.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from brats_utils.config import TRAINING_DIR_NAME, VALIDATION_DIR_NAME
from brats_utils.download import SEARCH_DEPTH, case_from_folder, find_brats2020, find_split_dirs
from brats_utils.errors import BratsError, DatasetNotFoundError, DownloadError, MissingModalityError
from brats_utils.io import Case, is_nifti, nifti_stem
from brats_utils.labels import BRATS2020, BRATS2023, MODALITIES, MSD_TASK01, LabelScheme

#: The Kaggle copy of BraTS 2021 (Task 1, 1251 training cases, packed as one tar inside the dataset).
BRATS2021_KAGGLE_HANDLE = "dschettler8845/brats-2021-task1"
SPLITS = ("training", "validation")


@dataclass(frozen=True)
class DatasetLayout:
    """One dataset's folder layout, label scheme and file naming.

    Attributes:
        name: the short name profiles and the command line use (``"brats2023"``).
        title: the name in words (``"BraTS 2023 glioma"``).
        scheme: the label scheme of its segmentation files.
        case_pattern: regular expression a case folder (or, for MSD, an image file stem) matches.
        file_names: modality -> the file-name part that marks it, in ``MODALITIES`` order.
        how_to_get: where the data comes from, in one paragraph.
        protocol: the metrics protocol its challenge reports (``brats_utils.lesion_metrics.PROTOCOLS``):
            per-region scores up to 2021, lesion-wise from 2023.
        separator, suffix: how a file name joins the case id and the modality part, and its extension
            (``<id><separator><part><suffix>``).
        image_4d: one 4D image per case (MSD) instead of one file per modality.
        find_cases: ``find_cases(layout, root, split)`` lists the cases of one split below ``root``;
            None: case folders named by ``case_pattern``, their files paired by the modality part
            (:func:`brats_utils.download.case_from_folder`).
    """

    name: str
    title: str
    scheme: LabelScheme
    case_pattern: str
    file_names: dict[str, str]
    how_to_get: str
    protocol: str = "brats2020"
    separator: str = "_"
    suffix: str = ".nii.gz"
    image_4d: bool = False
    find_cases: Callable[[DatasetLayout, Path, str], list[Case]] | None = None

    def is_case_name(self, name: str) -> bool:
        """Whether a folder name (MSD: a file stem) is one of this layout's case ids."""
        return re.fullmatch(self.case_pattern, name) is not None

    def prediction_name(self, case_id: str) -> str:
        """The file name of an exported prediction: ``<case_id>.nii.gz`` (every challenge's convention)."""
        return f"{case_id}.nii.gz"

    def _file_name(self, case_id: str, part: str) -> str:
        if self.image_4d:  # one 4D image in imagesTr, the labels under the same name in labelsTr
            return f"{case_id}{self.suffix}"
        return f"{case_id}{self.separator}{part}{self.suffix}"

    def cases(self, root: Path, split: str) -> list[Case]:
        """The cases of one split below ``root`` (unsorted; empty when there are none)."""
        return (self.find_cases or _folder_cases)(self, root, split)

    def image_name(self, case_id: str, modality: str) -> str:
        """The file name of one modality of a case (MSD: the 4D file, whatever ``modality``)."""
        return self._file_name(case_id, self.file_names[modality])

    def seg_name(self, case_id: str) -> str:
        """The file name of a case's segmentation (MSD: the image's name, in ``labelsTr``)."""
        return self._file_name(case_id, "seg")


_OWN_NAMES = dict(zip(MODALITIES, MODALITIES, strict=True))

LAYOUTS: dict[str, DatasetLayout] = {layout.name: layout for layout in (
    DatasetLayout(
        "brats2020", "BraTS 2020", BRATS2020, r"BraTS20_(Training|Validation)_\d+", _OWN_NAMES,
        "Kaggle copy awsaf49/brats20-dataset-training-validation, downloaded by kagglehub "
        "(`python -m brats_utils download`), or your own unzip under $BRATS_ROOT.", suffix=".nii",
        find_cases=lambda layout, root, split: _brats2020_cases(root, split),
    ),
    DatasetLayout(
        "brats2021", "BraTS 2021", BRATS2020, r"BraTS2021_\d{5}", _OWN_NAMES,
        f"Kaggle copy {BRATS2021_KAGGLE_HANDLE} (public), downloaded by kagglehub; its "
        "BraTS2021_Training_Data.tar is unpacked on first use. Or $BRATS_ROOT.",
    ),
    DatasetLayout(
        "brats2023", "BraTS 2023 glioma", BRATS2023, r"BraTS-GLI-\d{5}-\d{3}",
        {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"},
        "Synapse (project BraTS 2023, syn51156910) after registering and accepting the data terms; "
        "unzip it and set $BRATS_ROOT. It cannot be downloaded from here.", protocol="lesionwise",
        separator="-", find_cases=lambda layout, root, split: _folder_cases(layout, root, split,
                                                                             case_from_brats2023_folder),
    ),
    DatasetLayout(
        "msd", "MSD Task01_BrainTumour", MSD_TASK01, r"BRATS_\d{3}",
        dict(zip(MODALITIES, MSD_TASK01.modalities, strict=True)),
        "The Medical Segmentation Decathlon's own download (Task01_BrainTumour.tar from "
        "medicaldecathlon.com, or MONAI's DecathlonDataset(task='Task01_BrainTumour', download=True)); "
        "set $BRATS_ROOT to the folder holding imagesTr/. It is not downloaded from here.",
        image_4d=True, find_cases=lambda layout, root, split: _msd_cases(layout, root, split),
    ),
)}


# --- finding the folders --------------------------------------------------------------------


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:  # unreadable folder: not ours to judge
        return []


def _layout_of_folder(folder: Path) -> str | None:
    """The layout a single folder reveals by its name, without looking inside case folders."""
    if folder.name in ("imagesTr", "imagesTs"):  # a 4D layout names its image files, not folders
        stems = [nifti_stem(p) for p in folder.iterdir() if is_nifti(p)]
        for name, layout in LAYOUTS.items():
            if layout.image_4d and any(layout.is_case_name(stem) for stem in stems):
                return name
    if folder.name in (TRAINING_DIR_NAME, VALIDATION_DIR_NAME):
        return "brats2020"
    for name, layout in LAYOUTS.items():
        if not layout.image_4d and layout.is_case_name(folder.name):
            return name
    return None


def _walk(root: Path, max_depth: int = SEARCH_DEPTH):
    """Breadth-first ``(depth, folder, layout name or None)``; a recognised folder is not entered."""
    level = [root]
    for depth in range(max_depth + 1):
        below: list[Path] = []
        for folder in level:
            layout = _layout_of_folder(folder)
            yield depth, folder, layout
            if layout is None:
                below.extend(_subdirs(folder))
        if not below:
            return
        level = below


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
    for depth, folder, layout in _walk(root):
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


# --- listing the cases ----------------------------------------------------------------------


def _layout_case_folders(root: Path, layout: DatasetLayout) -> list[Path]:
    return [folder for _, folder, name in _walk(root) if name == layout.name]


def _split_of(folder: Path, root: Path) -> str:
    """``validation`` when a folder between ``root`` and the case folder is named like one."""
    parts = folder.parent.relative_to(root).parts if folder.parent != root else ()
    return "validation" if any("validation" in part.lower() for part in (root.name, *parts)) else "training"


def case_from_brats2023_folder(folder: str | Path) -> Case:
    """Pair the files of one BraTS 2023 case folder: ``<id>-{t2f,t1n,t1c,t2w}`` and ``<id>-seg``.

    Raises :class:`MissingModalityError` naming the file that is missing.
    """
    folder = Path(folder)
    layout = LAYOUTS["brats2023"]
    case_id = folder.name
    files = {nifti_stem(p).lower(): p for p in folder.iterdir() if is_nifti(p)}
    modalities = {}
    for modality, part in layout.file_names.items():
        path = files.get(f"{case_id}-{part}".lower())
        if path is None:
            raise MissingModalityError(f"no {modality} file ({part})", case_id=case_id, path=folder,
                                       expected=f"a file named {case_id}-{part}.nii.gz")
        modalities[modality] = path
    return Case(case_id, modalities, files.get(f"{case_id}-seg".lower()), folder, scheme=layout.scheme)


def _with_scheme(case: Case, scheme: LabelScheme) -> Case:
    return Case(case.case_id, case.modalities, case.seg, case.folder, scheme=scheme, image_4d=case.image_4d)


def _brats2020_cases(root: Path, split: str) -> list[Case]:
    """The Kaggle layout's split folders, paired by :func:`brats_utils.download.find_brats2020`."""
    return find_brats2020(root, split) if find_split_dirs(root).get(split) else []


def _folder_cases(layout: DatasetLayout, root: Path, split: str,
                  pair: Callable[[Path], Case] = case_from_folder) -> list[Case]:
    """Case folders of ``layout`` in ``split``, each paired by ``pair`` and given the layout's scheme."""
    return [_with_scheme(pair(folder), layout.scheme) for folder in _layout_case_folders(root, layout)
            if _split_of(folder, root) == split]


def _msd_cases(layout: DatasetLayout, root: Path, split: str) -> list[Case]:
    folder_name = "imagesTr" if split == "training" else "imagesTs"
    cases = []
    for _, folder, name in _walk(root):
        if name != layout.name or folder.name != folder_name:
            continue
        labels_dir = folder.parent / "labelsTr"
        images = sorted(p for p in folder.iterdir() if is_nifti(p) and layout.is_case_name(nifti_stem(p)))
        for image in images:
            case_id = nifti_stem(image)
            labelled = (labels_dir / image.name, labels_dir / f"{case_id}.nii")
            seg = next((p for p in labelled if is_nifti(p)), None)
            cases.append(Case(case_id, dict.fromkeys(MODALITIES, image), seg, folder, scheme=layout.scheme,
                              image_4d=image))
    return cases


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


# --- own scans: one case folder, or a flat folder of scan sets ----------------------------

#: How the files of a scan set may be named: as a layout's case files (the modality part after the
#: separator, e.g. ``<id>_flair.nii.gz`` as BraTS 2020/2021, ``<id>-t2f.nii.gz`` as BraTS 2023), or
#: the modality part alone (``flair.nii.gz``: the case is named after its folder).
SCAN_NAMINGS: tuple[str, ...] = ("brats2020", "brats2023")  # their file names and separators


def scan_file_role(path: Path) -> tuple[str, str, str] | None:
    """``(case prefix, role, naming layout)`` of a NIfTI file named like one file of a scan set.

    ``role`` is a modality of ``MODALITIES`` or ``"seg"``; the prefix keeps the file's own letter
    case and is ``""`` for a bare ``flair.nii.gz``. The match ignores letter case, as the loader's
    (:func:`brats_utils.download.case_from_folder`); ``_t1`` never matches ``_t1ce``. ``None`` for
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


# --- getting BraTS 2021 ---------------------------------------------------------------------


def unpack_tars(folder: str | Path, into: str | Path) -> Path:
    """Unpack every ``*.tar`` under ``folder`` into ``into`` (once: a marker records it); return ``into``.

    The Kaggle copy of BraTS 2021 ships its cases as ``BraTS2021_Training_Data.tar`` (plus two
    re-released cases as their own tars). Members are extracted with tarfile's ``data`` filter,
    which refuses absolute paths and links out of the target.
    """
    folder, into = Path(folder), Path(into)
    marker = into / ".unpacked"
    if marker.is_file():
        return into
    into.mkdir(parents=True, exist_ok=True)
    for archive in sorted(folder.rglob("*.tar")):
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                tar.extractall(into, filter="data")
                continue
            target = into.resolve()
            for member in tar.getmembers():  # the same refusals by hand
                if not (member.isfile() or member.isdir()) or \
                        not (target / member.name).resolve().is_relative_to(target):
                    raise BratsError(f"refusing to unpack {member.name!r}", path=archive,
                                     expected="plain files and folders inside the archive's target")
            tar.extractall(into)  # members checked above
    marker.write_text("done\n")
    return into


def download_brats2021(unpack_to: str | Path) -> Path:
    """BraTS 2021 through kagglehub (``BRATS2021_KAGGLE_HANDLE``), unpacked into ``unpack_to``.

    Returns the folder holding the case folders. Raises :class:`DownloadError` when the download
    fails and :class:`DatasetNotFoundError` when it holds no BraTS 2021 case.
    """
    import kagglehub

    try:
        path = Path(kagglehub.dataset_download(BRATS2021_KAGGLE_HANDLE))
    except Exception as err:  # offline, no access, kagglehub's own errors
        raise DownloadError(f"downloading {BRATS2021_KAGGLE_HANDLE} failed ({type(err).__name__}: {err}); "
                            "download it yourself and set $BRATS_ROOT, or use a synthetic profile") from err
    try:
        if detect_layout(path).name == "brats2021":
            return path
    except BratsError:
        pass
    root = unpack_tars(path, unpack_to)
    if detect_layout(root).name != "brats2021":
        raise DatasetNotFoundError("the download holds no BraTS 2021 case folders", path=path,
                                   expected="BraTS2021_NNNNN folders, or tars of them")
    return root
