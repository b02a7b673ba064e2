"""How well does an A/B comparison here tell a real change from noise?
``python -m kvmharness.bench.power``.

Runs rom-toggle at quick size (``total``: time for the vCPUs to finish their passes) as
two kinds of interleaved comparisons, each repeated ``--trials`` times:

- A/A: both sides identical (``passes`` P vs P).  Every "significant" verdict is a false
  positive; the rate should stay near alpha or below.
- A/A': side B does 5% more guest work (P vs P * 1.05 passes, 20 vs 21 by default).  A
  verdict "B slower" is a detection.

A verdict is the one ``kvmharness compare`` gives: Mann-Whitney p < alpha, a bootstrap CI
of the change that excludes 0, and |change| >= the minimum change.  Each trial alternates
A and B runs (one fresh VM each) up to ``--runs`` per side and takes the verdict at that
fixed n, so the false-positive rate is that of a fixed-n test.  The time to detection is
the wall time after which the verdict was "B slower" at every later checkpoint (from 3
runs per side on) up to the final n: when a comparison of that length would first have
been (and stayed) right.  "change" is the median over trials of B's median against A's,
"CoV" the median run-to-run spread of one side (stdev / mean of its per-run values): the
noise a change has to stand out from.

A benchmark, not a test: it prints rates and times and asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from tabulate import tabulate

from kvmharness.compare import stats
from kvmharness.observe import pinning
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import RunRequest, ScenarioSpec
from kvmharness.session import SessionPlan, until_ci

SCENARIO = "rom-toggle"
METRIC = "total"
FIRST_CHECKPOINT = 3  # the smallest n per side at which the exact test can reach p < 0.1


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    n: int
    elapsed_s: float
    p: float
    change: float | None
    flagged: bool  # significant, in the direction asked for (any direction for A/A)


@dataclasses.dataclass(frozen=True)
class Trial:
    checkpoints: tuple[Checkpoint, ...]
    # Run-to-run spread of each side (stdev / mean of its per-run values): the noise a
    # change has to stand out from.
    cov: tuple[float, float] = (math.nan, math.nan)
    stopped: str = "runs"  # why the trial ended: runs (the cap), precise or time (--until-ci)

    @property
    def final(self) -> Checkpoint:
        return self.checkpoints[-1]

    def detected_at(self) -> Checkpoint | None:
        """The first checkpoint from which every later one (to the final n) flagged."""
        first: Checkpoint | None = None
        for c in self.checkpoints:
            if c.flagged:
                first = first or c
            else:
                first = None
        return first


@dataclasses.dataclass(frozen=True)
class Settings:
    runs: int = 8
    trials: int = 3
    passes: int = 20
    extra: float = 0.05
    alpha: float = stats.DEFAULT_ALPHA
    min_change: float = 0.01
    resamples: int = 1000
    pin: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    # --until-ci: add pairs until both sides' median CI of METRIC is within +-until_ci of
    # the median (at least until_ci.MIN_RUNS per side, as `run --until-ci`), or until another pair
    # would end after max_time_s; ``runs`` is then only a cap.
    until_ci: float | None = None
    max_time_s: float = 300.0

    @property
    def passes_b(self) -> int:
        return max(self.passes + 1, round(self.passes * (1 + self.extra)))


def verdict(a: Sequence[float], b: Sequence[float], *, alpha: float, min_change: float,
            resamples: int, direction: int) -> tuple[float, float | None, bool]:
    """(p, change, flagged): ``compare``'s rule; ``direction`` +1 counts only "B higher",
    0 counts either way."""
    p = stats.mann_whitney(a, b).p
    change = stats.bootstrap_change(a, b, resamples=resamples)
    significant = stats.is_significant(p, change, alpha=alpha, min_change=min_change)
    if direction and change.ratio is not None:
        significant = significant and (change.ratio > 0) == (direction > 0)
    return p, change.ratio, significant


def run_trial(run_a: Callable[[], float], run_b: Callable[[], float], settings: Settings,
              direction: int, clock: Callable[[], float] = time.monotonic) -> Trial:
    """Alternate A and B (A first in even pairs, B first in odd ones, so a drift within a
    pair hits both sides alike) and record the verdict after every pair."""
    a: list[float] = []
    b: list[float] = []
    start = clock()
    checkpoints: list[Checkpoint] = []
    stopped = "runs"
    for i in range(settings.runs):
        pair_start = clock()
        order = ((a, run_a), (b, run_b)) if i % 2 == 0 else ((b, run_b), (a, run_a))
        for side, fn in order:
            side.append(fn())
        n = i + 1
        if n >= FIRST_CHECKPOINT:
            p, change, flagged = verdict(a, b, alpha=settings.alpha,
                                         min_change=settings.min_change,
                                         resamples=settings.resamples, direction=direction)
            checkpoints.append(Checkpoint(n, clock() - start, p, change, flagged))
        if settings.until_ci is not None and n >= until_ci.MIN_RUNS:
            if precise(a, settings.until_ci) and precise(b, settings.until_ci):
                stopped = "precise"
                break
            if clock() + (clock() - pair_start) - start > settings.max_time_s:
                stopped = "time"
                break
    return Trial(tuple(checkpoints), (_cov(a), _cov(b)), stopped)


def precise(values: Sequence[float], target: float) -> bool:
    """The 95% CI of the median within +-target of it (the --until-ci rule)."""
    median, low, high, coverage = stats.median_ci(values)
    return (coverage >= stats.DEFAULT_CONFIDENCE and median != 0
            and max(median - low, high - median) / abs(median) <= target)


def _cov(values: Sequence[float]) -> float:
    mean = statistics.fmean(values) if values else 0.0
    return statistics.stdev(values) / abs(mean) if len(values) > 1 and mean else math.nan


def scenario_runner(spec: ScenarioSpec, settings: Settings) -> Callable[[int], float]:
    """passes -> one fresh-VM run of ``spec`` at quick size, its per-run value."""
    base = SessionPlan.resolve(spec, quick=True, variants={"zap": ["all"]})

    def run(passes: int) -> float:
        req = RunRequest(params={**base.params, "passes": passes},
                         variant=dict(base.variants[0]), iterations=base.iterations,
                         warmup=base.warmup, pinning=settings.pin)
        outcome = spec.run(req)
        values = outcome.samples.get(METRIC)
        if not values:
            raise RuntimeError(f"{spec.name} produced no {METRIC!r} samples")
        return float(statistics.median(values))

    return run


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    trials: tuple[Trial, ...]
    direction: int


def summary_table(rows: Sequence[Row], settings: Settings) -> str:
    table = []
    for row in rows:
        flagged = sum(t.final.flagged for t in row.trials)
        n = len(row.trials)
        changes = [t.final.change for t in row.trials if t.final.change is not None]
        detections = [d for t in row.trials if (d := t.detected_at()) is not None
                      and t.final.flagged]
        if row.direction and detections:
            times = sorted(d.elapsed_s for d in detections)
            ns = sorted(d.n for d in detections)
            spread = (f" [{times[0]:.0f}-{times[-1]:.0f}]"
                      if round(times[0]) != round(times[-1]) else "")
            when = f"{statistics.median(times):.0f} s{spread} (n={statistics.median(ns):g})"
        else:
            when = "-"
        rate = f"{flagged}/{n} ({100 * flagged / n:.0f}%)" if n else "-"
        covs = [c for t in row.trials for c in t.cov if not math.isnan(c)]
        table.append([row.name, "false pos." if not row.direction else "detections",
                      rate, f"{statistics.median(changes) * 100:+.1f}%" if changes else "-",
                      f"{statistics.median(covs) * 100:.0f}%" if covs else "-", when])
    return tabulate(table, headers=["comparison", "counts", "rate", "change", "CoV",
                                    "time to detection"], tablefmt="simple")


def stops_table(rows: Sequence[Row]) -> str:
    """With --until-ci: how many runs per side each trial took, and why it stopped."""
    table = []
    for row in rows:
        ns = sorted(t.final.n for t in row.trials)
        times = sorted(t.final.elapsed_s for t in row.trials)
        table.append([row.name, f"{ns[0]}-{ns[-1]}", f"{times[0]:.0f}-{times[-1]:.0f} s",
                      *(sum(t.stopped == k for t in row.trials)
                        for k in ("precise", "time", "runs"))])
    return tabulate(table, headers=["stopped", "n per side", "after", "CI reached",
                                    "time up", "--runs cap"], tablefmt="simple")


def checkpoint_table(rows: Sequence[Row]) -> str:
    """Flagged trials at each n per side: how the rates build up with more runs."""
    ns = sorted({c.n for r in rows for t in r.trials for c in t.checkpoints})
    table = []
    for row in rows:
        cells = []
        for n in ns:
            at = [c for t in row.trials for c in t.checkpoints if c.n == n]
            cells.append(f"{sum(c.flagged for c in at)}/{len(at)}" if at else "-")
        table.append([row.name, *cells])
    return tabulate(table, headers=["flagged at n =", *map(str, ns)], tablefmt="simple")


def measure(run: Callable[[int], float], settings: Settings,
            progress: Callable[[str], None] = lambda m: None) -> list[Row]:
    """A/A and A/A' trials, interleaved trial by trial so host drift hits both kinds."""
    aa: list[Trial] = []
    ab: list[Trial] = []
    a, b = settings.passes, settings.passes_b
    for t in range(settings.trials):
        for name, other, direction, out in (("A/A", a, 0, aa), ("A/A'", b, 1, ab)):
            trial = run_trial(lambda: run(a), functools.partial(run, other), settings, direction)
            out.append(trial)
            f = trial.final
            progress(f"trial {t + 1}/{settings.trials} {name}: n={f.n} per side, "
                     f"change {f.change * 100 if f.change is not None else math.nan:+.1f}%, "
                     f"p={f.p:.3g}, {'flagged' if f.flagged else 'not flagged'} "
                     f"({f.elapsed_s:.0f} s)")
    return [Row("A/A", tuple(aa), 0),
            Row(f"A/A' (+{100 * (b - a) / a:.0f}%)", tuple(ab), 1)]


def report(rows: Sequence[Row], settings: Settings, elapsed_s: float) -> str:
    lines = [
        f"{SCENARIO} (quick), metric {METRIC!r}: passes {settings.passes} vs "
        f"{settings.passes} (A/A), {settings.passes} vs {settings.passes_b} (A/A')",
        *([f"runs per side: until the median's 95% CI is within "
           f"+-{settings.until_ci * 100:g}% on both sides",
           f"({until_ci.MIN_RUNS} to {settings.runs} runs, at most "
           f"{settings.max_time_s:g} s per trial)"] if settings.until_ci is not None else []),
        (f"{settings.runs} runs per side, " if settings.until_ci is None else "") +
        f"alternated, {settings.trials} "
        f"trial{'' if settings.trials == 1 else 's'} of each; "
        f"pinning: {pinning.describe(settings.pin)}",
        f"flagged as `kvmharness compare` would: p < {settings.alpha:g}, CI excludes 0, "
        f"|change| >= {settings.min_change * 100:g}%",
        "",
        summary_table(rows, settings),
        "",
        *([stops_table(rows), ""] if settings.until_ci is not None else []),
        checkpoint_table(rows),
        "",
        f"total time {elapsed_s:.0f} s",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kvmharness.bench.power",
        description="False-positive rate, detection rate and time to detection of A/B "
                    f"comparisons of {SCENARIO} (quick size) on this host.")
    p.add_argument("--trials", type=int, default=Settings.trials, metavar="T",
                   help=f"comparisons of each kind (default {Settings.trials})")
    p.add_argument("--runs", type=int, default=Settings.runs, metavar="N",
                   help=f"runs per side in each comparison (default {Settings.runs})")
    p.add_argument("--passes", type=int, default=Settings.passes, metavar="P",
                   help=f"side A's passes (default {Settings.passes})")
    p.add_argument("--extra", type=_percent("--extra"), default=Settings.extra, metavar="PCT",
                   help="side A' does this much more work, in percent (default "
                        f"{Settings.extra * 100:g})")
    p.add_argument("--alpha", type=float, default=Settings.alpha)
    p.add_argument("--min-change", type=_percent("--min-change"), default=Settings.min_change,
                   metavar="PCT", help="smallest change that counts (default "
                   f"{Settings.min_change * 100:g})")
    p.add_argument("--pin", metavar="SPEC", help="as `kvmharness run --pin`")
    p.add_argument("--until-ci", type=_percent("--until-ci"), default=None, metavar="PCT",
                   help=f"each trial adds pairs until both sides' 95%% CI of the median of "
                        f"{METRIC!r} is within +-PCT of it (at least {until_ci.MIN_RUNS} runs per side, "
                        "as `run --until-ci`), or --max-time is up; --runs caps it")
    p.add_argument("--max-time", type=float, default=Settings.max_time_s, metavar="S",
                   help="with --until-ci: start no pair that would end after S seconds of "
                        f"the trial (default {Settings.max_time_s:g})")
    args = p.parse_args(argv)
    if args.trials < 1 or args.runs < FIRST_CHECKPOINT or args.passes < 1:
        p.error(f"--trials must be >= 1, --runs >= {FIRST_CHECKPOINT}, --passes >= 1")
    if not 0 < args.extra <= 1 or not 0 < args.alpha < 1:
        p.error("--extra must be in (0, 100] percent, --alpha in (0, 1)")
    if args.until_ci is not None and not (0 < args.until_ci < 1 and args.max_time > 0):
        p.error("--until-ci must be in (0, 100) percent and --max-time > 0")
    try:
        args.pin = pinning.resolve(args.pin)
    except pinning.PinError as e:
        p.error(str(e))
    return args


def _percent(option: str) -> Callable[[str], float]:
    """'5' and '5%' are five percent, as in every kvmharness option (a bare 0.05 refused)."""
    def parse(text: str) -> float:
        try:
            return until_ci.parse_percent(text, option, allow_zero=True, upper=1000)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    args = parse_args(argv)
    settings = Settings(runs=args.runs, trials=args.trials, passes=args.passes,
                        extra=args.extra, alpha=args.alpha,
                        min_change=args.min_change, pin=args.pin, until_ci=args.until_ci,
                        max_time_s=args.max_time)
    spec = registry.all_scenarios()[SCENARIO]

    def progress(message: str) -> None:
        err.write(message + "\n")
        err.flush()

    start = time.monotonic()
    rows = measure(scenario_runner(spec, settings), settings, progress)
    out.write(report(rows, settings, time.monotonic() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
