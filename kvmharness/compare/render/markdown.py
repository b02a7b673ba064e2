"""Markdown: the plain report's content with pipe tables."""

from __future__ import annotations

from collections.abc import Sequence

from kvmharness.compare.build import (
    Report,
)
from kvmharness.compare.render.model import (
    DEFAULT_VIEW,
    View,
    groups,
    metric_names,
    pivot_key,
    row_of,
    runs_text,
    why_no_runs,
)
from kvmharness.compare.render.plain import compact_warnings, pivot_tables, report_footer, zap_line
from kvmharness.compare.render.setup import report_header
from kvmharness.compare.render.text import (
    TAGS,
    change_cell,
    change_ci_text,
    change_text,
    ci_header,
    ci_level_note,
    median_with_ci,
    metric_name,
    n_text,
    p_text,
)
from kvmharness.compare.stats import Summary


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
              right: Sequence[bool]) -> list[str]:
    out = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
           "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return out


def format_markdown(report: Report, view: View = DEFAULT_VIEW) -> str:
    """The plain report's content with Markdown tables (the header and the grids are
    preformatted text: they are already aligned for a fixed-width font)."""
    scenarios = ", ".join(dict.fromkeys(c.scenario for c in report.comparisons))
    out = [f"## kvmharness compare: {scenarios}", "", "```", *report_header(report, view),
           "```", ""]
    for g in groups(report):
        out += [f"### {_md_escape(g.title())}", "", runs_text(g).capitalize() + ".", ""]
        if any(not s.ok_runs for s in g.sides):
            out += [f"No completed runs on {TAGS[i]}: {why_no_runs(s)}"
                    for i, s in enumerate(g.sides) if not s.ok_runs] + [""]
            continue
        names = metric_names(g)
        flat = [m for m in names if pivot_key(g.scenario, m) is None]
        pivot = [m for m in names if pivot_key(g.scenario, m) is not None]
        if flat:
            rows = []
            summaries: list[Summary] = []
            multi = len(g.comparisons) > 1
            for m in flat:
                for i, c in enumerate(g.comparisons):
                    r = row_of(c, m)
                    if r is None:
                        continue
                    summaries += [r.a, r.b]
                    cells = [metric_name(r) if i == 0 else "", r.unit, r.direction,
                             median_with_ci(r.a), median_with_ci(r.b),
                             change_cell(r) if multi else change_text(r),
                             "-" if r.change.ci_low is None
                             else f"[{change_ci_text(r, ', ')}]",
                             p_text(r.p_adj), n_text(r)]
                    rows.append(cells + [TAGS[i + 1]] if multi else cells)
            ci = ci_header(summaries, report.settings.confidence)
            headers = ["metric", "unit", "better", f"A median [{ci}]",
                       f"B median [{ci}]" if not multi else f"median [{ci}]", "change",
                       f"{report.settings.confidence * 100:g}% CI of change", "p (adj.)",
                       "n"]
            right = [False, False, False, True, True, True, True, True, True]
            if multi:
                headers, right = headers + ["side"], right + [False]
            out += _md_table(headers, rows, right)
            note = ci_level_note(summaries, report.settings.confidence)
            out += ["", f"{note}."] if note else []
            out.append("")
        if pivot:
            out += ["```", *pivot_tables(g, pivot, 100), "```", ""]
        out += zap_line(g, 200)
        warns = compact_warnings(g, 200, view.detail)
        if warns:
            out += ["", "**Warnings**", ""] + [w.replace("  - ", "- ", 1) for w in warns]
        out.append("")
    out += report_footer(report, 100)
    return "\n".join(out) + "\n"
