"""What every format shows, built once from a ``Report``: sections (one A and its B's), the
rows of a section's table (a metric, A's summary, each B's row), and the grid its
parametrized metrics pivot into.  The renderers (plain, markdown, cover letter) only choose
cells and lay them out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from kvmharness.compare.build import (
    Comparison,
    MetricRow,
    Report,
    Side,
)
from kvmharness.compare.render.text import TAGS, change_cell, num
from kvmharness.compare.stats import Summary
from kvmharness.scenarios import registry
from kvmharness.scenarios.presentation import FAMILY_GRID


@dataclasses.dataclass(frozen=True)
class View:
    """What a rendering shows beyond the default."""

    detail: bool = False  # per-side statistics and the CI of each change
    show_setup: bool = False  # every setup difference, not the grouped counts


DEFAULT_VIEW = View()


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


def metric_names(g: Group) -> list[str]:
    """Rows of the group's table, in headline order, each once."""
    names: dict[str, None] = {}
    order = {m: i for i, m in enumerate(g.comparisons[0].headline)}
    for c in g.comparisons:
        for r in c.rows:
            names.setdefault(r.metric)
    return sorted(names, key=lambda m: order.get(m, len(order)))


def row_of(c: Comparison, metric: str) -> MetricRow | None:
    return next((r for r in c.rows if r.metric == metric), None)


def why_no_runs(side: Side) -> str:
    reasons = list(dict.fromkeys(f"{r.status}: {r.reason}" for r in side.runs
                                 if r.status != "ok"))
    return "; ".join(reasons) if reasons else "no runs of this variant"


def pivot_key(scenario: str, metric: str) -> tuple[str, str] | None:
    """(row, column) of ``metric`` in the grid the scenario declares (``ScenarioSpec.pivot``;
    a scenario not registered here: family points only), None for a plain row."""
    spec = registry.find(scenario)
    return (spec.pivot if spec is not None else FAMILY_GRID).cell(metric)


@dataclasses.dataclass(frozen=True)
class TableRow:
    """One metric of a section: the first comparison that has it (A's summary, unit,
    direction), and each comparison's row (None where that side lacks the metric)."""

    metric: str
    base: MetricRow
    per_side: tuple[MetricRow | None, ...]  # one per comparison, B first

    def summaries(self) -> list[Summary | None]:
        """A's summary, then each other side's (None where it lacks the metric)."""
        return [self.base.a, *(r.b if r else None for r in self.per_side)]


@dataclasses.dataclass(frozen=True)
class Section:
    """One group as every format shows it.  ``shown`` is the group without the sides that
    have no completed runs (they are named, not compared); ``rows``/``grid_rows`` are its
    flat and pivoted metrics, headline order."""

    group: Group
    empty: tuple[int, ...]               # side indices without completed runs
    shown: Group
    rows: tuple[TableRow, ...]           # the flat table
    grid_rows: tuple[TableRow, ...]      # metrics that pivot into a grid

    @property
    def compared(self) -> bool:
        """Whether anything is compared: A and at least one other side have runs."""
        return 0 not in self.empty and len(self.empty) < len(self.group.sides) - 1

    @property
    def all_rows(self) -> tuple[TableRow, ...]:
        order = {m: i for i, m in enumerate(metric_names(self.shown))}
        return tuple(sorted((*self.rows, *self.grid_rows), key=lambda r: order[r.metric]))


def table_rows(g: Group, names: Sequence[str]) -> tuple[TableRow, ...]:
    out = []
    for m in names:
        per_side = tuple(row_of(c, m) for c in g.comparisons)
        base = next((r for r in per_side if r is not None), None)
        if base is not None:
            out.append(TableRow(m, base, per_side))
    return tuple(out)


def section(g: Group) -> Section:
    empty = tuple(i for i, s in enumerate(g.sides) if not s.ok_runs)
    shown = g
    if empty:  # the other sides are still compared with A
        shown = dataclasses.replace(g, comparisons=tuple(c for c in g.comparisons
                                                         if c.b.ok_runs))
    names = metric_names(shown) if shown.comparisons else []
    flat = [m for m in names if pivot_key(g.scenario, m) is None]
    pivot = [m for m in names if pivot_key(g.scenario, m) is not None]
    return Section(g, empty, shown, table_rows(shown, flat), table_rows(shown, pivot))


def sections(report: Report) -> list[Section]:
    return [section(g) for g in groups(report)]


@dataclasses.dataclass(frozen=True)
class PivotGrid:
    """Parametrized metrics as a grid: a row per family (operation, kind), a column per
    key (size, count, unit); each cell holds (value, change) per side, A's change empty."""

    families: tuple[str, ...]
    columns: tuple[str, ...]
    labels: dict[str, str]                 # family: its row label (with the unit)
    cells: dict[tuple[str, str], tuple[tuple[str, str], ...]]
    sides: int


def pivot_grid(scenario: str, rows: Sequence[TableRow], sides: int) -> PivotGrid:
    keys = {r.metric: k for r in rows if (k := pivot_key(scenario, r.metric))}
    families = tuple(dict.fromkeys(k[0] for k in keys.values()))
    columns = tuple(dict.fromkeys(k[1] for k in keys.values()))
    missing = (("-", ""),) * sides
    cells = {(f, c): missing for f in families for c in columns}
    for r in rows:
        cells[keys[r.metric]] = ((num(r.base.a.median), ""),
                                 *(("-", "") if x is None else (num(x.b.median), change_cell(x))
                                   for x in r.per_side))
    return PivotGrid(families, columns, _family_labels(families, rows, keys), cells, sides)


def _family_labels(families: Sequence[str], rows: Sequence[TableRow],
                   keys: dict[str, tuple[str, str]]) -> dict[str, str]:
    # A grid whose columns are units (mmio: cycles, ns) names no unit per row.
    by_unit = not any("@" in m for m in keys)
    labels = {}
    for fam in families:
        unit = next((r.base.unit for r in rows if keys[r.metric][0] == fam and r.base.unit),
                    "")
        labels[fam] = f"{fam} [{unit}]" if unit and not by_unit else fam
    return labels
