"""What every format shows, built once from a ``Report``: groups (one A, its B's), the
rows of a group's table, and which metrics pivot into grids."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from kvmharness.compare.build import (
    Comparison,
    MetricRow,
    Report,
    Side,
)
from kvmharness.compare.render.text import TAGS


@dataclasses.dataclass(frozen=True)
class View:
    """What a rendering shows beyond the default."""

    detail: bool = False  # per-side statistics and the CI of each change
    show_setup: bool = False  # every setup difference, not the grouped counts


DEFAULT_VIEW = View()


def title(c: Comparison) -> str:
    return f"{c.scenario} ({c.context}): A = {c.a.name}, B = {c.b.name}"


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


def outlier_values(values: Sequence[float]) -> list[float]:
    from kvmharness.compare.stats import robust_outliers
    return robust_outliers(values)
