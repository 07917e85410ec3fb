"""The registry of dataset layouts: how each dataset stores its cases, names them and labels them.

Each :class:`DatasetLayout` in :data:`LAYOUTS` is one dataset's folder layout: how to recognise
its folders, how to list its cases as :class:`~brats_utils.io.Case` records carrying its label
scheme, how to write a case as the dataset stores it, how its cases and predictions are named, and
the metrics protocol its challenge reports. Adding a dataset is one entry here (see
``docs/architecture.md``, "Where to add things").

* ``brats2020``: ``MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_{flair,
  t1,t1ce,t2,seg}.nii`` (the Kaggle copy, :mod:`brats_utils.datasets.brats2020`); labels 1 NCR/NET,
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
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from brats_utils.datasets import brats2020
from brats_utils.datasets.pairing import SEARCH_DEPTH, case_from_folder, subdirs
from brats_utils.errors import MissingModalityError
from brats_utils.io import Case, is_nifti, nifti_stem, write_volume
from brats_utils.labels import BRATS2020, BRATS2023, MODALITIES, MSD_TASK01, LabelScheme

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
        id_format: the id of case ``index`` of a split, formatted with ``index`` (from 0), ``number``
            (from 1) and ``split`` (``"Training"`` / ``"Validation"``); it must match ``case_pattern``.
        protocol: the metrics protocol its challenge reports (``brats_utils.lesion_metrics.PROTOCOLS``):
            per-region scores up to 2021, lesion-wise from 2023.
        separator, suffix: how a file name joins the case id and the modality part, and its extension
            (``<id><separator><part><suffix>``).
        image_4d: one 4D image per case (MSD) instead of one file per modality.
        split_folders: where :meth:`write_case` puts each split's cases, below the dataset root (MSD:
            the image folders, the labels going to ``labelsTr`` beside them). A folder whose path
            contains "validation" holds validation cases.
        marked_by_split_folders: the names of its split folders alone show the layout (BraTS 2020's
            ``MICCAI_BraTS2020_TrainingData``; MSD's ``imagesTr`` holding its case files).
        find_cases: ``find_cases(layout, root, split)`` lists the cases of one split below ``root``;
            None: case folders named by ``case_pattern``, their files paired by the modality part
            (:func:`brats_utils.datasets.pairing.case_from_folder`).
        index: ``index(layout, root, ids, description)`` writes the dataset's own list of its cases once
            they are written (MSD's ``dataset.json``; :meth:`write_index`); None: it has none.
    """

    name: str
    title: str
    scheme: LabelScheme
    case_pattern: str
    file_names: dict[str, str]
    how_to_get: str
    id_format: str = dataclasses.field(kw_only=True)
    protocol: str = "brats2020"
    separator: str = "_"
    suffix: str = ".nii.gz"
    image_4d: bool = False
    split_folders: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"training": "TrainingData", "validation": "ValidationData"})
    marked_by_split_folders: bool = False
    find_cases: Callable[[DatasetLayout, Path, str], list[Case]] | None = None
    index: Callable[[DatasetLayout, Path, dict[str, list[str]], str], None] | None = None

    def __post_init__(self) -> None:
        for split in SPLITS:
            if not self.is_case_name(self.case_name(0, split)):
                raise ValueError(f"layout {self.name}: id_format {self.id_format!r} names case 0 of {split} "
                                 f"{self.case_name(0, split)!r}, which case_pattern {self.case_pattern!r} "
                                 "does not match")

    def is_case_name(self, name: str) -> bool:
        """Whether a folder name (MSD: a file stem) is one of this layout's case ids."""
        return re.fullmatch(self.case_pattern, name) is not None

    def case_name(self, index: int, split: str = "training") -> str:
        """The id of case ``index`` (from 0) of ``split``: ``BraTS2021_00000``, ``BRATS_001``, ..."""
        return self.id_format.format(index=index, number=index + 1, split=split.capitalize())

    def prediction_name(self, case_id: str) -> str:
        """The file name of an exported prediction: ``<case_id>.nii.gz`` (every challenge's convention)."""
        return f"{case_id}.nii.gz"

    def _file_name(self, case_id: str, part: str) -> str:
        if self.image_4d:  # one 4D image in imagesTr, the labels under the same name in labelsTr
            return f"{case_id}{self.suffix}"
        return f"{case_id}{self.separator}{part}{self.suffix}"

    def image_name(self, case_id: str, modality: str) -> str:
        """The file name of one modality of a case (MSD: the 4D file, whatever ``modality``)."""
        return self._file_name(case_id, self.file_names[modality])

    def seg_name(self, case_id: str) -> str:
        """The file name of a case's segmentation (MSD: the image's name, in ``labelsTr``)."""
        return self._file_name(case_id, "seg")

    def recognises(self, folder: Path) -> bool:
        """Whether a folder shows this layout by its name (a case folder, or a split folder that marks it),
        without looking inside case folders."""
        split_names = {Path(split_folder).name for split_folder in self.split_folders.values()}
        if self.marked_by_split_folders and folder.name in split_names:
            return not self.image_4d or any(self.is_case_name(nifti_stem(p)) for p in folder.iterdir()
                                            if is_nifti(p))
        return not self.image_4d and self.is_case_name(folder.name)

    def cases(self, root: Path, split: str) -> list[Case]:
        """The cases of one split below ``root`` (unsorted; empty when there are none)."""
        return (self.find_cases or _folder_cases)(self, root, split)

    def write_case(self, root: str | Path, split: str, case_id: str, image: np.ndarray,
                   labels: np.ndarray | None, affine: np.ndarray, *, dtype: npt.DTypeLike = np.int16,
                   seg_dtype: npt.DTypeLike = np.uint8) -> Case:
        """Write one case below the dataset ``root`` as this dataset stores it; return its record.

        ``image`` is ``[4, X, Y, Z]`` in ``MODALITIES`` order, written as ``dtype``; ``labels`` (file
        labels of :attr:`scheme`, or None for a case without segmentation) as ``seg_dtype``; both on
        ``affine``. The case goes to ``split_folders[split]``: one folder per case, or (4D layouts) one
        image file, its labels in ``labelsTr`` beside. :meth:`cases` lists it again.
        """
        split_dir = Path(root) / self.split_folders[split]
        if self.image_4d:
            split_dir.mkdir(parents=True, exist_ok=True)
            image_path = split_dir / self.image_name(case_id, MODALITIES[0])
            write_volume(np.moveaxis(image, 0, 3), image_path, affine, dtype)
            seg = None
            if labels is not None:
                labels_dir = split_dir.parent / "labelsTr"
                labels_dir.mkdir(exist_ok=True)
                seg = write_volume(labels, labels_dir / self.seg_name(case_id), affine, seg_dtype)
            return Case(case_id, dict.fromkeys(MODALITIES, image_path), seg, split_dir, scheme=self.scheme,
                        image_4d=image_path)
        folder = split_dir / case_id
        folder.mkdir(parents=True)
        modalities = {modality: write_volume(image[channel], folder / self.image_name(case_id, modality),
                                             affine, dtype)
                      for channel, modality in enumerate(MODALITIES)}
        seg = None if labels is None else \
            write_volume(labels, folder / self.seg_name(case_id), affine, seg_dtype)
        return Case(case_id, modalities, seg, folder, scheme=self.scheme)


    def write_index(self, root: str | Path, ids: dict[str, list[str]], description: str) -> None:
        """After :meth:`write_case`: the dataset's own list of its cases (``ids``: split -> case ids), if it
        keeps one (:attr:`index`), described by ``description``."""
        if self.index is not None:
            self.index(self, Path(root), ids, description)


# --- finding the case folders of a layout -----------------------------------------------------


def layout_of_folder(folder: Path) -> str | None:
    """The layout (a key of :data:`LAYOUTS`) a single folder reveals by its name, or None."""
    return next((name for name, layout in LAYOUTS.items() if layout.recognises(folder)), None)


def walk(root: Path, max_depth: int = SEARCH_DEPTH) -> Iterator[tuple[int, Path, str | None]]:
    """Breadth-first ``(depth, folder, layout name or None)``; a recognised folder is not entered."""
    level = [root]
    for depth in range(max_depth + 1):
        below: list[Path] = []
        for folder in level:
            layout = layout_of_folder(folder)
            yield depth, folder, layout
            if layout is None:
                below.extend(subdirs(folder))
        if not below:
            return
        level = below


def _split_of(folder: Path, root: Path) -> str:
    """``validation`` when a folder between ``root`` and the case folder is named like one."""
    parts = folder.parent.relative_to(root).parts if folder.parent != root else ()
    return "validation" if any("validation" in part.lower() for part in (root.name, *parts)) else "training"


def _with_scheme(case: Case, scheme: LabelScheme) -> Case:
    return Case(case.case_id, case.modalities, case.seg, case.folder, scheme=scheme, image_4d=case.image_4d)


def _folder_cases(layout: DatasetLayout, root: Path, split: str,
                  pair: Callable[[Path], Case] = case_from_folder) -> list[Case]:
    """Case folders of ``layout`` in ``split``, each paired by ``pair`` and given the layout's scheme."""
    return [_with_scheme(pair(folder), layout.scheme) for _, folder, name in walk(root)
            if name == layout.name and _split_of(folder, root) == split]


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


def _brats2020_cases(layout: DatasetLayout, root: Path, split: str) -> list[Case]:
    """The Kaggle layout's split folders, paired by :func:`brats_utils.datasets.brats2020.find_brats2020`."""
    return brats2020.find_brats2020(root, split) if brats2020.find_split_dirs(root).get(split) else []


def _brats2023_cases(layout: DatasetLayout, root: Path, split: str) -> list[Case]:
    return _folder_cases(layout, root, split, case_from_brats2023_folder)


def _msd_cases(layout: DatasetLayout, root: Path, split: str) -> list[Case]:
    folder_name = Path(layout.split_folders[split]).name
    cases = []
    for _, folder, name in walk(root):
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


def _msd_index(layout: DatasetLayout, root: Path, ids: dict[str, list[str]], description: str) -> None:
    """A ``dataset.json`` like the Decathlon's (modalities, labels, file lists) beside ``imagesTr``."""
    scheme = layout.scheme
    index = {
        "name": "BRATS", "description": description, "tensorImageSize": "4D",
        "modality": {str(i): name for i, name in enumerate(scheme.modalities)},
        "labels": {str(v): name for v, name in scheme.names.items()},
        "numTraining": len(ids["training"]), "numTest": len(ids["validation"]),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in ids["training"]],
        "test": [f"./imagesTs/{c}.nii.gz" for c in ids["validation"]],
    }
    task_folder = root / Path(layout.split_folders["training"]).parent
    task_folder.mkdir(parents=True, exist_ok=True)
    (task_folder / "dataset.json").write_text(json.dumps(index, indent=1))


_OWN_NAMES = dict(zip(MODALITIES, MODALITIES, strict=True))

LAYOUTS: dict[str, DatasetLayout] = {layout.name: layout for layout in (
    DatasetLayout(
        "brats2020", "BraTS 2020", BRATS2020, r"BraTS20_(Training|Validation)_\d+", _OWN_NAMES,
        f"Kaggle copy {brats2020.KAGGLE_HANDLE.split('/versions')[0]}, downloaded by kagglehub "
        "(`python -m brats_utils download`), or your own unzip under $BRATS_ROOT.",
        id_format="BraTS20_{split}_{number:03d}", suffix=".nii", split_folders=brats2020.SPLIT_FOLDERS,
        marked_by_split_folders=True, find_cases=_brats2020_cases,
    ),
    DatasetLayout(
        "brats2021", "BraTS 2021", BRATS2020, r"BraTS2021_\d{5}", _OWN_NAMES,
        f"Kaggle copy {brats2020.BRATS2021_KAGGLE_HANDLE} (public), downloaded by kagglehub; its "
        "BraTS2021_Training_Data.tar is unpacked on first use. Or $BRATS_ROOT.",
        id_format="BraTS2021_{index:05d}",
        split_folders={"training": "BraTS2021_Training_Data", "validation": "BraTS2021_Validation_Data"},
    ),
    DatasetLayout(
        "brats2023", "BraTS 2023 glioma", BRATS2023, r"BraTS-GLI-\d{5}-\d{3}",
        {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"},
        "Synapse (project BraTS 2023, syn51156910) after registering and accepting the data terms; "
        "unzip it and set $BRATS_ROOT. It cannot be downloaded from here.", protocol="lesionwise",
        id_format="BraTS-GLI-{index:05d}-000", separator="-",
        split_folders={"training": "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData",
                       "validation": "ASNR-MICCAI-BraTS2023-GLI-Challenge-ValidationData"},
        find_cases=_brats2023_cases,
    ),
    DatasetLayout(
        "msd", "MSD Task01_BrainTumour", MSD_TASK01, r"BRATS_\d{3}",
        dict(zip(MODALITIES, MSD_TASK01.modalities, strict=True)),
        "The Medical Segmentation Decathlon's own download (Task01_BrainTumour.tar from "
        "medicaldecathlon.com, or MONAI's DecathlonDataset(task='Task01_BrainTumour', download=True)); "
        "set $BRATS_ROOT to the folder holding imagesTr/. It is not downloaded from here.",
        id_format="BRATS_{number:03d}", image_4d=True,
        split_folders={"training": "Task01_BrainTumour/imagesTr",
                       "validation": "Task01_BrainTumour/imagesTs"},
        marked_by_split_folders=True, find_cases=_msd_cases, index=_msd_index,
    ),
)}
