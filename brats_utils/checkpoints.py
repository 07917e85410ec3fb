"""Checkpoints: the format, safe saving and loading, the compatibility check, the trained network.

A checkpoint is a plain dict of tensors and containers (keys :data:`CHECKPOINT_KEYS`) so
that it loads with ``torch.load(weights_only=True)``: a file from the internet can hold
weights, never code. It lives apart from the training loop so that inference, the
architecture study and the notebooks load models without importing the trainer.

- :func:`atomic_torch_save`: temporary name, fsync, rename; a crash or a full disk leaves
  the previous checkpoint as the one that loads.
- :func:`load_checkpoint`: a training checkpoint, read weights-only and checked for its keys.
- :func:`newest_readable_checkpoint`: the resume point, ``last.pt`` or, when that is damaged, the newest
  epoch file that loads (with a warning naming both).
- :func:`check_compatible`: a run may only be resumed with the settings it was trained with.
- :func:`load_pretrained`: weights of any of the usual wrappings into a model, strictly, including
  the authors' whole pickled modules (:func:`read_weights`, through :mod:`brats_utils.unpickle`).
- :func:`load_model`: the network of a training checkpoint, rebuilt from its ``model_config``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from brats_utils.config import acting_settings, resumable_fields, saved_settings
from brats_utils.errors import CheckpointError, CheckpointFallbackWarning
from brats_utils.files import atomic_path, disk_full_error, interrupts_held, is_disk_full
from brats_utils.model import UNet3D
from brats_utils.unpickle import read_pickled_state_dict

CHECKPOINT_KEYS = ("model_state_dict", "model_config", "optimizer_state_dict", "scheduler_state_dict",
                   "scaler_state_dict", "early_stopping", "epoch", "rng_state", "config", "history")
def checkpoint_dir(run_dir: Path) -> Path:
    """Folder of a run's checkpoints."""
    return Path(run_dir) / "checkpoints"


def atomic_torch_save(obj: object, path: Path) -> Path:
    """``torch.save`` to a temporary name beside ``path``, flush to disk, then rename.

    A crash at any moment leaves either the previous file or the new one, never half a file.
    Ctrl-C or SIGTERM during the write takes effect once it is done (:func:`~brats_utils.files.
    interrupts_held`): an interrupted torch writer can abort the process.
    A full disk raises :class:`~brats_utils.errors.DiskFullError` naming the folder and its
    free space (torch reports it as a ``RuntimeError`` from its writer).
    """
    path = Path(path)
    try:
        with interrupts_held(), atomic_path(path) as tmp, open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except RuntimeError as error:  # torch's writer wraps the OSError in "... file write failed"
        if is_disk_full(error) or "write failed" in str(error):
            raise disk_full_error(path.parent, error) from error
        raise
    return path


def read_weights_only(path: str | Path, *, expected: str) -> object:
    """``torch.load(path, weights_only=True)`` onto the CPU; :class:`CheckpointError` when that fails."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path=path, expected=expected)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors ...
        raise CheckpointError(f"cannot read checkpoint: it cannot be read weights-only "
                              f"({type(error).__name__}: {str(error)[:200]})", path=path,
                              expected=expected) from error


def read_weights(path: str | os.PathLike) -> object:
    """What a weights file holds, read without running code: ``weights_only`` first, else the restricted
    unpickler (:func:`brats_utils.unpickle.read_pickled_state_dict`) for whole pickled modules.

    Never ``torch.load(weights_only=False)``, which would run code from the file. Raises
    :class:`CheckpointError` for a missing file, and the unpickler's error (naming the file and the
    refused global) when neither reader accepts it.
    """
    path = Path(path)
    try:
        return read_weights_only(path, expected="a torch.save file holding only tensors and plain containers")
    except CheckpointError as weights_only_error:
        if not path.is_file():
            raise
        weights_only_problem = weights_only_error.problem
    try:
        return read_pickled_state_dict(path)
    except CheckpointError as error:
        raise CheckpointError(f"cannot read checkpoint: the restricted unpickler refused it too "
                              f"({error.problem}; {weights_only_problem})", path=path,
                              expected="a state dict, a training checkpoint or a pickled nn.Module",
                              ) from error


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint onto the CPU, safely (``weights_only``), and check its keys.

    Raises :class:`~brats_utils.errors.CheckpointError` when the file is missing, unreadable
    (truncated, not a torch file) or lacks any of :data:`CHECKPOINT_KEYS`.
    """
    path = Path(path)
    expected = "a checkpoint written by brats_utils.train"
    checkpoint = read_weights_only(path, expected=expected)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint holds a {type(checkpoint).__name__}, not a dict",
                              path=path, expected=expected)
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint lacks {', '.join(missing)}", path=path,
                              expected=f"keys {', '.join(CHECKPOINT_KEYS)}")
    return checkpoint


def resume_candidates(run_dir: Path) -> list[Path]:
    """The checkpoints a run may resume from, newest first: ``last.pt``, then ``epoch_NNN.pt`` by epoch."""
    folder = checkpoint_dir(run_dir)
    epochs = sorted(folder.glob("epoch_*.pt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0),
                    reverse=True)
    return [path for path in [folder / "last.pt", *epochs] if path.is_file()]


def newest_readable_checkpoint(run_dir: Path) -> tuple[dict, Path] | None:
    """The newest checkpoint of a run that loads (:func:`resume_candidates` order) and its path; None if none.

    A damaged file (truncated by a full disk or a copy cut short) is skipped with a
    :class:`~brats_utils.errors.CheckpointFallbackWarning` naming it and the file used instead
    (nnU-Net's habit). Raises :class:`CheckpointError` when checkpoints exist but none loads.
    """
    damaged: list[CheckpointError] = []
    for path in resume_candidates(run_dir):
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as error:
            damaged.append(error)
            continue
        if damaged:
            names = ", ".join(str(error.path) for error in damaged)
            warnings.warn(f"cannot read {names} ({damaged[0].problem}); resuming from {path} (epoch "
                          f"{checkpoint['epoch']}), the epochs after it are trained again",
                          CheckpointFallbackWarning, stacklevel=2)
        return checkpoint, path
    if damaged:
        raise CheckpointError(f"no checkpoint of this run can be read ({damaged[0].problem})",
                              path=checkpoint_dir(run_dir),
                              expected="a readable last.pt or epoch_NNN.pt; start over with --restart "
                                       "(train(..., resume=False))")
    return None


def check_compatible(checkpoint: dict, settings: Mapping[str, object], path: Path,
                     model: nn.Module | None = None) -> None:
    """Raise :class:`CheckpointError` if the checkpoint belongs to other settings (or to another ``model``).

    ``settings`` are the flat settings of the run about to resume (``Profile.as_dict()``). Only the
    settings declared resumable (:func:`brats_utils.config.resumable_fields`: epochs, patience, ...) may
    differ. A checkpoint written before a setting existed counts as its default there, or as what it
    meant then (:func:`brats_utils.config.saved_settings`); settings that do not act are left out.
    """
    if model is not None and dict(checkpoint["model_config"]) != dict(model.config):
        differing = sorted(k for k in set(checkpoint["model_config"]) | set(model.config)
                           if checkpoint["model_config"].get(k) != model.config.get(k))
        raise CheckpointError(f"checkpoint was trained with another architecture (differs in {differing})",
                              path=path, expected=f"model config {model.config}")
    saved = acting_settings(saved_settings(checkpoint["config"]))
    current = acting_settings(dict(settings))
    resumable = resumable_fields()
    differing = sorted(k for k in current if k not in resumable and saved.get(k) != current[k])
    if differing:
        changes = "; ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in differing)
        raise CheckpointError(f"checkpoint comes from a run with other settings ({changes})", path=path,
                              expected="the same settings, or resume=False (--restart) to start over")


# --- weights into a model ------------------------------------------------------------------


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _state_dict_of(source: object, path: Path | None) -> Mapping:
    """The state dict inside a loaded object: bare, in ``model_state_dict``, without wrapper prefixes."""
    state = source
    if isinstance(state, Mapping) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("checkpoint holds no state dict", path=path,
                              expected="a state dict or a dict with 'model_state_dict'")
    for prefix in ("module.", "_orig_mod."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def _check_fits(model: nn.Module, state: Mapping, path: Path | None) -> None:
    """Raise :class:`CheckpointError` naming missing keys, unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [f"{key} {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
                  for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or mismatched:
        found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
        problems = [f"{label}: {_names(keys)}" for label, keys in found.items() if keys]
        config = getattr(model, "config", type(model).__name__)
        raise CheckpointError("checkpoint does not fit the model; " + "; ".join(problems), path=path,
                              expected=f"the state dict of {config}")


def load_pretrained(model: nn.Module, path_or_state: str | os.PathLike | Mapping) -> nn.Module:
    """Load weights into ``model`` strictly and return it.

    Accepts a file path or an object holding a state dict: a bare state dict, a checkpoint dict with
    ``"model_state_dict"`` (the authors' and our format), keys prefixed by ``module.`` (saved from
    ``nn.DataParallel``, as the authors trained on Kaggle's two T4s) or ``_orig_mod.`` (``torch.compile``).
    Files are read with ``weights_only=True``; a file that holds a whole pickled module (the authors'
    ``torch.save(DataParallel(ImprovedUNet3D))`` releases) is then read by the restricted unpickler
    :func:`brats_utils.unpickle.read_pickled_state_dict`, which never imports or calls anything the
    file names. So a checkpoint cannot run code. Raises :class:`~brats_utils.errors.CheckpointError`
    for a file neither reader accepts (a pickle that would call a function among them), and naming
    missing keys, unexpected keys and shape mismatches.
    """
    path = Path(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) else None
    if path is None:
        source = path_or_state
    else:
        source = read_weights(path)
    state = _state_dict_of(source, path)
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def load_model(checkpoint_path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The network saved in a training checkpoint, rebuilt from its ``model_config``, in eval mode.

    Raises :class:`~brats_utils.errors.CheckpointError` for a missing, damaged or foreign file.
    """
    checkpoint = load_checkpoint(Path(checkpoint_path))
    model = UNet3D(**checkpoint["model_config"])
    load_pretrained(model, checkpoint)
    return model.to(device).eval()
