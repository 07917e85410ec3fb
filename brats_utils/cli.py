"""Command line: ``brats <command> [--profile NAME] [--set key=value ...]`` (or ``python -m brats_utils``).

Each command calls the same :mod:`brats_utils.pipeline` function the notebooks call;
nothing here has logic of its own beyond parsing arguments. Modules are imported
lazily so that ``--help`` is instant. An error of the package (bad input, a locked
folder, a full disk...) prints as one line and exits with status 2; any other error
keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from brats_utils import __version__, config
from brats_utils.config import PROFILES, Profile, get_profile
from brats_utils.datasets import LAYOUTS
from brats_utils.errors import BratsError, BratsWarning


def parse_override(text: str) -> tuple[str, object]:
    """``--set key=value``: the field and its value, typed and checked (see :func:`config.parse_override`)."""
    try:
        return config.parse_override(text)
    except BratsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The named profile (else ``$BRATS_PROFILE``, else demo) with ``--dataset`` and ``--set`` applied,
    its registry names checked (:func:`brats_utils.pipeline.check_registered`)."""
    from brats_utils.pipeline import check_registered

    return check_registered(get_profile(args.profile).with_overrides(**dict(_overrides(args))))


def _overrides(args: argparse.Namespace) -> list[tuple[str, object]]:
    """``--dataset NAME`` (as ``dataset=NAME``) followed by the ``--set`` items, which win."""
    dataset = [("dataset", args.dataset)] if getattr(args, "dataset", None) else []
    return dataset + list(args.overrides or [])


def _cmd_download(args: argparse.Namespace) -> None:
    from brats_utils.download import download_brats2020

    if args.dataset == "brats2020":
        print(download_brats2020(config.brats_root(), force=args.force))
        return
    from brats_utils.pipeline import real_dataset

    # BraTS 2021 through kagglehub; BraTS 2023 and MSD raise an error saying where to get them
    print(real_dataset(get_profile().with_overrides(dataset=args.dataset, data_source="real")))


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

    print(ensure_cache(profile_from_args(args), check_sources=True))


def _cmd_train(args: argparse.Namespace) -> None:
    import os

    from brats_utils.pipeline import train

    result = train(profile_from_args(args), resume=not args.restart)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(result)


def _cmd_predict(args: argparse.Namespace) -> None:
    from brats_utils.pipeline import predict_split

    paths = predict_split(profile_from_args(args), checkpoint=args.checkpoint, root=args.input,
                          split=args.split or args.folder, out_dir=args.out, overwrite=args.overwrite)
    skipped = (f"; {paths.skipped} were already complete and skipped (--overwrite predicts them again)"
               if paths.skipped else "")
    print(f"{len(paths) - paths.skipped} segmentations written" + (f" to {paths[0].parent}" if paths else "")
          + skipped)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from brats_utils.lesion_metrics import get_protocol
    from brats_utils.pipeline import (
        evaluate_folder,
        heldout_split,
        metrics_protocol,
        prediction_coverage,
        split_label,
    )

    profile = profile_from_args(args)
    split = args.split or args.folder or heldout_split(profile)
    truth = args.reference or args.truth
    protocol = args.protocol or metrics_protocol(profile).name
    per_case, summary = evaluate_folder(profile, args.predictions, truth=truth, out_csv=args.out,
                                        protocol=protocol, split=split, partial=args.partial)
    cases, missing = prediction_coverage(profile, args.predictions, truth=truth, split=split)
    partial = f" (partial: {len(missing)} without a prediction, not scored)" if missing else ""
    print(f"{args.predictions} on {len(per_case)} of the {len(cases)} {split_label(profile, split)}"
          f"{partial}, scored with {get_protocol(protocol).description}:")
    print(summary.T.to_string())


def _cmd_config(args: argparse.Namespace) -> None:
    profile = profile_from_args(args)
    print(f"# profile {profile.name}: {profile.description}")
    print(f"# cache folder {profile.cache_dir}\n# run folder {profile.run_dir}")
    print("# each line below works as --set KEY=VALUE")
    for key, value in _flat_items(profile.as_dict()):
        print(f"{key}={value!r}")


def _flat_items(settings: dict, prefix: str = "") -> list[tuple[str, object]]:
    """``(key, value)`` pairs of a possibly nested settings dict, nested keys joined by dots."""
    items: list[tuple[str, object]] = []
    for key, value in settings.items():
        if isinstance(value, dict):
            items += _flat_items(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


#: Columns of the pretrained report: the paper's metric, then the BraTS regions.
REPORT_COLUMNS = ("PaperDice", "Dice_background", "Dice_NCR/NET", "Dice_ED", "Dice_ET", "Dice_WT", "Dice_TC",
                  "Dice_ET", "Hausdorff95_WT", "Hausdorff95_TC", "Hausdorff95_ET")


def _cmd_evaluate_pretrained(args: argparse.Namespace) -> None:
    from brats_utils.pipeline import evaluate_pretrained, heldout_split, split_label

    profile = profile_from_args(args)
    split = args.split or heldout_split(profile)
    per_case, summary = evaluate_pretrained(profile, args.weights, split=split, root=args.input,
                                            out_dir=args.out)
    columns = [c for c in dict.fromkeys(REPORT_COLUMNS) if c in summary.columns]
    print(f"{args.weights} with the {profile.name} profile's preprocessing, on {len(per_case)} "
          f"{split_label(profile, split)}:")
    print(summary.loc[["Mean", "StdDev", "Median"], columns].T.round(4).to_string())


def _cmd_cross_validate(args: argparse.Namespace) -> None:
    from brats_utils.pipeline import cross_validate, evaluate_folder, predict_with_folds

    profile = profile_from_args(args)
    per_case, summary = cross_validate(profile)
    columns = [c for c in dict.fromkeys(REPORT_COLUMNS) if c in summary.columns]
    print(f"{profile.n_folds}-fold cross-validation, pooled out-of-fold scores on {len(per_case)} cases "
          f"(each predicted by the fold model that did not train on it):")
    print(summary.loc[["Mean", "Median"], columns].T.round(4).to_string())
    if profile.test_fraction > 0:
        paths = predict_with_folds(profile, split="test")
        _, test_summary = evaluate_folder(profile, paths[0].parent, split="test")
        print(f"average of the {profile.n_folds} fold models on the {len(paths)} test cases "
              f"(never seen by training or model selection):")
        print(test_summary.loc[["Mean", "Median"], columns].T.round(4).to_string())


def _cmd_compare(args: argparse.Namespace) -> None:
    from brats_utils.pipeline import run_comparison

    print(run_comparison(profile_from_args(args)).to_string())


def _cmd_beyond(args: argparse.Namespace) -> None:
    from brats_utils.beyond import REGIONS, beyond_dir, format_table, read_report
    from brats_utils.pipeline import heldout_split, run_beyond, split_label
    from brats_utils.stats import markdown_report

    profile = profile_from_args(args)
    _, table = run_beyond(profile, foreign_root=args.foreign_root, budget_factor=args.longer)
    budget = "screening budget" if args.longer == 1 else f"{args.longer}x the screening budget"
    cases = split_label(profile, heldout_split(profile))
    print(f"Dice and HD95 on the {cases} ({budget}); mean ± std over {profile.beyond_seeds} seeds:")
    print(format_table(table).to_string())
    print(f"\nThe study's conclusions ({budget}; {beyond_dir(profile, args.longer) / 'report.csv'}):")
    print(markdown_report(read_report(beyond_dir(profile, args.longer)), method="variant",
                          scores=[f"Dice_{region}" for region in REGIONS], cases_label=cases.split(" (")[0]))


def _cmd_demo(args: argparse.Namespace) -> None:
    from brats_utils.demo import run_series, series_notebooks

    profile_from_args(args)  # checks the overrides before any notebook starts
    overrides = [f"{key}={value!r}" for key, value in _overrides(args)]
    if not args.only:
        run_series(get_profile(args.profile).name, overrides=overrides, publish=args.publish)
        return
    notebooks = [path for path in series_notebooks() if path.name[:2] in args.only]
    if len(notebooks) != len(set(args.only)):
        known = ", ".join(path.name[:2] for path in series_notebooks())
        raise BratsError(f"--only {' '.join(args.only)}", expected=f"notebook numbers of the series: {known}")
    run_series(get_profile(args.profile).name, overrides=overrides, notebooks=notebooks, publish=args.publish,
               record_times=False)


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
        p.add_argument("--dataset", choices=list(LAYOUTS),
                       help="dataset layout and label scheme (default: the profile's, brats2020)")
        p.add_argument("--set", dest="overrides", action="append", type=parse_override, metavar="KEY=VALUE",
                       help="override one profile field, e.g. --set epochs=3 (repeatable; the value must "
                            "fit the field's type)")
        return p

    p = add("download", _cmd_download,
            "download BraTS 2020 (or 2021) from Kaggle with kagglehub (or find a local copy)", profile=False)
    p.add_argument("--force", action="store_true", help="download again even if cached (BraTS 2020)")
    p.add_argument("--dataset", choices=list(LAYOUTS), default="brats2020",
                   help="which dataset (brats2021 via kagglehub too; brats2023, msd: where to get them)")
    p = add("synth", _cmd_synth, "write the synthetic stand-in dataset in the Kaggle layout")
    p.add_argument("--out", help="target folder (default: the profile's data/synthetic/...)")
    p = add("verify", _cmd_verify, "check a dataset folder is complete and readable")
    p.add_argument("--root", help="dataset folder (default: the profile's dataset)")
    add("cache", _cmd_cache, "preprocess the training cases into the disk cache")
    p = add("train", _cmd_train, "train the U-Net (resumes from the last checkpoint)")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints and start over")
    p = add("predict", _cmd_predict, "segment every case of a folder into BraTS-format NIfTI files")
    p.add_argument("--checkpoint", help="checkpoint file (default: the profile's best, trained if missing)")
    p.add_argument("--input", help="one case folder, a flat folder of scan sets (<id>_flair, _t1, _t1ce, _t2 "
                                   ".nii.gz; all of them are segmented), or a dataset in any known layout "
                                   "(default: the profile's dataset); see docs/own-scans.md")
    _add_cases_options(p, folders=("training", "validation"), default_folder="validation")
    p.add_argument("--out", help="output folder (default: data/runs/<profile>/predictions-<split, folder or "
                                 "input folder name>)")
    p.add_argument("--overwrite", action="store_true",
                   help="predict every case again (default: complete outputs of the same model are kept)")
    p = add("evaluate", _cmd_evaluate, "score predicted segmentations against the ground truth")
    p.add_argument("predictions", help="folder of <case_id>.nii.gz predictions")
    p.add_argument("reference", nargs="?", help="dataset folder with the ground truth (same as --truth)")
    p.add_argument("--truth", help="dataset folder with the ground truth (default: the profile's dataset)")
    p.add_argument("--out", help="per-case CSV (default: <predictions>/metrics.csv)")
    p.add_argument("--protocol", choices=["brats2020", "lesionwise", "brats2025"],
                   help="metrics protocol (default: the profile's, by dataset: lesionwise for brats2023); "
                        "brats2025: the official brats-evaluation package if installed (extra 'official')")
    _add_cases_options(p, folders=("training",))
    p.add_argument("--partial", action="store_true",
                   help="score only the cases that have a prediction (default: a missing one is an error "
                        "listing them); the table's title says how many were left out")
    p = add("evaluate-pretrained", _cmd_evaluate_pretrained,
            "run published weights (the authors' files from Hugging Face, see the README) with the profile's "
            "preprocessing and report the paper's metric next to the BraTS regions")
    p.add_argument("weights", help="weights file: a state dict, a training checkpoint or a pickled model "
                                   "(read without running code)")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="cases to score (default: test when the profile has test cases, else val)")
    p.add_argument("--input", help="dataset folder (default: the profile's dataset)")
    p.add_argument("--out", help="output folder (default: data/runs/<profile>/pretrained-<split>)")
    add("cross-validate", _cmd_cross_validate,
        "k-fold cross-validation (--set n_folds=5): train every fold, pooled out-of-fold scores, then the "
        "average of the fold models on the test cases; one fold alone: train --set fold=k")
    add("compare", _cmd_compare, "train and measure the paper's five architectures")
    p = add("beyond", _cmd_beyond, "the beyond-the-paper study (notebook 08): every variant x seed, "
            "scored on the test cases, a foreign dataset and a shifted copy; table in "
            "data/beyond/<profile>/beyond.csv")
    p.add_argument("--foreign-root", help="a labelled dataset in any known layout to score as the foreign "
                                          "one, without the training patients (BraTS 2021/2023 and MSD hold "
                                          "BraTS 2020's; default: foreign-style phantoms for synthetic "
                                          "profiles, none on real data)")
    p.add_argument("--longer", type=int, default=1, metavar="K",
                   help="the longer run: only the paper and region models, K times the screening budget "
                        "(compare_epochs), into data/beyond/<profile>/longer-Kx/ with its own report.csv "
                        "(default 1: the screening study itself)")
    p = add("demo", _cmd_demo, "run the whole notebook series (the main job of make demo; all it writes "
                                "goes under data/demo)")
    p.add_argument("--publish", action="store_true",
                   help="also refresh the tracked copies (make publish): figures/, docs/notebooks/ and the "
                        "times in docs/notebook_times.json, the notebooks' headers and the README")
    p.add_argument("--only", action="append", metavar="NN", default=[],
                   help="run only notebook NN (repeatable), e.g. --only 08, which the demo leaves out: run "
                        "its study first (beyond --profile demo, and --longer 3); with --publish its copy "
                        "and figures are refreshed and the series' recorded times are left as they are")
    add("config", _cmd_config, "print the resolved profile (after --dataset and --set), one KEY=VALUE a line")
    return parser


def _add_cases_options(p: argparse.ArgumentParser, *, folders: tuple[str, ...],
                       default_folder: str | None = None) -> None:
    """``--split`` (a part of the run's patient split) or ``--folder`` (one of the dataset's own folders).

    Without either: ``--folder default_folder``, or else the profile's held-out split.
    """
    default = (f"--folder {default_folder}" if default_folder
               else "the profile's held-out split (test, or val where it has no test cases)")
    p.set_defaults(folder=default_folder)
    cases = p.add_mutually_exclusive_group()
    cases.add_argument("--split", choices=["train", "val", "test"],
                       help="a part of the run's patient split of the labelled cases (the one saved in the "
                            f"run folder's split.csv); default: {default}")
    cases.add_argument("--folder", choices=list(folders),
                       help="one of the dataset's own folders: training (every labelled case)"
                            + (", validation (the challenge's unlabelled cases)" if "validation" in folders
                               else ""))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m brats_utils`` and the ``brats`` script.

    Returns 0, or 2 after printing a :class:`~brats_utils.errors.BratsError` as one line
    (``brats: error: ...``) on stderr; other exceptions propagate with their traceback. Ctrl-C and
    SIGTERM (a container or Kaggle session stopping) end with status 130 and the one line of
    :func:`brats_utils.faults.interrupt_note` (what was saved, the command that resumes). The
    package's warnings (:class:`~brats_utils.errors.BratsWarning`) print as one line each.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt), warnings.showwarning
    warnings.showwarning = functools.partial(_show_warning, prog=parser.prog, default=warnings.showwarning)
    try:
        args.func(args)
    except BratsError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        if not getattr(interrupt, "note", None):  # a step's note already said what was saved
            print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        warnings.showwarning = previous[1]
    return 0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: stop as Ctrl-C does (the steps save what they have and say how to resume)."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _show_warning(message, category, filename, lineno, file=None, line=None, *, prog: str, default) -> None:
    """The package's warnings as ``<prog>: warning: <message>``; any other warning as Python shows it."""
    if not issubclass(category, BratsWarning):
        default(message, category, filename, lineno, file, line)
        return
    print(f"{prog}: warning: {message}", file=file or sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
