"""How well does an A/B comparison here tell a real change from noise?
``python -m kvmharness.bench.power``.

Runs rom-toggle at quick size (``total``: time for the vCPUs to finish their passes) as
two kinds of interleaved comparisons, ``--trials`` times each (``--aa-trials`` sets the
A/A count apart: a false-positive rate near alpha needs more trials to bound than a
detection rate near 100%):

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
from pathlib import Path
from typing import TextIO

from tabulate import tabulate

from kvmharness.compare import stats
from kvmharness.observe import pinning
from kvmharness.results.store import atomic_write_json
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
    # Each side's per-run values in run order (--save writes them: outliers, drift).
    values: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())

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
    aa_trials: int | None = None  # A/A trials; None: as many as ``trials``
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
    def aa_count(self) -> int:
        return self.trials if self.aa_trials is None else self.aa_trials

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
    return Trial(tuple(checkpoints), (_cov(a), _cov(b)), stopped, (tuple(a), tuple(b)))


def precise(values: Sequence[float], target: float) -> bool:
    """The 95% CI of the median within +-target of it (the --until-ci rule)."""
    median, low, high, coverage = stats.median_ci(values)
    return (coverage >= stats.DEFAULT_CONFIDENCE and median != 0
            and max(median - low, high - median) / abs(median) <= target)


def runs_needed(trial: Trial, target: float) -> tuple[int, float] | None:
    """(runs per side, seconds) the trial would have needed for both sides' median CI
    within +-target, at the spread it ended with (``until_ci.runs_to_reach``, the
    message `run --until-ci` prints when time is up); None if it got there or cannot say."""
    needed = []
    for values in trial.values:
        if not values:
            return None
        median, low, high, coverage = stats.median_ci(values)
        width = max(median - low, high - median) / abs(median) if median else None
        at = until_ci.MetricPrecision("", METRIC, len(values), median, low, high, coverage,
                                      width)
        needed.append(until_ci.runs_to_reach(at, target) or 0)
    n = max(needed)
    return (n, trial.final.elapsed_s * n / trial.final.n) if n else None


def needed_line(rows: Sequence[Row], target: float) -> str:
    """One line: what the trials that ran out of time would have needed (empty if none)."""
    out_of_time = [t for row in rows for t in row.trials if t.stopped == "time"]
    found = [need for t in out_of_time if (need := runs_needed(t, target)) is not None]
    if not found:
        return ""
    ns = sorted(n for n, _ in found)
    seconds = statistics.median(s for _, s in found)
    spread = f" ({ns[0]}-{ns[-1]})" if ns[0] != ns[-1] else ""
    return (f"out of time: +-{target * 100:g}% needed ~{statistics.median(ns):.0f} runs per "
            f"side{spread}, ~{until_ci.duration_text(seconds)} a trial")


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


# The checkpoints the table shows when there are more than MAX_CHECKPOINT_COLUMNS (an
# --until-ci trial reaches 100+ runs per side: one column each would be 700 characters).
SHOWN_CHECKPOINTS = (3, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000)
MAX_CHECKPOINT_COLUMNS = 10


def shown_checkpoints(ns: Sequence[int]) -> list[int]:
    """All of ``ns`` if few, else those on SHOWN_CHECKPOINTS and the largest."""
    if len(ns) <= MAX_CHECKPOINT_COLUMNS:
        return list(ns)
    kept = [n for n in ns if n in SHOWN_CHECKPOINTS]
    return kept + [ns[-1]] if ns[-1] not in kept else kept


def checkpoint_table(rows: Sequence[Row]) -> str:
    """Flagged trials at each n per side: how the rates build up with more runs."""
    ns = shown_checkpoints(sorted({c.n for r in rows for t in r.trials for c in t.checkpoints}))
    table = []
    for row in rows:
        cells = []
        for n in ns:
            at = [c for t in row.trials for c in t.checkpoints if c.n == n]
            cells.append(f"{sum(c.flagged for c in at)}/{len(at)}" if at else "-")
        table.append([row.name, *cells])
    return tabulate(table, headers=["flagged at n =", *map(str, ns)], tablefmt="simple")


def schedule(aa: int, ab: int) -> list[tuple[str, int]]:
    """The order of the trials: each kind spread evenly over the whole measurement (kind,
    index), so a drift of the host hits both kinds alike even when their counts differ
    (8 A/A and 4 A/A': AA AB AA AA AB AA ...).  Equal counts alternate A/A, A/A'."""
    slots = [((j + 0.5) / aa, 0, "A/A", j) for j in range(aa)]
    slots += [((j + 0.5) / ab, 1, "A/A'", j) for j in range(ab)]
    return [(kind, j) for _, _, kind, j in sorted(slots)]


def measure(run: Callable[[int], float], settings: Settings,
            progress: Callable[[str], None] = lambda m: None) -> list[Row]:
    """A/A and A/A' trials, interleaved (``schedule``) so host drift hits both kinds."""
    trials: dict[str, list[Trial]] = {"A/A": [], "A/A'": []}
    counts = {"A/A": settings.aa_count, "A/A'": settings.trials}
    a, b = settings.passes, settings.passes_b
    for name, j in schedule(counts["A/A"], counts["A/A'"]):
        other, direction = (a, 0) if name == "A/A" else (b, 1)
        trial = run_trial(lambda: run(a), functools.partial(run, other), settings, direction)
        trials[name].append(trial)
        f = trial.final
        progress(f"trial {j + 1}/{counts[name]} {name}: n={f.n} per side, "
                 f"change {f.change * 100 if f.change is not None else math.nan:+.1f}%, "
                 f"p={f.p:.3g}, {'flagged' if f.flagged else 'not flagged'} "
                 f"({f.elapsed_s:.0f} s, {_stop_text(trial.stopped)}), "
                 f"CoV {trial.cov[0] * 100:.0f}%/{trial.cov[1] * 100:.0f}%")
    return [Row("A/A", tuple(trials["A/A"]), 0),
            Row(f"A/A' (+{100 * (b - a) / a:.0f}%)", tuple(trials["A/A'"]), 1)]


def _stop_text(stopped: str) -> str:
    return {"precise": "CI reached", "time": "time up", "runs": "--runs cap"}[stopped]


def report(rows: Sequence[Row], settings: Settings, elapsed_s: float) -> str:
    lines = [
        f"{SCENARIO} (quick), metric {METRIC!r}: passes {settings.passes} vs "
        f"{settings.passes} (A/A), {settings.passes} vs {settings.passes_b} (A/A')",
        *([f"runs per side: until the median's 95% CI is within "
           f"+-{settings.until_ci * 100:g}% on both sides",
           f"({until_ci.MIN_RUNS} to {settings.runs} runs, at most "
           f"{settings.max_time_s:g} s per trial)"] if settings.until_ci is not None else []),
        (f"{settings.runs} runs per side, " if settings.until_ci is None else "") +
        f"alternated, {_trials_text(settings)}; "
        f"pinning: {pinning.describe(settings.pin)}",
        f"flagged as `kvmharness compare` would: p < {settings.alpha:g}, CI excludes 0, "
        f"|change| >= {settings.min_change * 100:g}%",
        "",
        summary_table(rows, settings),
        "",
        *([stops_table(rows), *_nonempty(needed_line(rows, settings.until_ci)), ""]
          if settings.until_ci is not None else []),
        checkpoint_table(rows),
        "",
        f"total time {elapsed_s:.0f} s",
    ]
    return "\n".join(lines) + "\n"


def _nonempty(line: str) -> list[str]:
    return [line] if line else []


def _trials_text(settings: Settings) -> str:
    aa, ab = settings.aa_count, settings.trials
    if aa == ab:
        return f"{ab} trial{'' if ab == 1 else 's'} of each"
    return f"{aa} A/A and {ab} A/A' trials"


def saved(rows: Sequence[Row], settings: Settings) -> dict[str, object]:
    """What --save writes: the settings and every trial's outcome and per-run values."""
    return {
        "scenario": SCENARIO, "metric": METRIC, "passes": [settings.passes, settings.passes_b],
        "until_ci_pct": None if settings.until_ci is None else settings.until_ci * 100,
        "max_time_s": settings.max_time_s, "runs_cap": settings.runs,
        "pinning": pinning.describe(settings.pin),
        "trials": [{"comparison": row.name, "index": i, "stopped": t.stopped,
                    "n": t.final.n, "elapsed_s": round(t.final.elapsed_s, 3),
                    "p": t.final.p, "change": t.final.change, "flagged": t.final.flagged,
                    "cov": [None if math.isnan(c) else c for c in t.cov],
                    "a": list(t.values[0]), "b": list(t.values[1])}
                   for row in rows for i, t in enumerate(row.trials)],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kvmharness.bench.power",
        description="False-positive rate, detection rate and time to detection of A/B "
                    f"comparisons of {SCENARIO} (quick size) on this host.")
    p.add_argument("--trials", type=int, default=Settings.trials, metavar="T",
                   help=f"comparisons of each kind (default {Settings.trials})")
    p.add_argument("--aa-trials", type=int, default=None, metavar="T",
                   help="A/A comparisons, if not --trials (a false-positive rate wants "
                        "more trials than a detection rate)")
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
    p.add_argument("--save", type=Path, metavar="FILE",
                   help="also write every trial's per-run values and outcome to FILE (JSON)")
    args = p.parse_args(argv)
    if (args.trials < 1 or (args.aa_trials is not None and args.aa_trials < 1)
            or args.runs < FIRST_CHECKPOINT or args.passes < 1):
        p.error(f"--trials and --aa-trials must be >= 1, --runs >= {FIRST_CHECKPOINT}, "
                "--passes >= 1")
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
    settings = Settings(runs=args.runs, trials=args.trials, aa_trials=args.aa_trials,
                        passes=args.passes,
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
    if args.save is not None:
        atomic_write_json(args.save, saved(rows, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
