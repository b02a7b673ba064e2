"""The contract every registered scenario keeps, tested the moment it is registered: at
quick size (shrunk further where the emulating KVM would take long) one session over all
its variants leaves no fd or thread behind, produces its headline metrics with declared
units, records its variant axes' effective values (the zap path), and writes a result
file that loads.  Old result files (results/examples/) keep loading and keep their metrics'
units and directions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmharness.observe import fingerprint
from kvmharness.results.model import FORMAT
from kvmharness.results.store import load_result
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import ZapAxis
from kvmharness.scenarios.metrics import expand
from kvmharness.session import SessionPlan, run_session

SPECS = registry.all_scenarios()
EXAMPLES = Path(__file__).resolve().parents[2] / "results" / "examples"
# Quick sizes shrunk further, so the whole contract runs in seconds on an emulating KVM;
# a scenario not listed runs at its plain quick size.
TINY: dict[str, dict[str, str]] = {
    # rom-toggle's deletes happen only while the passes run (slot_delete is a headline):
    # passes long enough (~150 ms here, ~35 deletes at toggle_ms=1) that a loaded host
    # still lets the toggler in; 3 passes (~40 ms) sometimes saw none.
    "rom-toggle": {"passes": "12", "mem_per_vcpu": "2", "toggle_ms": "1"},
    "slot-ops": {"sizes": "4K,64K", "ops_per_size": "1", "populated_mib": "2"},
    "mmio": {"accesses": "8"},
    "mmio-flip": {"toggles": "8", "dwell_us": "200"},
    "teardown": {"populated_sizes": "4"},
    "slot-scale": {"counts": "1,16", "ops_per_count": "1", "populated_mib": "2"},
}


@pytest.mark.usefixtures("kvm")
@pytest.mark.parametrize("name", list(SPECS))
def test_scenario_keeps_the_contract(name, tmp_path, leaks):
    spec = SPECS[name]
    plan = SessionPlan.resolve(spec, params=TINY.get(name, {}), quick=True, repeat=1,
                               iterations=1, warmup=1, label="contract")
    session = run_session(plan, tmp_path / f"{name}.json", fingerprint.collect())
    leaks.check()  # before the file is read: the run itself left nothing open
    assert session.failed_runs == 0 and not session.interrupted
    assert session.path is not None and session.path.is_file()
    result = load_result(session.path)
    assert result.status == "complete"
    assert [r.variant for r in result.runs] == [dict(v) for v in plan.variants]
    ok = [r for r in result.runs if r.status == "ok"]
    assert ok, f"no variant of {name} ran: {[r.reason for r in result.runs]}"
    for run in result.runs:
        assert run.status in ("ok", "skipped"), f"{run.variant}: {run.status} {run.reason}"
    for run in ok:
        samples = set(run.samples)
        # A plain headline metric is a sample; a family (``create@<size>``) has points.
        missing = [h for h in spec.headline_metrics() if not expand([h], samples)]
        assert not missing, f"{name} {run.variant}: no samples for headline {missing}"
        for metric, values in run.samples.items():
            declared = spec.metric(metric)
            assert values.unit == declared.unit and values.direction == declared.direction
            assert values.values, f"{metric}: no samples"
        assert not [w for w in run.warnings if "not declared" in w]
        assert run.end_time and run.end_time >= run.start_time
        for axis in spec.variant_axes:
            value = run.variant[axis.name]
            if isinstance(axis, ZapAxis):
                assert run.effective["zap_requested"] == value
                assert run.effective["zap_path"] in ("all", "slot", "unverified")
                assert run.effective["zap_evidence"]
            else:
                assert run.effective[axis.name] == value


# Result documents only: results/examples also keeps `ab`'s record of its boots (ab.json)
# and build-kvm manifests (tests/unit/test_result_document.py checks every file).
OLD_RESULTS = [p for p in sorted(EXAMPLES.rglob("*.json")) if EXAMPLES.is_dir()
               and json.loads(p.read_text()).get("format") == FORMAT]
# Directions fixed on purpose since the examples were recorded (a result file carries its
# own directions, so old files still compare as they were written).
DIRECTION_FIXED = {("rom-toggle", "toggles")}


@pytest.mark.parametrize("path", OLD_RESULTS,
                         ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_old_result_files_load_with_the_same_metrics(path):
    result = load_result(path)
    spec = SPECS[result.scenario["name"]]
    for run in result.runs:
        for metric, values in run.samples.items():
            declared = spec.metric(metric)  # KeyError: a metric was renamed or dropped
            assert values.unit == declared.unit, metric
            if (spec.name, metric) not in DIRECTION_FIXED:
                assert values.direction == declared.direction, metric
