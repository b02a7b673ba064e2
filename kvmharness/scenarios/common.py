"""What scenarios share below the skeleton: per-phase KVM stats and tracepoint recording,
driving the hammer guest and reading its results, and size-list parameters."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
from collections.abc import Iterator, Mapping

from kvmharness.guest.machine import Machine
from kvmharness.guest.ucall import KH_MAX_VCPUS as KH_MAX_VCPUS
from kvmharness.kvm.stats import CUMULATIVE, StatKind, combine
from kvmharness.observe.counters import KvmCounters
from kvmharness.observe.tracefs import MMIO_EVENTS, ZAP_EVENTS, tracefs_status
from kvmharness.scenarios.abi import GuestAbi
from kvmharness.scenarios.base import LOST_EVENTS_KEY, RunOutcome
from kvmharness.scenarios.metrics import PAGE, parse_size, size_label

u32, u64 = ctypes.c_uint32, ctypes.c_uint64
HAMMER_MAX_PASSES = 4096  # guests/hammer.h
# hammer_write_pass per page: the store, a TSC read for max_stall, the gap compare, the
# loop (guests/hammer.c); refaults come on top.  For the preflight's work estimate.
HAMMER_INSTRUCTIONS_PER_PAGE = 10
HAMMER_ROM_ABSENT = 0xFFFFFFFFFFFFFFFF  # guests/hammer.h


def hammer_rom_word(offset: int) -> int:
    """HAMMER_ROM_WORD(offset) (guests/hammer.h): the ROM's word at each page start."""
    return 0x524F4D0000000000 | offset


def hammer_write_value(vcpu: int, pass_: int) -> int:
    """HAMMER_WRITE_VALUE(v, p) (guests/hammer.h): what pass ``pass_`` of ``vcpu`` writes."""
    return (vcpu << 32) | (pass_ + 1)


# What the hammer's hosts mirror from guests/hammer.h (tests/unit/test_guest_abi.py).
HAMMER_ABI = GuestAbi(
    header="hammer.h",
    constants={"HAMMER_MAX_PASSES": HAMMER_MAX_PASSES, "HAMMER_ROM_ABSENT": HAMMER_ROM_ABSENT},
    macros={"HAMMER_ROM_WORD": (hammer_rom_word, [(0,), (0x1000,), (0x7F000,)]),
            "HAMMER_WRITE_VALUE": (hammer_write_value, [(0, 0), (3, 7), (63, 4095)])},
    symbols={"hammer_pass_tsc": (u64 * HAMMER_MAX_PASSES) * KH_MAX_VCPUS,
             "hammer_pass_max_gap": (u64 * HAMMER_MAX_PASSES) * KH_MAX_VCPUS,
             "hammer_pass_end_tsc": (u64 * HAMMER_MAX_PASSES) * KH_MAX_VCPUS,
             "hammer_passes_done": u32 * KH_MAX_VCPUS,
             "hammer_rom_present": u64 * KH_MAX_VCPUS,
             "hammer_rom_absent": u64 * KH_MAX_VCPUS,
             "hammer_passes": u32, "hammer_write": u32, "hammer_sync_each_pass": u32,
             "hammer_park_each_pass": u32, "hammer_released": u32,
             "hammer_base": u64, "hammer_pages": u64, "hammer_page_size": u64,
             "hammer_stride_per_vcpu": u64, "hammer_rom_base": u64, "hammer_rom_bytes": u64},
)

VCPU_STATS = ("pf_fixed", "pf_taken", "pf_mmio_spte_created", "mmio_exits", "exits",
              "insn_emulation", "tlb_flush", "io_exits", "halt_exits")
VM_STATS = ("mmu_shadow_zapped", "remote_tlb_flush", "remote_tlb_flush_requests",
            "pages_4k", "pages_2m", "pages_1g", "mmu_recycled", "mmu_cache_miss")


def record_stats(outcome: RunOutcome, phase: str, values: Mapping[str, int],
                 kinds: Mapping[str, StatKind]) -> None:
    """Adds one interval's stats to ``outcome.kvm_stats[phase]`` by their type, so a phase
    entered many times (one per toggle, one per size) is one value: counters summed, a
    level (``vm.pages_4k``) its value when the phase last ended, a peak the maximum.  The
    types go to ``outcome.kvm_stat_types`` for the result file."""
    bucket = outcome.kvm_stats.setdefault(phase, {})
    for k, v in values.items():
        kind = kinds.get(k, CUMULATIVE)
        bucket[k] = combine(kind, bucket[k], v) if k in bucket else v
        outcome.kvm_stat_types[k] = kind


class PhaseRecorder:
    """Records, per named phase, KVM stats by type (``record_stats``; VM stats as ``vm.*``,
    vCPU stats as ``vcpu.*``) and kvmmmu tracepoint counts into a RunOutcome."""

    def __init__(self, machine: Machine, outcome: RunOutcome, *, trace: bool = True,
                 events: tuple[str, ...] = ZAP_EVENTS + MMIO_EVENTS) -> None:
        self.machine = machine
        self.outcome = outcome
        status = tracefs_status(events) if trace else None
        self.trace_events = events if status is not None and status.usable else ()
        self.trace_reason = "disabled" if status is None else status.reason
        vm_names = {d.name for d in machine.vm.stats().descriptors}
        vcpu_names = {d.name for d in machine.vcpus[0].stats().descriptors}
        self.vm_stats = [n for n in VM_STATS if n in vm_names]
        self.vcpu_stats = [n for n in VCPU_STATS if n in vcpu_names]
        outcome.effective.setdefault("tracefs", "usable" if self.trace_events else
                                     f"unavailable: {self.trace_reason}")
        outcome.effective.setdefault("memory", machine.memory.report())

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[dict[str, int]]:
        """Accumulates into ``outcome.kvm_stats[name]`` / ``outcome.tracepoints[name]``, so
        a phase entered repeatedly (one per toggle) sums up.  Yields the phase's own stats
        delta dict, filled when the block ends."""
        result: dict[str, int] = {}
        counters = KvmCounters(self.machine.vm, self.machine.vcpus,
                               events=self.trace_events, vm_stats=self.vm_stats,
                               vcpu_stats=self.vcpu_stats)
        with counters:
            yield result
        result.update(counters.stats)
        record_stats(self.outcome, name, counters.stats, counters.kinds)
        if self.trace_events:
            if counters.lost_events:
                self.outcome.warnings.append(f"phase {name}: tracefs buffer overran, "
                                             f"{counters.lost_events} events lost")
                # record_zap_path must not read "0 zap-all events" as proof of zap=slot
                # when the events may have been overwritten.
                lost = self.outcome.effective.setdefault(LOST_EVENTS_KEY, {})
                lost[name] = lost.get(name, 0) + counters.lost_events
            self._accumulate(self.outcome.tracepoints, name, counters.tracepoints)

    @staticmethod
    def _accumulate(target: dict[str, dict[str, int]], name: str,
                    values: Mapping[str, int]) -> None:
        bucket = target.setdefault(name, {})
        for k, v in values.items():
            bucket[k] = bucket.get(k, 0) + v


@dataclasses.dataclass(frozen=True)
class HammerConfig:
    base: int
    pages: int
    passes: int
    stride_per_vcpu: int
    page_size: int = 4096
    write: bool = True
    sync_each_pass: bool = False
    park_each_pass: bool = False  # spin in the guest after each pass until released

    def apply(self, machine: Machine) -> None:
        if not 1 <= self.passes <= HAMMER_MAX_PASSES:
            raise ValueError(f"passes={self.passes}: the hammer guest records at most "
                             f"{HAMMER_MAX_PASSES}")
        machine.write_var("hammer_base", self.base)
        machine.write_var("hammer_pages", self.pages)
        machine.write_var("hammer_page_size", self.page_size)
        machine.write_var("hammer_stride_per_vcpu", self.stride_per_vcpu)
        machine.write_var("hammer_passes", self.passes, u32)
        machine.write_var("hammer_write", int(self.write), u32)
        machine.write_var("hammer_sync_each_pass", int(self.sync_each_pass), u32)
        machine.write_var("hammer_park_each_pass", int(self.park_each_pass), u32)
        machine.write_var("hammer_released", 0, u32)


def hammer_pass_ns(machine: Machine, nvcpus: int) -> list[list[float]]:
    """Per vCPU, the completed passes' durations in ns (guest TSC → KVM_GET_TSC_KHZ)."""
    done = machine.read_var("hammer_passes_done", u32 * KH_MAX_VCPUS)
    tsc = machine.read_var("hammer_pass_tsc", (u64 * HAMMER_MAX_PASSES) * KH_MAX_VCPUS)
    return [[machine.tsc_to_ns(tsc[v][p]) for p in range(done[v])] for v in range(nvcpus)]


def hammer_max_gap_ns(machine: Machine, nvcpus: int) -> list[list[float]]:
    """Per vCPU, each completed pass's longest gap between two page accesses in ns: how
    long the vCPU was held up at once (``max_stall``)."""
    done = machine.read_var("hammer_passes_done", u32 * KH_MAX_VCPUS)
    gap = machine.read_var("hammer_pass_max_gap", (u64 * HAMMER_MAX_PASSES) * KH_MAX_VCPUS)
    return [[machine.tsc_to_ns(gap[v][p]) for p in range(done[v])] for v in range(nvcpus)]


# --- size lists (slot-ops, teardown) ---------------------------------------------------


class SizeList(str):
    """A parameter value: comma-separated sizes, validated and normalised on construction
    (``"4k, 1024k"`` -> ``"4K,1M"``) and kept as a string so results store it as given.
    Bare numbers are bytes; subclasses change ``default_unit``."""

    default_unit = 1
    granule = PAGE
    expected = "a comma list of sizes like 4K,1M (multiples of 4K)"

    def __new__(cls, text: str) -> SizeList:
        items = [s for s in str(text).split(",") if s.strip()]
        if not items:
            raise ValueError(f"{text!r}: no sizes")
        sizes = [parse_size(s, cls.default_unit) for s in items]
        for s in sizes:
            if s % cls.granule:
                raise ValueError(f"{size_label(s)} is not a multiple of {size_label(cls.granule)}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"{text!r} names a size twice")
        return super().__new__(cls, ",".join(size_label(s) for s in sizes))

    @property
    def sizes(self) -> list[int]:
        return [parse_size(s) for s in self.split(",")]


class MiBList(SizeList):
    """Sizes where a bare number means MiB (``"256,1024"`` -> ``"256M,1G"``)."""

    default_unit = 1 << 20
    granule = 1 << 20
    expected = "a comma list of MiB like 256,1024 (or sizes like 1G, multiples of 1M)"
