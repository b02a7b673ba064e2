"""Distribution-free statistics for A/B comparisons (standard library only).

Kernel timings are skewed and heavy-tailed (docs/ARCHITECTURE.md §6: maxima of 1-50 ms next to
microsecond medians), so everything here is rank- or order-statistic based: medians,
binomial order-statistic confidence intervals, Mann-Whitney U, and a bootstrap CI for the
ratio of medians.  Mean/stdev/CoV are reported only as noise indicators.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Literal

DEFAULT_ALPHA = 0.05
DEFAULT_CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP_RESAMPLES = 2000
DEFAULT_SEED = 20240601

# Exact U distributions stay cheap (O(m * m * n) integer additions) well past this size;
# above it the normal approximation is accurate to far better than the p-values we print.
EXACT_MAX_PER_SIDE = 50
# With ties the exact distribution comes from a dynamic programme over tie groups; this
# bound on its dictionary updates (``tied_work``) keeps it well under a second (about 25
# runs per side with every value distinct but a pair, any size when a side is constant).
TIED_EXACT_MAX_WORK = 2_000_000


@dataclasses.dataclass(frozen=True)
class Summary:
    """One side of a comparison: the per-run values of one metric."""

    n: int
    median: float | None
    ci_low: float | None
    ci_high: float | None
    # Order statistics give only discrete coverages; this is the one actually achieved
    # (below the requested level when n is too small for any interval to reach it).
    ci_level: float | None
    mean: float | None
    stdev: float | None
    cov: float | None


@dataclasses.dataclass(frozen=True)
class MannWhitney:
    u: float
    p: float
    method: Literal["exact", "normal", "degenerate"]


@dataclasses.dataclass(frozen=True)
class Change:
    """B relative to A: median_B / median_A - 1, with a bootstrap CI."""

    ratio: float | None
    ci_low: float | None
    ci_high: float | None


def median(values: Sequence[float]) -> float | None:
    return safe_median(values) if values else None


def safe_median(values: Sequence[float]) -> float:
    """The median without overflow or underflow: two values near the float maximum give
    their mean, not inf (same signs: lo + (hi - lo)/2; opposite signs: the sum fits)."""
    ordered = sorted(values)
    n = len(ordered)
    if n % 2:
        return float(ordered[n // 2])
    lo, hi = ordered[n // 2 - 1], ordered[n // 2]
    if (lo < 0) != (hi < 0):
        return float((lo + hi) / 2)
    return float(lo + (hi - lo) / 2)


def _scaled(values: Sequence[float]) -> tuple[list[float], int]:
    """``values`` divided by 2**e near their largest magnitude, and e:
    sums of squares of finite inputs then never overflow (the statistics module raises
    OverflowError or AttributeError on them), and the power of two loses no precision."""
    big = max((abs(v) for v in values), default=0.0)
    if big == 0:
        return [float(v) for v in values], 0
    exponent = math.frexp(big)[1]
    return [math.ldexp(v, -exponent) for v in values], exponent


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def mean_stdev(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of finite values, never raising: results that
    do not fit a float are None."""
    if not values:
        return None, None
    scaled, scale = _scaled(values)
    m = math.fsum(scaled) / len(scaled)
    mean = _finite(_times(m, scale))
    if len(scaled) < 2:
        return mean, None
    var = math.fsum((v - m) ** 2 for v in scaled) / (len(scaled) - 1)
    return mean, _finite(_times(math.sqrt(var), scale))


def _times(x: float, exponent: int) -> float:
    try:
        return math.ldexp(x, exponent)
    except OverflowError:
        return math.inf


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exact via integer arithmetic."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    term, total = 1, 1  # C(n, 0); each next term from the last, not a fresh math.comb
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return total / (1 << n)


@functools.lru_cache(maxsize=1024)
def median_ci_ranks(n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[int, int, float]:
    """1-based ranks (lo, hi) of the order statistics bounding the median, and the coverage.

    The interval [x_(k), x_(n+1-k)] covers the population median with probability
    1 - 2 P(Binomial(n, 1/2) <= k-1); take the narrowest one that still reaches
    ``confidence``.  When n is too small for that, return the full range and its (lower)
    coverage so the caller can say so instead of silently over-claiming.

    Exact for every n: one pass that adds C(n, k-1) to the running tail sum, each term
    from the previous one (the tail stays exact integers; a float only for the
    comparison), and cached per (n, confidence), so a report over thousands of runs
    pays it once per distinct n.  The old per-k sum of fresh binomials was quadratic in
    n: 15 of 20 s of ``show`` on 2000 runs.
    """
    if n < 1:
        raise ValueError("median CI needs at least one value")
    denominator = 1 << n
    best_k, best_coverage = 1, 1.0 - 2.0 * (1 / denominator)
    term, tail = 1, 1  # C(n, k-1) and P(X <= k-1) * 2^n, for k = 1
    for k in range(2, (n + 1) // 2 + 1):
        term = term * (n - k + 2) // (k - 1)
        tail += term
        coverage = 1.0 - 2.0 * (tail / denominator)
        if coverage < confidence:
            break
        best_k, best_coverage = k, coverage
    return best_k, n + 1 - best_k, best_coverage


def median_ci(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE
              ) -> tuple[float, float, float, float]:
    """(median, low, high, coverage) of the order-statistic interval."""
    ordered = sorted(values)
    lo, hi, coverage = median_ci_ranks(len(ordered), confidence)
    return statistics.median(ordered), ordered[lo - 1], ordered[hi - 1], coverage


def summarize(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None, None, None, None, None)
    ordered = sorted(values)
    lo, hi, coverage = median_ci_ranks(n, confidence)
    mean, stdev = mean_stdev(ordered)
    cov = (_finite(stdev / abs(mean)) if stdev is not None and mean is not None and mean != 0
           else None)
    return Summary(
        n=n,
        median=safe_median(ordered),
        ci_low=ordered[lo - 1],
        ci_high=ordered[hi - 1],
        ci_level=coverage,
        mean=mean,
        stdev=stdev,
        cov=cov,
    )


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Mid-ranks (1-based) of ``values`` and the sizes of each tie group (in value order)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mid
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@functools.lru_cache(maxsize=64)
def u_distribution(m: int, n: int) -> tuple[int, ...]:
    """counts[u] = number of rank arrangements giving U = u (no ties), u = 0..m*n.

    These are the coefficients of the Gaussian binomial [m+n choose m]_q, built from
    prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i) with exact integer polynomial arithmetic.
    """
    size = m * n + 1
    poly = [0] * size
    poly[0] = 1
    for i in range(1, m + 1):
        step = n + i
        for k in range(size - 1, step - 1, -1):  # multiply by (1 - q^(n+i))
            poly[k] -= poly[k - step]
        for k in range(i, size):  # divide by (1 - q^i): running sum with stride i
            poly[k] += poly[k - i]
    return tuple(poly)


def tied_work(ties: Sequence[int], m: int, n: int) -> int:
    """A bound on the dictionary updates of ``rank_sum_distribution`` for these tie
    groups: (groups) x (subset sizes) x (distinct doubled rank sums)."""
    k, big_n = min(m, n), m + n
    return len(ties) * (k + 1) * (2 * k * big_n + 1)


def rank_sum_distribution(groups: Sequence[tuple[int, int]], k: int) -> dict[int, int]:
    """counts[s] = how many of the C(N, k) ways to choose k of the pooled values give a
    doubled mid-rank sum of s.  ``groups`` are (doubled mid-rank, tie group size).

    A dynamic programme over tie groups (choosing c of a group's t equal values adds
    c x its rank, in C(t, c) ways), on doubled mid-ranks so every sum is an integer: the
    exact permutation distribution of the rank sum with ties, without enumerating the
    C(N, k) subsets themselves."""
    by_size: list[dict[int, int]] = [{0: 1}] + [{} for _ in range(k)]
    for rank2, size in groups:
        nxt: list[dict[int, int]] = [dict(d) for d in by_size]  # c = 0 of this group
        for chosen, sums in enumerate(by_size):
            for c in range(1, min(size, k - chosen) + 1):
                ways, shift, target = math.comb(size, c), c * rank2, nxt[chosen + c]
                for s, count in sums.items():
                    target[s + shift] = target.get(s + shift, 0) + count * ways
        by_size = nxt
    return by_size[k]


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test; U is counted for ``a`` (pairs with a > b, ties 1/2).

    p is exact wherever it can be enumerated: twice the smaller tail of the permutation
    distribution of the rank sum (mid-ranks for ties) over the C(m+n, m) ways to split
    the pooled values into sides of m and n, capped at 1 (as scipy.stats.permutation_test
    defines two-sided p).  Without ties that is the classical, symmetric U distribution;
    with ties a dynamic programme over tie groups (``rank_sum_distribution``), whose
    distribution need not be symmetric.  Beyond ``TIED_EXACT_MAX_WORK`` (tied) or
    ``EXACT_MAX_PER_SIDE`` (untied) the tie-corrected normal approximation is used, never
    below the exact test's floor 2 / C(m+n, m)."""
    m, n = len(a), len(b)
    if m == 0 or n == 0:
        raise ValueError("Mann-Whitney needs at least one value per side")
    ranks, ties = _ranks([*a, *b])
    u = sum(ranks[:m]) - m * (m + 1) / 2
    mu = m * n / 2
    big_n = m + n
    if len(ties) == 1:
        # Every value identical across both sides: no evidence of any difference.
        return MannWhitney(u, 1.0, "degenerate")
    has_ties = any(t > 1 for t in ties)
    if not has_ties and max(m, n) <= EXACT_MAX_PER_SIDE:
        counts = u_distribution(m, n)
        total = sum(counts)
        # The U distribution is symmetric about mn/2, so "at least as far from the centre"
        # equals twice the smaller tail (and is 1 when U sits on the centre).
        distance = abs(u - mu)
        extreme = sum(c for k, c in enumerate(counts) if abs(k - mu) >= distance - 1e-9)
        return MannWhitney(u, min(1.0, extreme / total), "exact")
    if has_ties and tied_work(ties, m, n) <= TIED_EXACT_MAX_WORK:
        return MannWhitney(u, _tied_exact_p(ranks, ties, m, n), "exact")
    tie_term = sum(t**3 - t for t in ties) / (big_n * (big_n - 1))
    variance = m * n / 12 * ((big_n + 1) - tie_term)
    z = max(0.0, abs(u - mu) - 0.5) / math.sqrt(variance)
    p = min(1.0, math.erfc(z / math.sqrt(2)))
    return MannWhitney(u, max(p, min_attainable_p(m, n)), "normal")


def _tied_exact_p(ranks: Sequence[float], ties: Sequence[int], m: int, n: int) -> float:
    big_n = m + n
    groups: list[tuple[int, int]] = []
    start = 0
    for size in ties:  # doubled mid-rank of the group covering ranks start+1..start+size
        groups.append((2 * start + size + 1, size))
        start += size
    # Count subsets of the smaller side's size; the rank sum of the other side is the
    # total minus it, so its tails are the same two tails swapped.
    k = min(m, n)
    side_ranks = ranks[:m] if k == m else ranks[m:]
    observed = round(2 * sum(side_ranks))
    counts = rank_sum_distribution(groups, k)
    low = sum(c for s, c in counts.items() if s <= observed)
    high = sum(c for s, c in counts.items() if s >= observed)
    return min(1.0, 2 * min(low, high) / math.comb(big_n, k))


def min_attainable_p(m: int, n: int) -> float:
    """Smallest two-sided p of the exact test for these sizes (complete separation):
    2 / C(m+n, m), ties or not (twice a tail that holds at least the observed split)."""
    if m == 0 or n == 0:
        return 1.0
    if m + n > 1000:
        # C(20000, 10000) has 6000 digits and took 36 ms to build; its reciprocal is far
        # below the smallest float anyway.
        log_ways = math.lgamma(m + n + 1) - math.lgamma(m + 1) - math.lgamma(n + 1)
        return math.exp(math.log(2) - log_ways) if log_ways < 700 else 0.0
    return min(1.0, 2 / math.comb(m + n, m))


def smallest_p(m: int, n: int) -> float:
    """Smallest p ``mann_whitney`` can return for these sizes: the exact floor, which the
    normal approximation (large samples only) is never allowed below."""
    return min_attainable_p(m, n)


def runs_needed(tests: int, alpha: float, limit: int = 1000) -> int | None:
    """Fewest runs per side (equal sides) whose smallest p, times ``tests`` (the first
    step of Holm's correction), is below ``alpha``; None beyond ``limit``."""
    tests = max(tests, 1)
    return next((k for k in range(1, limit + 1) if smallest_p(k, k) * tests < alpha), None)


def bootstrap_change(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Change:
    """median(b)/median(a) - 1 with a percentile bootstrap CI (seeded: same input, same CI)."""
    if not a or not b:
        return Change(None, None, None)
    med_a, med_b = safe_median(a), safe_median(b)
    if med_a == 0:
        return Change(None, None, None)
    ratio = _ratio(med_b, med_a)
    if ratio is None:
        return Change(None, None, None)
    rng = random.Random(seed)
    stats: list[float] = []
    draw_a, draw_b = _median_resampler(a), _median_resampler(b)
    for _ in range(resamples):
        ra = draw_a(rng)
        rb = draw_b(rng)
        if ra != 0 and (r := _ratio(rb, ra)) is not None:
            stats.append(r)
    if not stats:
        return Change(ratio, None, None)
    stats.sort()
    tail = (1 - confidence) / 2
    lo = stats[max(0, math.floor(tail * len(stats)))]
    hi = stats[min(len(stats) - 1, math.ceil((1 - tail) * len(stats)) - 1)]
    return Change(ratio, lo, hi)


# From this many values a side's bootstrap median is drawn from its order statistics
# (O(1) per resample) instead of resampling all values (O(n log n)): the same
# distribution, another random stream, so smaller sides keep their exact earlier CIs.
BOOTSTRAP_DIRECT_FROM = 200


def _median_resampler(values: Sequence[float]) -> Callable[[random.Random], float]:
    """A function drawing the median of one bootstrap resample of ``values``.

    Resampling n values with replacement is ``ordered[floor(n * U_i)]`` for n uniforms,
    a monotone map, so the resample's k-th smallest is ``ordered[floor(n * U_(k))]``
    with U_(k) ~ Beta(k, n + 1 - k); given U_(k) = u, the next one is
    u + (1 - u) * Beta(1, n - k) (the other n - k uniforms lie above u).
    """
    n = len(values)
    if n < BOOTSTRAP_DIRECT_FROM:
        as_given = list(values)
        return lambda rng: safe_median(rng.choices(as_given, k=n))
    ordered = sorted(values)

    def pick(u: float) -> float:
        return ordered[min(n - 1, int(u * n))]

    def draw(rng: random.Random) -> float:
        k = (n + 1) // 2
        u = rng.betavariate(k, n + 1 - k)
        if n % 2:
            return float(pick(u))
        above = u + (1 - u) * rng.betavariate(1, n - k)
        return safe_median([pick(u), pick(above)])

    return draw


def _ratio(b: float, a: float) -> float | None:
    """b / a - 1, or None when it does not fit a float (1e308 / 1e-308)."""
    try:
        r = b / a - 1
    except (OverflowError, ZeroDivisionError):
        return None
    return _finite(r)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Step-down: the i-th smallest p (0-based) is multiplied by (m - i), then made
    monotone, so adjusted p < alpha controls the family-wise error rate at alpha over
    all m tests without assuming they are independent."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def is_significant(p: float | None, change: Change, *, alpha: float, min_change: float) -> bool:
    """All three must hold: the rank test, a CI that excludes 0, and a material change."""
    if p is None or change.ratio is None or change.ci_low is None or change.ci_high is None:
        return False
    excludes_zero = change.ci_low > 0 or change.ci_high < 0
    return p < alpha and excludes_zero and abs(change.ratio) >= min_change


def robust_outliers(values: Sequence[float], threshold: float = 3.5) -> list[float]:
    """Values whose modified z-score (Iglewicz-Hoaglin, median/MAD based) exceeds threshold.

    MAD rather than IQR fences: with n=20 Tukey's 1.5 IQR flags a clean normal sample
    about one time in eight, which would drown real warnings.
    """
    if len(values) < 3:
        return []
    scaled, _ = _scaled(values)
    med = safe_median(scaled)
    mad = safe_median([abs(v - med) for v in scaled])
    if mad == 0:
        return []
    return [v for v, s in zip(values, scaled, strict=True)
            if 0.6745 * abs(s - med) / mad > threshold]
