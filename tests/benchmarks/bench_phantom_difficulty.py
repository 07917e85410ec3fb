"""How hard the synthetic phantoms are: the best single-modality threshold, chosen with hindsight.

For 20 full-size cases (the grades of a 20-case dataset: 16 HGG, 4 LGG) it prints the mean of
:func:`brats_utils.synthetic.threshold_baseline`: whole-tumour Dice of the best FLAIR and the best
T2 threshold, enhancing-tumour Dice of the best T1ce threshold (over the cases with label 4). If a
threshold reached Dice 0.95, a network trained on the phantoms would prove nothing.

A second table scores the ``demo`` profile's written dataset as the loader reads it (every labelled
case through :func:`brats_utils.io.load_case`, the split's parts separately): the figures a
student can check against the files.

Side by side with another generator: set ``BRATS_OTHER_SYNTHETIC`` to the path of a copy of an
older ``synthetic.py`` (one file, before the package ``synthetic/``), e.g. ``git show
3bf18b3:brats_utils/synthetic.py > /tmp/old_synthetic.py`` (the egg-shaped phantoms before the MNI152
anatomy); point its imports at today's homes first (``MODALITIES`` in ``brats_utils.labels``, the Kaggle
folder names in ``brats_utils.datasets``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from types import ModuleType

import numpy as np

from brats_utils import synthetic
from brats_utils.synthetic import BRATS_SHAPE, threshold_baseline

CASES = 20


def _module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("other_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    return module


def _case_seed(generator: ModuleType):
    """The generator's seed of a case (named ``_case_seed`` before the package ``synthetic/``)."""
    return getattr(generator, "case_seed", None) or generator._case_seed


def _scores(generator: ModuleType) -> tuple[dict[str, float], float]:
    """Mean threshold-baseline scores over the cases, and the mean CPU seconds per case."""
    rows, seconds = [], 0.0
    for index in range(1, CASES + 1):
        start = time.process_time()
        image, labels = generator.synthesize_case(BRATS_SHAPE, _case_seed(generator)(0, 0, index),
                                                  has_enhancing=not generator.is_low_grade(index, CASES))
        seconds += time.process_time() - start
        rows.append(threshold_baseline(image, labels))
    return {key: float(np.nanmean([r[key] for r in rows])) for key in rows[0]}, seconds / CASES


def _as_loaded(profile_name: str = "demo") -> None:
    """Mean threshold baselines of a profile's written cases as loaded, per part of its split."""
    from brats_utils import pipeline
    from brats_utils.config import get_profile
    from brats_utils.io import load_case

    profile = get_profile(profile_name)
    cases = {case.case_id: case for case in pipeline.training_cases(profile)}
    print(f"\nthe {profile_name} profile's files as loaded ({'x'.join(map(str, profile.synthetic_shape))})")
    print("split  cases  WT Dice FLAIR  WT Dice T2  ET Dice T1ce")
    for part, ids in pipeline.split_of(profile).items():
        if not ids:
            continue
        loaded = [load_case(cases[i]) for i in ids]
        rows = [threshold_baseline(case.image, case.labels) for case in loaded]
        mean = {key: float(np.nanmean([r[key] for r in rows])) for key in rows[0]}
        print(f"{part:5}  {len(ids):5}  {mean['wt_flair']:13.3f}  {mean['wt_t2']:10.3f}"
              f"  {mean['et_t1ce']:12.3f}")


def main() -> None:
    """Print the tables (one row per generator; then the demo's files as loaded)."""
    generators = {"this": synthetic}
    if os.environ.get("BRATS_OTHER_SYNTHETIC"):
        generators["other"] = _module(os.environ["BRATS_OTHER_SYNTHETIC"])
    print(f"best threshold with hindsight, mean over {CASES} cases of {'x'.join(map(str, BRATS_SHAPE))}")
    print("generator  WT Dice FLAIR  WT Dice T2  ET Dice T1ce  CPU s/case")
    for name, generator in generators.items():
        scores, seconds = _scores(generator)
        print(f"{name:9}  {scores['wt_flair']:13.3f}  {scores['wt_t2']:10.3f}  {scores['et_t1ce']:12.3f}"
              f"  {seconds:10.2f}")
    _as_loaded()


if __name__ == "__main__":
    main()
