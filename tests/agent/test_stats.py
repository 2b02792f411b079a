"""Grade statistics: bootstrap summaries (plain and organism-stratified) and the permutation test.

The numbers asserted are ones that hold by construction or by exact enumeration, not values
copied from a run: a constant sample has no spread; shares of [1..5] are 4/5 and 2/5; a split
enumerated exhaustively gives the exact permutation p-value that the Monte-Carlo one must approach.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from difflens.agent.stats import Comparison, Summary, compare, summarize, summarize_grouped


def _exact_p(a: list[float], b: list[float]) -> float:
    """Exact one-sided permutation p-value: the share of all C(m, len(a)) splits whose
    mean(a') - mean(b') is >= the observed one (the observed split is among them)."""
    pooled = a + b
    obs = np.mean(a) - np.mean(b)
    stats = []
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        sa = [pooled[i] for i in idx]
        sb = [pooled[i] for i in range(len(pooled)) if i not in idx]
        stats.append(np.mean(sa) - np.mean(sb))
    return float(np.mean(np.asarray(stats) >= obs - 1e-12))


# --------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------


def test_shares_are_exact():
    s = summarize([1, 2, 3, 4, 5])
    assert isinstance(s, Summary)
    assert s.n == 5
    assert s.mean == pytest.approx(3.0)
    assert s.share_ge2 == pytest.approx(0.8)
    assert s.share_ge4 == pytest.approx(0.4)
    # averaged grades: 1.67 misses 2; 2.0 (e.g. mean of 1, 2, 3) counts; 3.99 misses 4; 4.0 counts
    s = summarize([5 / 3, (1 + 2 + 3) / 3, 3.99, (3 + 4 + 5) / 3])
    assert s.share_ge2 == pytest.approx(0.75)
    assert s.share_ge4 == pytest.approx(0.25)


def test_constant_sample_and_single_run_collapse_intervals():
    for grades in ([3.0] * 12, [10 / 3] * 7, [4.5]):
        s = summarize(grades)
        assert s.mean_ci == (s.mean, s.mean)
        assert s.share_ge2_ci == (s.share_ge2, s.share_ge2)
        assert s.share_ge4_ci == (s.share_ge4, s.share_ge4)
    s = summarize([4.5])
    assert (s.n, s.mean, s.share_ge2, s.share_ge4) == (1, 4.5, 1.0, 1.0)


def test_mean_interval_contains_mean_narrows_and_matches_normal_theory():
    base = [1, 2, 3, 4, 5]
    small, large = summarize(base * 20), summarize(base * 200)
    for s in (small, large):
        lo, hi = s.mean_ci
        assert s.mean == pytest.approx(3.0)
        assert lo < s.mean < hi
        for p, (lo, hi) in ((s.share_ge2, s.share_ge2_ci), (s.share_ge4, s.share_ge4_ci)):
            assert 0.0 <= lo < p < hi <= 1.0
    w_small = small.mean_ci[1] - small.mean_ci[0]
    w_large = large.mean_ci[1] - large.mean_ci[0]
    # 10x the data: width shrinks by about sqrt(10) ~ 3.16
    assert 2.5 < w_small / w_large < 4.0
    # population sd of 1..5 is sqrt(2): the 95% interval for n = 100 is about 2 * 1.96 * sqrt(2) / 10
    assert w_small == pytest.approx(2 * 1.96 * math.sqrt(2) / 10, rel=0.1)


def test_level_orders_intervals():
    g = [1, 2, 2, 3, 4, 5, 5, 3, 2, 4]
    narrow, wide = summarize(g, level=0.5), summarize(g, level=0.99)
    assert wide.mean_ci[0] < narrow.mean_ci[0] < narrow.mean_ci[1] < wide.mean_ci[1]


def test_summarize_is_deterministic_by_seed():
    g = np.random.default_rng(123).uniform(1, 5, size=15).tolist()
    assert summarize(g, seed=7) == summarize(g, seed=7)
    assert summarize(g, seed=7) == summarize(tuple(g), seed=7) == summarize(np.asarray(g), seed=7)
    assert summarize(g, seed=7).mean_ci != summarize(g, seed=8).mean_ci
    assert summarize(g, seed=7).mean == summarize(g, seed=8).mean  # the point does not resample


@pytest.mark.parametrize("grades", [[], [0.5, 3], [3, 5.5], [3, float("nan")], [float("inf")],
                                    "12345", ["a", "b"], [[1, 2], [3, 4]]])
def test_summarize_rejects_bad_grades(grades):
    with pytest.raises(ValueError):
        summarize(grades)


@pytest.mark.parametrize("kw", [{"n_boot": 0}, {"n_boot": 1.5}, {"level": 0.0}, {"level": 1.0},
                                {"level": 95}])
def test_summarize_rejects_bad_options(kw):
    with pytest.raises(ValueError):
        summarize([1, 2, 3], **kw)


# --------------------------------------------------------------------------------------------
# summarize_grouped
# --------------------------------------------------------------------------------------------


def test_grouped_overall_weighs_organisms_equally():
    # 100 runs graded 5 on an easy organism, 2 runs graded 1 on a hard one: pooling runs would
    # give a mean of ~4.92; organism-balanced it is (5 + 1) / 2 = 3, and since both organisms
    # are constant the stratified bootstrap has no variation at all.
    out = summarize_grouped({"easy": [5] * 100, "hard": [1, 1]})
    assert list(out) == ["easy", "hard", "overall"]
    o = out["overall"]
    assert o.n == 102
    assert o.mean == 3.0 and o.mean_ci == (3.0, 3.0)
    assert o.share_ge2 == 0.5 and o.share_ge2_ci == (0.5, 0.5)
    assert o.share_ge4 == 0.5 and o.share_ge4_ci == (0.5, 0.5)
    # a pooled bootstrap would put the mean around 4.9 with a non-degenerate interval
    pooled = summarize([5] * 100 + [1, 1])
    assert pooled.mean > 4.9 and pooled.mean_ci[0] < pooled.mean_ci[1]


def test_grouped_per_organism_entries_match_summarize_and_order_does_not_matter():
    g = {"taboo": [4, 5, 4, 3, 5], "sdf": [1, 2, 1, 3, 2, 2, 1], "em": [2, 3, 2.5]}
    out = summarize_grouped(g, n_boot=2000, seed=3)
    for k, v in g.items():
        assert out[k] == summarize(v, n_boot=2000, seed=3)
    o = out["overall"]
    assert o.n == 15
    assert o.mean == pytest.approx(np.mean([np.mean(v) for v in g.values()]))
    assert o.mean_ci[0] < o.mean < o.mean_ci[1]
    assert summarize_grouped(dict(reversed(list(g.items()))), n_boot=2000, seed=3)["overall"] == o
    # a single organism: the overall entry is that organism's summary
    one = summarize_grouped({"x": g["sdf"]}, n_boot=2000, seed=3)
    assert one["overall"] == one["x"]


def test_grouped_stratification_narrows_the_overall_interval():
    # Organisms differ a lot, but each is fairly consistent: resampling within organisms keeps the
    # organism mix fixed, so the overall interval is far narrower than one from pooling runs.
    g = {"a": [1, 1, 1, 2] * 3, "b": [5, 5, 4, 5] * 3}
    o = summarize_grouped(g)["overall"]
    naive = summarize([x for v in g.values() for x in v])
    assert o.mean == pytest.approx(naive.mean)  # equal run counts: the points agree
    assert (o.mean_ci[1] - o.mean_ci[0]) < 0.5 * (naive.mean_ci[1] - naive.mean_ci[0])


@pytest.mark.parametrize("grades", [{}, {"a": []}, {"a": [1, 2], "overall": [3]}, {"a": [6]},
                                    [1, 2, 3]])
def test_grouped_rejects_bad_input(grades):
    with pytest.raises(ValueError):
        summarize_grouped(grades)


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------


def test_clearly_better_is_significant():
    c = compare([5] * 10, [1] * 10, n_perm=20_000)
    assert isinstance(c, Comparison)
    assert c.diff == 4.0 and (c.n_a, c.n_b) == (10, 10)
    # exact p is 1 / C(20, 10) ~ 5e-6; the Monte-Carlo p is at least 1 / (1 + n_perm)
    assert 1 / 20_001 <= c.p_value < 0.01
    assert c.method == "permutation test, 20,000 permutations"
    # and in the other direction, nowhere near
    assert compare([1] * 10, [5] * 10).p_value > 0.99


def test_identical_samples_are_not_significant():
    # all grades equal: every relabelling gives statistic 0 >= 0, so p is exactly 1
    c = compare([3] * 6, [3] * 6, n_perm=500)
    assert c.diff == 0.0 and c.p_value == 1.0
    # same grades on both sides and equal sizes: the null is symmetric about 0 (swapping the
    # labels negates the statistic), so the exact p = P(stat >= 0) = (1 + P(stat = 0)) / 2 >= 1/2
    g = [1, 2, 2, 3, 4, 5, 5, 1]
    c = compare(g, list(reversed(g)), n_perm=20_000, seed=1)
    assert c.diff == 0.0
    assert c.p_value >= 0.47  # >= 1/2 up to Monte-Carlo error (sd ~ 0.0035)
    # the same holds organism by organism when grouped
    gg = {"x": [1, 2, 4], "y": [5, 5, 2, 3]}
    c = compare(gg, {k: v[::-1] for k, v in gg.items()}, n_perm=20_000, seed=2)
    assert c.diff == 0.0 and c.p_value >= 0.47


@pytest.mark.parametrize("a, b", [([4, 5, 3], [2, 4, 1]),
                                  ([3, 3, 2], [3, 1, 2]),
                                  ([2.5, 5, 1], [4, 1.5, 3]),
                                  ([5, 4, 4, 2], [3, 1, 2])])
def test_monte_carlo_p_matches_exact_enumeration(a, b):
    exact = _exact_p(a, b)
    c = compare(a, b, n_perm=20_000, seed=0)
    assert abs(c.p_value - exact) < 0.02
    assert c.diff == pytest.approx(np.mean(a) - np.mean(b))


def test_stratified_p_matches_exact_enumeration():
    # two organisms, 2 vs 2 runs each: C(4, 2)^2 = 36 within-organism relabellings in all
    a = {"o1": [5.0, 4.0], "o2": [2.0, 3.0]}
    b = {"o1": [3.0, 4.0], "o2": [1.0, 2.0]}
    obs = np.mean([np.mean(a[k]) - np.mean(b[k]) for k in a])

    def splits(k):
        pooled = a[k] + b[k]
        return [np.mean([pooled[i] for i in s]) - np.mean([pooled[i] for i in range(4) if i not in s])
                for s in itertools.combinations(range(4), 2)]

    stats = [(d1 + d2) / 2 for d1, d2 in itertools.product(splits("o1"), splits("o2"))]
    exact = float(np.mean(np.asarray(stats) >= obs - 1e-12))
    c = compare(a, b, n_perm=20_000)
    assert c.diff == pytest.approx(obs)
    assert abs(c.p_value - exact) < 0.02
    assert c.method == "stratified permutation test over 2 organisms, 20,000 permutations"
    assert (c.n_a, c.n_b) == (4, 4)


def test_stratified_compare_is_not_fooled_by_organism_mix():
    # Within each organism a and b grade identically; a just has more runs on the hard organism.
    # Pooled runs make b look far better (Simpson's paradox); stratified, there is no difference.
    a = {"easy": [5], "hard": [1] * 9}
    b = {"easy": [5] * 9, "hard": [1]}
    strat = compare(b, a)
    assert strat.diff == 0.0 and strat.p_value == 1.0
    pooled = compare([x for v in b.values() for x in v], [x for v in a.values() for x in v])
    assert pooled.diff == pytest.approx(3.2) and pooled.p_value < 0.01


def test_compare_ignores_organisms_missing_on_one_side_and_is_deterministic():
    a = {"o1": [5, 4, 5], "o2": [4, 4], "only_a": [5], "empty_b": [3]}
    b = {"o1": [2, 1, 2], "o2": [3, 2], "only_b": [1], "empty_b": []}
    c = compare(a, b, n_perm=2000, seed=5)
    assert (c.n_a, c.n_b) == (5, 5)
    assert c.diff == pytest.approx(((14 / 3 - 5 / 3) + (4 - 2.5)) / 2)
    assert "over 2 organisms" in c.method and "3 organisms without runs on both sides ignored" in c.method
    assert c == compare(a, b, n_perm=2000, seed=5)
    # the ignored organisms change nothing but the note in `method`; dict order changes nothing
    only_common = compare({"o1": a["o1"], "o2": a["o2"]}, {"o2": b["o2"], "o1": b["o1"]}, n_perm=2000, seed=5)
    assert (only_common.diff, only_common.p_value) == (c.diff, c.p_value)
    assert "ignored" not in only_common.method
    # exact: 1 of the C(6, 3) * C(4, 2) = 120 within-organism relabellings reaches the observed
    # statistic, p = 1/120; the Monte-Carlo p with 2,000 permutations is within a few sd of it
    assert abs(c.p_value - 1 / 120) < 0.01


@pytest.mark.parametrize("a, b", [([], [1, 2]), ([1, 2], []), ({}, {}), ({"x": [1]}, {"y": [2]}),
                                  ({"x": []}, {"x": [2]}), ({"x": [1]}, [1]), ([1, 2], [0, 3]),
                                  ("345", [1])])
def test_compare_rejects_nothing_to_compare_and_bad_input(a, b):
    with pytest.raises(ValueError):
        compare(a, b, n_perm=100)


def test_compare_rejects_bad_n_perm():
    with pytest.raises(ValueError):
        compare([1, 2], [3, 4], n_perm=0)
