"""Safe writes: every file appears whole or not at all, a full disk says so, one writer per folder.

A Colab session can die in the middle of a write; a later run must never trust half a
checkpoint, table or image. Everything is written under a temporary name in the target
folder and renamed into place (``os.replace`` is atomic on one file system).

A full disk is reported as :class:`~brats_utils.errors.DiskFullError`, naming the folder
and its free space, instead of a raw ``OSError`` (the previous file stays in place).
Two processes writing one run or cache folder would silently overwrite each other's
files, so :func:`folder_lock` lets only one in and tells the second who holds the folder.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from brats_utils.errors import DiskFullError, FolderLockedError

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder"


def free_bytes(folder: str | Path) -> int:
    """Free space of the file system holding ``folder`` (or its nearest existing parent)."""
    folder = Path(folder).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_full_error(folder: str | Path, error: BaseException) -> DiskFullError:
    """The :class:`DiskFullError` for a write into ``folder`` that failed with ``error``."""
    free = free_bytes(folder) / 2**20
    return DiskFullError(f"the disk is full ({free:.1f} MiB free; {error})", path=folder,
                         expected="free space for the write; the previous files are unchanged")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or the error it was raised from) is ``OSError(ENOSPC)``."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def disk_full_errors(folder: str | Path) -> Iterator[None]:
    """Turn an ``OSError(ENOSPC)`` raised inside the block into a :class:`DiskFullError` naming ``folder``."""
    try:
        yield
    except OSError as error:
        if not is_disk_full(error):
            raise
        raise disk_full_error(folder, error) from error


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` (same suffixes); rename it over ``path`` on success.

    If the block raises, ``path`` keeps its previous content and the partial file is removed
    (a full disk raises :class:`~brats_utils.errors.DiskFullError`)::

        with atomic_path("history.csv") as tmp:
            table.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps .nii.gz / .png for format sniffing
    try:
        with disk_full_errors(path.parent):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv_atomic(table: pd.DataFrame, path: str | Path, *, index: bool = False) -> Path:
    """``table.to_csv`` into ``path``, atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=index)
    return Path(path)


def write_json_atomic(data: object, path: str | Path) -> Path:
    """JSON-encode ``data`` into ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return Path(path)


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` for this process: a second process gets :class:`FolderLockedError` at once.

    The lock is ``folder/.lock`` (released by the operating system if the process dies);
    ``folder/.lock.holder`` names the holder (pid, host, start time) for the error message.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder_path = folder / HOLDER_FILE
        holder = holder_path.read_text().strip() if holder_path.is_file() else "an unknown process"
        raise FolderLockedError(f"another process is writing this folder ({holder})", path=folder,
                                expected="one training or cache build per folder at a time: wait for "
                                         "it to finish or use another folder") from None
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        (folder / HOLDER_FILE).write_text(f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n")
        yield folder
    finally:
        (folder / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()
