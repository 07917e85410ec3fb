"""The synthetic dataset re-saved in the layout of BraTS 2021, BraTS 2023 or MSD Task01.

:func:`brats_utils.synthetic.kaggle.write_synthetic_dataset` writes the Kaggle BraTS 2020 layout.
:func:`write_layout` takes such a dataset and writes the same cases as another dataset stores
them, each through its layout's ``write_case`` (and ``write_index``): renamed case folders and
files, the modalities under that dataset's names (BraTS 2023: ``t2f, t1n, t1c, t2w``; MSD: one 4D
file), and the segmentations in its own label scheme (BraTS 2023: ET is 3; MSD: 1 oedema,
2 non-enhancing tumour, 3 enhancing). The voxels are the same, so a test can check that every
layout loads to the same image and the same training labels as the source::

    root/BraTS2021_Training_Data/BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz
    root/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-00000-000/
        BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz
    root/Task01_BrainTumour/{imagesTr,labelsTr,imagesTs}/BRATS_001.nii.gz, dataset.json

Validation cases (no segmentation) go to the ``...Validation...`` folder (MSD: ``imagesTs``).
``layout.json`` at the root (written last) records the parameters and which source case each
new case id is; a complete folder with the same parameters is left as it is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib

from brats_utils.datasets import LAYOUTS, DatasetLayout, find_brats2020
from brats_utils.errors import BratsError
from brats_utils.io import Case, load_case
from brats_utils.labels import to_file_labels, to_train_labels

#: Marker and case map written last at the root of a converted dataset.
LAYOUT_MARKER = "layout.json"


def _write_case(case: Case, new_id: str, layout: DatasetLayout, root: Path, split: str) -> None:
    """One source case re-saved as ``new_id`` in ``layout``, its labels converted to the layout's scheme."""
    loaded = load_case(case)
    dtype = nib.load(case.modalities["flair"]).get_data_dtype()
    seg = None
    if loaded.labels is not None:
        train = to_train_labels(loaded.labels, scheme=case.scheme, case_id=case.case_id)
        seg = to_file_labels(train, scheme=layout.scheme, case_id=new_id)
    layout.write_case(root, split, new_id, loaded.image, seg, loaded.affine, dtype=dtype)


def read_case_map(root: str | Path) -> dict[str, str]:
    """``{new case id: source case id}`` of a dataset written by :func:`write_layout`."""
    return json.loads((Path(root) / LAYOUT_MARKER).read_text())["cases"]


def write_layout(source: str | Path, root: str | Path, dataset: str) -> Path:
    """Re-save the Kaggle-layout dataset ``source`` as ``dataset`` stores it, under ``root``; return ``root``.

    ``dataset`` is ``"brats2021"``, ``"brats2023"`` or ``"msd"``. Training cases keep their
    order (``BraTS20_Training_001`` becomes ``BraTS2021_00000``, ``BraTS-GLI-00000-000`` or
    ``BRATS_001``); validation cases follow with the next numbers. Written into a temporary
    sibling and renamed into place when complete; idempotent for the same source and dataset.
    """
    if dataset not in LAYOUTS or dataset == "brats2020":
        raise ValueError(f"dataset must be one of {[name for name in LAYOUTS if name != 'brats2020']}, "
                         f"got {dataset!r}")
    source, root = Path(source), Path(root)
    params = {"dataset": dataset, "source": str(source.resolve())}
    marker = root / LAYOUT_MARKER
    if marker.is_file() and {k: v for k, v in json.loads(marker.read_text()).items()
                             if k != "cases"} == params:
        return root
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise BratsError("refusing to write a synthetic dataset into a folder that holds other files",
                         path=root, expected="a missing or empty folder, or one written by this function")
    layout = LAYOUTS[dataset]
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    case_map: dict[str, str] = {}
    ids: dict[str, list[str]] = {"training": [], "validation": []}
    try:
        index = 0
        for split in ("training", "validation"):
            try:
                cases = find_brats2020(source, split)
            except BratsError:
                cases = [] if split == "validation" else None
            if cases is None:
                raise BratsError("no synthetic training cases to convert", path=source,
                                 expected="a dataset written by write_synthetic_dataset")
            for case in cases:
                new_id = layout.case_name(index, split)
                _write_case(case, new_id, layout, tmp, split)
                case_map[new_id] = case.case_id
                ids[split].append(new_id)
                index += 1
        layout.write_index(tmp, ids, "synthetic stand-in in the Task01_BrainTumour layout")
        (tmp / LAYOUT_MARKER).write_text(json.dumps({**params, "cases": case_map}, indent=1))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
