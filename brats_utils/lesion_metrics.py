"""BraTS 2023 lesion-wise Dice and HD95: every lesion counts, however small next to the main tumour.

The 2020 challenge (:mod:`brats_utils.metrics`) scores one Dice per region and case, so a model that
segments the big tumour well and misses three satellite lesions still scores high. From 2023 the
challenge ranks by *lesion-wise* scores instead (rules and reference implementation: GitHub
``rachitsaluja/BraTS-2023-Metrics``). For one region (WT, TC or ET) of one case:

1. **Lesions.** The truth mask is dilated (structuring element of connectivity 2, i.e.
   ``generate_binary_structure(3, 2)``, 3 iterations for gliomas) and its dilated blobs are found
   (26-connected). The truth's own 26-connected components that fall into one dilated blob form one
   lesion: two pieces of tumour a few voxels apart are one lesion, not two. The blob is the lesion's
   *region of interest* (it equals the dilation of the merged lesion).
2. **Matching.** A lesion's prediction is the union of the whole 26-connected prediction components that
   touch its region of interest. The lesion scores Dice and HD95 against that prediction; a lesion
   with no matching component (a false negative) scores Dice 0 and HD95 :data:`LESION_HD95_PENALTY`.
3. **False positives.** Each prediction component that touches no lesion's region of interest adds a
   score of Dice 0 and HD95 374. (A component that touches only a lesion too small to be scored, rule 4,
   is neither scored nor a false positive.)
4. **Small lesions.** Lesions of at most :data:`GLIOMA_MIN_VOLUME` (50 mm³, i.e. 50 voxels at BraTS's
   1 mm spacing; the reference code compares the volume in mm³) are left out of the averages.
5. **Averages.** ``Dice = Σ Dice / (n_lesions + n_FP)`` and
   ``HD95 = (Σ HD95 + 374 · n_FP) / (n_lesions + n_FP)``. Nothing to score at all (no lesion above the
   threshold and no false positive): Dice 1, HD95 0.

Regions are given as label sets. BraTS 2023 relabelled the tissues (1 = NETC, 2 = SNFH, 3 = ET), so
its regions are :data:`BRATS2023_REGIONS`; for BraTS 2020 label maps pass
``brats_utils.labels.REGIONS`` ({1, 2, 4}, {1, 4}, {4}).

Per-lesion Dice and HD95 reuse :func:`brats_utils.metrics.dice` and :func:`brats_utils.metrics.hd95`,
so a lesion is scored exactly like a 2020 region. That HD95 is medpy's (called by CBICA's
standalone Hausdorff95 tool; that the 2020 portal scored exactly so is not confirmed):
the 95th percentile of the voxel-surface distances of both directions pooled. The 2023 reference code
uses DeepMind's ``surface-distance`` ``compute_robust_hausdorff`` instead: surfaces made of surface
elements weighted by their area, the 95th percentile taken in each direction separately, and the
larger of the two kept. Both are 0 for a perfect match. Otherwise keeping the larger directional
percentile can only raise the value (a pooled percentile lies between the two directional ones),
while the surface definition and the area weights can move it either way: on spheres of radius
5-12 voxels, shifted or shrunk, the 2023 value came out equal or up to 0.4 mm lower, and both give
6 mm on the cube pairs of the tests. Lesion-wise HD95 from here is therefore close to, but not
bit-for-bit, the challenge's (the 374 penalties, which dominate it for most models, are the same).
The empty cases need no HD95 at all: they are the penalties of the rules above (374, not the 2020
373.12866).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brats_utils.errors import ProfileError, ShapeMismatchError
from brats_utils.labels import BRATS2023, TRAIN_REGIONS
from brats_utils.metrics import BRATS2020_PROTOCOL, MetricsProtocol, dice, hd95
from brats_utils.official import official_train_scores, official_version

#: BraTS 2023 regions in its labels (1 = NETC, 2 = SNFH/edema, 3 = ET), as its label scheme declares them.
BRATS2023_REGIONS: dict[str, tuple[int, ...]] = dict(BRATS2023.regions)
#: HD95 (mm) of a missed lesion and of a false-positive component.
LESION_HD95_PENALTY = 374.0
#: Dilation iterations for gliomas (BraTS-GLI; also SSA and PED; MEN and MET use 1).
GLIOMA_DILATION = 3
#: Lesions of at most this volume (mm³) are not scored (BraTS-GLI; MET uses 2).
GLIOMA_MIN_VOLUME = 50.0

_DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)
_COMPONENT_STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


@dataclass(frozen=True)
class LesionScore:
    """One ground-truth lesion.

    Attributes:
        volume: the lesion's volume in mm³.
        dice: Dice against its matched prediction (0 when nothing matched).
        hd95: HD95 in mm against its matched prediction (:data:`LESION_HD95_PENALTY` when nothing matched).
        matched: labels of the prediction components matched to it (see ``LesionWiseResult``).
        scored: whether it counts in the averages (volume above the threshold).
    """

    volume: float
    dice: float
    hd95: float
    matched: tuple[int, ...]
    scored: bool


@dataclass(frozen=True)
class LesionWiseResult:
    """Lesion-wise scores of one region of one case.

    Attributes:
        dice: lesion-wise Dice.
        hd95: lesion-wise HD95 in mm.
        true_positives: scored lesions with a matched prediction.
        false_negatives: scored lesions without one.
        false_positives: prediction components matching no lesion.
        lesions: every ground-truth lesion, scored or not, in label order.
    """

    dice: float
    hd95: float
    true_positives: int
    false_negatives: int
    false_positives: int
    lesions: tuple[LesionScore, ...]


def ground_truth_lesions(truth: np.ndarray, dilation: int = GLIOMA_DILATION) -> tuple[np.ndarray, int]:
    """Label map of the dilated truth's blobs (26-connected) and their number.

    Each blob is one lesion's region of interest; the lesion itself is ``truth & (blobs == i)``: all the
    truth's components inside blob ``i``, merged.
    """
    dilated = ndimage.binary_dilation(truth, structure=_DILATION_STRUCTURE, iterations=dilation)
    return ndimage.label(dilated, structure=_COMPONENT_STRUCTURE)


def _crop(pred: np.ndarray, truth: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of either, grown by ``margin`` voxels (the dilation's reach).

    Nothing changes: every component lies inside the box, and the dilation stops at the box's edge
    only where it also stops in the whole volume, at the volume's border. A tumour's box is a small
    part of a 240 x 240 x 155 volume, so dilation and labelling get much cheaper.
    """
    if not (pred.any() or truth.any()):
        return pred, truth
    (box,) = ndimage.find_objects((pred | truth).astype(np.uint8))
    box = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n))
                for s, n in zip(box, pred.shape, strict=True))
    return pred[box], truth[box]


def lesion_wise_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    dilation: int = GLIOMA_DILATION,
    min_volume: float = GLIOMA_MIN_VOLUME,
) -> LesionWiseResult:
    """BraTS 2023 lesion-wise Dice and HD95 of two binary 3D masks of one region (see the module docstring).

    Args:
        pred: predicted mask of the region.
        truth: ground-truth mask of the region, same shape.
        spacing: voxel size in mm (for HD95 and lesion volumes).
        dilation: dilation iterations that define lesions and their regions of interest (glioma: 3).
        min_volume: lesions of at most this many mm³ are not scored (glioma: 50).

    Returns:
        The scores, the lesion counts and every lesion's own scores.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ShapeMismatchError(f"prediction shape {pred.shape} and truth shape {truth.shape}",
                                 expected="two 3D masks of one shape")
    voxel_volume = float(np.prod(spacing))
    pred, truth = _crop(pred, truth, margin=dilation)
    blobs, n_lesions = ground_truth_lesions(truth, dilation)
    components, _ = ndimage.label(pred, structure=_COMPONENT_STRUCTURE)

    lesions = []
    matched_anywhere: set[int] = set()
    for label in range(1, n_lesions + 1):
        region = blobs == label
        lesion = truth & region
        matched = tuple(int(c) for c in np.unique(components[region]) if c)
        matched_anywhere.update(matched)
        if matched:
            matched_pred = np.isin(components, matched)
            scores = (dice(matched_pred, lesion), hd95(matched_pred, lesion, spacing))
        else:
            scores = (0.0, LESION_HD95_PENALTY)
        volume = float(np.count_nonzero(lesion)) * voxel_volume
        lesions.append(LesionScore(volume, *scores, matched=matched, scored=volume > min_volume))

    false_positives = int(components.max()) - len(matched_anywhere)
    scored = [lesion for lesion in lesions if lesion.scored]
    count = len(scored) + false_positives
    if count == 0:
        lesion_dice, lesion_hd95 = 1.0, 0.0
    else:
        lesion_dice = sum(lesion.dice for lesion in scored) / count
        lesion_hd95 = (sum(lesion.hd95 for lesion in scored) + LESION_HD95_PENALTY * false_positives) / count
    found = sum(1 for lesion in scored if lesion.matched)
    return LesionWiseResult(lesion_dice, lesion_hd95, true_positives=found,
                            false_negatives=len(scored) - found, false_positives=false_positives,
                            lesions=tuple(lesions))


def lesion_wise_case_metrics(
    pred_labels: np.ndarray,
    true_labels: np.ndarray,
    regions: Mapping[str, Sequence[int]] = BRATS2023_REGIONS,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    **options: float,
) -> dict[str, float]:
    """Lesion-wise scores of every region of one case from two label maps.

    Args:
        pred_labels: predicted label map.
        true_labels: ground-truth label map, same shape and labelling.
        regions: region name -> labels it is made of (default: BraTS 2023's WT, TC, ET; for BraTS 2020
            label maps pass ``brats_utils.labels.REGIONS``).
        spacing: voxel size in mm.
        **options: ``dilation`` and ``min_volume``, passed to :func:`lesion_wise_scores`.

    Returns:
        ``LesionWise_Dice_<R>``, ``LesionWise_HD95_<R>``, ``Num_TP_<R>``, ``Num_FN_<R>`` and
        ``Num_FP_<R>`` for each region ``R``.
    """
    pred_labels, true_labels = np.asarray(pred_labels), np.asarray(true_labels)
    scores: dict[str, float] = {}
    for name, labels in regions.items():
        pred, truth = np.isin(pred_labels, labels), np.isin(true_labels, labels)
        result = lesion_wise_scores(pred, truth, spacing, **options)
        scores |= {f"LesionWise_Dice_{name}": result.dice, f"LesionWise_HD95_{name}": result.hd95,
                   f"Num_TP_{name}": result.true_positives, f"Num_FN_{name}": result.false_negatives,
                   f"Num_FP_{name}": result.false_positives}
    return scores


# --- as a metrics protocol ------------------------------------------------------------------


def lesion_wise_train_scores(pred_train_labels: np.ndarray, true_train_labels: np.ndarray,
                             spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                             case_id: str | None = None) -> dict[str, float]:
    """:func:`lesion_wise_case_metrics` of two training-label maps (0..3, regions ``labels.TRAIN_REGIONS``).

    Training labels have the same regions whatever the dataset (WT = {1, 2, 3}, TC = {1, 3},
    ET = {3}), so this scores BraTS 2020, 2023 and MSD cases alike once their file labels are
    converted. ``case_id`` is accepted for the protocol's signature.
    """
    return lesion_wise_case_metrics(pred_train_labels, true_train_labels, TRAIN_REGIONS, spacing)


#: BraTS 2023 and later: Dice and HD95 per lesion, missed lesions and false positives penalised.
LESIONWISE_PROTOCOL = MetricsProtocol(
    "lesionwise", lesion_wise_train_scores,
    "lesion-wise Dice / HD95 with lesion counts (BraTS 2023 and later)")
#: The metrics protocols by the name a profile's ``metrics_protocol`` gives.
PROTOCOLS: dict[str, MetricsProtocol] = {p.name: p for p in (BRATS2020_PROTOCOL, LESIONWISE_PROTOCOL)}
#: The challenge's own evaluation (:mod:`brats_utils.official`), chosen when asked for, by what is installed.
BRATS2025 = "brats2025"


def brats2025_protocol() -> MetricsProtocol:
    """BraTS 2025's evaluation: the official ``brats-evaluation`` package when the extra ``official`` is
    installed, else this module's lesion-wise implementation of the 2023 rules; the description says which."""
    version = official_version()
    if version is not None:
        return MetricsProtocol(BRATS2025, official_train_scores,
                               f"the official BraTS evaluation, brats-evaluation {version} (config gli)")
    return MetricsProtocol(BRATS2025, lesion_wise_train_scores,
                           "the project's own lesion-wise implementation of the BraTS 2023 rules "
                           "(brats-evaluation is not installed: pip install -e \".[official]\")")


def get_protocol(name: str) -> MetricsProtocol:
    """The protocol called ``name`` (``"brats2020"``, ``"lesionwise"`` or ``"brats2025"``, see
    :func:`brats2025_protocol`); :class:`ProfileError` otherwise."""
    if name == BRATS2025:
        return brats2025_protocol()
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ProfileError(f"unknown metrics protocol {name!r}",
                           expected="one of " + ", ".join([*PROTOCOLS, BRATS2025])) from None
