"""Command line: ``python -m brats_utils <command> [--profile NAME] [--set key=value ...]``.

Each command calls the same function the notebooks call; nothing here has logic
of its own beyond parsing arguments. Modules are imported lazily so that
``--help`` is instant.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from brats_utils.config import PROFILES, Profile, get_profile


def parse_override(text: str) -> tuple[str, object]:
    """Split ``key=value`` and read the value as a Python literal when it is one.

    ``epochs=3`` gives ``("epochs", 3)``, ``patch_size=(64,64,64)`` a tuple,
    ``model_preset=l4_f16`` the plain string.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The named profile with the ``--set`` overrides applied."""
    profile = get_profile(args.profile)
    overrides = dict(args.overrides or [])
    unknown = sorted(set(overrides) - set(profile.as_dict()))
    if unknown:
        raise SystemExit(f"unknown profile field(s): {', '.join(unknown)}")
    return profile.with_overrides(**overrides)


def _cmd_download(args: argparse.Namespace) -> None:
    from brats_utils.download import download_brats2020

    print(download_brats2020(force=args.force))


def _cmd_synth(args: argparse.Namespace) -> None:
    from brats_utils.synthetic import write_synthetic_dataset

    p = profile_from_args(args)
    out = Path(args.out) if args.out else p.synthetic_dir
    print(write_synthetic_dataset(out, p.synthetic_train_cases, p.synthetic_val_cases,
                                  p.synthetic_shape, seed=p.seed))


def _cmd_verify(args: argparse.Namespace) -> None:
    from brats_utils.download import ensure_dataset, verify_dataset

    root = Path(args.root) if args.root else ensure_dataset(profile_from_args(args))
    table, summary = verify_dataset(root)
    print(summary.T.to_string())
    problems = table[table["problems"].astype(bool)] if "problems" in table else table.iloc[:0]
    if len(problems):
        print(problems.to_string())
        raise SystemExit(1)


def _cmd_cache(args: argparse.Namespace) -> None:
    from brats_utils.preprocess import ensure_cache

    print(ensure_cache(profile_from_args(args)))


def _cmd_train(args: argparse.Namespace) -> None:
    from brats_utils.train import train

    result = train(profile_from_args(args), resume=not args.restart)
    print(result)


def _cmd_predict(args: argparse.Namespace) -> None:
    from brats_utils.download import ensure_dataset, find_dataset
    from brats_utils.inference import load_model, predict_folder
    from brats_utils.train import ensure_trained

    profile = profile_from_args(args)
    checkpoint = Path(args.checkpoint) if args.checkpoint else ensure_trained(profile)
    root = Path(args.input) if args.input else ensure_dataset(profile)
    cases = find_dataset(root, split=args.split)
    out_dir = Path(args.out) if args.out else profile.run_dir / f"predictions-{args.split}"
    paths = predict_folder(load_model(checkpoint), cases, out_dir, profile=profile)
    print(f"{len(paths)} segmentations written to {out_dir}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from brats_utils.download import ensure_dataset, find_dataset
    from brats_utils.metrics import evaluate

    profile = profile_from_args(args)
    root = Path(args.truth) if args.truth else ensure_dataset(profile)
    out_csv = Path(args.out) if args.out else Path(args.predictions) / "metrics.csv"
    _, summary = evaluate(Path(args.predictions), find_dataset(root, split="training"), out_csv=out_csv)
    print(summary.T.to_string())


def _cmd_compare(args: argparse.Namespace) -> None:
    from brats_utils.compare import run_comparison

    table = run_comparison(profile_from_args(args))
    print(table.to_string())


def _cmd_demo(args: argparse.Namespace) -> None:
    from brats_utils.demo import run_series

    run_series(profile_name=args.profile or "demo")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per step of the series."""
    parser = argparse.ArgumentParser(prog="python -m brats_utils", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--profile", choices=list(PROFILES),
                       help="run profile (default: $BRATS_PROFILE or demo)")
        p.add_argument("--set", dest="overrides", action="append", type=parse_override, metavar="KEY=VALUE",
                       help="override one profile field, e.g. --set epochs=3 (repeatable)")
        p.set_defaults(func=func)
        return p

    p = add("download", _cmd_download,
            "download BraTS 2020 from Kaggle with kagglehub (or find a local copy)")
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
    add("demo", _cmd_demo, "run the whole notebook series (the main job of `make demo`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m brats_utils`` and the ``brats`` script."""
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
