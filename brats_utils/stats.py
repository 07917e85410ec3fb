"""How the studies draw conclusions: a mean with a 95 % confidence interval over cases, a paired test.

The studies (:mod:`brats_utils.compare`, :mod:`brats_utils.beyond`) follow one protocol:

1. **Design choices on cases that are not reported.** Checkpoint selection, early stopping and
   post-processing thresholds are chosen on the validation cases (or on pooled out-of-fold predictions
   of a cross-validation); the test cases are scored **once per finished method** and choose nothing.
2. **Seeds vary the data as well as the network**: a study's seed ``k`` is the run's ``init_seed``
   (initialisation, dropout) *and* its ``data_seed`` (patch positions, augmentation, patch order); the
   patient split keeps the profile's ``seed``, so every method is scored on the same test cases.
3. **The case is the unit.** A method's score of a case is the mean over its seeds; per method and
   region the table gives the mean over cases with a **95 % bootstrap confidence interval over cases**
   (:func:`bootstrap_ci`, ``scipy.stats.bootstrap``, percentile method), and against the baseline a
   **paired Wilcoxon signed-rank test** over the same cases (:func:`paired_test`,
   ``scipy.stats.wilcoxon``, two-sided).
4. **A verdict only where the test says so**, and only for a difference that holds beyond these
   networks and matters: "better" or "worse" when ``p < alpha`` (default :data:`ALPHA` = 0.05), the
   mean difference is at least the smallest that matters (:data:`SMALLEST_DIFFERENCE`: 0.01 Dice,
   1 mm HD95), and it has the same sign in every seed (:func:`seeds_agree`, means over the cases);
   otherwise "no difference", which means *no difference shown*, not "equal".
   Why the last two: the case-level test treats each method's trained networks as fixed, so two
   trainings that differ by a hair (the same seeds, a setting that barely acts) give a tiny, consistent
   per-case difference that the test calls significant; and whether a difference survives another
   training run is what the seeds, not the cases, show. With ``n`` paired cases the smallest two-sided p
   the exact test can give is ``2 / 2**n``: five test cases can never show a difference at 0.05 (0.0625),
   six can.

Nothing here is computed by hand: the interval and the test are scipy's; this module only says which
numbers go in and names the outcome.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

#: Significance level of the verdicts.
ALPHA = 0.05
#: Confidence level of the intervals.
CONFIDENCE = 0.95
#: Bootstrap resamples (scipy's default).
N_RESAMPLES = 9999
#: The three verdict words.
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no difference"
#: The smallest mean difference a verdict names, by the kind of score (the first key found in the column's
#: name): a hundredth of Dice, a millimetre of HD95. Below it a difference is "no difference" whatever p.
SMALLEST_DIFFERENCE = {"Dice": 0.01, "Hausdorff95": 1.0}


def smallest_difference(column: str) -> float:
    """The :data:`SMALLEST_DIFFERENCE` of a score column (0 for a kind not listed)."""
    return next((value for kind, value in SMALLEST_DIFFERENCE.items() if kind in column), 0.0)


def seeds_agree(method_seed_means: pd.Series, baseline_seed_means: pd.Series) -> bool:
    """Whether the method differs from the baseline in the same direction seed by seed (each value a seed's
    mean over the cases, indexed by seed): paired by seed when both ran the same seeds (the same data order
    and initialisation), else every seed of the method against every seed of the baseline."""
    method, baseline = pd.Series(method_seed_means, dtype=float), pd.Series(baseline_seed_means, dtype=float)
    if set(method.index) == set(baseline.index):
        differences = (method - baseline.loc[method.index]).to_numpy()
    else:
        differences = np.subtract.outer(method.to_numpy(), baseline.to_numpy())
    return bool(differences.size) and (bool((differences > 0).all()) or bool((differences < 0).all()))


def bootstrap_ci(values: Sequence[float], *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """The ``confidence`` bootstrap interval of the mean of ``values`` (cases resampled with replacement).

    ``scipy.stats.bootstrap`` with the percentile method, seeded by ``seed`` so a table is reproducible.
    (The percentile method, not scipy's default BCa: BCa is undefined for a constant sample, e.g. ET Dice
    1 on every case, where the percentile interval is that constant.) Fewer than two values: NaN, NaN.
    """
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return float("nan"), float("nan")
    result = scipy_stats.bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                                   method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_test(method: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of ``method - baseline``, paired by position.

    ``scipy.stats.wilcoxon`` with its defaults (exact distribution for small samples without ties or
    zeros, zero differences dropped); every difference zero gives 1.0 (nothing to test: scipy answers 1.0
    for a few such pairs but NaN from 25 on, where it switches to the normal approximation). Fewer than two
    pairs: NaN (no test).
    """
    a, b = np.asarray(method, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    if a.size < 2:
        return float("nan")
    if np.array_equal(a, b):
        return 1.0
    with warnings.catch_warnings():  # some differences zero: scipy may warn, and drops them
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(scipy_stats.wilcoxon(a, b).pvalue)


def verdict(difference: float, p_value: float, *, higher_is_better: bool = True, alpha: float = ALPHA,
            smallest: float = 0.0, seeds_agree: bool = True) -> str:
    """"better" / "worse" (by the sign of ``difference``) when ``p_value < alpha``, ``|difference|`` is at
    least ``smallest`` and the seeds agree (:func:`seeds_agree`); else "no difference"."""
    if not p_value < alpha or difference == 0 or abs(difference) < smallest or not seeds_agree:
        return NO_DIFFERENCE
    return BETTER if (difference > 0) == higher_is_better else WORSE


def compare_to_baseline(per_case: pd.DataFrame, columns: Sequence[str], *, baseline: str,
                        method: str = "method", case: str = "case", seed: str = "seed", alpha: float = ALPHA,
                        lower_is_better: Sequence[str] = ()) -> pd.DataFrame:
    """Per method and column: mean over cases, 95 % bootstrap CI, paired p-value and verdict vs ``baseline``.

    ``per_case``: one row per method, case (and ``seed``, if that column exists): the seeds of a method are
    averaged per case first, so a case counts once. Every method must have scored the baseline's cases
    (else ``ValueError`` naming the missing ones). Returns one row per (method, column) in the order the
    methods first appear, with ``n cases``, ``mean``, ``CI low``, ``CI high``, ``difference`` (mean of the
    paired differences), ``p``, ``seeds agree`` and ``verdict`` (:func:`verdict` with the column's
    :func:`smallest_difference`; NaN and "" for the baseline itself). Columns in ``lower_is_better``
    (HD95) call a negative difference "better".
    """
    by_case = per_case.groupby([method, case], sort=False)[list(columns)].mean()
    has_seeds = seed in per_case.columns
    by_seed = per_case.groupby([method, seed] if has_seeds else [method], sort=False)[list(columns)].mean()
    methods = list(dict.fromkeys(per_case[method]))
    if baseline not in methods:
        raise ValueError(f"the baseline {baseline!r} is not among the methods {methods}")
    reference = by_case.loc[baseline]
    rows = []
    for name in methods:
        scores = by_case.loc[name]
        missing = sorted(set(reference.index) - set(scores.index))
        if missing:
            raise ValueError(f"method {name!r} has no scores for the cases {missing} that the baseline has")
        for column in columns:
            values = scores.loc[reference.index, column].to_numpy()
            low, high = bootstrap_ci(values)
            row = {method: name, "score": column, "n cases": len(values), "mean": float(values.mean()),
                   "CI low": low, "CI high": high, "difference": np.nan, "p": np.nan, "seeds agree": np.nan,
                   "verdict": ""}
            if name != baseline:
                base = reference[column].to_numpy()
                p = paired_test(values, base)
                difference = float(np.mean(values - base))
                agree = (seeds_agree(by_seed.loc[name][column], by_seed.loc[baseline][column]) if has_seeds
                         else difference != 0)
                row.update(difference=difference, p=p, **{"seeds agree": agree},
                           verdict=verdict(difference, p, higher_is_better=column not in lower_is_better,
                                           alpha=alpha, smallest=smallest_difference(column),
                                           seeds_agree=agree))
            rows.append(row)
    return pd.DataFrame(rows)


def format_report(report: pd.DataFrame, *, method: str = "method") -> pd.DataFrame:
    """:func:`compare_to_baseline` as strings ``mean [low, high]`` and ``p (verdict)``, one row per method.

    Where p is below :data:`ALPHA` and the verdict is still "no difference", the cell says why: ``seeds
    disagree`` or ``difference below 0.01`` (:func:`smallest_difference`; worded without "|", which would
    split a Markdown table's cell).
    """
    digits = {True: 3, False: 1}
    cells: dict[str, dict[str, str]] = {}
    for row in report.to_dict("records"):
        d = digits["Dice" in row["score"]]
        text = f"{row['mean']:.{d}f} [{row['CI low']:.{d}f}, {row['CI high']:.{d}f}]"
        if row["verdict"]:
            text += f", p={row['p']:.3g} ({row['verdict']}{why_no_verdict(row)})"
        cells.setdefault(row[method], {})[row["score"]] = text
    return pd.DataFrame.from_dict(cells, orient="index")


def why_no_verdict(row: Mapping) -> str:
    """``": seeds disagree"`` or ``": difference below 0.01"`` for a "no difference" that p alone would call a
    difference; ``""`` otherwise. ``row``: one row of :func:`compare_to_baseline`'s report (a dict, or a
    Series as ``iterrows`` gives it)."""
    if row["verdict"] != NO_DIFFERENCE or not row["p"] < ALPHA:
        return ""
    smallest = smallest_difference(row["score"])
    if abs(row["difference"]) < smallest:
        return f": difference below {smallest:g}"
    return ": seeds disagree" if row["seeds agree"] in (False, "False") else ""  # a bool, or read from a CSV


def markdown_report(report: pd.DataFrame, *, method: str = "method", scores: Sequence[str] | None = None,
                    cases_label: str = "cases") -> str:
    """:func:`format_report` as a Markdown table (one row per method, one column per score), for a README.

    ``scores``: the columns to show, in order (default: all of the report's). The header names the
    number of cases (``n cases`` of the report) and what they are (``cases_label``).
    """
    cells = format_report(report, method=method)
    columns = list(scores) if scores is not None else list(cells.columns)
    n_cases = int(report["n cases"].max())
    header = [f"{method} ({n_cases} {cases_label}: mean [95 % CI], paired Wilcoxon p)", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(name), *(cells.loc[name, c] for c in columns)]) + " |"
              for name in cells.index]
    return "\n".join(lines)
