"""The studies' statistics against independent references: exact Wilcoxon p-values by hand, the t interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from brats_utils import stats
from brats_utils.stats import bootstrap_ci, compare_to_baseline, format_report, paired_test, verdict


def test_wilcoxon_p_values_of_small_samples_are_the_exact_ones_by_hand():
    # all n differences positive: W+ takes its largest value, reached by one of the 2**n sign patterns,
    # and the two-sided p doubles it: 2 / 2**n
    assert paired_test([1, 2, 3, 4, 5], [0] * 5) == pytest.approx(2 / 2**5)  # 0.0625: never below 0.05
    assert paired_test([1, 2, 3, 4, 5, 6], [0] * 6) == pytest.approx(2 / 2**6)
    # differences 1, 2, -3, 4, 5, 6: W- = 3; sign patterns of ranks 1..6 with a negative-rank sum <= 3 are
    # {}, {1}, {2}, {3}, {1,2}: 5 of 64, two-sided 10/64
    assert paired_test([1, 2, -3, 4, 5, 6], [0] * 6) == pytest.approx(10 / 64)


def test_wilcoxon_is_paired_and_symmetric():
    method, baseline = [0.8, 0.7, 0.9, 0.6, 0.75, 0.85, 0.9], [0.7, 0.65, 0.8, 0.5, 0.7, 0.8, 0.95]
    assert paired_test(method, baseline) == pytest.approx(paired_test(baseline, method))
    assert paired_test(baseline, baseline) == 1.0  # no difference at all
    thirty = np.linspace(0.1, 0.9, 30)  # as many cases as the demo's test split: scipy's answer is NaN there
    with pytest.warns(RuntimeWarning):
        assert np.isnan(scipy_stats.wilcoxon(thirty, thirty).pvalue)
    assert paired_test(thirty, thirty) == 1.0
    with pytest.raises(ValueError):
        paired_test([1, 2], [1])


def test_bootstrap_interval_matches_the_t_interval_on_a_large_normal_sample():
    values = np.random.default_rng(1).normal(0.7, 0.1, size=400)
    low, high = bootstrap_ci(values)
    t_low, t_high = scipy_stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                           scale=scipy_stats.sem(values))
    assert low == pytest.approx(t_low, abs=0.002) and high == pytest.approx(t_high, abs=0.002)


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    hits = 0
    for index in range(120):
        low, high = bootstrap_ci(rng.normal(0.5, 0.2, size=30), n_resamples=999, seed=index)
        hits += low <= 0.5 <= high
    assert 0.85 <= hits / 120 <= 1.0  # percentile intervals of n = 30 run a little short of 95 %


def test_bootstrap_interval_of_a_constant_sample_is_that_constant_and_of_one_value_nan():
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_ci([0.5])))


def test_verdicts_need_the_test_and_follow_the_direction_of_the_score():
    assert verdict(0.1, 0.01) == "better"
    assert verdict(-0.1, 0.01) == "worse"
    assert verdict(0.1, 0.2) == "no difference"
    assert verdict(-5.0, 0.01, higher_is_better=False) == "better"  # HD95 down
    assert verdict(0.1, float("nan")) == "no difference"
    assert verdict(0.004, 1e-9, smallest=0.01) == "no difference"  # significant, but below what matters
    assert verdict(-2.0, 1e-9, higher_is_better=False, smallest=1.0) == "better"
    assert verdict(0.1, 0.01, seeds_agree=False) == "no difference"


def test_seeds_agree_only_when_every_seed_pair_points_the_same_way():
    seeds = [42, 43]
    assert stats.seeds_agree(pd.Series([0.68, 0.66], seeds), pd.Series([0.55, 0.21], seeds))
    assert not stats.seeds_agree(pd.Series([0.50, 0.57], seeds), pd.Series([0.55, 0.21], seeds))  # seed 42
    # other seeds (an ensemble, -1): against every seed of the baseline
    assert not stats.seeds_agree(pd.Series([0.52], [-1]), pd.Series([0.55, 0.21], seeds))
    assert stats.seeds_agree(pd.Series([0.6], [-1]), pd.Series([0.55, 0.21], seeds))
    assert not stats.seeds_agree(pd.Series([0.5], [0]), pd.Series([0.5], [0]))
    assert stats.smallest_difference("Dice_TC") == 0.01 and stats.smallest_difference("Hausdorff95_ET") == 1.0


def test_a_tiny_consistent_difference_between_two_near_identical_trainings_is_no_verdict():
    """Two methods that differ by 0.003 Dice on every case (as two trainings with the same seeds and a
    setting that barely acts): the Wilcoxon p is tiny, the verdict still "no difference"."""
    cases = [f"c{i}" for i in range(30)]
    base = np.linspace(0.3, 0.8, 30)
    rows = [{"method": m, "seed": s, "case": c, "Dice_WT": b + (0.003 if m == "b" else 0.0) + 0.1 * s}
            for m in ("a", "b") for s in (0, 1) for c, b in zip(cases, base, strict=True)]
    row = compare_to_baseline(pd.DataFrame(rows), ["Dice_WT"], baseline="a").iloc[1]
    assert row["p"] < 1e-6 and row["seeds agree"]
    assert row["verdict"] == "no difference"
    cell = format_report(pd.DataFrame([row])).loc["b", "Dice_WT"]
    assert cell.endswith("(no difference: difference below 0.01)")


def test_a_difference_that_one_seed_contradicts_is_no_verdict():
    """The method beats the baseline's weak seed by far and loses to its good one: no verdict."""
    cases = [f"c{i}" for i in range(30)]
    base = np.linspace(0.3, 0.8, 30)
    rows = [{"method": "a", "seed": s, "case": c, "Dice_WT": b + shift}
            for s, shift in ((0, 0.1), (1, -0.25)) for c, b in zip(cases, base, strict=True)]
    rows += [{"method": "b", "seed": s, "case": c, "Dice_WT": b + 0.05} for s in (0, 1)
             for c, b in zip(cases, base, strict=True)]
    row = compare_to_baseline(pd.DataFrame(rows), ["Dice_WT"], baseline="a").iloc[1]
    assert row["p"] < 0.05 and row["difference"] > 0.01 and not row["seeds agree"]
    assert row["verdict"] == "no difference"
    assert format_report(pd.DataFrame([row])).loc["b", "Dice_WT"].endswith("(no difference: seeds disagree)")


def test_report_averages_seeds_per_case_and_tests_against_the_baseline():
    cases = [f"c{i}" for i in range(8)]
    base = np.linspace(0.5, 0.8, 8)
    rows = [{"method": "paper", "seed": s, "case": c, "Dice_ET": b, "Hausdorff95_ET": 10.0}
            for s in (0, 1) for c, b in zip(cases, base, strict=True)]
    # the new method: +0.1 on every case on average over two seeds (+0.05 and +0.15); HD95 2 mm lower
    rows += [{"method": "new", "seed": s, "case": c, "Dice_ET": b + d, "Hausdorff95_ET": 8.0}
             for s, d in ((0, 0.05), (1, 0.15)) for c, b in zip(cases, base, strict=True)]
    report = compare_to_baseline(pd.DataFrame(rows), ["Dice_ET", "Hausdorff95_ET"], baseline="paper",
                                 lower_is_better=["Hausdorff95_ET"]).set_index(["method", "score"])
    new = report.loc[("new", "Dice_ET")]
    assert new["n cases"] == 8
    assert new["mean"] == pytest.approx(base.mean() + 0.1)
    assert new["difference"] == pytest.approx(0.1)
    assert new["p"] == pytest.approx(2 / 2**8)  # eight positive differences
    assert new["verdict"] == "better"
    assert report.loc[("new", "Hausdorff95_ET"), "verdict"] == "better"
    assert report.loc[("paper", "Dice_ET"), "verdict"] == ""
    paper = report.loc[("paper", "Dice_ET")]
    assert paper["CI low"] < base.mean() < paper["CI high"]
    table = format_report(report.reset_index())
    assert table.loc["new", "Dice_ET"].endswith("p=0.00781 (better)")


def test_a_method_missing_cases_of_the_baseline_is_refused():
    frame = pd.DataFrame({"method": ["paper", "paper", "new"], "case": ["a", "b", "a"], "Dice_WT": [1, 1, 1]})
    with pytest.raises(ValueError, match="'b'"):
        compare_to_baseline(frame, ["Dice_WT"], baseline="paper")


def test_markdown_report_has_one_row_per_method_and_the_formatted_cells():
    per_case = pd.DataFrame({"method": ["a"] * 6 + ["b"] * 6, "case": list(range(6)) * 2,
                             "Dice_WT": [0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0, 0.5]})
    report = stats.compare_to_baseline(per_case, ["Dice_WT"], baseline="a")
    lines = stats.markdown_report(report, cases_label="test cases").splitlines()
    assert lines[0] == "| method (6 test cases: mean [95 % CI], paired Wilcoxon p) | Dice_WT |"
    assert lines[1] == "|---|---|"
    low, high = report.loc[1, ["CI low", "CI high"]]
    # b is a + 0.1 on every case: the exact two-sided p of six positive ranks is 2 / 2**6
    assert lines[3] == f"| b | 0.750 [{low:.3f}, {high:.3f}], p=0.0312 (better) |"
    assert lines[2].startswith("| a | 0.650 [") and "p=" not in lines[2] and len(lines) == 4
