"""Command line: ``brats <command> [--profile NAME] [--set key=value ...]`` (or ``python -m brats_utils``).

Each command calls the same :mod:`brats_utils.pipeline` function the notebooks call;
nothing here has logic of its own beyond parsing arguments. Modules are imported
lazily so that ``--help`` is instant. An error of the package (bad input, a locked
folder, a full disk...) prints as one line and exits with status 2; any other error
keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from brats_utils import __version__, config
from brats_utils.config import PROFILES, Profile, get_profile
from brats_utils.errors import BratsError


def parse_override(text: str) -> tuple[str, object]:
    """``--set key=value``: the field and its value, typed and checked (see :func:`config.parse_override`)."""
    try:
        return config.parse_override(text)
    except BratsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The named profile (else ``$BRATS_PROFILE``, else demo) with the ``--set`` overrides applied."""
    return get_profile(args.profile).with_overrides(**dict(args.overrides or []))


def _cmd_download(args: argparse.Namespace) -> None:
    from brats_utils.download import download_brats2020

    print(download_brats2020(force=args.force))


def _cmd_synth(args: argparse.Namespace) -> None:
    from brats_utils.pipeline import ensure_synthetic

    print(ensure_synthetic(profile_from_args(args), args.out))


def _cmd_verify(args: argparse.Namespace) -> None:
    from brats_utils.download import verify_dataset
    from brats_utils.pipeline import ensure_dataset

    root = Path(args.root) if args.root else ensure_dataset(profile_from_args(args))
    table, summary = verify_dataset(root)
    print(summary.T.to_string())
    problems = table[table["problems"].astype(bool)] if "problems" in table else table.iloc[:0]
    if len(problems):
        print(problems.to_string())
        raise SystemExit(1)


def _cmd_cache(args: argparse.Namespace) -> None:
    from brats_utils.pipeline import ensure_cache

    print(ensure_cache(profile_from_args(args)))


def _cmd_train(args: argparse.Namespace) -> None:
    import os

    from brats_utils.pipeline import train

    result = train(profile_from_args(args), resume=not args.restart)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(result)


def _cmd_predict(args: argparse.Namespace) -> None:
    from brats_utils.pipeline import predict_split

    paths = predict_split(profile_from_args(args), checkpoint=args.checkpoint, root=args.input,
                          split=args.split, out_dir=args.out)
    print(f"{len(paths)} segmentations written" + (f" to {paths[0].parent}" if paths else ""))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from brats_utils.pipeline import evaluate_folder

    profile = profile_from_args(args)
    _, summary = evaluate_folder(profile, args.predictions, truth=args.truth, out_csv=args.out)
    print(summary.T.to_string())


def _cmd_compare(args: argparse.Namespace) -> None:
    from brats_utils.pipeline import run_comparison

    print(run_comparison(profile_from_args(args)).to_string())


def _cmd_demo(args: argparse.Namespace) -> None:
    from brats_utils.demo import run_series

    profile_from_args(args)  # checks the overrides before any notebook starts
    overrides = [f"{key}={value!r}" for key, value in args.overrides or []]
    run_series(get_profile(args.profile).name, overrides=overrides)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per step of the series."""
    prog = "brats" if Path(sys.argv[0]).name == "brats" else "python -m brats_utils"
    parser = argparse.ArgumentParser(prog=prog, description="The BraTS 2020 notebook series from the command "
                                     "line: each command runs one step with a run profile.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help_text: str, *,
            profile: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func, profile=None, overrides=None)
        if not profile:
            return p
        p.add_argument("--profile", choices=list(PROFILES),
                       help="run profile (default: $BRATS_PROFILE or demo)")
        p.add_argument("--set", dest="overrides", action="append", type=parse_override, metavar="KEY=VALUE",
                       help="override one profile field, e.g. --set epochs=3 (repeatable; the value must "
                            "fit the field's type)")
        return p

    p = add("download", _cmd_download,
            "download BraTS 2020 from Kaggle with kagglehub (or find a local copy)", profile=False)
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p = add("synth", _cmd_synth, "write the synthetic stand-in dataset in the Kaggle layout")
    p.add_argument("--out", help="target folder (default: the profile's data/synthetic/...)")
    p = add("verify", _cmd_verify, "check a dataset folder is complete and readable")
    p.add_argument("--root", help="dataset folder (default: the profile's dataset)")
    add("cache", _cmd_cache, "preprocess the training cases into the disk cache")
    p = add("train", _cmd_train, "train the U-Net (resumes from the last checkpoint)")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints and start over")
    p = add("predict", _cmd_predict, "segment every case of a folder into BraTS-format NIfTI files")
    p.add_argument("--checkpoint", help="checkpoint file (default: the profile's best, trained if missing)")
    p.add_argument("--input", help="dataset folder (default: the profile's dataset)")
    p.add_argument("--split", default="validation", choices=["training", "validation"])
    p.add_argument("--out", help="output folder (default: data/runs/<profile>/predictions-<split>)")
    p = add("evaluate", _cmd_evaluate, "score predicted segmentations against the ground truth")
    p.add_argument("predictions", help="folder of <case_id>.nii.gz predictions")
    p.add_argument("--truth", help="dataset folder with the ground truth (default: the profile's dataset)")
    p.add_argument("--out", help="per-case CSV (default: <predictions>/metrics.csv)")
    add("compare", _cmd_compare, "train and measure the paper's five architectures")
    add("demo", _cmd_demo, "run the whole notebook series (the main job of make demo)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m brats_utils`` and the ``brats`` script.

    Returns 0, or 2 after printing a :class:`~brats_utils.errors.BratsError` as one line
    (``brats: error: ...``) on stderr; other exceptions propagate with their traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except BratsError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
