"""``make gpu-check`` (tests/benchmarks/gpu_check.py): the pieces that run without a GPU."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_have_the_paper_defaults_and_are_checked(gpu_check):
    args = gpu_check.parse_args([])
    assert (args.steps, args.patch, args.quick) == (5, 128, False)
    assert not (args.skip_compile or args.skip_monai or args.skip_ddp)
    args = gpu_check.parse_args(["--steps", "2", "--patch", "64", "--quick", "--skip-compile", "--skip-ddp"])
    assert (args.steps, args.patch, args.quick, args.skip_compile, args.skip_ddp) == (2, 64, True, True, True)
    for bad in (["--steps", "0"], ["--patch", "60"], ["--patch", "8"], ["--nope"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_the_table_aligns_columns_and_shows_missing_cells_as_dashes(gpu_check):
    rows = [{"check": "training step", "setting": "paper, 128^3 x2, fp16", "seconds": 0.4567,
             "peak MiB": 5123.4, "note": "AMP"},
            {"check": "DDP step", "seconds": math.nan, "note": "skipped: needs two GPUs"}]
    lines = gpu_check.format_table(rows).splitlines()
    assert lines[0].split() == ["check", "setting", "seconds", "peak", "MiB", "note"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert "0.457" in lines[2] and "5123" in lines[2] and "AMP" in lines[2]
    assert lines[3].startswith("DDP step") and lines[3].split()[2:4] == ["-", "-"]
    starts = [line.index(word) for line, word in zip(lines[::2], ("setting", "paper"), strict=False)]
    assert starts[0] == starts[1]  # columns line up


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_without_a_gpu_it_says_so_and_exits_1(gpu_check, capsys):
    assert gpu_check.main(["--quick"]) == 1
    err = capsys.readouterr().err
    assert "needs a CUDA GPU and found none" in err and "Kaggle" in err
    done = subprocess.run([sys.executable, str(SCRIPT), "--skip-ddp"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1 and "needs a CUDA GPU" in done.stderr
