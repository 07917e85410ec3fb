"""Faults that end a run, each explained in one line: an interrupt, running out of memory.

A Colab tab closed, a Kaggle session stopped (SIGTERM) or Ctrl-C in a terminal (SIGINT) should
not end in a traceback that hides what matters: what was saved and how to go on. And the
likeliest failure on a 16 GB T4, running out of GPU memory, should name the sizes in use and
the settings that lower them. :mod:`brats_utils.pipeline` wraps each step in these::

    with interrupt_note(lambda: saved_epochs(run_dir), resume_command(profile, "train")):
        with out_of_memory_explained(profile, "training"):
            ...

:func:`interrupt_note` prints one line (``interrupted: <what was saved>; resume with: <command>``)
on stderr and lets the interrupt go on, so a notebook cell still stops; the command line then
exits without a traceback (status 130). Only the outermost step prints (``train`` builds the
cache first: the line says how to resume the training, not the cache).
"""

from __future__ import annotations

import contextvars
import resource
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from brats_utils.config import PROFILES, Profile, parse_override
from brats_utils.errors import OutOfMemoryError
from brats_utils.precision import pick_device, resolve_precision

_note_active: contextvars.ContextVar[bool] = contextvars.ContextVar("interrupt_note_active", default=False)


def resume_command(profile: Profile, command: str, *options: str) -> str:
    """The command line that runs ``command`` again with ``profile``'s settings (``--set`` for each change).

    ``options`` (e.g. ``"--split", "test"``) are added as they are. A profile whose name is not one
    of :data:`~brats_utils.config.PROFILES` is named as it is, its settings as a hint.
    """
    parts = ["python", "-m", "brats_utils", command, *options]
    base = PROFILES.get(profile.name)
    if base is None:
        return shlex.join(parts) + f" (with the settings of profile {profile.name!r})"
    parts += ["--profile", profile.name]
    for key, value in profile.as_dict().items():
        if value != getattr(base, key):
            parts += ["--set", _override(key, value)]
    return shlex.join(parts)


def _override(key: str, value: object) -> str:
    """``key=value`` as ``--set`` reads it back (:func:`brats_utils.config.parse_override`), kept short."""
    bare = f"{key}={value}"
    if isinstance(value, str) and parse_override(bare)[1] == value:
        return bare  # model_preset=l4_f16, not model_preset='l4_f16'
    return f"{key}={value!r}".replace(", ", ",")


@contextmanager
def interrupt_note(saved: Callable[[], str], command: str) -> Iterator[None]:
    """On Ctrl-C or SIGTERM inside the block, print ``interrupted: <saved()>; resume with: <command>``.

    The interrupt is raised on (a notebook cell stops; :func:`brats_utils.cli.main` ends quietly).
    Nested blocks stay silent: the outermost step is the one to resume.
    """
    if _note_active.get():
        yield
        return
    token = _note_active.set(True)
    try:
        yield
    except KeyboardInterrupt as interrupt:
        try:
            what = saved()
        except Exception as error:  # the note must never replace the interrupt
            what = f"(could not tell what was saved: {error})"
        line = f"interrupted: {what}; resume with: {command}"
        print(line, file=sys.stderr, flush=True)
        interrupt.note = line  # cli.main prints nothing more (Python 3.10 has no add_note)
        raise
    finally:
        _note_active.reset(token)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is CUDA's, or the CPU allocator's, out-of-memory error."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def peak_memory() -> str:
    """The peak memory this process used: on the GPU where there is one, else of the process (RSS)."""
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
        return f"peak {peak:.1f} GiB allocated of {total:.1f} GiB on {torch.cuda.get_device_name()}"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return f"peak {rss:.1f} GiB resident on the CPU"


def _smaller(shape: tuple[int, ...] | None) -> str:
    """Three quarters of a patch shape, in multiples of 16 (the U-Net's downsampling needs them)."""
    if shape is None:
        return "a patch_size, e.g. (128,128,128), instead of whole volumes"
    return "(" + ",".join(str(max(16, int(n * 0.75) // 16 * 16)) for n in shape) + ")"


def memory_error(profile: Profile, stage: str, error: BaseException) -> OutOfMemoryError:
    """The :class:`~brats_utils.errors.OutOfMemoryError` for ``stage`` (``"training"`` or ``"prediction"``).

    The precision named is the one the profile resolves to on this machine's device
    (:func:`~brats_utils.precision.pick_device`: CUDA, else Apple's MPS, else the CPU).
    """
    precision = resolve_precision(profile.requested_precision, pick_device())
    first_line = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    half = ", or 16-bit precision on a GPU (--set precision=auto)" if precision == "fp32" else ""
    if stage == "training":
        sizes = f"patch {profile.patch_size}, batch {profile.batch_size}, precision {precision}"
        lower = f"--set batch_size=1, a smaller patch (--set patch_size={_smaller(profile.patch_size)}){half}"
    else:
        sizes = (f"window {profile.sw_patch_size}, sw_batch_size {profile.sw_batch_size or 'auto'}, "
                 f"precision {precision}")
        lower = (f"--set sw_batch_size=1, a smaller window (--set sw_patch_size="
                 f"{_smaller(profile.sw_patch_size)}){half}")
    return OutOfMemoryError(f"out of memory during {stage} ({sizes}; {peak_memory()}; {first_line})",
                            expected=f"less memory: {lower}")


@contextmanager
def out_of_memory_explained(profile: Profile, stage: str) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into :func:`memory_error` (the original as its cause)."""
    try:
        yield
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        raise memory_error(profile, stage, error) from error
