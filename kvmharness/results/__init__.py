"""Result files: the versioned JSON document, atomic writes, loading with validation."""

from kvmharness.results.model import FORMAT, SCHEMA_VERSION, MetricSamples, ResultFile, RunRecord
from kvmharness.results.store import atomic_write_json, load_result, write_result
from kvmharness.results.validate import ResultFormatError, parse_result

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "MetricSamples",
    "ResultFile",
    "ResultFormatError",
    "RunRecord",
    "atomic_write_json",
    "load_result",
    "parse_result",
    "write_result",
]
