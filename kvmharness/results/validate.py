"""Loading-side validation: turn parsed JSON into a ``ResultFile`` or say exactly what is wrong.

Hand-written rather than a JSON-Schema library (runtime deps are psutil, pyelftools,
tabulate).  Every error names the JSON path, so a truncated or hand-edited file is fixed in
one look.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from kvmharness.results.model import (
    FORMAT,
    SCHEMA_VERSION,
    MetricSamples,
    ResultFile,
    RunRecord,
    variant_text,
)
from kvmharness.scenarios.metrics import point_of

STAT_TYPES = ("cumulative", "instant", "peak")
RUN_STATUSES = ("ok", "skipped", "failed")
DIRECTIONS = ("lower", "higher")
# KVM stats are deltas over a phase, and a gauge (vm.pages_4k) can shrink; a tracepoint
# count is a number of events, never below zero.
KVM_STAT_MINIMUM, TRACEPOINT_MINIMUM = -2**63, 0
# The keys of a run's free-form ``effective`` that compare and plot read.
ZAP_KEYS = ("zap_path", "zap_evidence", "zap_requested")
TIMELINE_LISTS = ("pass_end_s", "pass_ms", "delete_s", "pass_vcpu")  # the plot's timeline

# Exact types (bool is an int subclass, and not a number here).
_NUMBER_TYPES = frozenset({int, float})
_INT_TYPE = frozenset({int})


# C0 and C1 control characters and DEL: an ESC in a label is a terminal escape sequence
# on the screen of whoever runs compare; a CR or newline forges a line of the report.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The same less tab and newline: what may pass in a whole report (its own line breaks).
_TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]  # '\x1b', '\r', '\n'


def printable(text: str) -> str:
    """``text`` with every control character written as its Python escape (ESC as
    ``\x1b``, CR as ``\r``): what a string read from a file becomes before any report
    prints it."""
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


def printable_report(text: str) -> str:
    """A whole report with control characters escaped except its tabs and newlines: the
    last guard at the output, for a string that reached a report unescaped."""
    return (_TERMINAL_CONTROL.sub(_escape, text) if _TERMINAL_CONTROL.search(text)
            else text)


class ResultFormatError(ValueError):
    """A result file that cannot be used; the message says which file and where."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> ResultFormatError:
        return ResultFormatError(f"{self.source}: {path}: {message}")

    def obj(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object, got {_type_name(value)}")
        return value

    def field(self, parent: Mapping[str, Any], key: str, path: str) -> Any:
        if key not in parent:
            raise self.fail(path, f"missing required field {key!r}")
        return parent[key]

    def str_(self, value: Any, path: str, *, nullable: bool = False) -> Any:
        """A string, with its control characters escaped (``printable``)."""
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {_type_name(value)}")
        return printable(value)

    def int_(self, value: Any, path: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {_type_name(value)}")
        if value < minimum:
            raise self.fail(path, f"expected an integer >= {minimum}, got {value}")
        return value

    def num(self, value: Any, path: str, *, nullable: bool = False) -> Any:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"expected a number, got {_type_name(value)}")
        try:
            finite = math.isfinite(value)  # an int too large for a float raises here
        except OverflowError:
            finite = False
        if not finite:
            raise self.fail(path, f"expected a finite number, got {str(value)[:20]}")
        return float(value)

    def nums(self, value: Any, path: str) -> list[float]:
        """A list of finite numbers.  The common all-valid list is checked in bulk (types
        as a set, finiteness as a finite sum); only a list with a bad element, or one
        whose sum overflows, goes item by item, for the message naming the element (a
        path string per element made loading 20k runs take seconds)."""
        if type(value) is list and set(map(type, value)) <= _NUMBER_TYPES:
            try:
                floats = list(map(float, value))  # an int too large for a float raises
                total = sum(floats)
            except OverflowError:
                pass
            else:
                if math.isfinite(total):
                    return floats
        return self.list_(value, path, self.num)

    def counts(self, value: Any, path: str, *, minimum: int) -> dict[str, int]:
        """A map of names to integers >= ``minimum``, checked in bulk like ``nums``."""
        d = self.obj(value, path)
        if set(map(type, d.values())) <= _INT_TYPE and min(d.values(), default=0) >= minimum:
            return {sys.intern(printable(k)): v for k, v in d.items()}
        return self.map_(d, path, lambda v, p: self.int_(v, p, minimum=minimum))

    def bool_(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_type_name(value)}")
        return value

    def list_(self, value: Any, path: str, item: Callable[[Any, str], Any]) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {_type_name(value)}")
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def map_(self, value: Any, path: str, item: Callable[[Any, str], Any]) -> dict[str, Any]:
        # Interned: runs parsed one at a time do not share their key strings (40k runs
        # held 40k copies of each name).
        return {sys.intern(printable(k)): item(v, f"{path}.{k}")
                for k, v in self.obj(value, path).items()}

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> Any:
        if value not in choices:
            raise self.fail(path, f"expected one of {', '.join(choices)}, got {value!r}")
        return value


def _counters(c: _Checker, value: Any, path: str, *, minimum: int
              ) -> dict[str, dict[str, int]]:
    return c.map_(value, path, lambda v, p: c.counts(v, p, minimum=minimum))


def check_run(source: str, raw: Any, path: str) -> RunRecord:
    """Run ``raw`` (at JSON path ``path`` of ``source``) checked field by field: its record,
    or a ``ResultFormatError`` naming the field."""
    return _run(_Checker(source), raw, path)


def _run(c: _Checker, raw: Any, path: str) -> RunRecord:
    d = c.obj(raw, path)

    def f(key: str) -> Any:
        return c.field(d, key, path)

    status = c.choice(f("status"), f"{path}.status", RUN_STATUSES)

    def samples(v: Any, p: str) -> MetricSamples:
        s = c.obj(v, p)
        return MetricSamples(
            unit=c.str_(c.field(s, "unit", p), f"{p}.unit"),
            direction=c.choice(c.field(s, "direction", p), f"{p}.direction", DIRECTIONS),
            values=c.nums(c.field(s, "values", p), f"{p}.values"),
        )

    return RunRecord(
        index=c.int_(f("index"), f"{path}.index"),
        repeat=c.int_(f("repeat"), f"{path}.repeat"),
        variant=c.map_(f("variant"), f"{path}.variant", c.str_),
        status=status,
        reason=c.str_(f("reason"), f"{path}.reason", nullable=True),
        start_time=c.num(f("start_time"), f"{path}.start_time"),
        end_time=c.num(f("end_time"), f"{path}.end_time", nullable=True),
        samples=c.map_(f("samples"), f"{path}.samples", samples),
        warmups=c.map_(f("warmups"), f"{path}.warmups", c.nums),
        kvm_stats=_counters(c, f("kvm_stats"), f"{path}.kvm_stats", minimum=KVM_STAT_MINIMUM),
        tracepoints=_counters(c, f("tracepoints"), f"{path}.tracepoints",
                              minimum=TRACEPOINT_MINIMUM),
        noise=interned(c.obj(f("noise"), f"{path}.noise")),
        effective=_effective(c, f("effective"), f"{path}.effective"),
        warnings=c.list_(f("warnings"), f"{path}.warnings", c.str_),
        kvm_stat_types=(c.map_(d["kvm_stat_types"], f"{path}.kvm_stat_types",
                               lambda v, p: c.choice(v, p, STAT_TYPES))
                        if "kvm_stat_types" in d else {}),
    )


def interned(d: dict[str, Any]) -> dict[str, Any]:
    """An object of a run with its keys interned (see ``_Checker.map_``)."""
    return {sys.intern(k): v for k, v in d.items()}


def _effective(c: _Checker, raw: Any, path: str) -> dict[str, Any]:
    """The run's effective settings: free-form, except the keys compare and plot read."""
    d = interned(c.obj(raw, path))
    for key in ZAP_KEYS:
        if key in d:
            d[key] = c.str_(d[key], f"{path}.{key}", nullable=True)
    if "timeline" in d:
        t = d["timeline"] = interned(c.obj(d["timeline"], f"{path}.timeline"))
        for key in TIMELINE_LISTS:
            if key in t:
                c.nums(t[key], f"{path}.timeline.{key}")
    return d


# Environment sections compare and show read: each, when present, an object whose
# fields are scalars (strings, numbers, booleans or null) unless named in _NESTED.
ENVIRONMENT_SECTIONS = ("kernel", "cpu", "memory", "thp", "cpufreq", "backend", "kvm_mmu",
                        "kvm_modules", "kvm_build", "kvm", "tracefs", "harness", "fleet")
_TEXT_FIELDS = {"kernel": ("release", "version", "machine", "cmdline", "boot_id"),
                "backend": ("kind",), "kvm_mmu": ("mode",), "fleet": ("host",),
                "kvm_build": ("summary",), "tracefs": ("status",),
                "harness": ("version", "git_commit")}


def _environment(c: _Checker, raw: Any) -> dict[str, Any]:
    d = c.obj(raw, "environment")
    for section in ENVIRONMENT_SECTIONS:
        if section not in d:
            continue
        body = c.obj(d[section], f"environment.{section}")
        for key in _TEXT_FIELDS.get(section, ()):
            if key in body:
                body[key] = c.str_(body[key], f"environment.{section}.{key}", nullable=True)
    for name, module in d.get("kvm_modules", {}).items():
        c.obj(module, f"environment.kvm_modules.{name}")
    for key in ("modules", "quirks"):
        for section in ("kvm_build", "kvm"):
            if key in d.get(section, {}):
                c.obj(d[section][key], f"environment.{section}.{key}")
    return d


def _scenario(c: _Checker, raw: Any) -> dict[str, Any]:
    d = c.obj(raw, "scenario")
    d["name"] = c.str_(c.field(d, "name", "scenario"), "scenario.name")

    def metric(v: Any, p: str) -> Any:
        m = c.obj(v, p)
        m["name"] = c.str_(c.field(m, "name", p), f"{p}.name")
        m["unit"] = c.str_(c.field(m, "unit", p), f"{p}.unit")
        c.choice(c.field(m, "direction", p), f"{p}.direction", DIRECTIONS)
        return m

    c.list_(c.field(d, "metrics", "scenario"), "scenario.metrics", metric)
    c.list_(c.field(d, "parameters", "scenario"), "scenario.parameters", c.obj)
    c.list_(c.field(d, "variant_axes", "scenario"), "scenario.variant_axes", c.obj)
    if "headline" in d:
        d["headline"] = c.list_(d["headline"], "scenario.headline", c.str_)
    return d


# Units whose values are durations, with seconds per unit: such a value cannot be
# negative, and one longer than a year is not a measurement of one run.
TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0}
# Units that count events (or events per second): never negative.
COUNT_UNITS = frozenset({
    "cycles", "faults", "flushes", "deletes", "violations", "reads", "steps", "toggles/s",
    "steps/s", "exits", "pages", "events", "zaps", "1/s"})
ABSURD_SECONDS = 365 * 86400.0
ABSURD_COUNT = 1e18


def declared_unit(scenario: Mapping[str, Any], metric: str) -> str | None:
    """The unit the file's scenario declares for ``metric`` (``create@4K`` matches the
    family ``create@<size>``, ``create@16`` ``create@<count>``), or None for an undeclared
    metric."""
    units = {m["name"]: m["unit"] for m in scenario.get("metrics", [])}
    if metric in units:
        return str(units[metric])
    point = point_of(metric, units)
    return None if point is None else str(units[point[0]])


def check_values(result: ResultFile) -> None:
    """Units as declared, and values a run can have: raises ``ResultFormatError`` naming
    the file, the run and the metric.  (Non-finite numbers are refused while parsing.)"""
    declared: dict[str, str | None] = {}  # per metric name, not per run: 40k runs
    for i, run in enumerate(result.runs):
        def where(name: str, run: RunRecord = run, i: int = i) -> str:
            return (f"{result.source}: runs[{i}] (run {run.index + 1}, "
                    f"{variant_text(run.variant)}): metric {name!r}")

        for name, s in run.samples.items():
            if name not in declared:
                declared[name] = declared_unit(result.scenario, name)
            unit = declared[name]
            if unit is not None and s.unit != unit:
                raise ResultFormatError(
                    f"{where(name)} is in {s.unit!r} but the scenario declares "
                    f"{unit!r}: a hand-edited or mixed file; fix the unit or the values")
            lists = [v for v in (s.values, run.warmups.get(name)) if v]
            if not lists:
                continue
            low, high = min(map(min, lists)), max(map(max, lists))
            if (s.unit in TIME_UNITS or s.unit in COUNT_UNITS) and low < 0:
                kind = "time" if s.unit in TIME_UNITS else "count"
                raise ResultFormatError(
                    f"{where(name)}: negative value {low:g} {s.unit} "
                    f"(a {kind} cannot be negative)")
            limit = (ABSURD_SECONDS / TIME_UNITS[s.unit] if s.unit in TIME_UNITS
                     else ABSURD_COUNT)
            if max(-low, high) > limit:
                v = high if high > limit else low
                what = ("longer than a year" if s.unit in TIME_UNITS
                        else f"above {ABSURD_COUNT:g}")
                raise ResultFormatError(
                    f"{where(name)}: absurd value {v:g} {s.unit} ({what}: "
                    "not a measurement of one run)")


def parse_result(raw: Any, source: str = "<result>") -> ResultFile:
    """Validate parsed JSON and build the ``ResultFile``; raises ``ResultFormatError``."""
    c = _Checker(source)
    d = c.obj(raw, "$")
    if d.get("format") != FORMAT:
        raise c.fail("format", f"not a kvmharness result file (expected format {FORMAT!r}, "
                               f"got {d.get('format')!r})")
    version = c.int_(c.field(d, "schema_version", "$"), "schema_version", minimum=1)
    if version > SCHEMA_VERSION:
        raise c.fail("schema_version", f"written by a newer kvmharness (schema version "
                                       f"{version}; this one reads up to {SCHEMA_VERSION}): "
                                       "upgrade kvmharness to read it")

    def f(key: str) -> Any:
        return c.field(d, key, "$")

    result = ResultFile(
        schema_version=version,
        created=c.str_(f("created"), "created"),
        status=c.choice(f("status"), "status", ("running", "complete", "interrupted")),
        scenario=_scenario(c, f("scenario")),
        parameters=c.obj(f("parameters"), "parameters"),
        quick=c.bool_(f("quick"), "quick"),
        label=c.str_(f("label"), "label"),
        variants=c.list_(f("variants"), "variants",
                         lambda v, p: c.map_(v, p, c.str_)),
        repeat=c.int_(f("repeat"), "repeat"),
        iterations=c.int_(f("iterations"), "iterations"),
        warmup=c.int_(f("warmup"), "warmup"),
        # Runs a streaming load (``fast_run.run_converter``) already made records of stay
        # as they are.
        runs=c.list_(f("runs"), "runs",
                     lambda v, p: v if isinstance(v, RunRecord) else _run(c, v, p)),
        warnings=c.list_(f("warnings"), "warnings", c.str_),
        environment=_environment(c, f("environment")),
        command=c.str_(d["command"], "command") if "command" in d else "",
        source=source,
    )
    check_values(result)
    return result
