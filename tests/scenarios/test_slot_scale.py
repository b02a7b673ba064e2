"""slot-scale at its quick size on the real /dev/kvm: the ops ran beside the number of
memslots each count names, every declared metric is there, the zap path follows the
variant.  Behaviour only, never timings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kvmharness.scenarios import slot_scale
from kvmharness.scenarios.base import RunRequest
from kvmharness.scenarios.slot_ops import (
    BACK_TO_BACK,
    EXITED,
    HANDED_OFF,
    OP_STATES,
    OUTSIDE,
    PARKED,
    measured_in,
)

SPEC = slot_scale.SPEC
ITERATIONS, WARMUP = 1, 1


@pytest.fixture(scope="module")
def quick_run(kvm_session: object, run_quick) -> Callable[[str], Any]:
    cache: dict[tuple[str, str], Any] = {}

    def get(zap: str, op_state: str = PARKED) -> Any:
        key = (zap, op_state)
        if key not in cache:
            cache[key] = run_quick(SPEC, {"zap": zap}, iterations=ITERATIONS, warmup=WARMUP,
                                   op_state=op_state)
        cache[key].ok()
        return cache[key]

    return get


@pytest.mark.parametrize("zap", ["all", "slot"])
def test_ops_ran_beside_each_count_of_memslots(quick_run, zap):
    run = quick_run(zap)
    eff = run.outcome.effective
    counts = slot_scale.CountList(run.params["counts"]).counts
    # The guest's own slots (low RAM, page tables, hammer) plus N fillers, every time.
    assert eff["memslots_during_ops"] == {str(c): eff["guest_slots"] + c for c in counts}
    assert eff["max_memslots"] >= eff["guest_slots"] + max(counts) + 1
    run.check_leaks()


@pytest.mark.parametrize("op_state", [PARKED, EXITED, OUTSIDE, BACK_TO_BACK])
def test_every_declared_metric_has_its_samples(quick_run, op_state):
    run = quick_run("all", op_state)
    outcome = run.outcome
    assert outcome.effective["op_state"] == OP_STATES[op_state]
    counts = slot_scale.CountList(run.params["counts"]).counts
    cycles = int(run.params["ops_per_count"])
    expected = [n for n in SPEC.metric_names([str(c) for c in counts])
                if measured_in(n, op_state)]
    assert set(expected) == set(outcome.samples)
    # The declared state's witness: a GUEST_SYNC exit after every pass, or none at all;
    # outside and back_to_back, every op done on the main thread while the vCPU thread
    # waited in the handler; back_to_back, warm_ops round trips (two untimed ioctls each)
    # before every timed op, and none in any other state.
    passes = (ITERATIONS + WARMUP) * (len(counts) * (1 + cycles * (len(slot_scale.OPS) + 1)) + 1)
    assert outcome.effective["guest_syncs"] == (passes if op_state != PARKED else 0)
    ops = (ITERATIONS + WARMUP) * len(counts) * cycles * len(slot_scale.OPS)
    assert outcome.effective["ops_with_vcpu_out"] == (ops if op_state in HANDED_OFF else 0)
    warm_ops = int(run.params["warm_ops"]) if op_state == BACK_TO_BACK else 0
    assert outcome.effective["warm_ops"] == warm_ops
    assert outcome.effective["untimed_ops"] == ops * 2 * warm_ops
    for name in expected:
        assert SPEC.metric(name).unit
        per_iteration = {"max_stall": 1, "steady_pass": cycles * len(counts),
                         "steady_pf_fixed": cycles * len(counts)}.get(name, cycles)
        assert len(outcome.samples[name]) == ITERATIONS * per_iteration, name
        assert len(outcome.warmups[name]) == WARMUP * per_iteration, name
    assert len(run.progress) == ITERATIONS + WARMUP
    assert all(f"{c}: create" in line for c in counts for line in run.progress)


@pytest.mark.requires_tracefs
@pytest.mark.parametrize("zap", ["all", "slot"])
def test_zap_path_follows_the_variant(quick_run, zap):
    run = quick_run(zap)
    outcome = run.outcome
    counts = slot_scale.CountList(run.params["counts"]).counts
    cycles = int(run.params["ops_per_count"])
    # Moves and deletes of the slot under test, plus the fillers deleted going back down
    # to the first count at the start of the second iteration.
    deletes = (ITERATIONS + WARMUP) * len(counts) * cycles * 2 + max(counts) - counts[0]
    assert f"over {deletes} memslot deletes/moves" in outcome.effective["zap_evidence"]
    fast = outcome.tracepoints[slot_scale.RUN_PHASE]["kvm_mmu_zap_all_fast"]
    if zap == "slot":
        assert fast == 0
    else:
        assert fast >= deletes
    assert outcome.effective["zap_path"] == zap and not outcome.warnings


@pytest.mark.requires_tracefs
def test_back_to_back_round_trips_reach_the_kernel(quick_run):
    """The warm-up round trips are real memslot updates: against outside (same script, no
    warm-ups), back_to_back adds exactly one kvm_mmu_zap_all_fast per untimed delete or
    move: a create's undo (delete), a move and its undo (move back), a delete's undo (a
    create, no zap): 4 per warm-up of a create, move, delete cycle."""
    run = quick_run("all", BACK_TO_BACK)
    outside, warm = quick_run("all", OUTSIDE).outcome, run.outcome
    counts = slot_scale.CountList(run.params["counts"]).counts
    cycles, warm_ops = int(run.params["ops_per_count"]), int(run.params["warm_ops"])
    extra = (ITERATIONS + WARMUP) * len(counts) * cycles * 4 * warm_ops
    fast = {name: o.tracepoints[slot_scale.RUN_PHASE]["kvm_mmu_zap_all_fast"]
            for name, o in (("outside", outside), ("back_to_back", warm))}
    assert fast["back_to_back"] - fast["outside"] == extra, fast
    # The zap evidence counts the untimed deletes and moves too.
    assert warm.effective["zap_deletes"] - outside.effective["zap_deletes"] == extra
    assert warm.effective["zap_path"] == "all" and not warm.warnings


def test_counts_parameter():
    assert SPEC.resolve_params({"counts": "1, 8,1024"}, quick=True)["counts"] == "1,8,1024"
    for bad in ("0", "8,4", "4,4", "lots", "40000"):
        with pytest.raises(ValueError, match="parameter 'counts'"):
            SPEC.resolve_params({"counts": bad}, quick=True)
    assert SPEC.metric("delete@4096").unit == "us" and SPEC.metric("move_pass@1").unit == "ms"
    with pytest.raises(KeyError):
        SPEC.metric("delete@016")


@pytest.mark.usefixtures("kvm", "leaks")
def test_more_memslots_than_the_kernel_allows_is_refused_by_name():
    params = SPEC.resolve_params({"counts": "32768", "ops_per_count": "1"}, quick=True)
    with pytest.raises(ValueError, match="KVM_CAP_NR_MEMSLOTS"):
        SPEC.run(RunRequest(params, {"zap": "all"}, 1, 0))
