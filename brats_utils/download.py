"""Getting BraTS 2020, finding its cases wherever they are, and checking they are complete.

Where the data can come from, in the order :func:`find_local_brats2020` looks:

1. ``$BRATS_ROOT``: a copy you unzipped yourself (any folder above the split folders);
2. a dataset attached to a Kaggle notebook (read-only, under ``/kaggle/input``);
3. the kagglehub cache of an earlier :func:`download_brats2020`.

Only :func:`download_brats2020` ever touches the network, through ``kagglehub`` with the
version-pinned handle ``config.KAGGLE_HANDLE`` (a pinned version works offline once cached).
:func:`brats_utils.pipeline.ensure_dataset` is what notebooks call: real data for the
real-data profiles (or when ``$BRATS_ROOT`` is set), otherwise the synthetic stand-in.

Cases are paired *inside each case folder*, never by sorting lists of files: the real
training case 355 has its segmentation named ``W39_1998.09.19_Segm.nii``, so a sorted glob
of ``*seg.nii`` pairs every later case with the wrong mask. Here the segmentation is the
file ending in ``_seg``, or else the one NIfTI file left once the four modalities are found.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from brats_utils.config import KAGGLE_HANDLE, TRAINING_DIR_NAME, VALIDATION_DIR_NAME
from brats_utils.errors import BratsError, DatasetNotFoundError, DownloadError, MissingModalityError
from brats_utils.io import Case, is_nifti, nifti_stem, open_volume, read_labels
from brats_utils.labels import MODALITIES

#: Environment variable naming a local copy of the dataset.
ROOT_ENV = "BRATS_ROOT"
#: Where Kaggle mounts the datasets attached to a notebook.
KAGGLE_INPUT = Path("/kaggle/input")
SPLIT_DIR_NAMES = {"training": TRAINING_DIR_NAME, "validation": VALIDATION_DIR_NAME}
#: The published release: 369 training cases (293 HGG, 76 LGG) and 125 validation cases.
RELEASE_CASES = {"training": 369, "validation": 125}
RELEASE_GRADES = {"HGG": 293, "LGG": 76}
CSV_FILES = {"training": "name_mapping.csv", "validation": "name_mapping_validation_data.csv"}
#: Columns of the per-case table of :func:`verify_dataset`.
TABLE_COLUMNS = ["split", "case_id", *MODALITIES, "seg", "shape", "image_dtype", "seg_dtype", "labels",
                 "notes", "problems"]
#: How deep below a given folder the split folders are searched for.
SEARCH_DEPTH = 8

_HOW_TO_PROCEED = (
    "To continue: (1) check the internet connection and retry; "
    f"(2) on Kaggle, attach the dataset '{KAGGLE_HANDLE.split('/versions')[0]}' with 'Add Input'; "
    f"(3) download and unzip it yourself and set {ROOT_ENV}=/path/to/it; "
    "or (4) use the synthetic stand-in in the same layout: "
    "brats_utils.pipeline.ensure_dataset(get_profile('demo')) or `python -m brats_utils synth`"
)


def _files_ending(files: list[Path], role: str) -> list[Path]:
    """The NIfTI files whose name (without extension) ends in ``_<role>``, e.g. ``_t1`` but not ``_t1ce``."""
    return [p for p in files if nifti_stem(p).lower().endswith(f"_{role}")]


def find_split_dirs(root: str | Path, *, max_depth: int = SEARCH_DEPTH) -> dict[str, Path]:
    """The training and validation folders at or below ``root``.

    Returns ``{"training": ..., "validation": ...}`` with the folders found (a missing split
    is omitted). The search is breadth-first, so the shallowest match wins, and it never
    enters case folders. Works on the kagglehub cache, a Kaggle mount or a manual unzip.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError("dataset folder does not exist", path=root,
                                   expected=f"a folder containing {TRAINING_DIR_NAME}")
    found: dict[str, Path] = {}
    level = [root]
    for _ in range(max_depth + 1):
        below: list[Path] = []
        for folder in level:
            split = next((s for s, name in SPLIT_DIR_NAMES.items() if folder.name == name), None)
            if split is not None:
                found.setdefault(split, folder)
                continue
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:  # unreadable folder: not ours to judge
                continue
            below.extend(p for p in children if not p.name.startswith("BraTS20_"))
        if len(found) == len(SPLIT_DIR_NAMES) or not below:
            break
        level = below
    return found


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
        matches = _files_ending(files, modality)
        if not matches:
            raise MissingModalityError(f"no {modality} file", case_id=case_id, path=folder,
                                       expected=f"a file ending in _{modality}.nii or _{modality}.nii.gz")
        if len(matches) > 1:
            raise BratsError(f"{len(matches)} {modality} files: {', '.join(p.name for p in matches)}",
                             case_id=case_id, path=folder, expected=f"exactly one {modality} file")
        modalities[modality] = matches[0]
    rest = [p for p in files if p not in modalities.values()]
    named = _files_ending(rest, "seg")
    candidates = named or rest
    if len(candidates) > 1:
        raise BratsError(f"cannot tell the segmentation among {', '.join(p.name for p in candidates)}",
                         case_id=case_id, path=folder, expected="one segmentation file (ending in _seg)")
    return Case(case_id, modalities, candidates[0] if candidates else None, folder)


def _nifti_folders(split_dir: Path) -> list[Path]:
    """Sub-folders holding at least one NIfTI file, sorted by name (= case id)."""
    return sorted(d for d in split_dir.iterdir() if d.is_dir() and any(is_nifti(p) for p in d.iterdir()))


def find_brats2020(root: str | Path, split: str = "training") -> list[Case]:
    """All cases of one split (``"training"`` or ``"validation"``) below ``root``, sorted by id.

    Raises :class:`DatasetNotFoundError` when the split folder is not found and the errors of
    :func:`case_from_folder` for a case folder that cannot be paired.
    """
    if split not in SPLIT_DIR_NAMES:
        raise ValueError(f"split must be one of {list(SPLIT_DIR_NAMES)}, got {split!r}")
    split_dir = find_split_dirs(root).get(split)
    if split_dir is None:
        raise DatasetNotFoundError(f"no {split} folder found", path=root,
                                   expected=f"a folder named {SPLIT_DIR_NAMES[split]} at most "
                                            f"{SEARCH_DEPTH} levels below")
    return [case_from_folder(folder) for folder in _nifti_folders(split_dir)]


# --- where the real data is --------------------------------------------------------------


def _dataset_root(root: Path) -> Path | None:
    """The folder holding both split folders below ``root`` (or the training one), if any."""
    dirs = find_split_dirs(root)
    if "training" not in dirs:
        return None
    return Path(os.path.commonpath([str(p) for p in dirs.values()]))


def kagglehub_cache_path() -> Path:
    """Where kagglehub keeps (or would keep) the pinned version of the dataset."""
    from kagglehub.config import get_cache_folder

    return Path(get_cache_folder()) / "datasets" / KAGGLE_HANDLE


def find_local_brats2020() -> Path | None:
    """A copy of the real dataset available without network, or ``None``.

    Looks at ``$BRATS_ROOT`` (which must then hold the dataset: a wrong path raises
    :class:`DatasetNotFoundError` instead of being ignored), a dataset attached to a Kaggle
    notebook under ``/kaggle/input``, and the kagglehub cache, in that order.
    """
    env_root = os.environ.get(ROOT_ENV)
    if env_root:
        if not Path(env_root).expanduser().is_dir():
            raise DatasetNotFoundError(f"${ROOT_ENV} names a folder that does not exist", path=env_root,
                                       expected="the folder where you unzipped BraTS 2020")
        root = _dataset_root(Path(env_root).expanduser())
        if root is None:
            raise DatasetNotFoundError(f"${ROOT_ENV} holds no BraTS 2020 training folder", path=env_root,
                                       expected=f"a folder with {TRAINING_DIR_NAME} below it")
        return root
    for candidate in (KAGGLE_INPUT, kagglehub_cache_path()):
        if candidate.is_dir():
            root = _dataset_root(candidate)
            if root is not None:
                return root
    return None


def download_brats2020(*, force: bool = False) -> Path:
    """The BraTS 2020 dataset root (both split folders below it), downloading it if needed.

    Uses a local copy when there is one (:func:`find_local_brats2020`), else
    ``kagglehub.dataset_download(config.KAGGLE_HANDLE)`` (about 4 GB; the dataset is public and
    needs no Kaggle credentials). ``force=True`` skips local copies and downloads again.
    Raises :class:`DownloadError` explaining what failed and how to proceed (offline, no
    access), or :class:`DatasetNotFoundError` if the download does not hold the expected folders.
    """
    if not force:
        local = find_local_brats2020()
        if local is not None:
            return local
    import kagglehub
    import requests

    try:
        path = Path(kagglehub.dataset_download(KAGGLE_HANDLE, force_download=force))
    except requests.exceptions.ConnectionError as err:
        raise DownloadError(f"could not reach Kaggle to download {KAGGLE_HANDLE}: offline? ({err}). "
                            + _HOW_TO_PROCEED) from err
    except requests.exceptions.HTTPError as err:
        status = getattr(err.response, "status_code", None)
        hint = " Kaggle refused access: log in with kagglehub.login() or set KAGGLE_API_TOKEN." \
            if status in (401, 403) else ""
        raise DownloadError(f"Kaggle answered {status or 'an error'} for {KAGGLE_HANDLE} ({err}).{hint} "
                            + _HOW_TO_PROCEED) from err
    except Exception as err:  # kagglehub raises its own types (credentials, backend, ...)
        raise DownloadError(f"downloading {KAGGLE_HANDLE} failed ({type(err).__name__}: {err}). "
                            + _HOW_TO_PROCEED) from err
    root = _dataset_root(path)
    if root is None:
        raise DatasetNotFoundError("the download holds no BraTS 2020 training folder", path=path,
                                   expected=f"{TRAINING_DIR_NAME} below it")
    return root


# --- verification ------------------------------------------------------------------------


def _check_case(folder: Path, split: str, read_label_values: bool) -> dict:
    """One verification row: files present, shape, data types, label values, problems."""
    row: dict = {"split": split, "case_id": folder.name}
    names = [p for p in folder.iterdir() if is_nifti(p)]
    for modality in MODALITIES:
        row[modality] = bool(_files_ending(names, modality))
    row.update(seg="", shape="", image_dtype="", seg_dtype="", labels="", notes="", problems="")
    try:
        case = case_from_folder(folder)
    except BratsError as err:
        row["problems"] = str(err.problem)
        return row
    problems = []
    shapes, dtypes = set(), set()
    for path in case.modalities.values():
        try:
            image = open_volume(path, case_id=case.case_id)
        except BratsError as err:
            problems.append(f"{path.name}: {err.problem}")
            continue
        shapes.add(image.shape[:3])
        dtypes.add(image.get_data_dtype().name)
    if case.seg is not None:
        row["seg"] = case.seg.name
        if not _files_ending([case.seg], "seg"):
            row["notes"] = "segmentation misnamed (found by elimination)"
        try:
            if read_label_values:
                labels, image = read_labels(case.seg, case_id=case.case_id)
                row["labels"] = "{" + ",".join(map(str, np.flatnonzero(np.bincount(labels.ravel())))) + "}"
            else:
                image = open_volume(case.seg, case_id=case.case_id)
            row["seg_dtype"] = image.get_data_dtype().name
            shapes.add(image.shape[:3])
        except BratsError as err:
            problems.append(f"{case.seg.name}: {err.problem}")
    elif split == "training":
        problems.append("no segmentation")
    if len(shapes) > 1:
        problems.append("shapes differ: " + " vs ".join("x".join(map(str, s)) for s in sorted(shapes)))
    row["shape"] = "x".join(map(str, next(iter(shapes)))) if len(shapes) == 1 else ""
    row["image_dtype"] = "/".join(sorted(dtypes))
    row["problems"] = "; ".join(problems)
    return row


def _split_summary(split: str, split_dir: Path, rows: pd.DataFrame) -> dict:
    """Counts and checks of one split, against its CSV (and the release numbers for a full CSV)."""
    summary: dict = {
        "cases": len(rows),
        "listed_in_csv": pd.NA,
        "with_segmentation": int((rows["seg"] != "").sum()),
        "shapes": ", ".join(sorted(set(rows["shape"]) - {""})),
        "image_dtypes": ", ".join(sorted(set("/".join(rows["image_dtype"]).split("/")) - {""})),
        "label_values": " ".join(sorted(set(rows["labels"]) - {""})),
        "HGG": pd.NA,
        "LGG": pd.NA,
        "cases_with_problems": int((rows["problems"] != "").sum()),
        "checks": "",
    }
    checks = []
    csv_path = split_dir / CSV_FILES[split]
    if csv_path.is_file():
        table = pd.read_csv(csv_path)
        listed = set(table["BraTS_2020_subject_ID"].dropna())
        summary["listed_in_csv"] = len(listed)
        missing = sorted(listed - set(rows["case_id"]))
        if missing:
            checks.append(f"{len(missing)} case(s) of {csv_path.name} missing, e.g. {missing[0]}")
        if "Grade" in table:
            grades = table["Grade"].value_counts()
            summary["HGG"], summary["LGG"] = int(grades.get("HGG", 0)), int(grades.get("LGG", 0))
        if len(listed) == RELEASE_CASES[split]:  # the full release: compare with the published numbers
            if summary["cases"] != RELEASE_CASES[split]:
                checks.append(f"{summary['cases']} cases, the release has {RELEASE_CASES[split]}")
            if "Grade" in table and (summary["HGG"], summary["LGG"]) != tuple(RELEASE_GRADES.values()):
                checks.append(f"grades {summary['HGG']} HGG / {summary['LGG']} LGG, "
                              f"the release has {RELEASE_GRADES['HGG']} / {RELEASE_GRADES['LGG']}")
    else:
        checks.append(f"{CSV_FILES[split]} not found")
    if summary["cases_with_problems"]:
        checks.append(f"{summary['cases_with_problems']} case(s) with problems")
    summary["checks"] = "; ".join(checks) or "ok"
    return summary


def verify_dataset(
    root: str | Path, *, read_label_values: bool = True, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check a dataset folder: one row per case and one summary row per split.

    Per case (columns): ``split, case_id``, one boolean column per modality (file present),
    ``seg`` (file name), ``shape``, ``image_dtype``, ``seg_dtype``, ``labels`` (values present),
    ``notes`` (e.g. the misnamed case-355 segmentation) and ``problems`` (empty when fine).
    Only headers and segmentations are read (fast); :func:`brats_utils.io.load_case` checks
    voxel values too. The summary (index: split) counts cases, compares with the CSV files
    when present and, for the full release, with its 369/125 cases and 293/76 grades.
    """
    split_dirs = find_split_dirs(root)
    if not split_dirs:
        raise DatasetNotFoundError("no BraTS 2020 split folders found", path=root,
                                   expected=f"{TRAINING_DIR_NAME} and/or {VALIDATION_DIR_NAME} below it")
    rows, summaries = [], {}
    for split, split_dir in split_dirs.items():
        folders = _nifti_folders(split_dir)
        split_rows = [_check_case(folder, split, read_label_values)
                      for folder in tqdm(folders, desc=f"checking {split}", disable=not progress)]
        split_table = pd.DataFrame(split_rows, columns=TABLE_COLUMNS)
        summaries[split] = _split_summary(split, split_dir, split_table)
        rows.extend(split_rows)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    summary = pd.DataFrame.from_dict(summaries, orient="index")
    summary.index.name = "split"
    return table, summary
