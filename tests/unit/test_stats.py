"""Statistics checked against values computed independently (enumeration, known tables)."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Sequence
from fractions import Fraction

import pytest

from kvmharness.compare import stats


def two_sided(statistics_of_splits: Sequence[Fraction], observed: Fraction) -> float:
    """Twice the smaller tail, capped at 1 (scipy.stats.permutation_test's two-sided p)."""
    low = sum(1 for s in statistics_of_splits if s <= observed)
    high = sum(1 for s in statistics_of_splits if s >= observed)
    return min(1.0, 2 * min(low, high) / len(statistics_of_splits))


def brute_force_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact two-sided permutation p of the rank-sum statistic, by enumerating every way
    to choose which of the pooled values belong to A (valid with ties: mid-ranks)."""
    pooled = sorted([*a, *b])
    rank = {}
    for v in set(pooled):
        positions = [i + 1 for i, x in enumerate(pooled) if x == v]
        rank[v] = Fraction(sum(positions), len(positions))
    m, n = len(a), len(b)
    values = [*a, *b]
    sums = [sum((rank[values[i]] for i in chosen), Fraction(0))
            for chosen in itertools.combinations(range(m + n), m)]
    return two_sided(sums, sum((rank[v] for v in a), Fraction(0)))


@pytest.mark.parametrize("m,n,seed", [(3, 3, 1), (4, 6, 2), (5, 5, 3), (7, 3, 4), (6, 8, 5),
                                      (1, 9, 6), (8, 8, 7)])
def test_exact_mann_whitney_matches_enumeration(m: int, n: int, seed: int) -> None:
    rng = random.Random(seed)
    a = [rng.random() for _ in range(m)]
    b = [rng.random() + 0.25 for _ in range(n)]
    result = stats.mann_whitney(a, b)
    assert result.method == "exact"
    assert result.p == pytest.approx(brute_force_p(a, b), abs=1e-12)


def test_exact_mann_whitney_known_values() -> None:
    # Complete separation of 3 vs 3: 2 of C(6,3)=20 arrangements are as extreme.
    assert stats.mann_whitney([1, 2, 3], [4, 5, 6]).p == pytest.approx(0.1)
    assert stats.mann_whitney([4, 5, 6], [1, 2, 3]).u == 9
    assert stats.mann_whitney([1, 2, 3], [4, 5, 6]).u == 0
    # U exactly at the centre: p is 1, not more.
    assert stats.mann_whitney([1, 4], [2, 3]).p == pytest.approx(1.0)


def test_u_distribution_is_the_rank_arrangement_count() -> None:
    for m, n in [(2, 3), (4, 4), (5, 7)]:
        counts = stats.u_distribution(m, n)
        assert sum(counts) == math.comb(m + n, m)
        assert list(counts) == list(reversed(counts))  # symmetric about mn/2
        brute = [0] * (m * n + 1)
        for chosen in itertools.combinations(range(m + n), m):
            brute[sum(chosen) - m * (m - 1) // 2] += 1
        assert list(counts) == brute


def brute_force_u_p(a: Sequence[float], b: Sequence[float]) -> float:
    """The same exact p computed another way: U counted pair by pair (a > b: 1, a == b:
    1/2) for every split of the pooled values, no ranks involved."""
    values = [*a, *b]
    m, n = len(a), len(b)

    def u_of(chosen: set[int]) -> Fraction:
        side_a = [values[i] for i in chosen]
        side_b = [values[i] for i in range(m + n) if i not in chosen]
        return sum((Fraction(1) if x > y else Fraction(1, 2) if x == y else Fraction(0)
                    for x in side_a for y in side_b), Fraction(0))

    splits = itertools.combinations(range(m + n), m)
    return two_sided([u_of(set(chosen)) for chosen in splits], u_of(set(range(m))))


def test_exact_with_ties_matches_both_enumerations() -> None:
    a = [1, 2, 2, 3, 3, 3, 4, 5]
    b = [3, 4, 4, 5, 5, 6, 6, 7]
    result = stats.mann_whitney(a, b)
    assert result.method == "exact"
    assert result.p == pytest.approx(brute_force_p(a, b), abs=1e-12)
    assert result.p == pytest.approx(brute_force_u_p(a, b), abs=1e-12)


@pytest.mark.parametrize("m,n,levels,seed", [(3, 3, 2, 1), (4, 5, 3, 2), (6, 6, 3, 3),
                                             (5, 7, 4, 4), (2, 8, 2, 5), (7, 6, 5, 6),
                                             (8, 8, 4, 7)])
def test_exact_mann_whitney_with_ties_matches_enumeration(m: int, n: int, levels: int,
                                                          seed: int) -> None:
    rng = random.Random(seed)
    a = [float(rng.randrange(levels)) for _ in range(m)]
    b = [float(rng.randrange(levels) + 1) for _ in range(n)]
    result = stats.mann_whitney(a, b)
    if len(set(a + b)) == 1:
        assert result.p == 1.0
        return
    assert result.method == "exact"
    assert result.p == pytest.approx(brute_force_u_p(a, b), abs=1e-12)


def test_constant_sides_get_the_exact_floor_not_a_normal_tail() -> None:
    # The 6.1-vs-6.12 example's delete_pf_fixed: 1036 on every run of one kernel, 0 on the
    # other.  Only the observed split and its mirror are as extreme: 2 / C(12, 6).
    result = stats.mann_whitney([1036.0] * 6, [0.0] * 6)
    assert result.method == "exact"
    assert result.p == pytest.approx(2 / 924) == pytest.approx(brute_force_p([1036.0] * 6,
                                                                              [0.0] * 6))


def test_normal_approximation_never_goes_below_the_exact_floor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Forced onto the normal approximation, 6 vs 6 constant sides give z = 3.2, p = 0.0013:
    # below anything the exact test can return.  It is held at the floor.
    monkeypatch.setattr(stats, "TIED_EXACT_MAX_WORK", 0)
    result = stats.mann_whitney([1036.0] * 6, [0.0] * 6)
    assert result.method == "normal"
    assert result.p == pytest.approx(2 / 924)


def test_rank_sum_distribution_counts_every_split() -> None:
    # Pooled 1, 2, 2, 3: doubled mid-ranks 2, 5, 5, 8; choose 2 of them.
    counts = stats.rank_sum_distribution([(2, 1), (5, 2), (8, 1)], 2)
    brute: dict[int, int] = {}
    for pair in itertools.combinations([2, 5, 5, 8], 2):
        brute[sum(pair)] = brute.get(sum(pair), 0) + 1
    assert counts == brute and sum(counts.values()) == math.comb(4, 2)


def test_normal_approximation_for_large_samples_without_ties() -> None:
    rng = random.Random(11)
    a = [rng.gauss(0, 1) for _ in range(60)]
    b = [rng.gauss(0.5, 1) for _ in range(60)]
    result = stats.mann_whitney(a, b)
    assert result.method == "normal"
    # Independent: z from the textbook formula without ties, continuity-corrected.
    u = sum(1 for x in a for y in b if x > y)
    z = (abs(u - 1800) - 0.5) / math.sqrt(60 * 60 * 121 / 12)
    assert result.p == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)


def test_zero_variance() -> None:
    same = stats.mann_whitney([5.0] * 6, [5.0] * 6)
    assert same.p == 1.0 and same.method == "degenerate"
    apart = stats.mann_whitney([1.0] * 5, [2.0] * 5)
    assert apart.method == "exact"
    # Only the two complete separations out of C(10,5) are as extreme.
    assert apart.p == pytest.approx(2 / 252) == pytest.approx(brute_force_p([1.0] * 5,
                                                                            [2.0] * 5))
    s = stats.summarize([3.0] * 8)
    assert s.stdev == 0 and s.cov == 0 and s.ci_low == s.ci_high == 3.0


def test_min_attainable_p() -> None:
    assert stats.min_attainable_p(3, 3) == pytest.approx(0.1)
    assert stats.min_attainable_p(4, 4) == pytest.approx(2 / 70)
    assert stats.min_attainable_p(0, 4) == 1.0
    # Beyond 1000 runs the floor comes from log-gamma, not a 6000-digit binomial.
    for m, n in ((2, 5000), (40, 1200), (500, 501), (10000, 10000)):
        assert stats.min_attainable_p(m, n) == pytest.approx(2 / math.comb(m + n, m),
                                                             rel=1e-9, abs=1e-320)


def _brute_smallest_p(m: int, n: int, levels: int) -> tuple[float, float]:
    """(smallest p over distinct values, smallest p over values with ties), by trying
    every arrangement of ranks and every assignment of ``levels`` tied values."""
    import itertools

    untied = min(stats.mann_whitney([float(i) for i in a],
                                    [float(i) for i in range(m + n) if i not in a]).p
                 for a in itertools.combinations(range(m + n), m))
    tied = min(stats.mann_whitney(list(map(float, a)), list(map(float, b))).p
               for a in itertools.product(range(levels), repeat=m)
               for b in itertools.product(range(levels), repeat=n))
    return untied, min(untied, tied)


@pytest.mark.parametrize("m,n", [(1, 1), (2, 2), (2, 3), (3, 3), (3, 4), (4, 4)])
def test_smallest_p_is_what_the_test_can_return(m: int, n: int) -> None:
    untied, any_values = _brute_smallest_p(m, n, levels=3)
    assert stats.min_attainable_p(m, n) == pytest.approx(untied)
    # Ties cannot go below the exact floor either (the test is exact with ties).
    assert stats.smallest_p(m, n) == pytest.approx(any_values) == pytest.approx(untied)


def test_runs_needed_is_the_first_size_that_can_reach_alpha() -> None:
    for tests in (1, 3, 25, 108):
        k = stats.runs_needed(tests, 0.05)
        assert k is not None
        assert stats.smallest_p(k, k) * tests < 0.05 <= stats.smallest_p(k - 1, k - 1) * tests
    # Exact floors for equal sides: 2 / C(2k, k).  4 runs for one test (2/70 < 0.05), ties
    # or not: 3/3 cannot reach 0.05 (2/20).
    assert stats.runs_needed(1, 0.05) == 4 and stats.min_attainable_p(3, 3) > 0.05
    assert stats.runs_needed(108, 0.05) == 8
    assert stats.smallest_p(6, 6) * 108 >= 0.05  # the ab-mmu-modes example: unreachable


@pytest.mark.parametrize("n,lo,hi,coverage", [
    (10, 2, 9, 1 - 2 * 11 / 1024),           # P(X <= 1) = 11/1024
    (20, 6, 15, 1 - 2 * 21700 / 2**20),      # P(X <= 5) = 21700/2^20
    (6, 1, 6, 1 - 2 / 64),
    (5, 1, 5, 1 - 2 / 32),                   # too small for 95%: full range, 93.75%
])
def test_median_ci_order_statistics(n: int, lo: int, hi: int, coverage: float) -> None:
    assert stats.median_ci_ranks(n) == (lo, hi, pytest.approx(coverage))


def test_summary_uses_those_order_statistics() -> None:
    values = [float(v) for v in range(20, 0, -1)]
    s = stats.summarize(values)
    assert (s.n, s.median, s.ci_low, s.ci_high) == (20, 10.5, 6.0, 15.0)
    assert s.mean == 10.5
    assert s.stdev == pytest.approx(math.sqrt(35))
    assert s.cov == pytest.approx(math.sqrt(35) / 10.5)
    assert stats.summarize([]).median is None
    assert stats.summarize([2.0]).stdev is None


@pytest.mark.parametrize("n,level", [(2, 0.5), (3, 0.75), (5, 0.9375), (6, 1 - 2 / 64)])
def test_summary_reports_the_coverage_it_achieves(n: int, level: float) -> None:
    # 2 runs: the interval is min..max, which holds the median half the time, not 95%.
    s = stats.summarize([100.0 + i for i in range(n)])
    assert (s.ci_low, s.ci_high) == (100.0, 100.0 + n - 1)
    assert s.ci_level == pytest.approx(level)


def test_bootstrap_is_deterministic_with_a_seed() -> None:
    rng = random.Random(5)
    a = [rng.gauss(100, 3) for _ in range(15)]
    b = [rng.gauss(103, 3) for _ in range(15)]
    first = stats.bootstrap_change(a, b, seed=42)
    assert first == stats.bootstrap_change(a, b, seed=42)
    assert first != stats.bootstrap_change(a, b, seed=43)
    assert first.ratio is not None and first.ci_low is not None and first.ci_high is not None
    assert first.ratio == pytest.approx(statistics.median(b) / statistics.median(a) - 1)
    assert first.ci_low <= first.ratio <= first.ci_high


def test_bootstrap_degenerate_inputs() -> None:
    assert stats.bootstrap_change([], [1.0]).ratio is None
    assert stats.bootstrap_change([0.0, 0.0], [1.0]).ratio is None
    same = stats.bootstrap_change([2.0] * 5, [2.0] * 5)
    assert (same.ratio, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)


def test_significance_rule_needs_all_three() -> None:
    ok = stats.Change(-0.05, -0.07, -0.03)
    assert stats.is_significant(0.01, ok, alpha=0.05, min_change=0.01)
    assert not stats.is_significant(0.06, ok, alpha=0.05, min_change=0.01)
    assert not stats.is_significant(0.01, stats.Change(-0.05, -0.07, 0.01),
                                    alpha=0.05, min_change=0.01)
    assert not stats.is_significant(0.01, ok, alpha=0.05, min_change=0.10)
    assert not stats.is_significant(None, ok, alpha=0.05, min_change=0.0)


def _decision(a: list[float], b: list[float], resamples: int = 300) -> tuple[bool, bool]:
    p = stats.mann_whitney(a, b).p
    change = stats.bootstrap_change(a, b, resamples=resamples)
    return p < 0.05, stats.is_significant(p, change, alpha=0.05, min_change=0.0)


def test_a_a_simulation_flags_about_alpha() -> None:
    """Same distribution on both sides: the test should reject at about its level.

    n=10 per side; the exact test's largest attainable p below 0.05 makes its true level
    0.043.  With K comparisons the count of rejections is Binomial(K, level); we allow
    +-4 standard deviations, which a correct test fails about once in 16000 seeds.
    """
    rng = random.Random(2024)
    k = 400
    level = 0.05
    sigma = math.sqrt(k * level * (1 - level))
    rejected = flagged = 0
    for _ in range(k):
        a = [rng.lognormvariate(0, 0.1) for _ in range(10)]
        b = [rng.lognormvariate(0, 0.1) for _ in range(10)]
        r, f = _decision(a, b)
        rejected += r
        flagged += f
    assert k * level - 4 * sigma <= rejected <= k * level + 4 * sigma
    assert flagged <= rejected
    assert flagged <= k * level + 4 * sigma


def test_five_percent_shift_with_two_percent_noise_is_flagged() -> None:
    rng = random.Random(7)
    flagged = covered = 0
    for _ in range(20):
        a = [rng.gauss(100, 2) for _ in range(20)]
        b = [rng.gauss(95, 1.9) for _ in range(20)]
        p = stats.mann_whitney(a, b).p
        change = stats.bootstrap_change(a, b)
        flagged += stats.is_significant(p, change, alpha=0.05, min_change=0.01)
        assert change.ci_low is not None and change.ci_high is not None
        covered += change.ci_low <= -0.05 <= change.ci_high
    assert flagged == 20
    # A 95% interval should hold the true -5% nearly every time (fixed seed, so exact).
    assert covered >= 15


def test_robust_outliers() -> None:
    values = [10.0, 10.1, 9.9, 10.05, 9.95, 10.02, 50.0]
    assert stats.robust_outliers(values) == [50.0]
    assert stats.robust_outliers([1.0, 1.0, 1.0, 5.0]) == []  # MAD 0: no scale to judge


def _reference_ranks(n: int, confidence: float) -> tuple[int, int, float]:
    """The definition, with a fresh exact binomial sum per candidate k (quadratic)."""
    def coverage(k: int) -> float:
        return 1.0 - 2.0 * (sum(math.comb(n, i) for i in range(k)) / (1 << n))

    best = 1
    for k in range(1, (n + 1) // 2 + 1):
        if coverage(k) < confidence:
            break
        best = k
    return best, n + 1 - best, coverage(best)


@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99])
def test_median_ci_ranks_match_the_definition(confidence: float) -> None:
    for n in [*range(1, 120), 257, 500, 1001]:
        assert stats.median_ci_ranks(n, confidence) == _reference_ranks(n, confidence), n


def test_median_ci_ranks_at_twenty_thousand_runs() -> None:
    # Against the normal approximation of the binomial: rank n/2 - z sqrt(n)/2 (+-1).
    lo, hi, coverage = stats.median_ci_ranks(20000, 0.95)
    assert abs(lo - (10000 - 1.959964 * math.sqrt(20000) / 2)) <= 1.5
    assert hi == 20001 - lo and 0.95 <= coverage < 0.952


def test_bootstrap_median_from_order_statistics_has_the_resampling_distribution() -> None:
    # A side of >= BOOTSTRAP_DIRECT_FROM values draws each resample's median from its
    # order statistics; the quantiles of those medians must match brute-force resampling.
    for n in (stats.BOOTSTRAP_DIRECT_FROM, stats.BOOTSTRAP_DIRECT_FROM + 1):
        data_rng = random.Random(n)
        values = [data_rng.lognormvariate(0, 1) for _ in range(n)]
        brute_rng, direct_rng = random.Random(1), random.Random(2)
        brute = sorted(stats.safe_median(brute_rng.choices(values, k=n)) for _ in range(4000))
        draw = stats._median_resampler(values)
        direct = sorted(draw(direct_rng) for _ in range(4000))
        ordered = sorted(values)
        for q in (0.025, 0.25, 0.5, 0.75, 0.975):
            # Compare positions in the data, not values: within 2% of n ranks.
            i, j = (int(q * 4000) for _ in range(2))
            rank_brute = sum(v <= brute[i] for v in ordered)
            rank_direct = sum(v <= direct[j] for v in ordered)
            assert abs(rank_brute - rank_direct) <= 0.02 * n, (n, q)
