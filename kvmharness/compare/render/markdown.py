"""Markdown: the plain report's content with pipe tables."""

from __future__ import annotations

from collections.abc import Sequence

from tabulate import tabulate

from kvmharness.compare.build import MetricRow, Report
from kvmharness.compare.render.model import (
    DEFAULT_VIEW,
    Section,
    View,
    runs_text,
    sections,
    why_no_runs,
)
from kvmharness.compare.render.plain import compact_warnings, pivot_lines, report_footer, zap_line
from kvmharness.compare.render.setup import report_header
from kvmharness.compare.render.text import (
    TAGS,
    UNTESTED,
    boot_spread_lines,
    change_cell,
    change_ci_text,
    change_text,
    ci_header,
    ci_level_note,
    median_with_ci,
    metric_name,
    n_header,
    n_text,
    p_text,
    verdict,
)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
              right: Sequence[bool]) -> list[str]:
    text = tabulate([[_md_escape(c) for c in row] for row in rows],
                    [_md_escape(h) for h in headers], tablefmt="pipe", disable_numparse=True,
                    colalign=["right" if r else "left" for r in right])
    return text.splitlines()


def _flat_table(sec: Section, confidence: float) -> list[str]:
    """A line per metric and other side: both medians with their CIs, the change, its CI,
    the adjusted p and the run counts."""
    multi = len(sec.shown.comparisons) > 1
    rows = _flat_rows(sec, multi)
    shown = [r for t in sec.rows for r in t.per_side if r is not None]
    summaries = [s for r in shown for s in (r.a, r.b)]
    ci = ci_header(summaries, confidence)
    headers = ["metric", "unit", "better", f"A median [{ci}]",
               f"B median [{ci}]" if not multi else f"median [{ci}]", "change",
               f"{confidence * 100:g}% CI of change", "p (adj.)", n_header(shown)]
    right = [False, False, False, True, True, True, True, True, True]
    if multi:
        headers, right = headers + ["side"], right + [False]
    out = _md_table(headers, rows, right)
    spread = boot_spread_lines(shown, 10_000)
    out += [""] + [line.strip() + "  " for line in spread] if spread else []
    note = ci_level_note(summaries, confidence)
    return out + (["", f"{note}."] if note else []) + [""]


def _flat_rows(sec: Section, multi: bool) -> list[list[str]]:
    rows = []
    for t in sec.rows:
        for i, r in enumerate(t.per_side):
            if r is None:
                continue
            cells = [metric_name(r) if i == 0 else "", r.unit, r.direction,
                     median_with_ci(r.a), median_with_ci(r.b),
                     change_cell(r) if multi else _flat_change(r),
                     "-" if r.change.ci_low is None else f"[{change_ci_text(r, ', ')}]",
                     p_text(r.p_adj), n_text(r)]
            rows.append(cells + [TAGS[i + 1]] if multi else cells)
    return rows


def _flat_change(r: MetricRow) -> str:
    """The two-side change, or the change and 'untested' when the runs could not test it
    (no verdict column here to say so)."""
    text = change_text(r)
    return f"{text} untested" if verdict(r) == UNTESTED else text


def _section(sec: Section, view: View, confidence: float) -> list[str]:
    g = sec.group
    out = [f"### {_md_escape(g.title())}", "", runs_text(g).capitalize() + ".", ""]
    if sec.empty:
        return out + [f"No completed runs on {TAGS[i]}: {why_no_runs(g.sides[i])}"
                      for i in sec.empty] + ["", ""]
    if sec.rows:
        out += _flat_table(sec, confidence)
    if sec.grid_rows:
        # The grid stays preformatted: its cells pair a value with its change, aligned.
        out += ["```", *pivot_lines(sec, 100), "```", ""]
    out += zap_line(g, 200)
    warns = compact_warnings(sec, 200, view.detail)
    if warns:
        out += ["", "**Warnings**", ""] + [w.replace("  - ", "- ", 1) for w in warns]
    return out + [""]


def format_markdown(report: Report, view: View = DEFAULT_VIEW) -> str:
    """The plain report's content with Markdown tables (the header and the grids are
    preformatted text: they are already aligned for a fixed-width font)."""
    scenarios = ", ".join(dict.fromkeys(c.scenario for c in report.comparisons))
    out = [f"## kvmharness compare: {scenarios}", "", "```", *report_header(report, view),
           "```", ""]
    for sec in sections(report):
        out += _section(sec, view, report.settings.confidence)
    out += report_footer(report, 100)
    return "\n".join(out) + "\n"
