"""Plain text for terminals and mailing lists: ASCII only, 75 columns (checkpatch's
limit), rows never wrapped.  One section per scenario with the headline metrics, the zap
path each side took, and a footnote with the test.  Parametrized metrics (``op@size``) pivot
into grids; three or more sides put the baseline first and one column of changes per other
side."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from kvmharness.compare import warnings as warn
from kvmharness.compare.build import (
    CORRECTION,
    Report,
)
from kvmharness.compare.render.grids import grid_lines
from kvmharness.compare.render.model import (
    DEFAULT_VIEW,
    Group,
    Section,
    TableRow,
    View,
    groups,
    pivot_grid,
    pivot_key,
    runs_text,
    sections,
    why_no_runs,
)
from kvmharness.compare.render.setup import report_header, uncounted_line
from kvmharness.compare.render.text import (
    TAGS,
    WIDTH,
    ascii_text,
    boot_spread_lines,
    change_cell,
    change_ci_text,
    change_text,
    ci_header,
    ci_level_note,
    fit,
    grid,
    median_ci_text,
    metric_label,
    n_header,
    n_text,
    num,
    p_text,
    pct,
    spread_text,
    verdict,
    wrapped,
)
from kvmharness.compare.stats import Summary, robust_outliers


def plain_table(sec: Section, view: View, width: int) -> list[str]:
    if len(sec.shown.comparisons) == 1:
        return _two_side_table(sec.rows, view, width)
    return _multi_side_table(sec.rows, len(sec.shown.comparisons), width)


def _two_side_table(rows: Sequence[TableRow], view: View, width: int) -> list[str]:
    body = []
    for t in rows:
        r = t.base
        cells = [metric_label(r), num(r.a.median), spread_text(r.a), num(r.b.median),
                 spread_text(r.b), change_text(r), verdict(r), p_text(r.p_adj), n_text(r)]
        if view.detail:
            cells.insert(7, change_ci_text(r))
        body.append(cells)
    headers = ["metric [unit]", "A", "", "B", "", "change", "", "p",
               n_header([t.base for t in rows])]
    right = [False, True, False, True, False, True, False, True, True]
    if view.detail:
        headers.insert(7, "95% CI")
        right.insert(7, False)
    drop = set()
    if not any(cells[6] for cells in body):  # nothing significant: no verdict column
        drop.add(6)
    if view.detail:  # each side's CI is in the per-side table below instead
        drop |= {2, 4}
    keep = [i for i in range(len(headers)) if i not in drop]
    return grid([headers[i] for i in keep], [[cells[i] for i in keep] for cells in body],
                [right[i] for i in keep], width) + boot_spread_lines([t.base for t in rows],
                                                                     width)


def _multi_side_table(rows: Sequence[TableRow], sides: int, width: int) -> list[str]:
    """Three or more sides: A's value, then per other side its value and change."""
    out: list[str] = []
    per_chunk = max(1, (width - 30) // 20)
    for start in range(0, sides, per_chunk):
        chunk = range(start, min(start + per_chunk, sides))
        headers = ["metric [unit]", "A"]
        for i in chunk:
            headers += [TAGS[i + 1], "change"]
        body = []
        for t in rows:
            cells = [metric_label(t.base), num(t.base.a.median)]
            for i in chunk:
                r = t.per_side[i]
                cells += [num(r.b.median) if r else "-", change_cell(r)]
            body.append(cells)
        if out:
            out.append("")
        out += grid(headers, body, [False] + [True] * (len(headers) - 1), width)
    return out


def pivot_lines(sec: Section, width: int) -> list[str]:
    return grid_lines(pivot_grid(sec.group.scenario, sec.grid_rows,
                                 len(sec.shown.comparisons) + 1), width)


def zap_line(g: Group, width: int) -> list[str]:
    zaps = [g.comparisons[0].zap[0], *(c.zap[1] for c in g.comparisons)]
    if not any(zaps):
        return []
    parts = [f"{TAGS[i]} {z.text(long=(i == 0)) if z else '-'}" for i, z in enumerate(zaps)]
    return fit("zap path: " + ", ".join(parts), width, "  ")


def compact_warnings(sec: Section, width: int, detail: bool = False) -> list[str]:
    """Run problems and noise, each kind on one line rather than one line per metric."""
    g = sec.shown
    out: list[str] = []
    for i, side in enumerate(g.sides):
        out += [w for w in (*warn.file_status_warnings(TAGS[i], side.files),
                            *warn.run_record_warnings(TAGS[i], side.runs)) if w not in out]
    out += _noise_warnings(sec, detail)
    for c in g.comparisons:
        out.extend(warn.frequency_between_sides(c.a.ok_runs, c.b.ok_runs))
    return [x for w in out for x in wrapped([w], width, "  - ")]


def _noise_warnings(sec: Section, detail: bool) -> list[str]:
    """Per side: the metrics with CoV >= COV_LIMIT and those with outlier runs."""
    rows = sec.all_rows
    noisy: list[str] = []
    outliers: list[str] = []
    for i, side in enumerate(sec.shown.sides):
        covs = _high_covs(rows, i)
        flagged = [t.metric for t in rows if robust_outliers(
            [v for r in side.ok_runs if (v := r.value(t.metric)) is not None])]
        noisy += [_noisy_text(TAGS[i], covs, len(rows))] if covs else []
        outliers += [f"{TAGS[i]} {', '.join(flagged)}" if len(flagged) <= 3 else
                     f"{TAGS[i]} in {len(flagged)} metrics"] if flagged else []
    out = []
    if noisy:
        out.append(f"noisy (CoV >= {warn.COV_LIMIT * 100:.0f}%): " + "; ".join(noisy))
    if outliers:
        hint = "" if detail else " (--detail shows the spread)"
        out.append(f"outlier runs{hint}: " + "; ".join(outliers))
    return out


def _high_covs(rows: Sequence[TableRow], side: int) -> list[tuple[float, str]]:
    """(CoV, metric) of the metrics whose CoV on ``side`` reaches COV_LIMIT."""
    out = []
    for t in rows:
        s = t.summaries()[side]
        if s is not None and s.cov is not None and s.cov >= warn.COV_LIMIT:
            out.append((s.cov, t.metric))
    return out


def _noisy_text(tag: str, covs: Sequence[tuple[float, str]], of: int) -> str:
    if len(covs) <= 3:
        return f"{tag} {', '.join(m for _, m in covs)}"
    worst = max(covs)
    return f"{tag} {len(covs)} of {of} metrics (max {worst[0] * 100:.0f}%, {worst[1]})"


def detail_lines(rows: Sequence[TableRow], width: int,
                 confidence: float = 0.95) -> list[str]:
    detail = []
    summaries: list[Summary] = []
    for t in rows:
        for i, s in enumerate(t.summaries()):
            if s is None:
                continue
            summaries.append(s)
            detail.append([t.metric if i == 0 else "", TAGS[i], num(s.median),
                           median_ci_text(s), num(s.mean), num(s.stdev),
                           pct(s.cov, signed=False), str(s.n)])
    out = grid(["per side", "", "median", ci_header(summaries, confidence, "CI of median"),
                "mean", "stdev", "CoV", "n"],
               detail, [False, False, True, False, True, True, True, True], width)
    note = ci_level_note(summaries, confidence)
    return out + (fit(note, width, "  ") if note else [])


def group_lines(sec: Section, view: View, width: int = WIDTH,
                confidence: float = 0.95) -> list[str]:
    g = sec.group
    out = fit(f"{g.title()}; {runs_text(g)}", width, "  ")
    for i in sec.empty:
        out += fit(f"  {TAGS[i]} has no completed runs ({why_no_runs(g.sides[i])}): "
                   "not compared", width, "    ")
    if not sec.compared:
        return out
    out.append("")
    if sec.rows:
        out += plain_table(sec, view, width)
    if sec.grid_rows:
        out += [""] * bool(sec.rows) + pivot_lines(sec, width)
    if not sec.all_rows:
        out.append("(no metric has values on both sides)")
    out += zap_line(sec.shown, width)
    if view.detail and sec.all_rows:
        out += [""] + detail_lines(sec.all_rows, width, confidence)
    warns = compact_warnings(sec, width, view.detail)
    if warns:
        out += ["Warnings:"] + warns
    return out


def _table_kinds(report: Report) -> tuple[bool, bool, bool]:
    """(any grid or multi-side table, any two-side flat table, any multi-side table)."""
    gs = groups(report)
    pivoted = [any(pivot_key(g.scenario, r.metric) for c in g.comparisons for r in c.rows)
               for g in gs]
    multi = any(len(g.comparisons) > 1 for g in gs)
    two_side = any(len(g.comparisons) == 1 and any(pivot_key(g.scenario, r.metric) is None
                                                   for r in g.comparisons[0].rows)
                   for g in gs)
    return multi or any(pivoted), two_side, multi


def rule_text(report: Report) -> str:
    s = report.settings
    marked, two_side, multi = _table_kinds(report)
    marks = (" Grids and multi-side tables: every change against A, '*' better, '!' worse "
             "if significant, no mark: not significant." if marked else "")
    if any(r.untestable for c in report.comparisons for r in c.rows):
        marks += (" 'untested' ('?' in grids): too few runs per side for any p below "
                  f"{s.alpha:g} in the family (see the note), not 'no change'.")
    shown = ((" ('~' in two-side tables: not significant)" if marked
              else " ('~': not significant)") if two_side else "")
    change = "X/A - 1 for each side X" if multi else "B/A - 1"
    return (
        f"Values: medians of per-run medians; change = {change}{shown}. Significant: "
        f"Mann-Whitney U (two-sided) p < {s.alpha:g} (p: adjusted, "
        f"{report.family_text()}), {s.confidence * 100:g}% bootstrap "
        f"CI of the change excluding 0, |change| >= {s.min_change * 100:g}%." + marks
    )


def report_footer(report: Report, width: int = WIDTH) -> list[str]:
    out: list[str] = []
    out += uncounted_line(report, width)
    notes = warn.family_detectability(report.families(), report.settings.alpha, CORRECTION)
    out += [x for w in notes for x in textwrap.wrap(w, width, break_on_hyphens=False)]
    out += textwrap.wrap(rule_text(report), width, break_on_hyphens=False)
    return out


def format_plain(report: Report, view: View = DEFAULT_VIEW) -> str:
    out = report_header(report, view)
    scenario = None
    for sec in sections(report):
        out.append("")
        if sec.group.scenario != scenario and len({c.scenario for c in report.comparisons}) > 1:
            out += [f"== {sec.group.scenario} ==", ""]
        scenario = sec.group.scenario
        out += group_lines(sec, view, confidence=report.settings.confidence)
    out.append("")
    out += report_footer(report)
    return ascii_text("\n".join(out)) + "\n"
