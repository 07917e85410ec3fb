"""Datasets: the registry of layouts, finding a dataset's cases, and own scans.

The same network can train on, and predict, any of the public brain-tumour datasets, as long as
every file label goes through the dataset's :class:`~brats_utils.labels.LabelScheme`:

- :mod:`~brats_utils.datasets.layouts`: :data:`LAYOUTS`, one :class:`DatasetLayout` per dataset (BraTS
  2020, 2021, 2023, MSD Task01): how it is recognised, how its cases are found, written
  (:meth:`DatasetLayout.write_case`) and named, its label scheme and metrics protocol;
- :mod:`~brats_utils.datasets.find`: :func:`detect_layout` and :func:`find_dataset` (the cases of one split);
- :mod:`~brats_utils.datasets.brats2020`: the Kaggle copy's handles and split folders;
- :mod:`~brats_utils.datasets.pairing`: a case folder's files paired by their modality suffix;
- :mod:`~brats_utils.datasets.own_scans`: :func:`scan_sets`, four-modality scans lying in one folder.

Getting the data (only BraTS 2020 and 2021 are downloaded, through kagglehub) is
:mod:`brats_utils.download`'s job; see ``LAYOUTS[name].how_to_get`` and the README.
"""

from brats_utils.datasets.brats2020 import (
    BRATS2021_KAGGLE_HANDLE,
    KAGGLE_HANDLE,
    TRAINING_DIR_NAME,
    VALIDATION_DIR_NAME,
    find_brats2020,
    find_split_dirs,
)
from brats_utils.datasets.find import detect_layout, find_dataset
from brats_utils.datasets.layouts import LAYOUTS, SPLITS, DatasetLayout, case_from_brats2023_folder
from brats_utils.datasets.own_scans import SCAN_NAMINGS, scan_file_role, scan_sets
from brats_utils.datasets.pairing import SEARCH_DEPTH, case_from_folder

__all__ = ["BRATS2021_KAGGLE_HANDLE", "KAGGLE_HANDLE", "LAYOUTS", "SCAN_NAMINGS", "SEARCH_DEPTH", "SPLITS",
           "TRAINING_DIR_NAME", "VALIDATION_DIR_NAME", "DatasetLayout", "case_from_brats2023_folder",
           "case_from_folder", "detect_layout", "find_brats2020", "find_dataset", "find_split_dirs",
           "scan_file_role", "scan_sets"]
