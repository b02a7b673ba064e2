"""``--until-ci``: keep adding runs until every headline metric's median is known to
within +-PCT, or the time is up; and the spread check ``run`` prints at the end.

The rule looks at precision only, never at significance.  Stopping when a comparison
first looks significant ("optional stopping") inflates the false-positive rate: with
enough peeks an A/A comparison crosses p < 0.05 by chance alone, and the p-values and
CIs computed afterwards assume a sample size fixed in advance.  Here each variant's
interval is judged on its own, by its width relative to its own median: that is about
the same whether or not B differs from A, so the rule chooses n without looking at the
answer, and the later comparison keeps (to within the small dependence of a relative
width on the median itself) its stated error rates.

The interval is the distribution-free one ``compare`` reports: the order statistics
[x_(k), x_(n+1-k)] of the per-run values, the narrowest pair whose binomial coverage of
the population median reaches the confidence level.  Six runs is the fewest for which
any such interval reaches 95% (five give at most 93.75%), so the rule never stops
before that.  Runs are added a round at a time (one run of every variant), keeping the
variants interleaved and equally sized.

``kvmharness ab`` passes ``--until-ci``/``--max-time`` to the ``run`` inside each boot,
so the rule holds per boot and variant (each kernel's medians within +-PCT), not on the
A/B change across boots: the boots are separate processes that cannot see each other's
runs.  Two medians each within +-PCT bound their ratio to within about +-2 PCT, and
``--rounds`` boots per kernel pool into narrower intervals still.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from time import monotonic

from kvmharness.compare.stats import DEFAULT_CONFIDENCE, median_ci
from kvmharness.results.model import ResultFile, RunRecord, variant_text
from kvmharness.scenarios.metrics import expand

# The smallest n whose order-statistic interval reaches 95% coverage.
MIN_RUNS = 6
DEFAULT_MAX_TIME_S = 600.0
# `run` prints one line when a headline metric's run-to-run spread exceeds this.
COV_LIMIT = 0.10


@dataclasses.dataclass(frozen=True)
class UntilCi:
    """Stop when every headline metric's median CI is within +-``target`` (a fraction) of
    the median, for every variant; or when another round would end after ``max_time_s``."""

    target: float
    max_time_s: float = DEFAULT_MAX_TIME_S
    confidence: float = DEFAULT_CONFIDENCE
    min_runs: int = MIN_RUNS

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise ValueError(f"--until-ci must be between 0% and 100% (exclusive), "
                             f"got {self.target * 100:g}%")
        if not self.max_time_s > 0:
            raise ValueError(f"--max-time must be > 0 seconds, got {self.max_time_s:g}")
        if self.min_runs < MIN_RUNS:
            raise ValueError(f"--until-ci needs at least {MIN_RUNS} runs per variant before "
                             f"it can stop (got a minimum of {self.min_runs})")


@dataclasses.dataclass(frozen=True)
class MetricPrecision:
    variant: str
    metric: str
    n: int
    median: float | None
    ci_low: float | None
    ci_high: float | None
    coverage: float | None
    # max(median - low, high - median) / |median|; None where it cannot be said (no
    # values, or a zero median with a non-zero interval).
    half_width: float | None

    def precise(self, target: float, confidence: float) -> bool:
        return (self.coverage is not None and self.coverage >= confidence
                and self.half_width is not None and self.half_width <= target)

    def text(self) -> str:
        width = "n/a" if self.half_width is None else f"+-{self.half_width * 100:.1f}%"
        return f"{self.metric} ({self.variant}) {width}, n={self.n}"


def _metric_names(runs: Sequence[RunRecord]) -> list[str]:
    return list(dict.fromkeys(name for r in runs for name in r.samples))


def assess(result: ResultFile, headline: Sequence[str],
           confidence: float = DEFAULT_CONFIDENCE) -> list[MetricPrecision]:
    """Per variant and headline metric, the median CI of the per-run values."""
    out: list[MetricPrecision] = []
    for variant in result.variants:
        runs = result.ok_runs(variant)
        for name in expand(headline, _metric_names(runs)):
            values = [v for r in runs if (v := r.value(name)) is not None]
            if not values:
                continue
            med, lo, hi, coverage = median_ci(values, confidence)
            spread = max(med - lo, hi - med)
            half = (spread / abs(med) if med != 0 else 0.0 if spread == 0 else None)
            out.append(MetricPrecision(variant_text(variant), name, len(values), med, lo, hi,
                                       coverage, half))
    return out


def widest(assessments: Sequence[MetricPrecision]) -> MetricPrecision | None:
    """The least precise entry (one whose width cannot be said counts as widest)."""
    if not assessments:
        return None
    return max(assessments, key=lambda a: (a.half_width is None, a.half_width or 0.0,
                                            -(a.coverage or 0.0)))


def all_precise(assessments: Sequence[MetricPrecision], rule: UntilCi) -> bool:
    return bool(assessments) and all(a.precise(rule.target, rule.confidence)
                                     for a in assessments)


def spread_too_high(result: ResultFile, headline: Sequence[str],
                    limit: float = COV_LIMIT) -> list[tuple[str, str, float]]:
    """(metric, variant, CoV) of every headline metric whose per-run values vary by more
    than ``limit`` (stdev / |mean|), worst first."""
    found: list[tuple[str, str, float]] = []
    for variant in result.variants:
        runs = result.ok_runs(variant)
        for name in expand(headline, _metric_names(runs)):
            values = [v for r in runs if (v := r.value(name)) is not None]
            if len(values) < 2:
                continue
            mean = statistics.fmean(values)
            if mean == 0:
                continue
            cov = statistics.stdev(values) / abs(mean)
            if cov > limit:
                found.append((name, variant_text(variant), cov))
    return sorted(found, key=lambda f: -f[2])


def spread_line(found: Sequence[tuple[str, str, float]], limit: float = COV_LIMIT,
                shown: int = 3) -> str | None:
    """The one line ``run`` prints about ``spread_too_high``'s findings (None if none)."""
    if not found:
        return None
    items = ", ".join(f"{m} ({v}) {cov * 100:.0f}%" for m, v, cov in found[:shown])
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    # Of single runs, not of the medians: with many runs a median is precise despite it
    # (its CI is in the table above), so the line must not call the median untrustworthy.
    return (f"spread too high to trust one run (CoV > {limit * 100:.0f}%): {items}{more}; "
            "trust the medians only as far as their 95% CI; see `kvmharness info` for "
            "tuning, pin threads with --pin, or add runs with --until-ci")


def state(assessments: Sequence[MetricPrecision], rule: UntilCi, rounds: int,
          elapsed_s: float, stop: str | None) -> dict[str, object]:
    """What a run's ``effective["until_ci"]`` records after its round."""
    w = widest(assessments)
    return {
        "target_pct": rule.target * 100,
        "max_time_s": rule.max_time_s,
        "rounds": rounds,
        "elapsed_s": round(elapsed_s, 3),
        "widest": None if w is None else {
            "variant": w.variant, "metric": w.metric, "n": w.n,
            "half_width_pct": None if w.half_width is None else w.half_width * 100},
        "stop": stop,
    }


def runs_to_reach(assessment: MetricPrecision, target: float) -> int | None:
    """Runs per variant at which ``assessment``'s median CI would be within +-``target``
    if the spread stays as it is: the interval's half-width shrinks as 1/sqrt(n) (the
    order-statistic ranks move in by ~sqrt(n) while the density near the median stays),
    so n x (half-width / target)^2.  None where that cannot be said: too few runs for a
    95% interval (MIN_RUNS), no width, or already within the target."""
    width = assessment.half_width
    if assessment.n < MIN_RUNS or width is None or width <= target:
        return None
    return math.ceil(assessment.n * (width / target) ** 2)


def duration_text(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``4 days``: a rough duration, one unit."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def summary_text(stop: str, assessments: Sequence[MetricPrecision], rule: UntilCi,
                 rounds: int, elapsed_s: float) -> str:
    """``--until-ci 5%: precise after 9 runs per variant (41 s); widest: ...``; when time
    is up, also how many runs (and how long) the widest metric would need at its spread."""
    w = widest(assessments)
    tail = f"; widest: {w.text()}" if w is not None else ""
    head = f"--until-ci {rule.target * 100:g}%"
    if stop == "precise":
        return f"{head}: precise after {rounds} runs per variant ({elapsed_s:.0f} s){tail}"
    if stop == "no variant left":
        return f"{head}: stopped after {rounds} rounds: no variant left to run{tail}"
    needed = runs_to_reach(w, rule.target) if w is not None else None
    if needed is not None and rounds:
        tail += (f"; at this spread +-{rule.target * 100:g}% needs ~{needed} runs per "
                 f"variant (~{duration_text(elapsed_s * needed / rounds)}): raise "
                 "--max-time, widen the target, or lower the spread (--pin, a quieter "
                 "host: `kvmharness info`)")
    return (f"{head}: time up (--max-time {rule.max_time_s:g} s) after {rounds} runs per "
            f"variant ({elapsed_s:.0f} s), not every headline metric reached the target"
            f"{tail}")


def parse_percent(text: str, option: str = "--until-ci", *, allow_zero: bool = False,
                  upper: float = 100) -> float:
    """'5' / '5%' -> 0.05: every option that takes a percentage reads it in percent.  A
    bare value below 1 ('0.05') is refused rather than guessed: it is a fraction written
    where a percentage was meant as often as it is a small percentage."""
    stripped = text.strip()
    explicit = stripped.endswith("%")
    try:
        value = float(stripped.removesuffix("%"))
    except ValueError:
        raise ValueError(f"{option} expects a percentage like 5 or 2.5%, got {text!r}") from None
    if not explicit and 0 < value < 1:
        raise ValueError(f"{option} {text}: percentages are in percent ({value * 100:g} or "
                         f"{value * 100:g}% for {value * 100:g} percent); write {text}% if "
                         f"you mean {text} percent")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < upper):
        bounds = "[0, " if allow_zero else "(0, "
        raise ValueError(f"{option} must be in {bounds}{upper:g}) percent, got {text!r}")
    return value / 100


class Stopper:
    """The ``--until-ci`` loop's bookkeeping for a session: asked before each round
    whether to start it, it measures rounds and time, and on stopping records why (the
    last completed run's ``effective["until_ci"]``, plus a result warning when time ran
    out) and returns the line to print."""

    def __init__(self, rule: UntilCi, headline: Sequence[str], minimum: int,
                 clock: Callable[[], float] | None = None) -> None:
        self.rule = rule
        self.headline = tuple(headline)
        self.minimum = max(minimum, rule.min_runs)
        self.clock = clock or monotonic
        self.start = self.clock()
        self.round_start = self.start
        self.last_round_s = 0.0
        self.stop: str | None = None

    def check(self, result: ResultFile, rounds: int, variants_left: int = 1) -> str | None:
        """None to run round ``rounds + 1``; else the summary line (``self.stop`` says
        "precise", "time up", or "no variant left" when every variant was skipped or
        dropped)."""
        now = self.clock()
        if rounds:
            self.last_round_s = now - self.round_start
        self.round_start = now
        elapsed = now - self.start
        assessments = assess(result, self.headline, self.rule.confidence)
        stop = ("time up" if elapsed + self.last_round_s > self.rule.max_time_s
                else None)
        if rounds >= self.minimum and all_precise(assessments, self.rule):
            stop = "precise"
        elif not variants_left:
            stop = "no variant left"
        if stop is None:
            return None
        self.stop = stop
        ok = result.ok_runs()
        if ok:
            ok[-1].effective["until_ci"] = state(assessments, self.rule, rounds, elapsed, stop)
        line = summary_text(stop, assessments, self.rule, rounds, elapsed)
        if stop == "time up":
            result.warnings.append(line)
        return line
