"""mmio at its quick size on the real /dev/kvm: where each access kind goes (exit, eventfd,
ring), never how long it takes."""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvmharness.results.model import RunRecord
from kvmharness.scenarios import mmio
from kvmharness.scenarios.base import RunRequest

SPEC = mmio.SPEC
ITERATIONS, WARMUP = 3, 1
ROUNDS = ITERATIONS + WARMUP


@dataclasses.dataclass
class QuickRun:
    run: object  # conftest.QuickRun

    @property
    def outcome(self):
        return self.run.ok()

    @property
    def accesses(self) -> int:
        return int(self.run.params["accesses"])

    def counts(self, kind: str) -> dict[str, int]:
        return self.outcome.effective["host_counts"][kind]

    def total(self, kind: str) -> int:
        """Accesses of ``kind`` over all rounds, warm-up included."""
        return self.outcome.effective["accesses_per_round"][kind] * ROUNDS

    def stat(self, kind: str, name: str) -> int | None:
        return self.outcome.kvm_stats[kind].get(f"vcpu.{name}")


@pytest.fixture(scope="module")
def quick(kvm_session: object, run_quick) -> QuickRun:
    return QuickRun(run_quick(SPEC, iterations=ITERATIONS, warmup=WARMUP))


def test_every_kind_ran_on_this_kernel(quick):
    # This host has every capability involved; elsewhere a skipped kind is named with why.
    assert quick.outcome.effective["kinds"] == list(mmio.KINDS)
    assert quick.outcome.effective["kinds_skipped"] == {}
    for kind in mmio.KINDS:
        assert quick.counts(kind)["accesses"] == quick.total(kind) == quick.accesses * ROUNDS


def test_rom_writes_exit_as_mmio_writes(quick):
    # The host's handler accepts only is_write exits at the ROM address and checks every
    # value in order, so the count equal to the accesses means one write exit per store.
    assert quick.counts("rom_write")["userspace_exits"] == quick.total("rom_write")
    if quick.stat("rom_write", "mmio_exits") is not None:
        assert quick.stat("rom_write", "mmio_exits") == quick.total("rom_write")


def test_mmio_reads_writes_and_pio_exit_once_per_access(quick):
    for kind in ("pio", "mmio_read", "mmio_write"):
        assert quick.counts(kind)["userspace_exits"] == quick.total(kind), kind
    for kind in ("mmio_read", "mmio_write"):
        if quick.stat(kind, "mmio_exits") is not None:
            assert quick.stat(kind, "mmio_exits") == quick.total(kind), kind


def test_ioeventfd_writes_make_no_userspace_exit(quick):
    counts = quick.counts("ioeventfd")
    assert counts["eventfd_signals"] == quick.total("ioeventfd")
    assert counts["userspace_exits"] == 0
    if quick.stat("ioeventfd", "mmio_exits") is not None:
        assert quick.stat("ioeventfd", "mmio_exits") == 0
    # (The vCPU stat "exits" is no measure here: on VT-x/AMD-V each write is an EPT/NPT
    # exit handled inside KVM, which is the point; only userspace exits must be absent.)


def test_coalesced_writes_land_in_the_ring(quick):
    counts = quick.counts("coalesced")
    assert counts["ring_entries"] == quick.total("coalesced")
    assert counts["userspace_exits"] == counts["ring_full_exits"] == 0
    if quick.stat("coalesced", "mmio_exits") is not None:
        assert quick.stat("coalesced", "mmio_exits") == 0


def test_every_metric_present_with_units(quick):
    outcome = quick.outcome
    declared = {m.name for m in SPEC.metrics}
    assert declared == set(outcome.samples)
    for metric in SPEC.metrics:
        assert metric.unit in ("cycles", "ns") and metric.direction == "lower"
        values = outcome.samples[metric.name]
        assert len(values) == ITERATIONS and len(outcome.warmups[metric.name]) == WARMUP
        assert all(math.isfinite(v) and v > 0 for v in values), metric.name
    record = RunRecord.from_outcome(outcome, SPEC, index=0, repeat=0, variant={})
    assert not [w for w in record.warnings if "not declared" in w]
    assert all(s.unit for s in record.samples.values())
    assert outcome.effective["tsc_khz"] > 0


def test_exit_split_adds_up_to_each_rounds_host_time(quick):
    # Per exit, the KVM_RUN share and the harness's share are two parts of one measured
    # window: they add up to its host time per exit, and that window (timed in the vCPU
    # thread) lies inside the whole round the main thread timed around m.run().
    outcome, split = quick.outcome, quick.outcome.effective["exit_split"]
    assert set(split) == set(mmio.EXIT_KINDS)
    for kind in mmio.EXIT_KINDS:
        rounds = split[kind]
        assert all(len(v) == ROUNDS for v in rounds.values()), kind
        # Every access of an exiting kind is one exit, and the window spans them all.
        assert rounds["intervals"] == [outcome.effective["accesses_per_round"][kind] - 1] * ROUNDS
        measured = range(WARMUP, ROUNDS)
        kvm, harness = outcome.samples[f"{kind}_kvm_ns"], outcome.samples[f"{kind}_harness_ns"]
        assert len(kvm) == len(harness) == ITERATIONS
        for r, k, h in zip(measured, kvm, harness):
            n = rounds["intervals"][r]
            assert 0 < rounds["kvm_ns"][r] <= rounds["window_ns"][r] <= rounds["run_ns"][r], kind
            assert k > 0 and h >= 0, kind
            assert k == pytest.approx(rounds["kvm_ns"][r] / n), kind
            assert k + h == pytest.approx(rounds["window_ns"][r] / n), kind
    for kind in set(mmio.KINDS) - set(mmio.EXIT_KINDS):
        # No exit, so no harness share: their whole cost is inside KVM_RUN.
        assert not {f"{kind}_kvm_ns", f"{kind}_harness_ns"} & set(outcome.samples), kind


def test_stats_recorded_per_kind(quick):
    for kind in mmio.KINDS:
        stats = quick.outcome.kvm_stats[kind]
        # The MMIO-SPTE counter is recorded whether or not this host caches MMIO SPTEs
        # (kvm.mmio_caching=N here keeps it at 0).
        assert "vcpu.pf_mmio_spte_created" in stats and stats["vcpu.pf_mmio_spte_created"] >= 0
        assert stats["vcpu.exits"] > 0  # at least the SYNCs and DONE


@pytest.mark.requires_tracefs
def test_mmio_tracepoints_counted_per_kind(quick):
    if quick.outcome.effective["tracefs"] != "usable":
        pytest.skip(f"tracefs: {quick.outcome.effective['tracefs']}")
    for kind in mmio.KINDS:
        events = quick.outcome.tracepoints[kind]
        assert {"mark_mmio_spte", "handle_mmio_page_fault"} <= set(events)


def test_no_fd_or_thread_leak(quick):
    quick.run.check_leaks()


def test_one_progress_line_per_iteration(quick):
    assert len(quick.run.progress) == ROUNDS
    assert all("cycles/access" in line for line in quick.run.progress)


@pytest.mark.usefixtures("kvm")
def test_coalesced_rounds_are_capped_at_the_ring_capacity(run_quick):
    run = run_quick(SPEC, iterations=ITERATIONS, warmup=WARMUP, kinds="coalesced",
                    accesses="1000")
    outcome = run.ok()
    assert outcome.effective["kinds"] == ["coalesced"]
    assert outcome.effective["accesses_per_round"] == {"coalesced": mmio.RING_CAPACITY}
    counts = outcome.effective["host_counts"]["coalesced"]
    # Every write arrives exactly once, in the ring or (ring full) as a userspace exit.
    # Kernels differ by one in how full they let the ring get (6.1 keeps one more slot
    # free than 6.12), so the capped round may spill a single write per round.
    assert counts["ring_entries"] + counts["ring_full_exits"] == mmio.RING_CAPACITY * ROUNDS
    assert counts["ring_full_exits"] <= ROUNDS
    assert set(outcome.samples) == {"coalesced_cycles", "coalesced_ns"}
    assert "coalesced_note" in outcome.effective
    run.check_leaks()


def test_kinds_parameter():
    assert mmio.parse_kinds("all") == mmio.KINDS
    assert mmio.parse_kinds("coalesced, pio") == ("pio", "coalesced")
    with pytest.raises(ValueError, match="unknown.*'mmio'"):
        mmio.parse_kinds("mmio")


@pytest.mark.usefixtures("kvm")
def test_one_access_times_no_exit_round_trip(run_quick):
    # A round of one exit has no whole round trip between two exits: no split sample.
    run = run_quick(SPEC, iterations=1, warmup=0, kinds="pio", accesses="1")
    outcome = run.ok()
    assert outcome.effective["exit_split"]["pio"]["intervals"] == [0]
    assert set(outcome.samples) == {"pio_cycles", "pio_ns"}


@pytest.mark.usefixtures("kvm")
def test_warmup_only_run_reports_progress():
    params = SPEC.resolve_params({"kinds": "pio"}, quick=True)
    messages: list[str] = []
    outcome = SPEC.run(RunRequest(params, {}, 0, 1, messages.append))
    assert not outcome.samples and len(outcome.warmups["pio_cycles"]) == 1
    assert messages and "cycles/access" in messages[0]
