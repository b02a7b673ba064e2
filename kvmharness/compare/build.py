"""Deciding what to compare with what, and computing every row.

Files are grouped by scenario.  Within a scenario the compared axis is, unless asked:
  - label, when the files carry more than one label (kernel A vs kernel B), per variant;
  - variant, when one label holds several variants (zap=all vs zap=slot), per label;
  - file, when neither differs but there are several files (two runs of one setup).
The first value seen on the axis is A (the baseline); every other value is a B.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Mapping, Sequence

from kvmharness.compare import stats
from kvmharness.compare import warnings as warn
from kvmharness.results.model import ResultFile, RunRecord, variant_text
from kvmharness.scenarios.base import Direction

Axis = Literal["label", "variant", "file"]
AxisChoice = Literal["auto", "label", "variant", "file"]


class CompareError(ValueError):
    """The files cannot be compared as asked (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    alpha: float = stats.DEFAULT_ALPHA
    min_change: float = 0.01
    confidence: float = stats.DEFAULT_CONFIDENCE
    seed: int = stats.DEFAULT_SEED
    resamples: int = stats.DEFAULT_BOOTSTRAP_RESAMPLES


@dataclasses.dataclass(frozen=True)
class Side:
    name: str
    files: tuple[ResultFile, ...]
    runs: tuple[RunRecord, ...]  # every record of this side, whatever its status

    @property
    def ok_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "ok"]


@dataclasses.dataclass(frozen=True)
class MetricRow:
    metric: str
    unit: str
    direction: Direction
    a: stats.Summary
    b: stats.Summary
    test: stats.MannWhitney | None
    change: stats.Change
    significant: bool

    @property
    def p(self) -> float | None:
        return self.test.p if self.test else None


@dataclasses.dataclass(frozen=True)
class Comparison:
    scenario: str
    axis: Axis
    context: str  # what both sides share, e.g. "zap=all" when comparing labels
    a: Side
    b: Side
    rows: tuple[MetricRow, ...]
    differences: tuple[str, ...]  # setup differences other than the compared axis
    warnings: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Report:
    comparisons: tuple[Comparison, ...]
    settings: Settings

    @property
    def tests(self) -> int:
        return sum(1 for c in self.comparisons for r in c.rows if r.test is not None)


def _metric_order(files: Sequence[ResultFile]) -> list[tuple[str, str, Direction]]:
    """Declared metrics first (declaration order), then any extra ones that runs carry."""
    seen: dict[str, tuple[str, Direction]] = {}
    for f in files:
        for m in f.scenario.get("metrics", []):
            seen.setdefault(m["name"], (m["unit"], m["direction"]))
    for f in files:
        for r in f.runs:
            for name, s in r.samples.items():
                seen.setdefault(name, (s.unit, s.direction))
    return [(name, unit, d) for name, (unit, d) in seen.items()]


def _row(metric: str, unit: str, direction: Direction, a: Side, b: Side,
         settings: Settings) -> MetricRow:
    va, vb = _values(a, metric), _values(b, metric)
    test = stats.mann_whitney(va, vb) if va and vb else None
    change = stats.bootstrap_change(va, vb, confidence=settings.confidence,
                                    resamples=settings.resamples, seed=settings.seed)
    significant = stats.is_significant(test.p if test else None, change,
                                       alpha=settings.alpha, min_change=settings.min_change)
    return MetricRow(metric, unit, direction, stats.summarize(va, settings.confidence),
                     stats.summarize(vb, settings.confidence), test, change, significant)


def _values(side: Side, metric: str) -> list[float]:
    return [v for r in side.ok_runs if (v := r.value(metric)) is not None]


def compare_sides(scenario: str, axis: Axis, context: str, a: Side, b: Side,
                  metrics: Sequence[tuple[str, str, Direction]],
                  settings: Settings) -> Comparison:
    rows = tuple(_row(m, u, d, a, b, settings) for m, u, d in metrics)
    diffs: list[str] = []
    if a.files and b.files and a.files[0] is not b.files[0]:
        diffs = warn.setup_differences(a.files[0], b.files[0])
    notes: list[str] = []
    for label, side in (("A", a), ("B", b)):
        for other in side.files[1:]:
            notes += [f"{label}: files differ among themselves: {d}"
                      for d in warn.setup_differences(side.files[0], other)]
        notes += warn.file_status_warnings(label, side.files)
        notes += warn.run_record_warnings(label, side.runs)
        if not side.ok_runs:
            notes.append(f"{label} ({side.name}): no completed runs")
        values = {m: _values(side, m) for m, _, _ in metrics}
        summaries = {row.metric: (row.a if label == "A" else row.b) for row in rows}
        notes += warn.side_warnings(label, values, summaries)
        notes += warn.noise_warnings(label, side.ok_runs)
    notes += warn.frequency_between_sides(a.ok_runs, b.ok_runs)
    notes += warn.power_warning(len(a.ok_runs), len(b.ok_runs), settings.alpha)
    return Comparison(scenario, axis, context, a, b, rows, tuple(diffs), tuple(notes))


def _variants_in(files: Sequence[ResultFile]) -> list[dict[str, str]]:
    seen: dict[str, dict[str, str]] = {}
    for f in files:
        for v in [*f.variants, *(r.variant for r in f.runs)]:
            seen.setdefault(variant_text(v), dict(v))
    return list(seen.values())


def _side(name: str, files: Sequence[ResultFile],
          variant: Mapping[str, str] | None) -> Side:
    runs = tuple(r for f in files for r in f.runs
                 if variant is None or r.variant == dict(variant))
    return Side(name, tuple(files), runs)


def _pick_axis(files: Sequence[ResultFile], variants: Sequence[Mapping[str, str]]) -> Axis:
    if len({f.label for f in files}) > 1:
        return "label"
    if len(variants) > 1:
        return "variant"
    if len(files) > 1:
        return "file"
    raise CompareError(
        f"{files[0].source or files[0].scenario_name}: one label, one variant and one file: "
        "nothing to compare (give files with different labels, or a file with variants)")


def _file_names(files: Sequence[ResultFile]) -> list[str]:
    names = [f.source or f"file{i + 1}" for i, f in enumerate(files)]
    if len(set(names)) != len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def build_report(files: Sequence[ResultFile], *, by: AxisChoice = "auto",
                 settings: Settings = Settings()) -> Report:
    if not files:
        raise CompareError("no result files given")
    scenarios: dict[str, list[ResultFile]] = {}
    for f in files:
        scenarios.setdefault(f.scenario_name, []).append(f)
    comparisons: list[Comparison] = []
    for scenario, group in scenarios.items():
        variants = _variants_in(group) or [{}]
        axis: Axis = _pick_axis(group, variants) if by == "auto" else by
        metrics = _metric_order(group)
        if axis == "label":
            labels = list(dict.fromkeys(f.label for f in group))
            if len(labels) < 2:
                raise CompareError(f"{scenario}: all files have label {labels[0]!r}")
            by_label = {lb: [f for f in group if f.label == lb] for lb in labels}
            for v in variants:
                a = _side(labels[0], by_label[labels[0]], v)
                for other in labels[1:]:
                    b = _side(other, by_label[other], v)
                    comparisons.append(compare_sides(scenario, axis, variant_text(v), a, b,
                                                     metrics, settings))
        elif axis == "variant":
            if len(variants) < 2:
                raise CompareError(f"{scenario}: only variant {variant_text(variants[0])} "
                                   "was run")
            labels = list(dict.fromkeys(f.label for f in group))
            for lb in labels:
                mine = [f for f in group if f.label == lb]
                a = _side(variant_text(variants[0]), mine, variants[0])
                for v in variants[1:]:
                    b = _side(variant_text(v), mine, v)
                    comparisons.append(compare_sides(scenario, axis, f"label {lb}", a, b,
                                                     metrics, settings))
        else:
            if len(group) < 2:
                raise CompareError(f"{scenario}: comparing files needs at least two")
            names = _file_names(group)
            for v in variants:
                a = _side(names[0], group[:1], v)
                for name, f in zip(names[1:], group[1:], strict=True):
                    b = _side(name, [f], v)
                    comparisons.append(compare_sides(scenario, axis, variant_text(v), a, b,
                                                     metrics, settings))
    return Report(tuple(comparisons), settings)
