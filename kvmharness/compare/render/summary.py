"""The table printed after ``run``: per variant and metric, the median with its CI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from kvmharness.compare.build import not_counted
from kvmharness.compare.render.setup import uncounted_text
from kvmharness.compare.render.text import (
    WIDTH,
    ascii_text,
    ci_header,
    ci_level_note,
    fit,
    grid,
    median_ci_text,
    num,
    pct,
)
from kvmharness.compare.stats import Summary, summarize
from kvmharness.results.model import ResultFile, variant_text
from kvmharness.scenarios.metrics import is_family


def format_run_summary(result: ResultFile, confidence: float = 0.95) -> str:
    """Per variant and metric: median of run values with its CI, CoV and n (no test)."""
    metrics = {m["name"]: m["unit"] for m in result.scenario.get("metrics", [])
               if not is_family(m["name"])}
    for r in result.runs:
        for name, samples in r.samples.items():
            metrics.setdefault(name, samples.unit)
    uncounted = uncounted_metrics(result, metrics)
    lines = variant_table(result, result.variants, {m: u for m, u in metrics.items()
                                                    if m not in uncounted},
                          "metric [unit]", WIDTH, confidence, keep_empty=True)
    lines += fit(uncounted_text(uncounted), WIDTH, "  ") if uncounted else []
    return ascii_text("\n".join(lines)) + "\n"


def uncounted_metrics(result: ResultFile, names: Iterable[str]) -> list[str]:
    """The metrics this file's backend does not count (all zero where it cannot)."""
    units = {m: s.unit for r in result.runs for m, s in r.samples.items()}
    return [m for m in names
            if not_counted([result], [x for r in result.runs if r.status == "ok"
                                      and (x := r.value(m)) is not None], units.get(m, ""))]


def variant_table(result: ResultFile, variants: Sequence[Mapping[str, str]],
                  metrics: Mapping[str, str], header: str, width: int,
                  confidence: float, keep_empty: bool = False) -> list[str]:
    """A row per variant and metric (name: unit) with runs: median, its CI, CoV, n; and
    the CI level a small n reaches.  Without rows: nothing, or the bare header."""
    rows = []
    summaries: list[Summary] = []
    for v in variants:
        runs = result.ok_runs(v)
        first = True
        for name, unit in metrics.items():
            s = summarize([x for r in runs if (x := r.value(name)) is not None], confidence)
            if s.n == 0:
                continue
            summaries.append(s)
            rows.append([variant_text(v) if first else "",
                         f"{name} [{unit}]" if unit else name, num(s.median),
                         median_ci_text(s), pct(s.cov, signed=False), str(s.n)])
            first = False
    if not rows and not keep_empty:
        return []
    lines = grid(["variant", header, "median",
                  ci_header(summaries, confidence, "CI of median"), "CoV", "n"],
                 rows, [False, False, True, False, True, True], width, shrink=1)
    note = ci_level_note(summaries, confidence)
    return lines + (fit(note, width, "  ") if note else [])
