"""The typed result document: a scenario's RunOutcome and the file's RunRecord share one
declaration of what a run saw (RunEvidence); the zap path a run took is a typed
ZapEvidence, read the same from new files (counts stored) and old ones (counts only in
the words); and every result file kept in results/examples/ still loads and writes back
unchanged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kvmharness.results.model import FORMAT, RunRecord
from kvmharness.results.store import load_result
from kvmharness.scenarios.base import (
    ZAP_AXIS,
    Metric,
    RunEvidence,
    RunOutcome,
    ScenarioSpec,
    ZapEvidence,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "results" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.json"))


def test_examples_are_there() -> None:
    assert len(EXAMPLE_FILES) >= 20, EXAMPLES


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_file_loads_and_writes_back_unchanged(path: Path) -> None:
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT:
        # `kvmharness ab`'s own record of its boots, not a result document.
        assert path.name == "ab.json" and {"kernels", "scenarios", "rounds"} <= set(raw)
        return
    result = load_result(path)
    assert result.runs
    again = result.to_json()
    for run_raw, run_again in zip(raw["runs"], again["runs"], strict=True):
        # The same keys in the same order; a schema-1 file gains only empty stat types.
        assert [k for k in run_again if k in run_raw] == list(run_raw)
        assert {k: v for k, v in run_again.items() if k in run_raw} == run_raw
        assert {k: v for k, v in run_again.items() if k not in run_raw} in (
            {}, {"kvm_stat_types": {}})
    for run in result.ok_runs():
        zap = run.zap
        if "zap_path" not in run.effective:
            assert zap is None
            continue
        assert zap is not None and zap.path == run.effective["zap_path"]
        assert zap.requested == run.variant.get("zap", zap.requested)
        if "kvm_mmu_zap_all_fast events over" in zap.text:  # old files: counts in words
            assert zap.zap_all_events is not None and zap.deletes is not None
            assert zap.text.startswith(f"{zap.zap_all_events} kvm_mmu_zap_all_fast events "
                                       f"over {zap.deletes} memslot")


def test_a_record_keeps_every_field_of_what_the_run_saw() -> None:
    outcome = RunOutcome()
    for f in dataclasses.fields(RunEvidence):
        value = {"start_time": 5.0, "end_time": 6.0, "warnings": [f"w-{f.name}"]}.get(
            f.name, {f"{f.name}-key": {"x": 1}} if f.name in ("kvm_stats", "tracepoints")
            else {"k": f.name} if f.name != "warmups" else {"m": [1.0]})
        setattr(outcome, f.name, value)
    outcome.add("m", 2.0)
    spec = ScenarioSpec("s", "", (), (Metric("m", "ms", "lower", ""),), (), lambda r: outcome)
    record = RunRecord.from_outcome(outcome, spec, index=0, repeat=0, variant={})
    for f in dataclasses.fields(RunEvidence):
        assert getattr(record, f.name) == getattr(outcome, f.name), f.name
    assert record.samples["m"].values == [2.0] and record.samples["m"].unit == "ms"


def test_zap_evidence_round_trips_and_reads_old_words() -> None:
    outcome = RunOutcome()
    outcome.tracepoints["run"] = {"kvm_mmu_zap_all_fast": 3}
    ZAP_AXIS.record(outcome, {"zap": "slot"}, deletes=7, phase="run")
    zap = outcome.zap
    assert zap == ZapEvidence("slot", "all", "3 kvm_mmu_zap_all_fast events over 7 memslot "
                              "deletes/moves", 3, 7)
    assert outcome.warnings == ["requested zap=slot but the kernel took zap=all (3 "
                                "kvm_mmu_zap_all_fast events over 7 memslot deletes/moves)"]
    old = {k: v for k, v in outcome.effective.items()
           if k not in ("zap_all_events", "zap_deletes")}
    assert ZapEvidence.of(old) == zap
    untraced = RunOutcome()
    ZAP_AXIS.record(untraced, {"zap": "all"}, deletes=7, phase="run")
    assert untraced.zap is not None and untraced.zap.path == "unverified"
    assert untraced.zap.deletes is None and "zap_deletes" not in untraced.effective
    assert ZapEvidence.of({"zap_path": "sideways"}) is None
