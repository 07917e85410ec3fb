"""Synthetic BraTS 2020: real brain anatomy with hard tumours, written in the exact Kaggle layout.

Without internet (CI, a first look on a laptop) the series runs on this stand-in, and whatever the
project claims is judged on it. It is built to teach the same lessons as the real data, and to be
as hard to segment as the real data is for the reasons the real data is hard:

* **layout**: the folders, file names, CSV files and quirks of the Kaggle copy
  ``awsaf49/brats20-dataset-training-validation`` (uncompressed ``.nii``, int16 images, uint8
  labels, the real LPS affine, validation cases without segmentation, one training segmentation
  misnamed as in case 355, one case stored as float32). ``foreign=True`` writes instead the
  pitfalls of other copies: ``.nii.gz``, a RAS affine, scaled storage, a case whose modalities
  are not co-registered and a segmentation stored as float;
* **anatomy**: a real brain, nilearn's MNI152 (2009) templates (T1, grey- and white-matter
  probability maps; CSF is the brain mask minus both), placed on the BraTS grid (240 x 240 x 155,
  1 mm, LPS, skull-stripped, exactly 0 outside) and made unique per case by a random affine and a
  smooth random deformation. Smaller grids are the same anatomy resampled;
* **contrast**: each modality mixes the tissue fractions with textbook relative intensities
  (T1 white > grey > CSF, T2 CSF > grey > white, FLAIR grey > white with dark CSF) and adds the
  normal structures that look like tumour: white-matter hyperintensities (periventricular caps,
  scattered deep lesions) and, on T1ce, vessels, choroid plexus and dura;
* **tumour**: region volumes drawn from BraTS-like distributions (:func:`draw_volumes`, the
  targets and their source in ``docs/phantoms.md``) and met to a voxel by taking the voxels of
  highest "potential": lobed foci (thresholded smooth random fields), sometimes a satellite
  lesion, oedema that follows white matter and spares cortex, and mass effect that pushes the
  anatomy aside. High-grade cases have necrosis off centre inside an enhancing rim that is
  often incomplete; low-grade cases have no enhancing tumour (some enhance faintly, unlabelled;
  some have a cyst). Each sub-region copies, in all four contrasts at once, a normal tissue it
  is confused with on real scans (oedema: the white-matter hyperintensities; necrosis: CSF;
  enhancement: vessels, plexus, dura), so only shape and context tell them apart
  (:func:`threshold_baseline` and ``tests/benchmarks/bench_voxel_classifier.py`` measure it);
* **acquisition**: Rician noise, a smooth bias field, a per-case intensity scale and offset, and
  a few hot outlier voxels, so that intensity normalisation matters as it does for real scans.

Speed: the template is loaded and prepared once per process (and low-passed once per grid size);
a case then samples the template's brain mask on the brain's bounding box, interpolates four tissue
maps at the brain's voxels only, and does all intensity work on those voxels (a third of the box);
smooth random fields are sums of low-frequency cosines evaluated separably. A full-size case takes
about 1.5 s of CPU time.

The package, one job a module:

- :mod:`~brats_utils.synthetic.anatomy`: the MNI152 template on the BraTS grid, a case's placement and
  deformation, the smooth random fields;
- :mod:`~brats_utils.synthetic.tumour`: the drawn region volumes and the tumour's shape and mass effect;
- :mod:`~brats_utils.synthetic.phantom`: :func:`synthesize_case`, contrasts, normal look-alikes, acquisition;
- :mod:`~brats_utils.synthetic.baseline`: :func:`threshold_baseline`, how far one threshold gets;
- :mod:`~brats_utils.synthetic.kaggle`: :func:`write_synthetic_dataset`, the Kaggle layout and its quirks;
- :mod:`~brats_utils.synthetic.layouts`: :func:`write_layout`, the same cases as BraTS 2021, 2023 or MSD
  store them (through each layout's ``write_case``).
"""

from brats_utils.synthetic.anatomy import BRATS_SHAPE, Template, mni_template, smooth_field
from brats_utils.synthetic.baseline import threshold_baseline
from brats_utils.synthetic.kaggle import (
    FOREIGN_SCALING,
    FOREIGN_SHIFT_MM,
    GENERATOR_VERSION,
    MARKER_NAME,
    QUIRK_CASE,
    QUIRK_SEG_NAME,
    REAL_LGG_RANGE,
    REAL_TRAINING_CASES,
    REAL_VALIDATION_CASES,
    case_seed,
    float32_case_index,
    is_low_grade,
    misregistered_case_index,
    quirk_case_index,
    real_affine,
    real_case_number,
    write_synthetic_dataset,
)
from brats_utils.synthetic.layouts import LAYOUT_MARKER, read_case_map, write_layout
from brats_utils.synthetic.phantom import synthesize_case
from brats_utils.synthetic.tumour import (
    WT_LOG_SD,
    WT_MEDIAN_ML,
    WT_RANGE_ML,
    TumourVolumes,
    draw_volumes,
)

__all__ = [
    "BRATS_SHAPE",
    "FOREIGN_SCALING",
    "FOREIGN_SHIFT_MM",
    "GENERATOR_VERSION",
    "LAYOUT_MARKER",
    "MARKER_NAME",
    "QUIRK_CASE",
    "QUIRK_SEG_NAME",
    "REAL_LGG_RANGE",
    "REAL_TRAINING_CASES",
    "REAL_VALIDATION_CASES",
    "Template",
    "TumourVolumes",
    "WT_LOG_SD",
    "WT_MEDIAN_ML",
    "WT_RANGE_ML",
    "case_seed",
    "draw_volumes",
    "float32_case_index",
    "is_low_grade",
    "misregistered_case_index",
    "mni_template",
    "quirk_case_index",
    "read_case_map",
    "real_affine",
    "real_case_number",
    "smooth_field",
    "synthesize_case",
    "threshold_baseline",
    "write_layout",
    "write_synthetic_dataset",
]
