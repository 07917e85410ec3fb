"""The BraTS challenge's own evaluation (``brats-evaluation``, built on panoptica), called, never copied.

BraTS 2025 ranks with the challenge's package ``brats-evaluation`` (PyPI, AGPL-3.0; GitHub
``BraTS/BraTS_evaluation``), which matches lesions with panoptica (connected components, maximal
bipartite matching by Dice) and has one configuration per task (``gli`` for gliomas, ``mets``, ``ped``,
``MenRT``, ``MenPre``, ``GoAT``). This project depends on it only as the optional extra ``official``
(``pip install -e ".[official]"``) and imports it at call time: nothing of it is copied here, and the
package works without it.

:func:`official_train_scores` scores one case the way the challenge does: both label maps are written
as NIfTI files in BraTS 2023+ labels (1 NETC, 2 SNFH, 3 ET: the project's training labels are exactly
those), with the case's voxel spacing, scored by ``brats_evaluation.evaluate_single_exam`` with the
task's bundled configuration, and reduced to the leaderboard's columns by the package's own
``parse_seg_results`` (``global_dsc_wt``, ``lesionwise_dsc_mean_et``, ``all_instance_fp_tc``, ...).
:mod:`brats_utils.lesion_metrics` offers it as the metrics protocol ``brats2025``, with the project's
own lesion-wise implementation in its place when the package is not installed; docs/evaluation.md says
where the two differ.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

#: The PyPI distribution and the module it installs.
DISTRIBUTION = "brats-evaluation"
MODULE = "brats_evaluation"
#: The bundled configuration of the glioma task (the project's data).
GLIOMA_CONFIG = "gli"
#: The regions the project reports, as the package names its label groups.
REGIONS = ("wt", "tc", "et")


def official_version() -> str | None:
    """The installed ``brats-evaluation`` version, or None when it (or panoptica) is not installed."""
    if importlib.util.find_spec(MODULE) is None or importlib.util.find_spec("panoptica") is None:
        return None
    return importlib.metadata.version(DISTRIBUTION)


def official_train_scores(pred_train_labels: np.ndarray, true_train_labels: np.ndarray,
                          spacing: Sequence[float] = (1.0, 1.0, 1.0), *, case_id: str | None = None,
                          config: str = GLIOMA_CONFIG) -> dict[str, float]:
    """The official package's leaderboard scores of one case (training labels 0..3 = BraTS 2023 labels).

    Returns, for each region ``r`` of :data:`REGIONS`, ``parse_seg_results``'s columns ending in ``_r``
    (global Dice / NSD / HD95, lesion-wise mean Dice / NSD / HD95 over matched lesions, and the instance
    counts TP / FP / FN with precision, recall and F1). Raises ``ModuleNotFoundError`` without the extra.
    """
    from brats_evaluation import config_path, evaluate_single_exam, parse_seg_results
    from panoptica import Panoptica_Evaluator

    name = case_id or "case"
    affine = np.diag([*map(float, spacing), 1.0])
    with tempfile.TemporaryDirectory(prefix="brats-official-") as folder:
        paths = {}
        for kind, labels in (("pred", pred_train_labels), ("ref", true_train_labels)):
            paths[kind] = Path(folder) / f"{kind}.nii.gz"
            nib.save(nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), affine), paths[kind])
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            evaluator = Panoptica_Evaluator.load_from_config(str(config_path(config)))
            result = evaluate_single_exam(str(paths["pred"]), str(paths["ref"]), name, evaluator)
            if "error" in result:
                raise RuntimeError(f"brats-evaluation could not score case {name}: {result['error']}")
            summary, table = Path(folder) / "summary.json", Path(folder) / "scores.csv"
            summary.write_text(json.dumps({"metrics": [result], "missings": []}))
            parse_seg_results(str(summary), str(table))
        row = pd.read_csv(table).iloc[0]
    return {column: float(row[column]) for column in row.index
            if column != "subject_id" and column.rsplit("_", 1)[-1] in REGIONS}
