"""The common case of a run, checked in bulk.

``validate.check_run`` checks a run field by field, each check naming its JSON path for the
message: 40k runs took seconds in those calls alone.  ``fast_run`` makes the same record
from a run whose every field is as a complete ``kvmharness run`` writes it, with no path
built and no call per field; anything else (a wrong type, a missing field, a negative
count, a string that would need escaping) returns None, and ``check_run`` then names the
problem or accepts the run.  So the fast path is an optimisation only: it never accepts
what ``check_run`` refuses and never builds a different record (tests/unit check both on
every example file and on each field broken in turn).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from typing import Any

from kvmharness.results.decode import Converter
from kvmharness.results.model import FORMAT, SCHEMA_VERSION, MetricSamples, RunRecord
from kvmharness.results.validate import (
    DIRECTIONS,
    KVM_STAT_MINIMUM,
    RUN_STATUSES,
    STAT_TYPES,
    TIMELINE_LISTS,
    TRACEPOINT_MINIMUM,
    ZAP_KEYS,
    check_run,
    interned,
)

_REQUIRED = frozenset({"index", "repeat", "variant", "status", "reason", "start_time",
                       "end_time", "samples", "warmups", "kvm_stats", "tracepoints", "noise",
                       "effective", "warnings"})
_STATUSES = frozenset(RUN_STATUSES)
_DIRECTIONS = frozenset(DIRECTIONS)
_STAT_TYPES = frozenset(STAT_TYPES)
_NUMBERS = frozenset({int, float})
_FLOAT = frozenset({float})
_INT = frozenset({int})
_STR = frozenset({str})

# What JSON text needs to produce a control character (C0, DEL, C1) in a decoded string:
# an escape (\n, \u001b, \u0085 ...) or the character itself.  A text with none of them
# decodes to strings that ``printable`` leaves alone.  Two searches, not one alternation:
# a pattern that starts with a backslash is found by a fast scan for that character (0.1 s
# on 180 MB against 3.8 s), and a pure-ASCII text holds no DEL-to-C1 character but DEL.
_CONTROL_ESCAPE = re.compile(r"\\(?:[bfnrt]|u00[01]|u007f|u00[89])", re.IGNORECASE)
_CONTROL_LITERAL = re.compile(r"[\x7f-\x9f]")


def text_is_plain(text: str) -> bool:
    """No string in this JSON text can hold a control character (see ``printable``).
    JSON's own whitespace between tokens is not inside a string and does not count."""
    if _CONTROL_ESCAPE.search(text) is not None:
        return False
    return "\x7f" not in text if text.isascii() else _CONTROL_LITERAL.search(text) is None


def _floats(value: Any) -> list[float] | None:
    if type(value) is not list:
        return None
    types = set(map(type, value))
    if types <= _FLOAT:  # as written by run: the list itself (a sum of floats never raises)
        return value if math.isfinite(sum(value)) else None
    if not types <= _NUMBERS:
        return None
    try:
        floats = list(map(float, value))
        finite = math.isfinite(sum(floats))
    except OverflowError:
        return None
    return floats if finite else None


def _counts(value: Any, minimum: int) -> dict[str, int] | None:
    if (type(value) is not dict or not set(map(type, value.values())) <= _INT
            or min(value.values(), default=0) < minimum):
        return None
    return interned(value)


def _number(value: Any) -> bool:
    return type(value) in _NUMBERS and math.isfinite(value)


def run_converter(source: str, text: str) -> Callable[[dict[str, Any]], Converter | None]:
    """For ``decode.loads_streaming`` of ``text``: each run checked and made a record as
    soon as it is parsed, once the fields before the runs say this is a result file this
    version reads (otherwise ``parse_result`` reports that, as for any document).  The
    fast path first, when the text allows it; the field-by-field check for the rest."""
    plain = text_is_plain(text)

    def convert(raw: Any, i: int) -> RunRecord:
        record = fast_run(raw) if plain else None
        return record if record is not None else check_run(source, raw, f"runs[{i}]")

    def choose(fields: dict[str, Any]) -> Converter | None:
        version = fields.get("schema_version")
        if (fields.get("format") != FORMAT or type(version) is not int
                or not 1 <= version <= SCHEMA_VERSION):
            return None
        return convert

    return choose


def fast_run(d: Any) -> RunRecord | None:
    """The record of run ``d`` when all of it is well-formed, else None.  Only for runs
    from a text ``text_is_plain`` passed: strings are kept as they are, unescaped."""
    try:
        return _record(d)
    except (TypeError, OverflowError):
        return None  # an unhashable value tested for membership, an int beyond a float


def _record(d: Any) -> RunRecord | None:
    if type(d) is not dict or not d.keys() >= _REQUIRED or not _plain_fields(d):
        return None
    samples = _samples(d["samples"])
    warmups = _lists(d["warmups"])
    kvm_stats = _phases(d["kvm_stats"], KVM_STAT_MINIMUM)
    tracepoints = _phases(d["tracepoints"], TRACEPOINT_MINIMUM)
    effective = _effective(d["effective"])
    noise = d["noise"]
    stat_types = d.get("kvm_stat_types", {})
    if (samples is None or warmups is None or kvm_stats is None or tracepoints is None
            or effective is None or type(noise) is not dict or type(stat_types) is not dict
            or not set(stat_types.values()) <= _STAT_TYPES):
        return None
    end = d["end_time"]
    return RunRecord(
        index=d["index"], repeat=d["repeat"], status=d["status"], reason=d["reason"],
        variant={sys.intern(k): sys.intern(v) for k, v in d["variant"].items()},
        start_time=float(d["start_time"]), end_time=None if end is None else float(end),
        samples=samples, warmups=warmups, kvm_stats=kvm_stats, tracepoints=tracepoints,
        noise=interned(noise), effective=effective,
        warnings=d["warnings"],
        kvm_stat_types={sys.intern(k): sys.intern(v) for k, v in stat_types.items()})


def _plain_fields(d: dict[str, Any]) -> bool:
    """The run's scalar fields, its variant and its warnings as ``check_run`` wants them."""
    index, repeat, reason, end = d["index"], d["repeat"], d["reason"], d["end_time"]
    variant, warnings = d["variant"], d["warnings"]
    return (type(index) is int and index >= 0 and type(repeat) is int and repeat >= 0
            and d["status"] in _STATUSES and (reason is None or type(reason) is str)
            and _number(d["start_time"]) and (end is None or _number(end))
            and type(variant) is dict and set(map(type, variant.values())) <= _STR
            and type(warnings) is list and set(map(type, warnings)) <= _STR)


def _samples(value: Any) -> dict[str, MetricSamples] | None:
    if type(value) is not dict:
        return None
    out = {}
    for name, s in value.items():
        if type(s) is not dict:
            return None
        unit, direction = s.get("unit"), s.get("direction")
        values = _floats(s.get("values"))
        if type(unit) is not str or direction not in _DIRECTIONS or values is None:
            return None
        out[sys.intern(name)] = MetricSamples(sys.intern(unit), direction, values)
    return out


def _lists(value: Any) -> dict[str, list[float]] | None:
    if type(value) is not dict:
        return None
    out = {}
    for name, values in value.items():
        floats = _floats(values)
        if floats is None:
            return None
        out[sys.intern(name)] = floats
    return out


def _phases(value: Any, minimum: int) -> dict[str, dict[str, int]] | None:
    if type(value) is not dict:
        return None
    out = {}
    for phase, counters in value.items():
        counts = _counts(counters, minimum)
        if counts is None:
            return None
        out[sys.intern(phase)] = counts
    return out


def _effective(value: Any) -> dict[str, Any] | None:
    if type(value) is not dict:
        return None
    d = interned(value)
    if not all(d.get(k) is None or type(d[k]) is str for k in ZAP_KEYS):
        return None
    if "timeline" in d:
        timeline = d["timeline"]
        if type(timeline) is not dict or not all(
                _floats(timeline[k]) is not None for k in TIMELINE_LISTS if k in timeline):
            return None
        d["timeline"] = interned(timeline)
    return d
