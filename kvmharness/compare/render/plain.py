"""Plain text for terminals and mailing lists: ASCII only, 75 columns (checkpatch's
limit), rows never wrapped.  One section per scenario with the headline metrics, the zap
path each side took, and a footnote with the test.  Parametrized metrics (``op@size``) pivot
into grids; three or more sides put the baseline first and one column of changes per other
side."""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Sequence

from kvmharness.compare import warnings as warn
from kvmharness.compare.build import (
    CORRECTION,
    MetricRow,
    Report,
)
from kvmharness.compare.render.model import (
    DEFAULT_VIEW,
    Group,
    View,
    groups,
    metric_names,
    outlier_values,
    pivot_key,
    row_of,
    runs_text,
    why_no_runs,
)
from kvmharness.compare.render.setup import report_header, uncounted_line
from kvmharness.compare.render.text import (
    TAGS,
    WIDTH,
    ascii_text,
    change_cell,
    change_ci_text,
    change_text,
    ci_header,
    ci_level_note,
    fit,
    grid,
    median_ci_text,
    metric_label,
    n_text,
    num,
    p_text,
    pct,
    verdict,
    wrapped,
)
from kvmharness.compare.stats import Summary


def plain_table(g: Group, names: Sequence[str], view: View, width: int) -> list[str]:
    rows_by = [{m: row_of(c, m) for m in names} for c in g.comparisons]
    units: dict[str, MetricRow] = {}
    for rb in rows_by:
        for m, r in rb.items():
            if r is not None:
                units.setdefault(m, r)
    if len(g.comparisons) == 1:
        rb = rows_by[0]
        body = []
        for m in names:
            r = rb[m]
            if r is None:
                continue
            cells = [metric_label(r), num(r.a.median), num(r.b.median), change_text(r),
                     verdict(r), p_text(r.p_adj), n_text(r)]
            if view.detail:
                cells.insert(5, change_ci_text(r))
            body.append(cells)
        headers = ["metric [unit]", "A", "B", "change", "", "p", "n"]
        right = [False, True, True, True, False, True, True]
        if view.detail:
            headers.insert(5, "95% CI")
            right.insert(5, False)
        if not any(cells[4] for cells in body):  # nothing significant: no verdict column
            body = [cells[:4] + cells[5:] for cells in body]
            headers, right = headers[:4] + headers[5:], right[:4] + right[5:]
        return grid(headers, body, right, width)
    # Three or more sides: A's value, then per other side its value and change.
    out: list[str] = []
    per_chunk = max(1, (width - 30) // 20)
    for start in range(0, len(g.comparisons), per_chunk):
        chunk = list(range(start, min(start + per_chunk, len(g.comparisons))))
        headers = ["metric [unit]", "A"]
        for i in chunk:
            headers += [TAGS[i + 1], "change"]
        body = []
        for m in names:
            base = units[m]
            cells = [metric_label(base), num(base.a.median)]
            for i in chunk:
                r = rows_by[i][m]
                cells += [num(r.b.median) if r else "-", change_cell(r)]
            body.append(cells)
        if out:
            out.append("")
        out += grid(headers, body, [False] + [True] * (len(headers) - 1), width)
    return out


def pivot_tables(g: Group, names: Sequence[str], width: int) -> list[str]:
    """Rows = family (operation, kind), columns = size; each family a line per side:
    A's median, then every other side's median with its change."""
    keys = {m: pivot_key(g.scenario, m) for m in names}
    families = list(dict.fromkeys(k[0] for k in keys.values() if k))
    columns = list(dict.fromkeys(k[1] for k in keys.values() if k))
    cell_of: dict[tuple[str, str], str] = {k: m for m, k in keys.items() if k}
    labels: dict[str, str] = {}
    for fam in families:
        unit = next((r.unit for c in g.comparisons for r in c.rows
                     if (keys.get(r.metric) or ("", ""))[0] == fam and r.unit), "")
        # A grid whose columns are units (mmio: cycles, ns) names no unit per row.
        by_unit = not any("@" in m for m in keys)
        labels[fam] = f"{fam} [{unit}]" if unit and not by_unit else fam

    def raw(fam: str, col: str) -> list[tuple[str, str]]:
        """(value, change) per side; A has no change."""
        metric = cell_of.get((fam, col))
        rows = [row_of(c, metric) if metric else None for c in g.comparisons]
        first = next((r for r in rows if r is not None), None)
        out = [(num(first.a.median) if first else "-", "")]
        out += [("-", "") if r is None else (num(r.b.median), change_cell(r)) for r in rows]
        return out

    change_w = {col: max(len(ch) for fam in families for _, ch in raw(fam, col))
                for col in columns}

    def cells(fam: str, col: str) -> list[str]:
        w = change_w[col]
        return [f"{v} {ch:<{w}}" if w else v for v, ch in raw(fam, col)]

    label_w = max(len(v) for v in labels.values()) if labels else 6
    # Column width: the widest cell of that column over every family and side.
    col_w = {col: max([len(col), *(len(x) for fam in families for x in cells(fam, col))])
             for col in columns}
    out: list[str] = []
    # Two spaces between columns, one if that keeps every size in one grid.
    def total(sep: int) -> int:
        return label_w + 3 + sum(sep + col_w[c] for c in columns) - sep

    gap = " " if total(2) > width >= total(1) else "  "
    chunk: list[str] = []
    chunks: list[list[str]] = []
    used = label_w + 3 - len(gap)
    for col in columns:
        if chunk and used + len(gap) + col_w[col] > width:
            chunks.append(chunk)
            chunk, used = [], label_w + 3 - len(gap)
        chunk.append(col)
        used += len(gap) + col_w[col]
    if chunk:
        chunks.append(chunk)
    for cols in chunks:
        if out:
            out.append("")
        head = " " * (label_w + 3) + gap.join(c.rjust(col_w[c]) for c in cols)
        out += [head.rstrip(), "-" * len(head.rstrip())]
        for fam in families:
            per_col = {c: cells(fam, c) for c in cols}
            for i, _side in enumerate(g.sides):
                name = labels[fam] if i == 0 else ""
                line = (f"{name:<{label_w}} {TAGS[i]} "
                        + gap.join(per_col[c][i].rjust(col_w[c]) for c in cols))
                out.append(line.rstrip())
    return out


def zap_line(g: Group, width: int) -> list[str]:
    zaps = [g.comparisons[0].zap[0], *(c.zap[1] for c in g.comparisons)]
    if not any(zaps):
        return []
    parts = [f"{TAGS[i]} {z.text(long=(i == 0)) if z else '-'}" for i, z in enumerate(zaps)]
    return fit("zap path: " + ", ".join(parts), width, "  ")


def compact_warnings(g: Group, width: int, detail: bool = False) -> list[str]:
    """Run problems and noise, each kind on one line rather than one line per metric."""
    out: list[str] = []
    seen: set[str] = set()
    for i, side in enumerate(g.sides):
        tag = TAGS[i]
        for w in (*warn.file_status_warnings(tag, side.files),
                  *warn.run_record_warnings(tag, side.runs)):
            if w not in seen:
                seen.add(w)
                out.append(w)
    noisy: list[str] = []
    outliers: list[str] = []
    names = metric_names(g)
    for i, side in enumerate(g.sides):
        covs: list[tuple[float, str]] = []
        flagged: list[str] = []
        for m in names:
            rows = [r for c in g.comparisons if (r := row_of(c, m))]
            if not rows:
                continue
            s = rows[0].a if i == 0 else (row_of(g.comparisons[i - 1], m) or rows[0]).b
            if s.cov is not None and s.cov >= warn.COV_LIMIT:
                covs.append((s.cov, m))
            values = [v for r in side.ok_runs if (v := r.value(m)) is not None]
            if outlier_values(values):
                flagged.append(m)
        if covs:
            worst = max(covs)
            noisy.append(f"{TAGS[i]} {', '.join(m for _, m in covs)}" if len(covs) <= 3 else
                         f"{TAGS[i]} {len(covs)} of {len(names)} metrics (max "
                         f"{worst[0] * 100:.0f}%, {worst[1]})")
        if flagged:
            outliers.append(f"{TAGS[i]} {', '.join(flagged)}" if len(flagged) <= 3 else
                            f"{TAGS[i]} in {len(flagged)} metrics")
    if noisy:
        out.append(f"noisy (CoV >= {warn.COV_LIMIT * 100:.0f}%): " + "; ".join(noisy))
    if outliers:
        hint = "" if detail else " (--detail shows the spread)"
        out.append(f"outlier runs{hint}: " + "; ".join(outliers))
    for c in g.comparisons:
        out.extend(warn.frequency_between_sides(c.a.ok_runs, c.b.ok_runs))
    return [x for w in out for x in wrapped([w], width, "  - ")]


def detail_lines(g: Group, names: Sequence[str], width: int,
                 confidence: float = 0.95) -> list[str]:
    detail = []
    summaries: list[Summary] = []
    for m in names:
        rows = [r for c in g.comparisons if (r := row_of(c, m))]
        if not rows:
            continue
        sums = [rows[0].a, *((row_of(c, m) or rows[0]).b for c in g.comparisons)]
        summaries += sums
        for i, s in enumerate(sums):
            detail.append([m if i == 0 else "", TAGS[i], num(s.median), median_ci_text(s),
                           num(s.mean), num(s.stdev), pct(s.cov, signed=False), str(s.n)])
    out = grid(["per side", "", "median", ci_header(summaries, confidence, "CI of median"),
                "mean", "stdev", "CoV", "n"],
               detail, [False, False, True, False, True, True, True, True], width)
    note = ci_level_note(summaries, confidence)
    return out + (fit(note, width, "  ") if note else [])


def group_lines(g: Group, view: View, width: int = WIDTH,
                confidence: float = 0.95) -> list[str]:
    out = fit(f"{g.title()}; {runs_text(g)}", width, "  ")
    empty = [i for i, s in enumerate(g.sides) if not s.ok_runs]
    for i in empty:
        out += fit(f"  {TAGS[i]} has no completed runs ({why_no_runs(g.sides[i])}): "
                    "not compared", width, "    ")
    if 0 in empty or len(empty) == len(g.sides) - 1:
        return out
    if empty:  # the other sides are still compared with A
        g = dataclasses.replace(g, comparisons=tuple(c for c in g.comparisons if c.b.ok_runs))
    names = metric_names(g)
    flat = [m for m in names if pivot_key(g.scenario, m) is None]
    pivot = [m for m in names if pivot_key(g.scenario, m) is not None]
    out.append("")
    if flat:
        out += plain_table(g, flat, view, width)
    if pivot:
        if flat:
            out.append("")
        out += pivot_tables(g, pivot, width)
    if not names:
        out.append("(no metric has values on both sides)")
    out += zap_line(g, width)
    if view.detail and names:
        out += [""] + detail_lines(g, names, width, confidence)
    warns = compact_warnings(g, width, view.detail)
    if warns:
        out += ["Warnings:"] + warns
    return out


def rule_text(report: Report) -> str:
    s = report.settings
    marked = any(len(g.comparisons) > 1 or any(pivot_key(g.scenario, r.metric)
                                               for c in g.comparisons for r in c.rows)
                 for g in groups(report))
    marks = (" Grids and multi-side tables: every change against A, '*' better, '!' worse "
             "if significant, no mark: not significant." if marked else "")
    if any(r.untestable for c in report.comparisons for r in c.rows):
        marks += (" 'untested' ('?' in grids): too few runs per side for any p below "
                  f"{s.alpha:g} in the family (see the note), not 'no change'.")
    two_side = any(len(g.comparisons) == 1 and any(pivot_key(g.scenario, r.metric) is None
                                                   for r in g.comparisons[0].rows)
                   for g in groups(report))
    shown = ((" ('~' in two-side tables: not significant)" if marked
              else " ('~': not significant)") if two_side else "")
    multi = any(len(g.comparisons) > 1 for g in groups(report))
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
    for g in groups(report):
        out.append("")
        if g.scenario != scenario and len({c.scenario for c in report.comparisons}) > 1:
            out += [f"== {g.scenario} ==", ""]
        scenario = g.scenario
        out += group_lines(g, view, confidence=report.settings.confidence)
    out.append("")
    out += report_footer(report)
    return ascii_text("\n".join(out)) + "\n"
