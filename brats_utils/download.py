"""Getting BraTS 2020 (and 2021), finding a local copy, and checking a dataset is complete.

Where the BraTS 2020 data can come from, in the order :func:`find_local_brats2020` looks:

1. a copy you unzipped yourself (``$BRATS_ROOT``, read by :func:`brats_utils.config.brats_root`
   and handed in as ``root``: any folder above the split folders);
2. a dataset attached to a Kaggle notebook (read-only, under ``/kaggle/input``);
3. the kagglehub cache of an earlier :func:`download_brats2020`.

Only :func:`download_brats2020` and :func:`download_brats2021` ever touch the network, through
``kagglehub`` with the handles of :mod:`brats_utils.datasets.brats2020` (BraTS 2020's version-pinned,
so a cached copy works offline). :func:`brats_utils.pipeline.ensure_dataset` is what notebooks call:
real data for the real-data profiles (or when ``$BRATS_ROOT`` is set), otherwise the synthetic
stand-in. Finding and pairing the cases of a folder is :mod:`brats_utils.datasets`' job.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from brats_utils.datasets import detect_layout
from brats_utils.datasets.brats2020 import (
    BRATS2021_KAGGLE_HANDLE,
    KAGGLE_HANDLE,
    TRAINING_DIR_NAME,
    VALIDATION_DIR_NAME,
    find_split_dirs,
)
from brats_utils.datasets.pairing import case_from_folder, files_ending, nifti_folders
from brats_utils.errors import BratsError, DatasetNotFoundError, DownloadError
from brats_utils.io import is_nifti, open_volume, read_labels
from brats_utils.labels import MODALITIES

#: Where Kaggle mounts the datasets attached to a notebook.
KAGGLE_INPUT = Path("/kaggle/input")
#: The published release: 369 training cases (293 HGG, 76 LGG) and 125 validation cases.
RELEASE_CASES = {"training": 369, "validation": 125}
RELEASE_GRADES = {"HGG": 293, "LGG": 76}
CSV_FILES = {"training": "name_mapping.csv", "validation": "name_mapping_validation_data.csv"}
#: Columns of the per-case table of :func:`verify_dataset`.
TABLE_COLUMNS = ["split", "case_id", *MODALITIES, "seg", "shape", "image_dtype", "seg_dtype", "labels",
                 "notes", "problems"]

_HOW_TO_PROCEED = (
    "To continue: (1) check the internet connection and retry; "
    f"(2) on Kaggle, attach the dataset '{KAGGLE_HANDLE.split('/versions')[0]}' with 'Add Input'; "
    "(3) download and unzip it yourself and set BRATS_ROOT=/path/to/it; "
    "or (4) use the synthetic stand-in in the same layout: "
    "brats_utils.pipeline.ensure_dataset(get_profile('demo')) or `python -m brats_utils synth`"
)


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


def find_local_brats2020(root: str | Path | None = None) -> Path | None:
    """A copy of the real dataset available without network, or ``None``.

    Looks at ``root`` (your own copy, ``$BRATS_ROOT`` as :func:`brats_utils.config.brats_root` reads
    it; when given it must hold the dataset: a wrong path raises :class:`DatasetNotFoundError`
    instead of being ignored), a dataset attached to a Kaggle notebook under ``/kaggle/input``, and
    the kagglehub cache, in that order.
    """
    if root is not None:
        if not Path(root).expanduser().is_dir():
            raise DatasetNotFoundError("$BRATS_ROOT names a folder that does not exist", path=root,
                                       expected="the folder where you unzipped BraTS 2020")
        found = _dataset_root(Path(root).expanduser())
        if found is None:
            raise DatasetNotFoundError("$BRATS_ROOT holds no BraTS 2020 training folder", path=root,
                                       expected=f"a folder with {TRAINING_DIR_NAME} below it")
        return found
    for candidate in (KAGGLE_INPUT, kagglehub_cache_path()):
        if candidate.is_dir():
            found = _dataset_root(candidate)
            if found is not None:
                return found
    return None


def download_brats2020(root: str | Path | None = None, *, force: bool = False) -> Path:
    """The BraTS 2020 dataset root (both split folders below it), downloading it if needed.

    Uses a local copy when there is one (:func:`find_local_brats2020`, looking at ``root`` first:
    ``$BRATS_ROOT``), else ``kagglehub.dataset_download(KAGGLE_HANDLE)`` (about 4 GB; the dataset is
    public and needs no Kaggle credentials). ``force=True`` skips local copies and downloads again.
    Raises :class:`DownloadError` explaining what failed and how to proceed (offline, no
    access), or :class:`DatasetNotFoundError` if the download does not hold the expected folders.
    """
    if not force:
        local = find_local_brats2020(root)
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
    found = _dataset_root(path)
    if found is None:
        raise DatasetNotFoundError("the download holds no BraTS 2020 training folder", path=path,
                                   expected=f"{TRAINING_DIR_NAME} below it")
    return found


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


# --- verification ------------------------------------------------------------------------


def _check_case(folder: Path, split: str, read_label_values: bool) -> dict:
    """One verification row: files present, shape, data types, label values, problems."""
    row: dict = {"split": split, "case_id": folder.name}
    names = [p for p in folder.iterdir() if is_nifti(p)]
    for modality in MODALITIES:
        row[modality] = bool(files_ending(names, modality))
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
        if not files_ending([case.seg], "seg"):
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
        folders = nifti_folders(split_dir)
        split_rows = [_check_case(folder, split, read_label_values)
                      for folder in tqdm(folders, desc=f"checking {split}", disable=not progress)]
        split_table = pd.DataFrame(split_rows, columns=TABLE_COLUMNS)
        summaries[split] = _split_summary(split, split_dir, split_table)
        rows.extend(split_rows)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    summary = pd.DataFrame.from_dict(summaries, orient="index")
    summary.index.name = "split"
    return table, summary
