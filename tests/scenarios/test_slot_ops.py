"""slot-ops at its quick size on the real /dev/kvm: behaviour, never timings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kvmharness.guest.layout import LayoutError
from kvmharness.scenarios import slot_ops
from kvmharness.scenarios.base import RunRequest
from kvmharness.scenarios.common import SizeList
from kvmharness.scenarios.metrics import size_label

SPEC = slot_ops.SPEC
ITERATIONS, WARMUP = 1, 1


@pytest.fixture(scope="module")
def quick_run(kvm_session: object, run_quick) -> Callable[..., Any]:
    """One quick run per (zap, populated), shared by the tests that inspect it."""
    cache: dict[tuple[str, str, str], Any] = {}

    def get(zap: str, populated: str = "true", op_state: str = slot_ops.PARKED) -> Any:
        key = (zap, populated, op_state)
        if key not in cache:
            cache[key] = run_quick(SPEC, {"zap": zap}, iterations=ITERATIONS, warmup=WARMUP,
                                   populated=populated, op_state=op_state)
        run = cache[key]
        run.ok()  # skips with the reason if the variant is unsupported
        return run

    return get


def sizes_of(run: Any) -> list[int]:
    return SizeList(run.params["sizes"]).sizes  # type: ignore[arg-type]


@pytest.mark.parametrize("zap,op_state", [("all", slot_ops.PARKED), ("slot", slot_ops.PARKED),
                                          ("all", slot_ops.EXITED),
                                          ("all", slot_ops.OUTSIDE),
                                          ("all", slot_ops.BACK_TO_BACK)])
def test_every_declared_metric_has_samples_and_a_unit(quick_run, zap, op_state):
    run = quick_run(zap, op_state=op_state)
    outcome = run.outcome
    assert outcome.effective["op_state"] == slot_ops.OP_STATES[op_state]
    sizes, cycles = sizes_of(run), int(run.params["ops_per_size"])  # type: ignore[arg-type]
    expected = [n for n in SPEC.metric_names([size_label(s) for s in sizes])
                if slot_ops.measured_in(n, op_state)]
    assert set(expected) == set(outcome.samples), (
        f"missing {set(expected) - set(outcome.samples)}, "
        f"undeclared {set(outcome.samples) - set(expected)}")
    for name in expected:
        metric = SPEC.metric(name)
        assert metric.unit and metric.direction == "lower"
        if name == "max_stall":  # one per iteration
            assert len(outcome.samples[name]) == ITERATIONS
            assert len(outcome.warmups[name]) == WARMUP
            continue
        per_size = "@" in name
        n = ITERATIONS * cycles * (1 if per_size else len(sizes))
        assert len(outcome.samples[name]) == n, name
        assert len(outcome.warmups[name]) == WARMUP * cycles * (1 if per_size else len(sizes))
        assert all(v >= 0 for v in outcome.samples[name])
    # The guest ran: its first pass and each size's cycles have stats of their own.
    for phase in ["populate", "warmup", slot_ops.RUN_PHASE]:
        assert outcome.kvm_stats[phase]["vcpu.exits"] > 0, phase
    # The declared state: exited or outside, one GUEST_SYNC exit after every pass of every
    # iteration (the Machine's ucall log); parked, none (PVM's stats count no PIO exits, so
    # the ucall log is the witness).  Outside and back_to_back, every op was done on the
    # main thread while the vCPU thread waited in the sync handler; back_to_back, after
    # warm_ops untimed round trips (two ioctls each), and no untimed op in the others.
    passes = (ITERATIONS + WARMUP) * (len(sizes) * cycles * (len(slot_ops.OPS) + 1) + 1)
    assert outcome.effective["guest_syncs"] == (passes if op_state != slot_ops.PARKED else 0)
    ops = (ITERATIONS + WARMUP) * len(sizes) * cycles * len(slot_ops.OPS)
    assert outcome.effective["ops_with_vcpu_out"] == (
        ops if op_state in slot_ops.HANDED_OFF else 0)
    warm_ops = int(run.params["warm_ops"]) if op_state == slot_ops.BACK_TO_BACK else 0
    assert outcome.effective["untimed_ops"] == ops * 2 * warm_ops
    assert outcome.effective["populate_pass_ms"] > 0


@pytest.mark.requires_tracefs
def test_back_to_back_round_trips_reach_the_kernel(quick_run):
    """Against outside (same script, no warm-ups), back_to_back adds exactly one
    kvm_mmu_zap_all_fast per untimed delete or move: per warm-up of a cycle, a create's
    undo (delete), a move and its undo, a delete's undo (a create: none), the dirty-log
    flag changes none."""
    run = quick_run("all", op_state=slot_ops.BACK_TO_BACK)
    outside = quick_run("all", op_state=slot_ops.OUTSIDE).outcome
    extra = ((ITERATIONS + WARMUP) * len(sizes_of(run)) * int(run.params["ops_per_size"])
             * 4 * int(run.params["warm_ops"]))  # type: ignore[arg-type]
    fast = [o.tracepoints[slot_ops.RUN_PHASE]["kvm_mmu_zap_all_fast"]
            for o in (outside, run.outcome)]
    assert fast[1] - fast[0] == extra, fast
    assert run.outcome.effective["zap_deletes"] - outside.effective["zap_deletes"] == extra
    assert run.outcome.effective["zap_path"] == "all" and not run.outcome.warnings


def test_round_trips_leave_the_slot_where_the_cycle_had_it(vm):
    """Each op's undo returns the slot to its state before the op (the kernel refuses a
    create of a present slot, a move of an absent one): the table after a round trip equals
    the table before it, at every step of the cycle."""
    slot = slot_ops.SlotUnderTest(vm, 8192, 1 << 30, 2 << 30)
    zapping = {"create": 1, "dirty_on": 0, "dirty_off": 0, "move": 2, "delete": 1}
    try:
        for op in slot_ops.OPS:
            before = dict(vm.memslots)
            assert slot.round_trip(op, 8192) == zapping[op], op
            assert vm.memslots == before, op
            slot.perform(op, 8192)
        assert slot.slot not in vm.memslots
    finally:
        slot.close()


def test_idle_run_times_the_ops_without_a_guest(quick_run):
    run = quick_run("all", "false")
    outcome = run.outcome
    ops = {n for n in SPEC.metric_names([size_label(s) for s in sizes_of(run)])
           if n.split("@")[0] in slot_ops.OPS}  # the plain names: no vCPU exits at all
    assert set(outcome.samples) == ops
    assert outcome.effective["populated"] is False
    assert "populate_pass_ms" not in outcome.effective


@pytest.mark.parametrize("zap,populated", [("all", "true"), ("slot", "true"), ("all", "false")])
def test_no_fd_or_thread_leaks(quick_run, zap, populated):
    quick_run(zap, populated).check_leaks()


def test_one_progress_line_per_iteration_naming_every_size(quick_run):
    run = quick_run("all")
    assert len(run.progress) == ITERATIONS + WARMUP
    for line in run.progress:
        assert all(f"{size_label(s)}: create" in line for s in sizes_of(run)), line


@pytest.mark.requires_tracefs
@pytest.mark.parametrize("zap", ["all", "slot"])
def test_zap_path_follows_the_variant(kvm, quick_run, zap):
    run = quick_run(zap)
    outcome = run.outcome
    zapping = ((ITERATIONS + WARMUP) * len(sizes_of(run)) * int(run.params["ops_per_size"])
               * len(slot_ops.ZAPPING_OPS))  # type: ignore[arg-type]
    fast = outcome.tracepoints[slot_ops.RUN_PHASE]["kvm_mmu_zap_all_fast"]
    if zap == "slot":
        assert fast == 0, f"{fast} zap-all events with the quirk disabled"
    else:
        assert fast >= zapping, f"{fast} zap-all events for {zapping} deletes/moves"
    assert outcome.effective["zap_path"] == zap
    assert not outcome.warnings


def test_parameter_errors_are_clear():
    with pytest.raises(ValueError, match="parameter 'sizes' expects a comma list of sizes"):
        SPEC.resolve_params({"sizes": "3K"}, quick=True)
    with pytest.raises(ValueError, match="parameter 'sizes' expects a comma list of sizes"):
        SPEC.resolve_params({"sizes": "4K,lots"}, quick=True)
    with pytest.raises(ValueError, match="parameter 'populated' expects true or false"):
        SPEC.resolve_params({"populated": "maybe"}, quick=True)
    with pytest.raises(KeyError, match="no parameter 'size'"):
        SPEC.resolve_params({"size": "4K"}, quick=True)
    assert SPEC.resolve_params({"sizes": "4k, 1024K,1g"}, quick=True)["sizes"] == "4K,1M,1G"


def test_run_refuses_impossible_plans_before_building_a_vm():
    too_many = SPEC.resolve_params({"sizes": "4K,8K,12K,16K", "ops_per_size": "200"},
                                   quick=True)
    with pytest.raises(ValueError, match="hammer passes needed per iteration"):
        SPEC.run(RunRequest(too_many, {"zap": "all"}, 1, 0))
    # The guard counts the slot as if touched: a slot beyond the host's memory is refused.
    huge = SPEC.resolve_params({"sizes": "4K,1024T"}, quick=True)
    with pytest.raises(LayoutError, match="counted as if touched"):
        SPEC.run(RunRequest(huge, {"zap": "all"}, 1, 0))


def test_sized_metrics_resolve_for_any_size():
    assert SPEC.metric("delete@4G").unit == "us"
    assert SPEC.metric("delete_pass@16M").unit == "ms"
    assert SPEC.metric("move_pf_fixed@64K").unit == "faults"
    assert SPEC.metric("steady_pass").unit == "ms"
    for bad in ("delete@3K", "delete@4096", "bogus@4K", "delete", "delete@<size>x"):
        with pytest.raises(KeyError):
            SPEC.metric(bad)
