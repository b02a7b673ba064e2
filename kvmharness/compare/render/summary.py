"""The table printed after ``run``: per variant and metric, the median with its CI."""

from __future__ import annotations

from kvmharness.compare.build import (
    not_counted,
)
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
    rows = []
    metrics = [(m["name"], m["unit"]) for m in result.scenario.get("metrics", [])
               if not is_family(m["name"])]
    declared = {name for name, _ in metrics}
    for r in result.runs:
        for name, samples in r.samples.items():
            if name not in declared:
                declared.add(name)
                metrics.append((name, samples.unit))
    summaries: list[Summary] = []
    uncounted = [name for name, _ in metrics
                 if not_counted([result], [x for r in result.runs if r.status == "ok"
                                           and (x := r.value(name)) is not None])]
    metrics = [(name, unit) for name, unit in metrics if name not in uncounted]
    for v in result.variants:
        runs = result.ok_runs(v)
        first = True
        for name, unit in metrics:
            s = summarize([x for r in runs if (x := r.value(name)) is not None], confidence)
            if s.n == 0:
                continue
            summaries.append(s)
            rows.append([variant_text(v) if first else "",
                         f"{name} [{unit}]" if unit else name, num(s.median),
                         median_ci_text(s), pct(s.cov, signed=False), str(s.n)])
            first = False
    lines = grid(["variant", "metric [unit]", "median",
                  ci_header(summaries, confidence, "CI of median"), "CoV", "n"],
                 rows, [False, False, True, False, True, True], shrink=1)
    note = ci_level_note(summaries, confidence)
    lines += fit(note, WIDTH, "  ") if note else []
    lines += fit(uncounted_text(uncounted), WIDTH, "  ") if uncounted else []
    return ascii_text("\n".join(lines)) + "\n"
