"""Atomic file writes: every file the package writes appears whole or not at all.

A Colab session can die in the middle of a write; a later run must never trust half a
checkpoint, table or image. Everything is written under a temporary name in the target
folder and renamed into place (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` (same suffixes); rename it over ``path`` on success.

    If the block raises, ``path`` keeps its previous content and the partial file is removed::

        with atomic_path("history.csv") as tmp:
            table.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps .nii.gz / .png for format sniffing
    try:
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
