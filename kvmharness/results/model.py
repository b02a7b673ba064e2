"""The result document: one per ``kvmharness run`` invocation (format: results/README.md).

Built from ``RunOutcome`` objects plus the ``ScenarioSpec`` they came from, so a file
carries its own metric units and directions and can be compared without the scenario code.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import statistics
from collections.abc import Mapping
from typing import Any, Literal

from kvmharness.scenarios.base import Direction, RunEvidence, RunOutcome, ScenarioSpec

FORMAT = "kvmharness-result"
# 2: runs carry kvm_stat_types, and instant/peak KVM stats are levels, not summed deltas.
SCHEMA_VERSION = 2

RunStatus = Literal["ok", "skipped", "failed"]
FileStatus = Literal["running", "complete", "interrupted"]


def variant_text(variant: Mapping[str, str]) -> str:
    """'zap=all' / 'zap=all,mem=thp' / '-' for a scenario without variant axes."""
    return ",".join(f"{k}={v}" for k, v in variant.items()) or "-"


@dataclasses.dataclass(slots=True)  # slots: one per metric per run, 240k in a 40k-run compare
class MetricSamples:
    unit: str
    direction: Direction
    values: list[float]


# The order of a run's keys in a file (results/README.md).
RUN_KEYS = ("index", "repeat", "variant", "status", "reason", "start_time", "end_time",
            "samples", "warmups", "kvm_stats", "tracepoints", "noise", "effective",
            "warnings", "kvm_stat_types")


@dataclasses.dataclass(kw_only=True)
class RunRecord(RunEvidence):
    """One run as the file keeps it: the evidence a ``RunOutcome`` carried, its samples
    with their declared units, and where the run stood in the session."""

    index: int
    repeat: int
    variant: dict[str, str]
    status: RunStatus
    reason: str | None
    samples: dict[str, MetricSamples] = dataclasses.field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        """The run's value: median of its measured iterations (warmups already apart)."""
        s = self.samples.get(metric)
        if s is None or not s.values:
            return None
        # Reports ask for the same value many times (rows, warnings, summaries): the median
        # of a run with millions of samples is one sort, not one per question.  Kept with
        # the list it came from and its length: a replaced or grown list is sorted afresh.
        values = s.values
        cache: dict[str, tuple[list[float], int, float]] | None = self.__dict__.get("_medians")
        if cache is None:
            cache = self.__dict__["_medians"] = {}
        hit = cache.get(metric)
        if hit is not None and hit[0] is values and hit[1] == len(values):
            return hit[2]
        median = statistics.median(values)
        cache[metric] = (values, len(values), median)
        return median

    @classmethod
    def from_outcome(
        cls,
        outcome: RunOutcome,
        spec: ScenarioSpec,
        *,
        index: int,
        repeat: int,
        variant: Mapping[str, str],
        host_noise: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        warnings = list(outcome.warnings)
        samples: dict[str, MetricSamples] = {}
        for name, values in outcome.samples.items():
            try:
                m = spec.metric(name)
                unit, direction = m.unit, m.direction
            except KeyError:
                # Keep the data rather than drop it; the warning makes the guess visible.
                unit, direction = "", "lower"
                warnings.append(f"metric {name!r} is not declared by {spec.name}; "
                                "assumed unitless, lower is better")
            finite = [float(v) for v in values if math.isfinite(v)]
            if len(finite) != len(values):
                # JSON has no NaN/inf; a dropped sample is better than an unreadable file.
                warnings.append(f"metric {name!r}: {len(values) - len(finite)} non-finite "
                                "samples dropped")
            samples[name] = MetricSamples(unit, direction, finite)
        noise = dict(outcome.noise)
        noise.update(host_noise or {})
        return cls(
            index=index,
            repeat=repeat,
            variant=dict(variant),
            status="ok",
            reason=None,
            start_time=outcome.start_time,
            end_time=outcome.end_time,
            samples=samples,
            warmups={k: [float(v) for v in vs if math.isfinite(v)]
                     for k, vs in outcome.warmups.items()},
            kvm_stats={k: dict(v) for k, v in outcome.kvm_stats.items()},
            kvm_stat_types=dict(outcome.kvm_stat_types),
            tracepoints={k: dict(v) for k, v in outcome.tracepoints.items()},
            noise=noise,
            effective=dict(outcome.effective),
            warnings=warnings,
        )

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data, keys in ``RUN_KEYS`` order.  Shares the record's lists
        and dicts (serialise it, do not edit it): ``dataclasses.asdict`` deep-copied every
        value, 2 ms a run, and ``compare`` hashes every run of every file."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data = {**{k: fields[k] for k in RUN_KEYS}, **fields}
        data["samples"] = {name: {"unit": s.unit, "direction": s.direction, "values": s.values}
                           for name, s in self.samples.items()}
        return data


def spec_metadata(spec: ScenarioSpec) -> dict[str, Any]:
    """The declaration part of a spec, JSON-ready (the run callable is not data)."""
    return {
        "name": spec.name,
        "summary": spec.summary,
        "parameters": [
            {"name": p.name, "unit": p.unit, "default": p.default, "quick": p.quick,
             "type": p.type.__name__, "help": p.help}
            for p in spec.parameters
        ],
        "metrics": [
            {"name": m.name, "unit": m.unit, "direction": m.direction, "help": m.help}
            for m in spec.metrics
        ],
        "variant_axes": [
            {"name": a.name, "values": list(a.values), "help": a.help} for a in spec.variant_axes
        ],
        # What a default report shows; files written before this key fall back to the
        # registry's current spec (compare.build.headline_names).
        "headline": list(spec.headline_metrics()),
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class ResultFile:
    scenario: dict[str, Any]
    parameters: dict[str, Any]
    quick: bool
    label: str
    variants: list[dict[str, str]]
    repeat: int
    iterations: int
    warmup: int
    environment: dict[str, Any]
    status: FileStatus = "running"
    created: str = dataclasses.field(default_factory=now_iso)
    runs: list[RunRecord] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    # The command line that wrote the file ("" in files written before it was recorded).
    command: str = ""
    # Where the file was loaded from; not part of the document.
    source: str = dataclasses.field(default="", compare=False)

    @property
    def scenario_name(self) -> str:
        return str(self.scenario["name"])

    def ok_runs(self, variant: Mapping[str, str] | None = None) -> list[RunRecord]:
        return [r for r in self.runs
                if r.status == "ok" and (variant is None or r.variant == dict(variant))]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "created": self.created,
            "status": self.status,
            "scenario": self.scenario,
            "parameters": self.parameters,
            "quick": self.quick,
            "label": self.label,
            "variants": self.variants,
            "repeat": self.repeat,
            "iterations": self.iterations,
            "warmup": self.warmup,
            "runs": [r.to_json() for r in self.runs],
            "warnings": self.warnings,
            "environment": self.environment,
            "command": self.command,
        }
