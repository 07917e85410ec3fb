"""``make bench``: run every ``bench_*.py`` beside this file (or those named on the command line).

Benchmarks print ratios measured side by side in one run; they are not tests and
assert nothing about speed. Each module exposes ``main() -> None``.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
import time
from pathlib import Path

import torch


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(names: list[str]) -> None:
    """Run the selected benchmark files in name order, with a header naming the machine."""
    here = Path(__file__).parent
    files = sorted(here.glob("bench_*.py"))
    if names:
        files = [f for f in files if any(n in f.stem for n in names)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, {device}")
    for path in files:
        print(f"\n## {path.stem}")
        start = time.perf_counter()
        _load(path).main()
        print(f"({path.stem} took {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
