"""How a scenario's numbers are shown, declared with the scenario: the grid a table lays its
metrics out in (``Pivot``) and the figure ``kvmharness plot`` draws (``Curves``,
``PassTimeline``).  compare/ and plot/ read these from the spec of a file's scenario and
never name a scenario themselves."""

from __future__ import annotations

import dataclasses

from kvmharness.scenarios.metrics import declared_family


@dataclasses.dataclass(frozen=True)
class Pivot:
    """Which metrics a table shows as a grid, and where each goes: a point of a metric
    family (``create@4K``) goes to row ``create``, column ``4K``; a name ending in one of
    ``suffixes`` (``rom_read_cycles`` with ``("cycles", "ns")``) to row ``rom_read``,
    column ``cycles``.  Every other metric is a row of its own."""

    families: bool = True
    suffixes: tuple[str, ...] = ()

    def cell(self, metric: str) -> tuple[str, str] | None:
        """(row, column) of ``metric`` in the grid, or None for a plain row."""
        stem, sep, label = metric.partition("@")
        if sep and self.families and not declared_family(metric):
            return stem, label
        kind, _, suffix = metric.rpartition("_")
        if kind and suffix in self.suffixes:
            return kind, suffix
        return None


# The default: family points in a grid (row = family, column = key), the rest plain rows.
FAMILY_GRID = Pivot()


@dataclasses.dataclass(frozen=True)
class Figure:
    """What ``kvmharness plot`` draws for a scenario; ``title`` heads the figure."""

    title: str


@dataclasses.dataclass(frozen=True)
class Curves(Figure):
    """One panel per declared family (``create@<size>``): the median of each point against
    its key, log-log, one line per side with the median's CI as a band."""

    families: tuple[str, ...]
    xlabel: str

    def __post_init__(self) -> None:
        plain = [f for f in self.families if declared_family(f) is None]
        if plain:
            raise ValueError(f"Curves draws metric families (name@<size>), not {plain}")


@dataclasses.dataclass(frozen=True)
class PassTimeline(Figure):
    """A guest's pass times over a run, with the events that disturbed them marked: from a
    run's ``effective["timeline"]`` (``pass_end_s``, ``pass_ms``, ``delete_s``, optionally
    ``pass_vcpu``) when one was kept, else ``passes`` per run in order with the per
    iteration ``events`` counts at each iteration's start.  ``total`` picks the run a
    timeline stands for (the one closest to the median)."""

    passes: str
    events: str
    event_name: str  # plural, for the axis text: "ROM deletes"
    total: str = "total"
