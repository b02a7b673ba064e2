"""Rendering a ``Report``: plain (ASCII, <= 78 columns), Markdown, CSV, cover-letter lines.

Plain output is meant for terminals and kernel mailing lists, hence ASCII only ("+-",
"us") and the 78-column limit; long metric names wrap onto their own line rather than
widening the table.
"""

from __future__ import annotations

import csv
import io
import math
import re
import textwrap
from typing import Callable, Literal, Sequence

from kvmharness.compare.build import Comparison, MetricRow, Report
from kvmharness.compare.stats import Summary, summarize
from kvmharness.results.model import ResultFile, variant_text

Format = Literal["plain", "markdown", "csv", "cover-letter"]
FORMATS: tuple[str, ...] = ("plain", "markdown", "csv", "cover-letter")
WIDTH = 78
GAP = "  "


def ascii_text(text: str) -> str:
    """Micro signs become 'u'; anything else non-ASCII becomes '?'."""
    text = text.replace("\u00b5", "u").replace("\u03bc", "u").replace("\u00b1", "+-")
    return text.encode("ascii", "replace").decode("ascii")


def num(x: float | None, digits: int = 4) -> str:
    """``digits`` significant digits without exponent for everyday magnitudes."""
    if x is None or not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= digits - 1:
        return f"{x:.0f}"
    if mag < -4:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits - 1 - mag}f}"


def pct(x: float | None, signed: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x * 100:+.1f}%" if signed else f"{x * 100:.1f}%"


def p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def change_text(row: MetricRow) -> str:
    if row.test is None:
        return "-"  # a side without values: no verdict at all, not "no change"
    return pct(row.change.ratio) if row.significant else "~"


def change_ci_text(row: MetricRow, sep: str = "..") -> str:
    if row.change.ci_low is None or row.change.ci_high is None:
        return "-"
    return f"{pct(row.change.ci_low)}{sep}{pct(row.change.ci_high)}"


def median_with_ci(s: Summary) -> str:
    return "-" if s.median is None else f"{num(s.median)} {median_ci_text(s)}"


def median_ci_text(s: Summary) -> str:
    if s.ci_low is None:
        return "-"
    return f"[{num(s.ci_low)}, {num(s.ci_high)}]"


def n_text(row: MetricRow) -> str:
    return f"{row.a.n}/{row.b.n}"


def metric_label(row: MetricRow) -> str:
    return f"{row.metric} [{row.unit}]" if row.unit else row.metric


def title(c: Comparison) -> str:
    return f"{c.scenario} ({c.context}): A = {c.a.name}, B = {c.b.name}"


def side_line(tag: str, side_name: str, n_ok: int, sources: Sequence[str]) -> str:
    files = ", ".join(s for s in sources if s)
    return f"{tag}: {side_name}, {n_ok} runs" + (f" ({files})" if files else "")


def rule_text(report: Report) -> str:
    s = report.settings
    expected = s.alpha * report.tests
    return (
        f"Significant: p < {s.alpha:g} (Mann-Whitney U, two-sided), the "
        f"{s.confidence * 100:g}% bootstrap CI of the change excludes 0, and "
        f"|change| >= {s.min_change * 100:g}%; '~' otherwise. Values are medians of "
        f"per-run medians; change = B/A - 1. With {report.tests} tests, about "
        f"{expected:.2g} would be flagged by chance alone (alpha x tests) if nothing changed."
    )


# --- plain -----------------------------------------------------------------------------


def grid(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool],
         width: int = WIDTH, shrink: int = 0) -> list[str]:
    """Columns sized to content.  If the table is wider than ``width``, column ``shrink``
    narrows (its over-long cells move to lines of their own above the row), then the gaps
    between columns narrow to one space."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    gap = GAP
    excess = sum(widths) + len(gap) * (len(widths) - 1) - width
    if excess > 0:
        widths[shrink] = max(len(headers[shrink]), widths[shrink] - excess)
        if sum(widths) + len(gap) * (len(widths) - 1) > width:
            gap = " "
    offset = sum(widths[:shrink]) + len(gap) * shrink

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w)
                 for c, w, r in zip(cells, widths, right, strict=True)]
        return gap.join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    room = max(width - offset, 1)
    for r in rows:
        if len(r[shrink]) > widths[shrink]:
            cell = r[shrink]
            out += [" " * offset + cell[i:i + room] for i in range(0, len(cell), room)]
            r = [*r[:shrink], "", *r[shrink + 1:]]
        out.append(line(r))
    return out


def _wrapped(items: Sequence[str], indent: str = "  - ") -> list[str]:
    out = []
    for item in items:
        out += textwrap.wrap(item, WIDTH, initial_indent=indent,
                             subsequent_indent=" " * len(indent),
                             break_long_words=True, break_on_hyphens=False)
    return out


def _fit(line: str, indent: str = "    ") -> list[str]:
    """One line if it fits in WIDTH, else wrapped (long words broken only when they must)."""
    if len(line) <= WIDTH:
        return [line]
    return textwrap.wrap(line, WIDTH, subsequent_indent=indent, break_long_words=True,
                         break_on_hyphens=False)


def plain_side_lines(tag: str, side_name: str, n_ok: int, sources: Sequence[str]) -> list[str]:
    """``side_line`` within WIDTH: when the file list does not fit, one file per line."""
    line = side_line(tag, side_name, n_ok, sources)
    files = [s for s in sources if s]
    if len(line) <= WIDTH or not files:
        return _fit(line)
    out = _fit(f"{tag}: {side_name}, {n_ok} runs, from:")
    for f in files:  # a path's continuation lines indented further than its first
        out += [("    " if i == 0 else "      ") + piece
                for i, piece in enumerate(_split_path(f, WIDTH - 6))]
    return out


def _split_path(path: str, room: int) -> list[str]:
    """``path`` in pieces of at most ``room`` characters, cut after a '/' where possible."""
    pieces: list[str] = []
    current = ""
    for part in re.findall(r"[^/]*/|[^/]+$", path):
        if current and len(current) + len(part) > room:
            pieces.append(current)
            current = ""
        current += part
        while len(current) > room:
            pieces.append(current[:room])
            current = current[room:]
    if current:
        pieces.append(current)
    return pieces


def plain_comparison(c: Comparison) -> list[str]:
    out = [*_fit(title(c)),
           *plain_side_lines("A", c.a.name, len(c.a.ok_runs), [f.source for f in c.a.files]),
           *plain_side_lines("B", c.b.name, len(c.b.ok_runs), [f.source for f in c.b.files])]
    if c.differences:
        out.append(f"A and B also differ in ({len(c.differences)}; check they are intended):")
        out += _wrapped(c.differences)
    out.append("")
    main = [[metric_label(r), r.direction, num(r.a.median), num(r.b.median),
             change_text(r), change_ci_text(r), p_text(r.p), n_text(r)] for r in c.rows]
    out += grid(["metric [unit]", "better", "A", "B", "change", "95% CI", "p", "n"], main,
                [False, False, True, True, True, False, True, True])
    out.append("")
    detail = []
    for r in c.rows:
        for tag, s in (("A", r.a), ("B", r.b)):
            detail.append([metric_label(r) if tag == "A" else "", tag, num(s.median),
                           median_ci_text(s), num(s.mean), num(s.stdev),
                           pct(s.cov, signed=False), str(s.n)])
    out += grid(["per side", "", "median", "95% CI of median", "mean", "stdev", "CoV", "n"],
                detail, [False, False, True, False, True, True, True, True])
    if any(s.ci_level is not None and s.ci_level < 0.95 - 1e-9
           for r in c.rows for s in (r.a, r.b)):
        out.append("(with n < 6 the CI of a median is the full range; its coverage is "
                   "below 95%)")
    if c.warnings:
        out += ["", "Warnings:"] + _wrapped(c.warnings)
    return out


def format_plain(report: Report) -> str:
    out: list[str] = []
    for c in report.comparisons:
        out += plain_comparison(c) + [""]
    out += textwrap.wrap(rule_text(report), WIDTH)
    return ascii_text("\n".join(out)) + "\n"


# --- markdown --------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
              right: Sequence[bool]) -> list[str]:
    out = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
           "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return out


def format_markdown(report: Report) -> str:
    out: list[str] = []
    for c in report.comparisons:
        out += [f"### {_md_escape(title(c))}", "",
                "- " + side_line("A", c.a.name, len(c.a.ok_runs), [f.source for f in c.a.files]),
                "- " + side_line("B", c.b.name, len(c.b.ok_runs), [f.source for f in c.b.files]),
                ""]
        if c.differences:
            out += ["**A and B also differ in** (check they are intended):", ""]
            out += [f"- `{d}`" for d in c.differences] + [""]
        rows = [[r.metric, r.unit, r.direction,
                 median_with_ci(r.a), median_with_ci(r.b), change_text(r),
                 "-" if r.change.ci_low is None else f"[{change_ci_text(r, ', ')}]",
                 p_text(r.p), n_text(r),
                 f"{pct(r.a.cov, False)} / {pct(r.b.cov, False)}"] for r in c.rows]
        out += _md_table(["metric", "unit", "better", "A median [95% CI]",
                          "B median [95% CI]", "change", "95% CI of change", "p", "n",
                          "CoV A / B"], rows,
                         [False, False, False, True, True, True, True, True, True, True])
        if c.warnings:
            out += ["", "**Warnings**", ""] + [f"- {w}" for w in c.warnings]
        out.append("")
    out.append(f"_{rule_text(report)}_")
    return "\n".join(out) + "\n"


# --- csv -------------------------------------------------------------------------------

CSV_FIELDS = (
    "scenario", "axis", "context", "a", "b", "metric", "unit", "direction",
    "a_n", "a_median", "a_ci_low", "a_ci_high", "a_mean", "a_stdev", "a_cov",
    "b_n", "b_median", "b_ci_low", "b_ci_high", "b_mean", "b_stdev", "b_cov",
    "change", "change_ci_low", "change_ci_high", "u", "p", "test", "significant",
)


def _csv_num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _csv_side(s: Summary) -> list[object]:
    return [s.n, _csv_num(s.median), _csv_num(s.ci_low), _csv_num(s.ci_high),
            _csv_num(s.mean), _csv_num(s.stdev), _csv_num(s.cov)]


def format_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for c in report.comparisons:
        for r in c.rows:
            w.writerow([c.scenario, c.axis, c.context, c.a.name, c.b.name, r.metric, r.unit,
                        r.direction, *_csv_side(r.a), *_csv_side(r.b), _csv_num(r.change.ratio),
                        _csv_num(r.change.ci_low), _csv_num(r.change.ci_high),
                        _csv_num(r.test.u if r.test else None), _csv_num(r.p),
                        r.test.method if r.test else "", int(r.significant)])
    return buf.getvalue()


# --- cover letter ----------------------------------------------------------------------


def cover_line(c: Comparison, r: MetricRow) -> str:
    unit = f" {r.unit}" if r.unit else ""

    def value(s: Summary) -> str:
        return "no runs" if s.median is None else f"{num(s.median, 5)}{unit}"

    if r.p is None:
        verdict = "not compared"
    else:
        p = "p<0.001" if r.p < 0.001 else f"p={p_text(r.p)}"
        verdict = f"{change_text(r)}, {p}"
    return (f"{c.scenario} {r.metric}: Before: {value(r.a)}, After: {value(r.b)} "
            f"({verdict}, n={n_text(r)})")


def format_cover_letter(report: Report) -> str:
    out: list[str] = []
    for c in report.comparisons:
        out.append(f"{c.scenario} ({c.context}): Before = {c.a.name}, After = {c.b.name}")
        out += [cover_line(c, r) for r in c.rows]
        out.append("")
    s = report.settings
    out.append(f"(medians of per-run medians; ~ = no significant change: p >= {s.alpha:g}, "
               f"CI of the change includes 0, or |change| < {s.min_change * 100:g}%)")
    return ascii_text("\n".join(out)) + "\n"


FORMATTERS: dict[str, Callable[[Report], str]] = {
    "plain": format_plain,
    "markdown": format_markdown,
    "csv": format_csv,
    "cover-letter": format_cover_letter,
}


def format_report(report: Report, fmt: str = "plain") -> str:
    try:
        return FORMATTERS[fmt](report)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})") from None


# --- after `run` -----------------------------------------------------------------------


def format_run_summary(result: ResultFile, confidence: float = 0.95) -> str:
    """Per variant and metric: median of run values with its CI, CoV and n (no test)."""
    rows = []
    metrics = [(m["name"], m["unit"]) for m in result.scenario.get("metrics", [])]
    declared = {name for name, _ in metrics}
    for r in result.runs:
        for name, samples in r.samples.items():
            if name not in declared:
                declared.add(name)
                metrics.append((name, samples.unit))
    for v in result.variants:
        runs = result.ok_runs(v)
        for i, (name, unit) in enumerate(metrics):
            s = summarize([x for r in runs if (x := r.value(name)) is not None], confidence)
            rows.append([variant_text(v) if i == 0 else "",
                         f"{name} [{unit}]" if unit else name, num(s.median),
                         median_ci_text(s), pct(s.cov, signed=False), str(s.n)])
    lines = grid(["variant", "metric [unit]", "median", "95% CI of median", "CoV", "n"],
                 rows, [False, False, True, False, True, True], shrink=1)
    return ascii_text("\n".join(lines)) + "\n"
