"""Rendering a ``Report``: plain (ASCII, <= 75 columns), Markdown, CSV, cover letter (<= 72).

One report, one header: what was compared (per setup: kernel, backend, MMU mode, CPU,
runs, host noise) and how the setups differ, grouped and counted; then one section per
scenario with the headline metrics, the zap path each side took, and a footnote with the
test.  Parametrized metrics (``op@size``) pivot into grids; three or more sides put the
baseline first and one column of changes per other side.  Plain text is for terminals and
mailing lists: ASCII only, 75 columns (checkpatch's limit), rows never wrapped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import statistics
import textwrap
from collections.abc import Callable, Sequence
from typing import Literal

from kvmharness.compare import warnings as warn
from kvmharness.compare.build import (
    CORRECTION,
    Comparison,
    MetricRow,
    Report,
    Side,
    not_counted,
)
from kvmharness.compare.stats import Summary, median_ci_ranks, summarize
from kvmharness.results.model import ResultFile, RunRecord, variant_text
from kvmharness.scenarios.metrics import is_family

Format = Literal["plain", "markdown", "csv", "cover-letter"]
FORMATS: tuple[str, ...] = ("plain", "markdown", "csv", "cover-letter")
WIDTH = 75
COVER_WIDTH = 72
GAP = "  "
TAGS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclasses.dataclass(frozen=True)
class View:
    """What a rendering shows beyond the default."""

    detail: bool = False  # per-side statistics and the CI of each change
    show_setup: bool = False  # every setup difference, not the grouped counts


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


def change_text(row: MetricRow) -> str:
    if row.test is None:
        return "-"  # a side without values: no verdict at all, not "no change"
    return pct(row.change.ratio) if row.significant else "~"


def verdict(row: MetricRow) -> str:
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
    return f"{row.a.n}/{row.b.n}"


def metric_label(row: MetricRow) -> str:
    return f"{row.metric} [{row.unit}]" if row.unit else row.metric


def title(c: Comparison) -> str:
    return f"{c.scenario} ({c.context}): A = {c.a.name}, B = {c.b.name}"


# --- groups: one A, its B's ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Group:
    """Comparisons sharing scenario, context and A: one table, one column per B."""

    scenario: str
    context: str
    a: Side
    comparisons: tuple[Comparison, ...]

    @property
    def sides(self) -> list[Side]:
        return [self.a, *(c.b for c in self.comparisons)]

    def title(self) -> str:
        names = ", ".join(f"{TAGS[i]} = {s.name}" for i, s in enumerate(self.sides))
        context = f" ({self.context})" if self.context != "-" else ""
        return f"{self.scenario}{context}: {names}"


def runs_text(g: Group) -> str:
    """The completed runs per side, in one clause: ``6 runs each`` or ``runs A 6, B 5``
    (which files: once, in the report's header)."""
    ns = [len(s.ok_runs) for s in g.sides]
    if len(set(ns)) == 1:
        return f"{ns[0]} runs each"
    return "runs " + ", ".join(f"{TAGS[i]} {n}" for i, n in enumerate(ns))


def groups(report: Report) -> list[Group]:
    out: dict[tuple[str, str, str, int], list[Comparison]] = {}
    for c in report.comparisons:
        key = (c.scenario, c.context, c.a.name, id(c.a.files[0]) if c.a.files else 0)
        out.setdefault(key, []).append(c)
    return [Group(k[0], k[1], cs[0].a, tuple(cs)) for k, cs in out.items()]


def _metric_names(g: Group) -> list[str]:
    """Rows of the group's table, in headline order, each once."""
    names: dict[str, None] = {}
    order = {m: i for i, m in enumerate(g.comparisons[0].headline)}
    for c in g.comparisons:
        for r in c.rows:
            names.setdefault(r.metric)
    return sorted(names, key=lambda m: order.get(m, len(order)))


def _row_of(c: Comparison, metric: str) -> MetricRow | None:
    return next((r for r in c.rows if r.metric == metric), None)


# --- setups: the header -------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    name: str
    files: list[ResultFile]

    @property
    def env(self) -> dict[str, object]:
        return self.files[0].environment


def _setup_key(f: ResultFile) -> tuple[str, str, str]:
    k = f.environment.get("kernel", {})
    return (f.label, str(k.get("release", "")), str(k.get("version", "")))


def setups(report: Report) -> list[Setup]:
    seen: dict[tuple[str, str, str], Setup] = {}
    ids: set[int] = set()
    for c in report.comparisons:
        for side in (c.a, c.b):
            for f in side.files:
                if id(f) in ids:
                    continue
                ids.add(id(f))
                key = _setup_key(f)
                if key not in seen:
                    seen[key] = Setup(f.label, [])
                seen[key].files.append(f)
    out = list(seen.values())
    names = [s.name for s in out]
    for i, s in enumerate(out):
        if names.count(s.name) > 1:
            s.name = f"{s.name}#{names[:i + 1].count(s.name)}"
    return out


def backend_text(env: dict[str, object]) -> str:
    b = env.get("backend")
    if not isinstance(b, dict) or not b.get("kind"):
        return "backend unknown"
    text = str(b["kind"]).upper()
    return f"{text} (nested)" if b.get("nested") else text


MMU_NAMES = {"tdp_mmu": "TDP MMU", "legacy_tdp": "legacy TDP", "shadow": "shadow MMU",
             "unknown": "MMU unknown"}


def mmu_mode(env: dict[str, object]) -> str:
    """``kvm_mmu.mode`` when the file has it; else from the module parameters: ept/npt
    off is shadow paging, tdp_mmu says which TDP MMU; PVM always shadows."""
    recorded = env.get("kvm_mmu")
    if isinstance(recorded, dict) and recorded.get("mode"):
        return str(recorded["mode"])
    backend = env.get("backend")
    if isinstance(backend, dict) and str(backend.get("kind", "")).lower() == "pvm":
        return "shadow"
    mods = env.get("kvm_modules")
    if not isinstance(mods, dict):
        return "unknown"
    vendor = mods.get("kvm_intel") or mods.get("kvm_amd")
    tdp = None
    if isinstance(vendor, dict):
        tdp = vendor.get("ept", vendor.get("npt"))
    if tdp in ("N", "0"):
        return "shadow"
    tdp_mmu = mods.get("kvm", {}).get("tdp_mmu") if isinstance(mods.get("kvm"), dict) else None
    if tdp in ("Y", "1") and tdp_mmu is not None:
        return "tdp_mmu" if tdp_mmu in ("Y", "1") else "legacy_tdp"
    return "unknown"


def _noise(runs: Sequence[RunRecord]) -> str:
    def vals(key: str) -> list[float]:
        return [float(v) for r in runs if isinstance(v := r.noise.get(key), (int, float))
                and not isinstance(v, bool)]

    steal, busy = vals("steal_pct"), vals("others_busy_cpus")
    parts = []
    if steal:
        parts.append(f"steal {statistics.median(steal):.1f}% (max {max(steal):.1f}%)")
    if busy:
        parts.append(f"others busy {statistics.median(busy):.2f} CPUs "
                     f"(max {max(busy):.2f})")
    return "noise: " + ", ".join(parts) if parts else "noise: not recorded"


def setup_lines(s: Setup, width: int) -> list[str]:
    k = s.env.get("kernel", {})
    k = k if isinstance(k, dict) else {}
    cpu_model = _cpu_model(s.env)
    runs = [r for f in s.files for r in f.runs]
    ok = sum(1 for r in runs if r.status == "ok")
    other = len(runs) - ok
    runs_text = f"{ok} runs ok" + (f", {other} not" if other else "")
    mmu = MMU_NAMES.get(mmu_mode(s.env), mmu_mode(s.env))
    release = str(k.get("release", "kernel unknown"))
    name = "" if s.name == release else f"{s.name}: "
    first = f"{name}{release} {k.get('version', '')}".rstrip()
    out = [_cut(first, width)]
    out += _fit(f"  {backend_text(s.env)}, {mmu}, {cpu_model}, {runs_text}; "
                f"{_noise(runs)}", width, "    ")
    return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


_GROUPS = (("kvm.capabilities.", "capabilities"), ("kvm_modules.", "module parameters"),
           ("cpu.", "CPU"), ("memory.", "memory"), ("harness.", "harness"),
           ("tracefs.", "tracefs"), ("thp.", "THP"), ("cpufreq.", "cpufreq"),
           ("kvm.disable_quirks2_mask", "capabilities"), ("kernel.", "kernel"))


def group_differences(diffs: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(differences shown one by one, {group: keys}): quirks, parameters, MMU mode and
    backend matter one by one; capabilities and module parameters are counted."""
    single: list[str] = []
    counted: dict[str, list[str]] = {}
    for d in diffs:
        key = d.split(": ", 1)[0]
        for prefix, name in _GROUPS:
            if key.startswith(prefix):
                counted.setdefault(name, []).append(key[len(prefix):] or key)
                break
        else:
            single.append(d)
    return single, counted


def difference_lines(report: Report, sets: Sequence[Setup], view: View,
                     width: int) -> list[str]:
    out: list[str] = []
    if len(sets) < 2:
        return out
    for other in sets[1:]:
        diffs = warn.setup_differences(sets[0].files[0], other.files[0])
        if not diffs:
            continue
        head = f"Setup differences, {sets[0].name} -> {other.name} ({len(diffs)}"
        if view.show_setup:
            out += _fit(head + "):", width)
            out += _wrapped(diffs, width)
            continue
        out += _fit(head + "; all with --show-setup):", width)
        single, counted = group_differences(diffs)
        out += _wrapped(single, width)
        parts = []
        for name, keys in counted.items():
            if name == "kernel":
                parts.append("kernel " + ", ".join(keys))
            elif len(keys) <= 2:
                parts.append(f"{name} " + ", ".join(keys))
            else:
                parts.append(f"{name}: {len(keys)} differ")
        if parts:
            out += _fit("  - " + "; ".join(parts), width, "    ")
    return out


def uncounted_line(report: Report, width: int) -> list[str]:
    names: dict[str, None] = {}
    for c in report.comparisons:
        for m in c.uncounted:
            family, sep, _ = m.partition("@")
            names.setdefault(f"{family}@*" if sep else m)
    if not names:
        return []
    return _fit(uncounted_text(list(names)), width, "  ")


def uncounted_text(names: Sequence[str]) -> str:
    return "Not counted here (PVM counts none, all zero): " + ", ".join(names)


# --- plain ---------------------------------------------------------------------------------


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


def _wrapped(items: Sequence[str], width: int = WIDTH, indent: str = "  - ") -> list[str]:
    out = []
    for item in items:
        out += textwrap.wrap(item, width, initial_indent=indent,
                             subsequent_indent=" " * len(indent),
                             break_long_words=True, break_on_hyphens=False)
    return out


def _fit(line: str, width: int = WIDTH, indent: str = "    ") -> list[str]:
    """One line if it fits in ``width``, else wrapped (long words broken only when they
    must)."""
    if len(line) <= width:
        return [line]
    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=True,
                         break_on_hyphens=False)


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


def _why_no_runs(side: Side) -> str:
    reasons = list(dict.fromkeys(f"{r.status}: {r.reason}" for r in side.runs
                                 if r.status != "ok"))
    return "; ".join(reasons) if reasons else "no runs of this variant"


def pivot_key(scenario: str, metric: str) -> tuple[str, str] | None:
    """(row, column) for metrics that form a grid: ``op@size`` (slot-ops, teardown) and
    ``kind_cycles``/``kind_ns`` (mmio)."""
    family, sep, size = metric.partition("@")
    if sep:
        return family, size
    if scenario == "mmio":
        kind, _, unit = metric.rpartition("_")
        if kind and unit in ("cycles", "ns"):
            return kind, unit
    return None


def _cell(row: MetricRow | None) -> str:
    """A non-baseline cell's change against A (mmtests style): always the number, marked
    '*' (better) or '!' (worse) only when significant."""
    if row is None or row.test is None:
        return "-"
    if row.change.ratio is None:  # A's median is 0: no ratio, unless B's is 0 too
        return "+0.0%" if row.a.median == row.b.median == 0 else "-"
    mark = {"worse": "!", "better": "*"}.get(verdict(row), "")
    return pct(row.change.ratio) + mark


def plain_table(g: Group, names: Sequence[str], view: View, width: int) -> list[str]:
    rows_by = [{m: _row_of(c, m) for m in names} for c in g.comparisons]
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
                cells += [num(r.b.median) if r else "-", _cell(r)]
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
        rows = [_row_of(c, metric) if metric else None for c in g.comparisons]
        first = next((r for r in rows if r is not None), None)
        out = [(num(first.a.median) if first else "-", "")]
        out += [("-", "") if r is None else (num(r.b.median), _cell(r)) for r in rows]
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
    return _fit("zap path: " + ", ".join(parts), width, "  ")


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
    names = _metric_names(g)
    for i, side in enumerate(g.sides):
        covs: list[tuple[float, str]] = []
        flagged: list[str] = []
        for m in names:
            rows = [r for c in g.comparisons if (r := _row_of(c, m))]
            if not rows:
                continue
            s = rows[0].a if i == 0 else (_row_of(g.comparisons[i - 1], m) or rows[0]).b
            if s.cov is not None and s.cov >= warn.COV_LIMIT:
                covs.append((s.cov, m))
            values = [v for r in side.ok_runs if (v := r.value(m)) is not None]
            if _outliers(values):
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
    return [x for w in out for x in _wrapped([w], width, "  - ")]


def _outliers(values: Sequence[float]) -> list[float]:
    from kvmharness.compare.stats import robust_outliers
    return robust_outliers(values)


def detail_lines(g: Group, names: Sequence[str], width: int,
                 confidence: float = 0.95) -> list[str]:
    detail = []
    summaries: list[Summary] = []
    for m in names:
        rows = [r for c in g.comparisons if (r := _row_of(c, m))]
        if not rows:
            continue
        sums = [rows[0].a, *((_row_of(c, m) or rows[0]).b for c in g.comparisons)]
        summaries += sums
        for i, s in enumerate(sums):
            detail.append([m if i == 0 else "", TAGS[i], num(s.median), median_ci_text(s),
                           num(s.mean), num(s.stdev), pct(s.cov, signed=False), str(s.n)])
    out = grid(["per side", "", "median", ci_header(summaries, confidence, "CI of median"),
                "mean", "stdev", "CoV", "n"],
               detail, [False, False, True, False, True, True, True, True], width)
    note = ci_level_note(summaries, confidence)
    return out + (_fit(note, width, "  ") if note else [])


def group_lines(g: Group, view: View, width: int = WIDTH,
                confidence: float = 0.95) -> list[str]:
    out = _fit(f"{g.title()}; {runs_text(g)}", width, "  ")
    empty = [i for i, s in enumerate(g.sides) if not s.ok_runs]
    for i in empty:
        out += _fit(f"  {TAGS[i]} has no completed runs ({_why_no_runs(g.sides[i])}): "
                    "not compared", width, "    ")
    if 0 in empty or len(empty) == len(g.sides) - 1:
        return out
    if empty:  # the other sides are still compared with A
        g = dataclasses.replace(g, comparisons=tuple(c for c in g.comparisons if c.b.ok_runs))
    names = _metric_names(g)
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
    two_side = any(len(g.comparisons) == 1 and any(pivot_key(g.scenario, r.metric) is None
                                                   for r in g.comparisons[0].rows)
                   for g in groups(report))
    shown = ((" ('~' in two-side tables: not significant)" if marked
              else " ('~': not significant)") if two_side else "")
    multi = any(len(g.comparisons) > 1 for g in groups(report))
    change = "X/A - 1 for each side X" if multi else "B/A - 1"
    return (
        f"Values: medians of per-run medians; change = {change}{shown}. Significant: "
        f"Mann-Whitney U (two-sided) p < {s.alpha:g} after {CORRECTION}'s correction over "
        f"the report's {report.tests} tests (p: adjusted), {s.confidence * 100:g}% bootstrap "
        f"CI of the change excluding 0, |change| >= {s.min_change * 100:g}%." + marks
    )


def _pack(first: str, items: Sequence[str], width: int, indent: str = "    ") -> list[str]:
    """``first`` then the items joined by ", ", broken between items; an item too long
    for a line of its own is cut after a '/' (``_split_path``)."""
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
        for part in _split_path(piece, width - len(indent)):
            if current.strip():
                lines.append(current)
                current = indent
            current += part
    if current.strip():
        lines.append(current)
    return lines


FILE_LINES = 6  # a longer file list is one line unless --detail


def file_lines(sets: Sequence[Setup], width: int, detail: bool = False) -> list[str]:
    """Each setup's result files, once per report (tables name sides, not files); a list
    longer than FILE_LINES lines only with --detail, so that it does not outgrow the
    tables it is about."""
    named = [(s.name, list(dict.fromkeys(f.source for f in s.files if f.source)))
             for s in sets]
    named = [(name, files) for name, files in named if files]
    if not named:
        return []
    one_line = "Files: " + "; ".join(f"{name}: {', '.join(files)}" for name, files in named)
    if len(named) == 1:
        out = _pack("Files: ", named[0][1], width)
    elif len(one_line) <= width:
        out = [one_line]
    else:
        out = ["Files:"]
        for name, files in named:
            out += _pack(f"  {name}: ", files, width)
    if len(out) <= FILE_LINES or detail:
        return out
    count = sum(len(files) for _, files in named)
    return [f"Files: {count} (named with --detail)"]


def report_header(report: Report, view: View, width: int = WIDTH) -> list[str]:
    sets = setups(report)
    out = ["Setups compared:" if len(sets) > 1 else "Setup:"]
    for s in sets:
        out += setup_lines(s, width)
    out += file_lines(sets, width, view.detail)
    out += difference_lines(report, sets, view, width)
    for n in report.notes:
        out += _wrapped([n], width, "note: ")
    return out


def report_footer(report: Report, width: int = WIDTH) -> list[str]:
    out: list[str] = []
    out += uncounted_line(report, width)
    pairs = [(len(c.a.ok_runs), len(c.b.ok_runs)) for c in report.comparisons
             if any(r.test is not None for r in c.rows)]
    notes = warn.detectability(pairs, report.tests, report.settings.alpha, CORRECTION)
    out += [x for w in notes for x in textwrap.wrap(w, width, break_on_hyphens=False)]
    out += textwrap.wrap(rule_text(report), width, break_on_hyphens=False)
    return out


def format_plain(report: Report, view: View = View()) -> str:
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


# --- markdown ------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
              right: Sequence[bool]) -> list[str]:
    out = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
           "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return out


def format_markdown(report: Report, view: View = View()) -> str:
    """The plain report's content with Markdown tables (the header and the grids are
    preformatted text: they are already aligned for a fixed-width font)."""
    scenarios = ", ".join(dict.fromkeys(c.scenario for c in report.comparisons))
    out = [f"## kvmharness compare: {scenarios}", "", "```", *report_header(report, view),
           "```", ""]
    for g in groups(report):
        out += [f"### {_md_escape(g.title())}", "", runs_text(g).capitalize() + ".", ""]
        if any(not s.ok_runs for s in g.sides):
            out += [f"No completed runs on {TAGS[i]}: {_why_no_runs(s)}"
                    for i, s in enumerate(g.sides) if not s.ok_runs] + [""]
            continue
        names = _metric_names(g)
        flat = [m for m in names if pivot_key(g.scenario, m) is None]
        pivot = [m for m in names if pivot_key(g.scenario, m) is not None]
        if flat:
            rows = []
            summaries: list[Summary] = []
            multi = len(g.comparisons) > 1
            for m in flat:
                for i, c in enumerate(g.comparisons):
                    r = _row_of(c, m)
                    if r is None:
                        continue
                    summaries += [r.a, r.b]
                    cells = [r.metric if i == 0 else "", r.unit, r.direction,
                             median_with_ci(r.a), median_with_ci(r.b),
                             _cell(r) if multi else change_text(r),
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


# --- csv -----------------------------------------------------------------------------------

CSV_FIELDS = (
    "scenario", "axis", "context", "a", "b", "metric", "unit", "direction",
    "a_n", "a_median", "a_ci_low", "a_ci_high", "a_mean", "a_stdev", "a_cov",
    "b_n", "b_median", "b_ci_low", "b_ci_high", "b_mean", "b_stdev", "b_cov",
    "change", "change_ci_low", "change_ci_high", "u", "p", "p_adjusted", "test",
    "significant",
)


def _csv_num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _csv_side(s: Summary) -> list[object]:
    return [s.n, _csv_num(s.median), _csv_num(s.ci_low), _csv_num(s.ci_high),
            _csv_num(s.mean), _csv_num(s.stdev), _csv_num(s.cov)]


def format_csv(report: Report, view: View = View()) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for c in report.comparisons:
        for r in c.rows:
            w.writerow([c.scenario, c.axis, c.context, c.a.name, c.b.name, r.metric, r.unit,
                        r.direction, *_csv_side(r.a), *_csv_side(r.b), _csv_num(r.change.ratio),
                        _csv_num(r.change.ci_low), _csv_num(r.change.ci_high),
                        _csv_num(r.test.u if r.test else None), _csv_num(r.p),
                        _csv_num(r.p_adj), r.test.method if r.test else "",
                        int(r.significant)])
    return buf.getvalue()


# --- cover letter --------------------------------------------------------------------------


def _value(s: Summary, unit: str) -> str:
    return "no runs" if s.median is None else f"{num(s.median, 5)}{' ' + unit if unit else ''}"


def cover_lines(c: Comparison, width: int = COVER_WIDTH) -> list[str]:
    """``  metric: Before: 89.117 ms  After: 84.768 ms  (-4.9%)``, aligned."""
    rows = list(c.rows)
    if not rows:
        return ["  (no metric has values on both sides)"]
    label_w = max(len(r.metric) for r in rows) + 1
    before_w = max(len(_value(r.a, r.unit)) for r in rows)
    after_w = max(len(_value(r.b, r.unit)) for r in rows)
    def change(r: MetricRow) -> str:
        return "-" if r.test is None else (pct(r.change.ratio) if r.significant else "~")

    out = [f"  {r.metric + ':':<{label_w}} Before: {_value(r.a, r.unit):>{before_w}}"
           f"  After: {_value(r.b, r.unit):>{after_w}}  ({change(r)})" for r in rows]
    if max(len(line) for line in out) > width:
        # Too wide for the words: two value columns under a header instead.
        head_a, head_b = f"Before ({c.a.name})", f"After ({c.b.name})"
        wa, wb = max(before_w, len(head_a)), max(after_w, len(head_b))
        label_w = max(1, min(label_w, width - wa - wb - 16))
        out = [f"  {'':<{label_w}} {head_a:>{wa}}  {head_b:>{wb}}"]
        for r in rows:
            if len(r.metric) > label_w:  # a long name on a line of its own
                out.append(f"  {r.metric}")
            name = r.metric if len(r.metric) <= label_w else ""
            out.append(f"  {name:<{label_w}} {_value(r.a, r.unit):>{wa}}  "
                       f"{_value(r.b, r.unit):>{wb}}  ({change(r)})")
    za, zb = c.zap
    if za or zb:
        out.append(f"  {'zap path:':<{label_w}} Before: {za.text() if za else '-'}")
        out.append(f"  {'':<{label_w}} After:  {zb.text() if zb else '-'}")
    return out


def cover_caveats(report: Report, width: int = COVER_WIDTH) -> list[str]:
    """One line for the noise a '~' may hide: the metrics with CoV >= COV_LIMIT on
    either side (largest CoV first), and those with outlier runs."""
    noisy: dict[str, float] = {}
    flagged: dict[str, None] = {}
    for c in report.comparisons:
        for r in c.rows:
            for s, side in ((r.a, c.a), (r.b, c.b)):
                if s.cov is not None and s.cov >= warn.COV_LIMIT:
                    noisy[r.metric] = max(noisy.get(r.metric, 0.0), s.cov)
                if _outliers([v for run in side.ok_runs
                              if (v := run.value(r.metric)) is not None]):
                    flagged.setdefault(r.metric)
    parts = []
    if noisy:
        worst = sorted(noisy.items(), key=lambda kv: -kv[1])
        named = (", ".join(f"{m} {cov * 100:.0f}%" for m, cov in worst) if len(worst) <= 3
                 else f"{len(worst)} metrics, up to {worst[0][1] * 100:.0f}% ({worst[0][0]})")
        parts.append(f"noisy, CoV >= {warn.COV_LIMIT * 100:.0f}%: {named}")
    if flagged:
        parts.append("outlier runs: " + (", ".join(flagged) if len(flagged) <= 3
                                         else f"{len(flagged)} metrics"))
    if not parts:
        return []
    return textwrap.wrap("Caveats: " + "; ".join(parts) + ".", width,
                         subsequent_indent="  ", break_on_hyphens=False)


def _cpu_model(env: dict[str, object]) -> str:
    cpu = env.get("cpu")
    return str(cpu.get("model", "CPU unknown")) if isinstance(cpu, dict) else "CPU unknown"


def _setup_short(s: Setup) -> str:
    k = s.env.get("kernel", {})
    release = k.get("release", "?") if isinstance(k, dict) else "?"
    return f"{s.name} = {release}" if s.name != release else str(release)


def format_cover_letter(report: Report, view: View = View()) -> str:
    width = COVER_WIDTH
    sets = setups(report)
    out: list[str] = []
    out += _fit("Kernel: " + ", ".join(_setup_short(s) for s in sets), width, "        ")
    hosts = list(dict.fromkeys(
        f"{backend_text(s.env)}, {MMU_NAMES.get(mmu_mode(s.env), mmu_mode(s.env))}, "
        f"{_cpu_model(s.env)}" for s in sets))
    out += _fit("Host:   " + "; ".join(hosts), width, "        ")
    out.append("")
    for c in report.comparisons:
        if not c.a.ok_runs or not c.b.ok_runs:
            empty = c.a if not c.a.ok_runs else c.b
            out += _fit(f"{c.scenario} ({c.context}): {empty.name} has no completed runs "
                        f"({_why_no_runs(empty)})", width, "  ")
            out.append("")
            continue
        out += _fit(f"{c.scenario} ({c.context}): Before = {c.a.name}, After = {c.b.name}",
                    width, "  ")
        out += cover_lines(c, width)
        out.append("")
    out += uncounted_line(report, width)
    out += cover_caveats(report, width)
    s = report.settings
    ns = sorted({f"{len(c.a.ok_runs)}/{len(c.b.ok_runs)}" for c in report.comparisons
                 if c.a.ok_runs and c.b.ok_runs})
    foot = (f"Medians of per-run medians, n = {', '.join(ns) or '0'} runs (before/after); "
            f"'~' no significant change.  A change is significant when: Mann-Whitney U, "
            f"p < {s.alpha:g} after "
            f"{CORRECTION}'s correction over {report.tests} tests, bootstrap CI of the "
            f"change excluding 0, |change| >= {s.min_change * 100:g}%.")
    out += textwrap.wrap(foot, width)
    pairs = [(len(c.a.ok_runs), len(c.b.ok_runs)) for c in report.comparisons
             if any(r.test is not None for r in c.rows)]
    for note in warn.detectability(pairs, report.tests, s.alpha, CORRECTION):
        out += textwrap.wrap(note, width)
    if report.command:
        out += _command_lines(report.command, width)
    return ascii_text("\n".join(out)) + "\n"


def _command_lines(command: str, width: int) -> list[str]:
    """The command under the table, continued with backslashes within ``width``."""
    words = command.split()
    lines: list[str] = []
    current = "  $"
    for w in words:
        if len(current) + 1 + len(w) > width - 2 and current.strip() != "$":
            lines.append(current + " \\")
            current = "     "
        current += " " + w
    lines.append(current)
    return lines


FORMATTERS: dict[str, Callable[[Report, View], str]] = {
    "plain": format_plain,
    "markdown": format_markdown,
    "csv": format_csv,
    "cover-letter": format_cover_letter,
}


def format_report(report: Report, fmt: str = "plain", view: View = View()) -> str:
    try:
        formatter = FORMATTERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})") from None
    return formatter(report, view)


# --- after `run` ---------------------------------------------------------------------------


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
    lines += _fit(note, WIDTH, "  ") if note else []
    lines += _fit(uncounted_text(uncounted), WIDTH, "  ") if uncounted else []
    return ascii_text("\n".join(lines)) + "\n"
