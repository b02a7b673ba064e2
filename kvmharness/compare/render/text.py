"""Cell text and line layout shared by every format: numbers, percentages, CIs, the
ASCII-only rule, and fitting lines into a width."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence

from tabulate import DataRow, TableFormat, tabulate

from kvmharness.compare.build import (
    EXPLORATORY_MARK,
    BootSpread,
    MetricRow,
)
from kvmharness.compare.stats import Summary, median_ci_ranks

WIDTH = 75


COVER_WIDTH = 72


GAP = "  "


TAGS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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
    if mag >= 9 or mag < -4:
        return f"{x:.{digits - 1}e}"
    if mag >= digits - 1:
        return f"{x:.0f}"
    return f"{x:.{digits - 1 - mag}f}"


def pct(x: float | None, signed: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if abs(x) >= 100:  # 100x: a ratio reads better than +9900.0%
        return f"{x + 1:.0f}x"
    return f"{x * 100:+.1f}%" if signed else f"{x * 100:.1f}%"


def p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


UNTESTED = "untested"  # the verdict of a row whose runs per side cannot reach alpha


def change_text(row: MetricRow) -> str:
    if row.test is None:
        return "-"  # a side without values: no verdict at all, not "no change"
    if row.untestable and row.change.ratio is not None:
        return pct(row.change.ratio)  # too few runs to test: the change, never "~"
    return pct(row.change.ratio) if row.significant else "~"


def verdict(row: MetricRow) -> str:
    if row.untestable and not row.significant and row.change.ratio is not None:
        return UNTESTED
    if not row.significant or row.change.ratio is None:
        return ""
    worse = row.change.ratio > 0 if row.direction == "lower" else row.change.ratio < 0
    return "worse" if worse else "better"


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


def _level(x: float) -> str:
    return f"{x * 100:.4g}%"


def ci_header(summaries: Sequence[Summary], confidence: float, what: str = "CI") -> str:
    """``95% CI`` when every interval reaches ``confidence``, else ``CI`` (the levels
    achieved are in the ``ci_level_note`` under the table)."""
    short = any(s.ci_level is not None and s.ci_level < confidence for s in summaries)
    return what if short else f"{confidence * 100:g}% {what}"


def ci_level_note(summaries: Sequence[Summary], confidence: float) -> str | None:
    """With few runs the median's order-statistic interval cannot reach ``confidence``:
    its real coverage at each n shown (2 runs: min..max, 50%), and the n that would."""
    short = sorted({(s.n, s.ci_level) for s in summaries
                    if s.ci_level is not None and s.ci_level < confidence})
    if not short:
        return None
    parts = [f"{_level(level)} at n={n}" if level > 0 else f"none at n={n}"
             for n, level in short]
    need = short[-1][0] + 1
    while median_ci_ranks(need, confidence)[2] < confidence:
        need += 1
    return (f"CI level: {', '.join(parts)} (the most n allows; "
            f"{confidence * 100:g}% needs n >= {need})")


def n_text(row: MetricRow) -> str:
    """Runs per side; at the boot level runs/boots of each side (``6/2 6/2``)."""
    if row.boots is not None:
        return f"{row.a.n}/{row.boots[0]} {row.b.n}/{row.boots[1]}"
    return f"{row.a.n}/{row.b.n}"


def n_header(rows: Sequence[MetricRow]) -> str:
    return "runs/boots" if any(r.boots is not None for r in rows) else "n"


def spread_text(s: Summary) -> str:
    """The side's spread as benchstat prints it: the median's CI as +-% of the median
    (the larger half), '' when it cannot be said."""
    if s.median is None or s.ci_low is None or s.ci_high is None or s.median == 0:
        return ""
    half = max(s.ci_high - s.median, s.median - s.ci_low) / abs(s.median)
    return f"+-{half * 100:.0f}%" if half >= 0.01 else f"+-{half * 100:.1f}%"


def boot_spread_lines(rows: Sequence[MetricRow], width: int) -> list[str]:
    """Between- and within-boot spread of each boot-level row (Kalibera and Jones)."""
    boot_rows = [r for r in rows if r.spread is not None]
    if not boot_rows:
        return []

    def side(tag: str, s: BootSpread) -> str:
        b = "-" if s.between is None else f"{s.between * 100:.1f}%"
        w = "-" if s.within is None else f"{s.within * 100:.1f}%"
        return f"{tag} {b}/{w}"

    out = ["Tested on per-boot medians; spread (CoV) between boots / within a boot:"]
    for r in boot_rows:
        a, b = r.spread or (BootSpread(0, None, None),) * 2
        out += fit(f"  {r.metric}: {side('A', a)}, {side('B', b)}", width, "    ")
    return out


def metric_name(row: MetricRow) -> str:
    """The metric's name, marked when the row is exploratory (not a headline metric)."""
    return row.metric + (EXPLORATORY_MARK if row.exploratory else "")


def metric_label(row: MetricRow) -> str:
    return f"{metric_name(row)} [{row.unit}]" if row.unit else metric_name(row)


def change_cell(row: MetricRow | None) -> str:
    """A non-baseline cell's change against A (mmtests style): always the number, marked
    '*' (better) or '!' (worse) only when significant."""
    if row is None or row.test is None:
        return "-"
    if row.change.ratio is None:  # A's median is 0: no ratio, unless B's is 0 too
        return "+0.0%" if row.a.median == row.b.median == 0 else "-"
    mark = {"worse": "!", "better": "*", UNTESTED: "?"}.get(verdict(row), "")
    return pct(row.change.ratio) + mark


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
    room = max(width - offset, 1)
    above: dict[int, list[str]] = {}  # row index: the over-long cell, on lines of its own
    kept = []
    for i, r in enumerate(rows):
        if len(r[shrink]) > widths[shrink]:
            cell = r[shrink]
            above[i] = [" " * offset + cell[j:j + room] for j in range(0, len(cell), room)]
            r = [*r[:shrink], "", *r[shrink + 1:]]
        kept.append(r)
    lines = layout([headers, ["-" * w for w in widths], *kept], right, gap)
    out = lines[:2]
    for i, line in enumerate(lines[2:]):
        out += above.get(i, []) + [line]
    return out


def layout(rows: Sequence[Sequence[str]], right: Sequence[bool], gap: str = GAP) -> list[str]:
    """``rows`` aligned in columns ``gap`` apart by tabulate, trailing blanks dropped.  The
    header and its rule come in as rows: tabulate pads a header to its width + 2, which
    would widen every narrow column past what the 75-column tables can spare."""
    fmt = TableFormat(lineabove=None, linebelowheader=None, linebetweenrows=None,
                      linebelow=None, headerrow=DataRow("", gap, ""),
                      datarow=DataRow("", gap, ""), padding=0, with_header_hide=None)
    text = tabulate([list(r) for r in rows], tablefmt=fmt, disable_numparse=True,
                    colalign=["right" if r else "left" for r in right])
    return [line.rstrip() for line in text.splitlines()]


def wrapped(items: Sequence[str], width: int = WIDTH, indent: str = "  - ") -> list[str]:
    out = []
    for item in items:
        out += textwrap.wrap(item, width, initial_indent=indent,
                             subsequent_indent=" " * len(indent),
                             break_long_words=True, break_on_hyphens=False)
    return out


def fit(line: str, width: int = WIDTH, indent: str = "    ") -> list[str]:
    """One line if it fits in ``width``, else wrapped (long words broken only when they
    must)."""
    if len(line) <= width:
        return [line]
    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=True,
                         break_on_hyphens=False)


def split_path(path: str, room: int) -> list[str]:
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


def pack(first: str, items: Sequence[str], width: int, indent: str = "    ") -> list[str]:
    """``first`` then the items joined by ", ", broken between items; an item too long
    for a line of its own is cut after a '/' (``split_path``)."""
    lines: list[str] = []
    current = first
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        sep = "" if current.endswith(" ") or (current == first and not first) else " "
        if len(current) + len(sep) + len(piece) <= width:
            current += sep + piece
            continue
        if current.strip():
            lines.append(current.rstrip())
        current = indent
        for part in split_path(piece, width - len(indent)):
            if current.strip():
                lines.append(current)
                current = indent
            current += part
    if current.strip():
        lines.append(current)
    return lines


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."
