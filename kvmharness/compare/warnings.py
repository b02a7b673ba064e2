"""Reasons to distrust a comparison: noisy sides, too few runs, a busy or throttled host,
and any way the two sides differ besides the thing under test.

Warnings never change a verdict; they tell the reader when the verdict is weak.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kvmharness.compare import stats
from kvmharness.results.model import ResultFile, RunRecord

COV_LIMIT = 0.10
FREQ_DRIFT_LIMIT = 0.05
STEAL_PCT_LIMIT = 2.0
OTHERS_BUSY_CPUS_LIMIT = 0.5


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; leaves rendered as compact JSON for comparison."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(value, sort_keys=True)}


def _unquote(text: str) -> str:
    return text.strip('"') if text.startswith('"') else text


def _short(text: str, limit: int = 40, start: int = 0) -> str:
    """At most ``limit`` characters of ``text`` from about ``start`` on, '...' marking cuts."""
    if len(text) <= limit:
        return text
    head = "..." if start > 0 else ""
    room = limit - len(head)
    if len(text) - start > room:
        return head + text[start:start + room - 3] + "..."
    return head + text[start:]


def _short_pair(va: str, vb: str, limit: int = 40) -> tuple[str, str]:
    """Both values cut to ``limit``, but around where they first differ: two long values
    sharing a long prefix would otherwise be shown as the same text."""
    va, vb = _unquote(va), _unquote(vb)
    if len(va) <= limit and len(vb) <= limit:
        return va, vb
    common = 0
    while common < min(len(va), len(vb)) and va[common] == vb[common]:
        common += 1
    # Keep a little shared context before the first difference.
    start = max(0, common - 12) if common > limit - 12 else 0
    return (_short(va, limit, start if len(va) > limit else 0),
            _short(vb, limit, start if len(vb) > limit else 0))


def differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """'key: A -> B' for every leaf that differs, including ones present on one side only."""
    fa, fb = flatten(a, prefix), flatten(b, prefix)
    out = []
    for key in sorted(fa.keys() | fb.keys()):
        va, vb = fa.get(key, "(absent)"), fb.get(key, "(absent)")
        if va != vb:
            sa, sb = _short_pair(va, vb)
            out.append(f"{key}: {sa} -> {sb}")
    return out


def setup_differences(a: ResultFile, b: ResultFile) -> list[str]:
    """Differences between the files behind A and B: environment and run settings."""
    def settings(f: ResultFile) -> dict[str, Any]:
        return {"parameters": f.parameters, "quick": f.quick, "iterations": f.iterations,
                "warmup": f.warmup}

    def environment(f: ResultFile) -> dict[str, Any]:
        kernel = {k: v for k, v in f.environment.get("kernel", {}).items() if k != "boot_id"}
        return {**f.environment, "kernel": kernel} if "kernel" in f.environment else dict(
            f.environment)

    # The boot id differs between any two boots: the boot is a level of the comparison
    # (build.boot_level), not a setup difference.
    return differences(settings(a), settings(b)) + differences(environment(a), environment(b))


def side_warnings(side: str, metrics: Mapping[str, Sequence[float]],
                  summaries: Mapping[str, stats.Summary]) -> list[str]:
    out = []
    for metric, values in metrics.items():
        s = summaries[metric]
        if s.cov is not None and s.cov >= COV_LIMIT:
            out.append(f"{side}: {metric}: CoV {s.cov * 100:.1f}% >= {COV_LIMIT * 100:.0f}% "
                       "(noisy; more runs or a quieter host)")
        outliers = stats.robust_outliers(values)
        if outliers:
            shown = ", ".join(f"{v:.4g}" for v in sorted(outliers)[:3])
            out.append(f"{side}: {metric}: {len(outliers)} outlier run(s) ({shown}"
                       f"{', ...' if len(outliers) > 3 else ''})")
    return out


def power_warning(n_a: int, n_b: int, alpha: float) -> list[str]:
    floor = stats.smallest_p(n_a, n_b)
    if n_a and n_b and floor >= alpha:
        needed = stats.runs_needed(1, alpha)
        hint = f" (needs >= {needed} runs per side)" if needed else ""
        return [f"n={n_a}/{n_b}: the smallest possible p is {floor:.3g} >= alpha {alpha:g}, "
                f"so nothing can be significant{hint}"]
    return []


def detectability(pairs: Iterable[tuple[int, int]], tests: int, alpha: float,
                  correction: str = "Holm", unit: str = "runs") -> list[str]:
    """benchstat's "need >= 4 samples to detect a difference": when the runs per side
    (n_a, n_b) cannot give a p below ``alpha`` after the correction over ``tests`` tests,
    one note saying so and what would: the runs per side (equal sides) or at most how
    many tests.  The first step of Holm's correction multiplies the smallest p by the
    number of tests, so no adjusted p can be below ``smallest_p * tests``."""
    pairs = sorted({p for p in pairs if p[0] and p[1]}, reverse=True)
    if not pairs or tests < 1:
        return []
    out: list[str] = []
    raw = [p for p in pairs if stats.smallest_p(*p) >= alpha]
    corrected = [p for p in pairs if p not in raw and stats.smallest_p(*p) * tests >= alpha]

    def needed(t: int) -> str:
        runs = stats.runs_needed(t, alpha)
        return f"more {unit} per side" if runs is None else f">= {runs} {unit} per side"

    ns = ", ".join(f"{a}/{b}" for a, b in raw)
    if raw:
        out.append(f"n = {ns} {unit}: no change can reach p < {alpha:g} even without "
                   f"correction; need {needed(1)}.")
    if corrected:
        ns = ", ".join(f"{a}/{b}" for a, b in corrected)
        floor = min(stats.min_attainable_p(*p) for p in corrected)
        most = math.ceil(alpha / floor) - 1
        fewer = f" or <= {most} test{'s' if most > 1 else ''}" if most >= 1 else ""
        out.append(f"n = {ns} {unit}, {tests} tests: no change can reach p < {alpha:g} "
                   f"after {correction}'s correction; need {needed(tests)}{fewer}.")
    return out


def family_detectability(families: Iterable[tuple[int, int, int, str]], alpha: float,
                         correction: str = "Holm") -> list[str]:
    """``detectability`` for comparisons corrected in families of their own: (n_a, n_b,
    tests in the family, what n counts) each; one note per distinct text."""
    by_tests: dict[tuple[int, str], set[tuple[int, int]]] = {}
    for n_a, n_b, tests, unit in families:
        by_tests.setdefault((tests, unit), set()).add((n_a, n_b))
    out: list[str] = []
    for (tests, unit), pairs in sorted(by_tests.items()):
        out += [n for n in detectability(pairs, tests, alpha, correction, unit)
                if n not in out]
    return out


def _noise_values(runs: Iterable[RunRecord], key: str) -> list[float]:
    vals = []
    for r in runs:
        v = r.noise.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals.append(float(v))
    return vals


def _mean_mhz(runs: Sequence[RunRecord]) -> float | None:
    vals = _noise_values(runs, "cpu_mhz_before") + _noise_values(runs, "cpu_mhz_after")
    return statistics.median(vals) if vals else None


def noise_warnings(side: str, runs: Sequence[RunRecord]) -> list[str]:
    out = []
    drifted = 0
    for r in runs:
        before, after = r.noise.get("cpu_mhz_before"), r.noise.get("cpu_mhz_after")
        if (isinstance(before, (int, float)) and isinstance(after, (int, float)) and before > 0
                and abs(after / before - 1) >= FREQ_DRIFT_LIMIT):
            drifted += 1
    if drifted:
        out.append(f"{side}: CPU frequency drifted >= {FREQ_DRIFT_LIMIT * 100:.0f}% "
                   f"during {drifted} of {len(runs)} runs")
    for key, limit, what in (
        ("steal_pct", STEAL_PCT_LIMIT, "steal time >= {limit:g}%"),
        ("others_busy_cpus", OTHERS_BUSY_CPUS_LIMIT,
         "other processes used >= {limit:g} CPUs"),
    ):
        vals = _noise_values(runs, key)
        high = [v for v in vals if v >= limit]
        if high:
            out.append(f"{side}: {what.format(limit=limit)} during {len(high)} of "
                       f"{len(runs)} runs (max {max(high):.2f})")
    return out


def frequency_between_sides(runs_a: Sequence[RunRecord], runs_b: Sequence[RunRecord]) -> list[str]:
    fa, fb = _mean_mhz(runs_a), _mean_mhz(runs_b)
    if fa and fb and abs(fb / fa - 1) >= FREQ_DRIFT_LIMIT:
        return [f"CPU frequency differs between sides: A {fa:.0f} MHz, B {fb:.0f} MHz"]
    return []


def run_record_warnings(side: str, runs: Sequence[RunRecord]) -> list[str]:
    """Skipped/failed runs and the scenario's own warnings, each distinct one once."""
    counts: dict[str, int] = {}
    for r in runs:
        if r.status != "ok":
            msg = f"{side}: run {r.status}: {r.reason}"
            counts[msg] = counts.get(msg, 0) + 1
        for w in r.warnings:
            msg = f"{side}: {w}"
            counts[msg] = counts.get(msg, 0) + 1
    return [m if n == 1 else f"{m} ({n} runs)" for m, n in counts.items()]


def file_status_warnings(side: str, files: Sequence[ResultFile]) -> list[str]:
    out = []
    for f in files:
        name = f.source or f.label
        if f.status == "interrupted":
            out.append(f"{side}: {name} was interrupted; it holds {len(f.ok_runs())} "
                       "completed runs")
        elif f.status == "running":
            out.append(f"{side}: {name} never finished (crash, or still running?)")
    return out
