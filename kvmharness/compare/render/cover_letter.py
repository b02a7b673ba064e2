"""A patch cover letter's numbers: Before/After per metric, <= 72 columns."""

from __future__ import annotations

import shlex
import textwrap

from kvmharness.compare import warnings as warn
from kvmharness.compare.build import (
    CORRECTION,
    Comparison,
    MetricRow,
    Report,
)
from kvmharness.compare.render.model import DEFAULT_VIEW, View, why_no_runs
from kvmharness.compare.render.setup import (
    MMU_NAMES,
    backend_text,
    cpu_model,
    mmu_mode,
    setup_short,
    setups,
    timing_caveat,
    uncounted_line,
)
from kvmharness.compare.render.text import COVER_WIDTH, ascii_text, fit, num, pct
from kvmharness.compare.stats import Summary, robust_outliers


def _value(s: Summary, unit: str) -> str:
    return "no runs" if s.median is None else f"{num(s.median, 5)}{' ' + unit if unit else ''}"


def _change(r: MetricRow) -> str:
    if r.test is None:
        return "-"
    if r.untestable and not r.significant and r.change.ratio is not None:
        return f"{pct(r.change.ratio)}, untested"
    return pct(r.change.ratio) if r.significant else "~"


def cover_lines(c: Comparison, width: int = COVER_WIDTH) -> list[str]:
    """``  metric: Before: 89.117 ms  After: 84.768 ms  (-4.9%)``, aligned.  Laid out by
    hand, not by tabulate: the words Before:/After: sit inside every line, as cover
    letters quote numbers, which is no table layout tabulate has."""
    rows = list(c.rows)
    if not rows:
        return ["  (no metric has values on both sides)"]
    label_w = max(len(r.metric) for r in rows) + 1
    before_w = max(len(_value(r.a, r.unit)) for r in rows)
    after_w = max(len(_value(r.b, r.unit)) for r in rows)
    out = [f"  {r.metric + ':':<{label_w}} Before: {_value(r.a, r.unit):>{before_w}}"
           f"  After: {_value(r.b, r.unit):>{after_w}}  ({_change(r)})" for r in rows]
    if max(len(line) for line in out) > width:
        label_w, out = _two_columns(c, rows, label_w, before_w, after_w, width)
    za, zb = c.zap
    if za or zb:
        out.append(f"  {'zap path:':<{label_w}} Before: {za.text() if za else '-'}")
        out.append(f"  {'':<{label_w}} After:  {zb.text() if zb else '-'}")
    return out


def _two_columns(c: Comparison, rows: list[MetricRow], label_w: int, before_w: int,
                 after_w: int, width: int) -> tuple[int, list[str]]:
    """Too wide for the words: two value columns under a header instead (a long name on
    a line of its own).  Returns the label width used and the lines."""
    head_a, head_b = f"Before ({c.a.name})", f"After ({c.b.name})"
    wa, wb = max(before_w, len(head_a)), max(after_w, len(head_b))
    label_w = max(1, min(label_w, width - wa - wb - 16))
    out = [f"  {'':<{label_w}} {head_a:>{wa}}  {head_b:>{wb}}"]
    for r in rows:
        if len(r.metric) > label_w:
            out.append(f"  {r.metric}")
        name = r.metric if len(r.metric) <= label_w else ""
        out.append(f"  {name:<{label_w}} {_value(r.a, r.unit):>{wa}}  "
                   f"{_value(r.b, r.unit):>{wb}}  ({_change(r)})")
    return label_w, out


def _noise_by_metric(report: Report) -> tuple[dict[str, float], dict[str, None]]:
    """({metric: its largest CoV >= COV_LIMIT on any side}, {metrics with outlier runs})."""
    noisy: dict[str, float] = {}
    flagged: dict[str, None] = {}
    for c in report.comparisons:
        for r in c.rows:
            for s, side in ((r.a, c.a), (r.b, c.b)):
                if s.cov is not None and s.cov >= warn.COV_LIMIT:
                    noisy[r.metric] = max(noisy.get(r.metric, 0.0), s.cov)
                if robust_outliers([v for run in side.ok_runs
                                   if (v := run.value(r.metric)) is not None]):
                    flagged.setdefault(r.metric)
    return noisy, flagged


def cover_caveats(report: Report, width: int = COVER_WIDTH) -> list[str]:
    """One line for the noise a '~' may hide: the metrics with CoV >= COV_LIMIT on
    either side (largest CoV first), and those with outlier runs."""
    noisy, flagged = _noise_by_metric(report)
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


def format_cover_letter(report: Report, view: View = DEFAULT_VIEW) -> str:
    width = COVER_WIDTH
    sets = setups(report)
    out: list[str] = []
    out += fit("Kernel: " + ", ".join(setup_short(s) for s in sets), width, "        ")
    hosts = list(dict.fromkeys(
        f"{backend_text(s.env)}, {MMU_NAMES.get(mmu_mode(s.env), mmu_mode(s.env))}, "
        f"{cpu_model(s.env)}" for s in sets))
    out += fit("Host:   " + "; ".join(hosts), width, "        ")
    caveat = timing_caveat(report)
    if caveat:
        out += textwrap.wrap(caveat, width, break_on_hyphens=False)
    out.append("")
    for c in report.comparisons:
        if not c.a.ok_runs or not c.b.ok_runs:
            empty = c.a if not c.a.ok_runs else c.b
            out += fit(f"{c.scenario} ({c.context}): {empty.name} has no completed runs "
                        f"({why_no_runs(empty)})", width, "  ")
            out.append("")
            continue
        out += fit(f"{c.scenario} ({c.context}): Before = {c.a.name}, After = {c.b.name}",
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
            f"p < {s.alpha:g} after {report.family_text()}, bootstrap CI of the "
            f"change excluding 0, |change| >= {s.min_change * 100:g}%.")
    out += textwrap.wrap(foot, width)
    for note in warn.family_detectability(report.families(), s.alpha, CORRECTION):
        out += textwrap.wrap(note, width)
    out += command_lines(report, width)
    return ascii_text("\n".join(out)) + "\n"


MAX_COMMANDS = 4


def command_lines(report: Report, width: int = COVER_WIDTH) -> list[str]:
    """The commands that produced the compared files (as each file records it), then the
    comparison's own, each a shell command that pastes back as it was."""
    files = [f for c in report.comparisons for f in (*c.a.files, *c.b.files)]
    made = list(dict.fromkeys(f.command for f in files if f.command))
    out: list[str] = []
    if made:
        out.append("Produced by:")
        for command in made[:MAX_COMMANDS]:
            out += shell_lines(command, width)
        if len(made) > MAX_COMMANDS:
            out.append(f"  (and {len(made) - MAX_COMMANDS} more commands: kvmharness show FILE)")
    elif files:
        out.append("Produced by: not recorded (files written before kvmharness kept it)")
    if report.command:
        out.append("Compared by:")
        out += shell_lines(report.command, width)
    return out


def shell_lines(command: str, width: int = COVER_WIDTH) -> list[str]:
    """``command`` as ``  $ ...`` lines of at most ``width`` columns, continued with
    backslash-newline.  A word longer than a line (a 100-character path) is cut and its
    rest goes on at column 0: the shell removes a backslash-newline inside a word too, so
    the pasted lines are the same command."""
    lines: list[str] = []
    current = "  $"
    for word in (shlex.quote(w) for w in shlex.split(command)):
        if len(current) + 1 + len(word) <= width - 2 or current == "  $":
            if len(current) + 1 + len(word) <= width - 2:
                current += " " + word
                continue
        else:
            lines.append(current + " \\")
            current = "    "
            if len(current) + 1 + len(word) <= width - 2:
                current += " " + word
                continue
        # Too long for any line: as much as fits here, the rest from column 0.
        room = width - 1 - len(current) - 1
        current += " " + word[:room]
        rest = word[room:]
        while rest:
            lines.append(current + "\\")
            current, rest = rest[:width - 1], rest[width - 1:]
    lines.append(current)
    return lines
