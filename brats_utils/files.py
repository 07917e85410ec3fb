"""Safe writes: every file appears whole or not at all, a full disk says so, one writer per folder.

A Colab session can die in the middle of a write; a later run must never trust half a
checkpoint, table or image. Everything is written under a temporary name in the target
folder and renamed into place (``os.replace`` is atomic on one file system).

A full disk is reported as :class:`~brats_utils.errors.DiskFullError`, naming the folder
and its free space, instead of a raw ``OSError`` (the previous file stays in place).
Two processes writing one run or cache folder would silently overwrite each other's
files, so :func:`folder_lock` lets only one in and tells the second who holds the folder.
A shared product (a cache, a synthetic dataset) is different: a second process waits for
the first to finish building it, then reads it (``wait``; :func:`sibling_lock`), and the
temporary folder of a builder that died is removed at the next start (:func:`remove_stale_siblings`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from brats_utils.errors import DiskFullError, FolderLockedError

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder"
UNKNOWN_HOLDER = "an unknown process"


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
            try:
                yield tmp
            except Exception as error:
                interrupt = interrupt_behind(error)
                if interrupt is not None:  # Ctrl-C in the writer, which then failed closing the file
                    raise interrupt from None
                raise
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them (in the main thread; else a no-op).

    For writes that cannot survive an interrupt: torch's checkpoint writer, interrupted, can abort the
    whole process from a C++ destructor. The write finishes (seconds at most), then the interrupt goes on.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)  # Python's (or the command line's) handler: KeyboardInterrupt
            else:
                os.kill(os.getpid(), received[0])  # the default action, as if it had come now


def interrupt_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (``KeyboardInterrupt``) that ``error`` was raised while handling, if any.

    torch's checkpoint writer, interrupted, fails again when it closes the file
    (``RuntimeError: … unexpected pos``); what happened is the interrupt, not a failed write.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def crc32_of(path: str | Path, *, chunk: int = 2**22) -> int:
    """CRC-32 of a file's bytes (read in ``chunk``-byte pieces): a cheap proof that it is the file written."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def write_csv_atomic(table: pd.DataFrame, path: str | Path, *, index: bool = False) -> Path:
    """``table.to_csv`` into ``path``, atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=index)
    return Path(path)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """``text`` into ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(data: object, path: str | Path) -> Path:
    """JSON-encode ``data`` into ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return Path(path)


def holder_of(lock_file: Path) -> str:
    """Who holds ``lock_file``, as its holder file says (pid, host, start time)."""
    holder_path = lock_file.with_name(lock_file.name + ".holder")
    try:
        return holder_path.read_text().strip() or UNKNOWN_HOLDER
    except OSError:
        return UNKNOWN_HOLDER


@contextmanager
def _hold(lock_file: Path, subject: Path, *, wait: float) -> Iterator[None]:
    """Hold ``lock_file`` (guarding ``subject``) for this process; wait up to ``wait`` seconds for another.

    With ``wait=0`` a held lock raises :class:`FolderLockedError` at once; otherwise one line on stderr
    says for which process this one waits, and :class:`FolderLockedError` comes when ``wait`` runs out.
    """
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = holder_of(lock_file)
        for _ in range(20):  # the holder writes its name just after taking the lock
            if holder != UNKNOWN_HOLDER:
                break
            time.sleep(0.05)
            holder = holder_of(lock_file)
        if wait <= 0:
            raise FolderLockedError(f"another process is writing this folder ({holder})", path=subject,
                                    expected="one training per run folder at a time: wait for it to finish "
                                             "or use another folder") from None
        print(f"waiting for {holder} to finish writing {subject} (at most {wait:.0f} s, setting "
              f"lock_timeout)", file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            raise FolderLockedError(f"another process is still writing this folder after {wait:.0f} s "
                                    f"({holder_of(lock_file)})", path=subject,
                                    expected="it to finish: wait longer with --set lock_timeout=SECONDS, or "
                                             "stop that process") from None
    holder_path = lock_file.with_name(lock_file.name + ".holder")
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        holder_path.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n")
        yield
    finally:
        holder_path.unlink(missing_ok=True)
        lock.release()


@contextmanager
def folder_lock(folder: str | Path, *, wait: float = 0.0) -> Iterator[Path]:
    """Hold ``folder`` for this process: a second process gets :class:`FolderLockedError` at once.

    The lock is ``folder/.lock`` (released by the operating system if the process dies);
    ``folder/.lock.holder`` names the holder (pid, host, start time) for the error message.
    A run folder is refused to a second writer (``wait=0``); a shared product (a cache) is
    waited for up to ``wait`` seconds, then read.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _hold(folder / LOCK_FILE, folder, wait=wait):
        yield folder


@contextmanager
def sibling_lock(target: str | Path, *, wait: float) -> Iterator[Path]:
    """Hold ``target`` (a folder that appears whole by renaming) through ``.<name>.lock`` beside it.

    For products written elsewhere and moved into place (a synthetic dataset): a second process
    waits up to ``wait`` seconds (one line on stderr names the holder), then finds it complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _hold(target.parent / f".{target.name}{LOCK_FILE}", target, wait=wait):
        yield target


def temporary_sibling(target: str | Path) -> Path:
    """``.<name>.tmp-<host>-<pid>`` beside ``target``: where this process builds it before renaming."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_siblings(target: str | Path) -> list[Path]:
    """Remove the :func:`temporary_sibling` folders of ``target`` left by dead processes on this host.

    A folder of a live process, or of another host (a shared drive), is left alone; names without a
    host (``.<name>.tmp-<pid>``, older versions) count as this host's. Returns the folders removed.
    """
    target = Path(target)
    removed = []
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        host, _, pid = tmp.name.removeprefix(f".{target.name}.tmp-").rpartition("-")
        if pid.isdigit() and host in ("", socket.gethostname()) and not _is_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed
