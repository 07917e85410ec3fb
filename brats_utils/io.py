"""Reading BraTS cases into arrays and writing segmentations, with every check on the way.

:func:`load_case` turns a :class:`Case` (the record of one case's files) into a float32 image
``[4, H, W, D]`` (channels in ``labels.MODALITIES`` order) and uint8 labels in {0, 1, 2, 4}.
It never trusts the stored data type (real files are int16 or float32, labels uint8 or
float, possibly scaled by ``scl_slope``/``scl_inter``): it reads, applies the scaling, checks, then
casts. Copies other than Kaggle's may store the volumes in another orientation (RAS instead of
LPS): arrays are brought to the Kaggle files' axis order on load, and :func:`save_segmentation`
writes a prediction back in the input's own orientation and affine. Anything unexpected raises an
error from :mod:`brats_utils.errors` that names the case, the file and the expectation. Input
files are only read (Kaggle mounts them read-only); :func:`save_segmentation` writes atomically.
:func:`write_volume` writes a volume as a dataset stores it (the dataset layouts and the phantoms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from brats_utils.errors import (
    MissingModalityError,
    NonFiniteError,
    NotAVolumeError,
    NotCoregisteredError,
    ShapeMismatchError,
    UnreadableFileError,
)
from brats_utils.files import atomic_path
from brats_utils.labels import BRATS2020, MODALITIES, LabelScheme, check_labels, check_scheme, to_file_labels

#: Axis codes of the Kaggle files (x to the left, y to the back, z up): arrays are loaded in this order.
KAGGLE_AXCODES = ("L", "P", "S")
#: Largest difference between two affines' entries (mm, or direction cosines) still "co-registered".
AFFINE_TOLERANCE = 1e-3


def is_nifti(path: Path) -> bool:
    """Whether ``path`` is a file named ``*.nii`` or ``*.nii.gz`` (any case), not a macOS ``._`` fork
    (as the MSD tar holds)."""
    name = path.name.lower()
    return (path.is_file() and not path.name.startswith("._")
            and (name.endswith(".nii") or name.endswith(".nii.gz")))


def nifti_stem(path: Path) -> str:
    """A NIfTI file's name without ``.nii`` / ``.nii.gz`` (its case kept)."""
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


@dataclass(frozen=True)
class Case:
    """The files of one case: four modality paths (``MODALITIES`` order) and the segmentation.

    ``scheme`` is the label scheme of the segmentation file (BraTS 2020 unless a dataset
    declares another one). :func:`brats_utils.datasets.find_dataset` builds these records.
    ``image_4d`` is set for datasets that store the four channels in one 4D file (MSD
    Task01: ``H x W x D x 4``, channels in ``MODALITIES`` order); every modality then names
    that file too, so code that fingerprints the sources (the cache key) sees it.
    """

    case_id: str
    modalities: dict[str, Path]
    seg: Path | None
    folder: Path
    scheme: LabelScheme = BRATS2020
    image_4d: Path | None = None


@dataclass
class LoadedCase:
    """One case in memory: image ``[4, H, W, D]`` float32, labels uint8 or ``None``, geometry.

    The arrays are in the Kaggle files' orientation (``KAGGLE_AXCODES``) and ``affine`` is theirs;
    ``header`` is the input file's own, so a prediction saved with it goes back to the input's
    orientation and affine.
    """

    case_id: str
    image: np.ndarray
    labels: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header
    scheme: LabelScheme = BRATS2020  # the file labels of ``labels``


def _load_nifti(path: Path, case_id: str | None) -> nib.Nifti1Image:
    """``nib.load`` (header only), with :class:`UnreadableFileError` for a missing or damaged file."""
    try:
        return nib.load(path)
    except FileNotFoundError as err:
        raise UnreadableFileError("file not found", case_id=case_id, path=path,
                                  expected="an existing NIfTI file") from err
    except Exception as err:  # nibabel raises many types for damaged files
        raise UnreadableFileError(f"not a readable NIfTI image ({err})", case_id=case_id, path=path,
                                  expected="a .nii or .nii.gz file") from err


def open_volume(path: str | Path, *, case_id: str | None = None) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header only) and check it holds one 3D volume.

    A trailing axis of length 1 (``H x W x D x 1``) is accepted as 3D. Raises
    :class:`UnreadableFileError` or :class:`NotAVolumeError`.
    """
    path = Path(path)
    image = _load_nifti(path, case_id)
    shape = image.shape
    if len(shape) < 3 or any(n != 1 for n in shape[3:]) or min(shape[:3]) < 2:
        raise NotAVolumeError(f"holds an array of shape {shape}", case_id=case_id, path=path,
                              expected="a 3D volume")
    return image


def _voxels(image: nib.Nifti1Image, path: Path, case_id: str | None, dtype: type | None) -> np.ndarray:
    """The voxel array of an opened image as stored (``dtype=None``) or cast, checked to be finite."""
    try:
        data = image.get_fdata(dtype=dtype) if dtype is not None else np.asanyarray(image.dataobj)
    except Exception as err:  # truncated files fail here, not at open: ValueError, EOFError, zlib.error...
        kind = type(err).__name__
        raise UnreadableFileError(f"could not read the voxel data ({kind}: {err})", case_id=case_id,
                                  path=path, expected="a complete, uncorrupted NIfTI file") from err
    data = np.asarray(data)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        count = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise NonFiniteError(f"{count} NaN or infinite voxels", case_id=case_id, path=path,
                             expected="finite values only")
    return data


def _read(image: nib.Nifti1Image, path: Path, case_id: str | None, dtype: type | None) -> np.ndarray:
    """The voxel array of an opened 3D image (a trailing axis of length 1 dropped), checked."""
    return _voxels(image, path, case_id, dtype).reshape(image.shape[:3])


def read_volume(path: str | Path, *, case_id: str | None = None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read one image volume as float32 ``[H, W, D]`` (scaling applied) and its NIfTI image."""
    image = open_volume(path, case_id=case_id)
    return _read(image, Path(path), case_id, np.float32), image


def read_labels(path: str | Path, *, case_id: str | None = None,
                scheme: LabelScheme = BRATS2020) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a segmentation as uint8 ``[H, W, D]`` with values in the file labels of ``scheme``.

    Accepts any stored type (uint8, int16, float32 ...) as long as every value is one of the
    scheme's labels (BraTS 2020: {0, 1, 2, 4}); raises
    :class:`~brats_utils.errors.LabelValueError` listing the offending values otherwise.
    """
    path = Path(path)
    image = open_volume(path, case_id=case_id)
    data = _read(image, path, case_id, None)
    check_scheme(data, scheme, case_id=case_id, path=path)
    return data.astype(np.uint8), image


def reorient(array: np.ndarray, affine: np.ndarray, axcodes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``array`` (3D, laid out on ``affine``) flipped and transposed to the orientation ``axcodes``.

    ``axcodes`` as nibabel writes them, e.g. ``("L", "P", "S")``. Returns the array (itself when
    it already has that orientation) and its affine.
    """
    target = nib.orientations.axcodes2ornt(axcodes)
    transform = nib.orientations.ornt_transform(nib.io_orientation(affine), target)
    if (transform == [[0, 1], [1, 1], [2, 1]]).all():
        return array, affine
    moved = np.ascontiguousarray(nib.orientations.apply_orientation(array, transform))
    return moved, affine @ nib.orientations.inv_ornt_aff(transform, array.shape)


def _check_coregistered(nifti: nib.Nifti1Image, reference: nib.Nifti1Image, what: str, case: Case,
                        path: Path) -> None:
    if not np.allclose(nifti.affine, reference.affine, rtol=0, atol=AFFINE_TOLERANCE):
        first = case.image_4d or case.modalities[MODALITIES[0]]
        raise NotCoregisteredError(
            f"{what} has another affine than {Path(first).name} (largest difference "
            f"{np.abs(nifti.affine - reference.affine).max():.3g})", case_id=case.case_id, path=path,
            expected=f"volumes on one grid, affines equal within {AFFINE_TOLERANCE:g}")


def load_case(case: Case) -> LoadedCase:
    """Load and check one case: float32 image ``[4, H, W, D]``, uint8 labels (or ``None``).

    Stored scaling is applied and the arrays are brought to ``KAGGLE_AXCODES``; the affine is
    that of the arrays, the header that of the FLAIR file. Raises (from :mod:`brats_utils.errors`)
    :class:`MissingModalityError`, :class:`UnreadableFileError`, :class:`NotAVolumeError`,
    :class:`NonFiniteError`, :class:`ShapeMismatchError`, :class:`NotCoregisteredError` or
    :class:`LabelValueError`. A case with ``image_4d`` is read from that one file (:func:`load_case_4d`).
    """
    if case.image_4d is not None:
        return load_case_4d(case)
    reference = None
    image = None
    for channel, modality in enumerate(MODALITIES):
        path = case.modalities.get(modality)
        if path is None or not Path(path).is_file():
            raise MissingModalityError(f"no {modality} file", case_id=case.case_id, path=path or case.folder,
                                       expected=f"a file ending in _{modality}.nii or _{modality}.nii.gz")
        volume, nifti = read_volume(path, case_id=case.case_id)
        if reference is None:
            reference = nifti
        elif volume.shape != reference.shape[:3]:
            raise ShapeMismatchError(f"{modality} has shape {volume.shape}", case_id=case.case_id, path=path,
                                     expected=f"the shape of {MODALITIES[0]}, {reference.shape[:3]}")
        else:
            _check_coregistered(nifti, reference, modality, case, Path(path))
        volume, affine = reorient(volume, reference.affine, KAGGLE_AXCODES)
        if image is None:
            image = np.empty((len(MODALITIES), *volume.shape), dtype=np.float32)
        image[channel] = volume
    labels = None
    if case.seg is not None:
        labels, nifti = read_labels(case.seg, case_id=case.case_id, scheme=case.scheme)
        if labels.shape != reference.shape[:3]:
            raise ShapeMismatchError(f"segmentation has shape {labels.shape}", case_id=case.case_id,
                                     path=case.seg, expected=f"the image shape {reference.shape[:3]}")
        _check_coregistered(nifti, reference, "the segmentation", case, Path(case.seg))
        labels, _ = reorient(labels, reference.affine, KAGGLE_AXCODES)
    return LoadedCase(case.case_id, image, labels, affine.copy(), reference.header.copy(),
                      scheme=case.scheme)


def read_volume_4d(path: str | Path, *, channels: int = len(MODALITIES),
                   case_id: str | None = None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a 4D file ``H x W x D x channels`` as float32 ``[channels, H, W, D]`` and its NIfTI image.

    Raises :class:`UnreadableFileError`, :class:`NotAVolumeError` (another shape) or
    :class:`NonFiniteError`.
    """
    path = Path(path)
    image = _load_nifti(path, case_id)
    if len(image.shape) != 4 or image.shape[3] != channels or min(image.shape[:3]) < 2:
        raise NotAVolumeError(f"holds an array of shape {image.shape}", case_id=case_id, path=path,
                              expected=f"a 4D image H x W x D x {channels}")
    data = _voxels(image, path, case_id, np.float32)
    return np.ascontiguousarray(np.moveaxis(data, 3, 0)), image


def load_case_4d(case: Case) -> LoadedCase:
    """:func:`load_case` for a case whose four channels are one 4D file (``case.image_4d``).

    The affine and header are the 4D file's, reduced to 3D (so a saved prediction is a 3D
    volume on the same grid).
    """
    if case.image_4d is None or not Path(case.image_4d).is_file():
        raise MissingModalityError("no 4D image file", case_id=case.case_id,
                                   path=case.image_4d or case.folder,
                                   expected=f"one NIfTI file holding the {len(MODALITIES)} channels")
    image, nifti = read_volume_4d(case.image_4d, case_id=case.case_id)
    labels = None
    if case.seg is not None:
        labels, seg_nifti = read_labels(case.seg, case_id=case.case_id, scheme=case.scheme)
        if labels.shape != image.shape[1:]:
            raise ShapeMismatchError(f"segmentation has shape {labels.shape}", case_id=case.case_id,
                                     path=case.seg, expected=f"the image shape {image.shape[1:]}")
        _check_coregistered(seg_nifti, nifti, "the segmentation", case, Path(case.seg))
        labels, _ = reorient(labels, nifti.affine, KAGGLE_AXCODES)
    channels = [reorient(channel, nifti.affine, KAGGLE_AXCODES) for channel in image]
    image = np.stack([channel for channel, _ in channels])
    header = nifti.header.copy()
    header.set_data_shape(nifti.shape[:3])
    return LoadedCase(case.case_id, image, labels, channels[0][1].copy(), header, scheme=case.scheme)


def save_segmentation(
    labels: np.ndarray, path: str | Path, *, affine: np.ndarray, header: nib.Nifti1Header | None = None,
    scheme: LabelScheme = BRATS2020,
) -> Path:
    """Write labels as a uint8 NIfTI (BraTS submission format) with the reference geometry.

    ``labels`` must be 3D with file labels of ``scheme`` (BraTS 2020: {0, 1, 2, 4}), not training
    labels, laid
    out on ``affine``. ``header`` (e.g. ``LoadedCase.header``) is copied so that the file matches
    the input scan: when it holds an affine of another orientation (an input that was not in
    the Kaggle orientation), the labels are turned back to that orientation and written with the
    matching affine. Its data type and scaling are reset for uint8. The file is written under a
    temporary name in the same folder and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise NotAVolumeError(f"labels have shape {labels.shape}", path=path, expected="a 3D array")
    check_labels(labels, scheme.file_labels, path=path, hint=" (convert training labels with 3 -> 4 first)")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    if suffix not in (".nii", ".nii.gz"):
        raise ValueError(f"segmentation path must end in .nii or .nii.gz, got {path}")
    header = header.copy() if header is not None else nib.Nifti1Header()
    if header["sform_code"] > 0 or header["qform_code"] > 0:
        labels, affine = reorient(labels, affine, nib.aff2axcodes(header.get_best_affine()))
    header.set_data_dtype(np.uint8)
    image = nib.Nifti1Image(labels.astype(np.uint8), affine, header=header)
    image.header.set_slope_inter(1.0, 0.0)
    image.set_qform(affine, code=max(int(header["qform_code"]), 1))
    image.set_sform(affine, code=max(int(header["sform_code"]), 1))
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def write_volume(array: np.ndarray, path: str | Path, affine: np.ndarray, dtype: npt.DTypeLike, *,
                 slope_inter: tuple[float, float] | None = None) -> Path:
    """Write one volume as a dataset stores it: ``array`` cast to ``dtype`` on ``affine`` (sform and qform
    code 1, millimetres), with ``scl_slope``/``scl_inter`` when ``slope_inter`` is given. The writer of every
    dataset layout (:meth:`brats_utils.datasets.DatasetLayout.write_case`) and of the synthetic phantoms;
    they write into a temporary folder renamed when complete, so this write is not atomic by itself.
    """
    image = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if slope_inter is not None:
        image.header.set_slope_inter(*slope_inter)
    nib.save(image, path)
    return Path(path)


def export_segmentation(
    train_labels: np.ndarray, path: str | Path, *, affine: np.ndarray, header: nib.Nifti1Header | None = None,
    scheme: LabelScheme = BRATS2020, case_id: str | None = None,
) -> Path:
    """Write *training* labels {0, 1, 2, 3} in the file labels of ``scheme`` (:func:`save_segmentation`).

    This is the export of a prediction: the network's labels go out through the dataset's
    declared scheme (BraTS 2020: 3 -> 4; MSD Task01: 1 <-> 2), never as they are.
    """
    return save_segmentation(to_file_labels(train_labels, scheme=scheme, case_id=case_id), path,
                             affine=affine, header=header, scheme=scheme)
