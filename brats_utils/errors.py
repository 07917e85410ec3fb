"""The package's exception types.

Every error about input data names the case, the file and what was expected, so a
student who meets one knows which file to look at and what is wrong with it::

    raise LabelValueError("unexpected label values [3]", case_id="BraTS20_Training_007",
                          path=seg_path, expected="labels in {0, 1, 2, 4}")
"""

from __future__ import annotations

from pathlib import Path


class BratsError(Exception):
    """Base class: an input, file or state the package cannot work with.

    The message reads ``<problem> [case <id>] [file <path>] (expected <expectation>)``;
    the parts are also kept as attributes for programs that want them.
    """

    def __init__(
        self,
        problem: str,
        *,
        case_id: str | None = None,
        path: str | Path | None = None,
        expected: str | None = None,
    ) -> None:
        self.problem = problem
        self.case_id = case_id
        self.path = Path(path) if path is not None else None
        self.expected = expected
        parts = [problem]
        if case_id is not None:
            parts.append(f"case {case_id}")
        if path is not None:
            parts.append(f"file {path}")
        message = ", ".join(parts)
        if expected is not None:
            message += f" (expected {expected})"
        super().__init__(message)


class DatasetNotFoundError(BratsError):
    """No BraTS folder layout was found where one was expected."""


class DownloadError(BratsError):
    """The dataset could not be downloaded (offline, no access, ...)."""


class MissingModalityError(BratsError):
    """A case folder lacks one of the four modality files."""


class ShapeMismatchError(BratsError):
    """Volumes of one case (modalities or segmentation) differ in shape."""


class NotCoregisteredError(BratsError):
    """Volumes of one case have different affines: they do not share one voxel grid."""


class NotAVolumeError(BratsError):
    """A file holds something other than a 3D volume."""


class LabelValueError(BratsError, ValueError):
    """A segmentation holds values outside the expected label set (also a ``ValueError``)."""


class NonFiniteError(BratsError):
    """A volume contains NaN or infinite voxels."""


class UnreadableFileError(BratsError):
    """A file is missing, truncated or not a readable NIfTI image."""


class CacheError(BratsError):
    """A preprocessed-cache entry is missing, stale or damaged."""


class CheckpointError(BratsError):
    """A checkpoint is corrupt or does not match the model it is loaded into."""


class FolderLockedError(BratsError):
    """Another process is writing the same run or cache folder."""


class DiskFullError(BratsError):
    """The disk filled up while writing; the previous files are left as they were."""


class ProfileError(BratsError, ValueError):
    """A run profile, or an override of one field, has a value it cannot have."""


class OutOfMemoryError(BratsError):
    """The GPU (or the computer) ran out of memory; the message names the sizes used and what lowers them."""


# --- warnings: the run goes on, and says what it did --------------------------------------------


class BratsWarning(UserWarning):
    """Base class: something was damaged or missing and the package worked around it."""


class DamagedCacheWarning(BratsWarning):
    """A cache entry was incomplete or damaged and is rebuilt from the source files."""


class CheckpointFallbackWarning(BratsWarning):
    """The newest checkpoint could not be read; the run resumes from an older one."""
