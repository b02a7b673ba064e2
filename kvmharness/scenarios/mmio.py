"""mmio: what one emulated access costs the guest, per access kind.

The MMIO-generation work in "KVM: x86/mmu: Remove fast invalidate mechanism" (2019) is about
MMIO SPTEs: KVM caches "this GPA has no memslot" in an SPTE so the next access takes the
fast path (handle_mmio_page_fault) straight to the exit instead of a full walk.  This
scenario measures, in guest TSC cycles per access (rdtsc around a loop of N accesses to one
address, guests/mmio.c), the kinds of access that reach that path or bypass userspace:

- ``pio``:        ``inl`` answered by the host (the exit round-trip baseline);
- ``mmio_read``:  a load from a GPA with no memslot, answered by the host;
- ``mmio_write``: a store there;
- ``rom_write``:  a store into a KVM_MEM_READONLY slot (reads would hit memory);
- ``ioeventfd``:  a store to a KVM_IOEVENTFD address: KVM signals an eventfd, no exit;
- ``coalesced``:  a store into a KVM_REGISTER_COALESCED_MMIO zone: queued in the ring.

Each kind runs in its own phase (PhaseRecorder: vCPU pf_mmio_spte_created, mmio_exits,
io_exits, exits; mark_mmio_spte / handle_mmio_page_fault tracepoints), and the host counts
what it saw itself (userspace exits, eventfd signals, ring entries) into ``effective``, so a
result shows that an "ioeventfd" number was really taken without exits.

The guest's cycles per access include the harness's own handling of each exit.  For the
kinds that exit to userspace (EXIT_KINDS) the host also splits one exit's host time in two:
``<kind>_kvm_ns`` inside KVM_RUN (the kernel's exit and entry, guest included) and
``<kind>_harness_ns`` outside it (decoding, dispatch, the handler, the I/O completion, the
loop).  See ExitClock for how."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from kvmharness.guest.layout import GiB, Layout, Region
from kvmharness.guest.machine import Machine
from kvmharness.kvm import Io, Mmio, Vcpu
from kvmharness.kvm.vm import IoEventFd
from kvmharness.scenarios.abi import GuestAbi
from kvmharness.scenarios.base import Metric, Parameter, RunOutcome, RunRequest, ScenarioSpec
from kvmharness.scenarios.common import PhaseRecorder, u32, u64
from kvmharness.scenarios.presentation import Pivot
from kvmharness.scenarios.skeleton import Context, GuestScenario, Handlers
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.kvm import KVM_COALESCED_MMIO_MAX

# guests/mmio.h
KINDS = ("pio", "mmio_read", "mmio_write", "rom_write", "ioeventfd", "coalesced")
MMIO_MAX_ROUNDS = 256
MMIO_SYNC_ROUND = 0x4D4D
MMIO_PIO_VALUE = 0x50494F21

PIO_PORT = 0x6010  # not KH_UCALL_PORT (0x6000)
# One page per MMIO kind: each has its own (possibly cached) MMIO SPTE, so one kind's
# warm-up cannot make another look cheaper.
MMIO_GPA = 3 * GiB
READ_GPA = MMIO_GPA
WRITE_GPA = MMIO_GPA + 0x1000
IOEVENTFD_GPA = MMIO_GPA + 0x2000
COALESCED_GPA = MMIO_GPA + 0x3000
MMIO_PAGES = 4
ROM_GPA = MMIO_GPA + 0x100000
ROM_SIZE = 0x1000
# The ring keeps one slot empty to tell full from empty; a write that finds it full exits
# to userspace instead, which would time a different thing.
RING_CAPACITY = KVM_COALESCED_MMIO_MAX - 1

KIND_ADDR = {
    "pio": PIO_PORT, "mmio_read": READ_GPA, "mmio_write": WRITE_GPA, "rom_write": ROM_GPA,
    "ioeventfd": IOEVENTFD_GPA, "coalesced": COALESCED_GPA,
}
# The kinds whose every access is a userspace exit: the ones with a harness share to report.
EXIT_KINDS = ("pio", "mmio_read", "mmio_write", "rom_write")
KIND_HELP = {
    "pio": "inl from a port the host answers (exit round-trip baseline)",
    "mmio_read": "8-byte load from a GPA with no memslot (KVM_EXIT_MMIO, host answers)",
    "mmio_write": "8-byte store to a GPA with no memslot (KVM_EXIT_MMIO)",
    "rom_write": "8-byte store into a read-only memslot (KVM_EXIT_MMIO, is_write)",
    "ioeventfd": "8-byte store to a KVM_IOEVENTFD address (eventfd signal, no exit)",
    "coalesced": "8-byte store into a coalesced-MMIO zone (ring entry, no exit)",
}


def mmio_read_value(addr: int) -> int:
    """MMIO_READ_VALUE(addr) from guests/mmio.h: what the guest expects a read to return."""
    return 0x4D4D494F00000000 ^ addr


def mmio_write_value(kind: int, round_: int, i: int) -> int:
    """MMIO_WRITE_VALUE(kind, round, i) from guests/mmio.h."""
    return (kind << 56) | (round_ << 32) | i


GUEST_ABI = GuestAbi(
    header="mmio.h",
    constants={"MMIO_MAX_ROUNDS": MMIO_MAX_ROUNDS, "MMIO_SYNC_ROUND": MMIO_SYNC_ROUND,
               "MMIO_PIO_VALUE": MMIO_PIO_VALUE, "MMIO_NR_KINDS": len(KINDS),
               **{f"MMIO_KIND_{k}": KINDS.index(kind) for k, kind in (
                   ("PIO", "pio"), ("READ", "mmio_read"), ("WRITE", "mmio_write"),
                   ("ROM_WRITE", "rom_write"), ("IOEVENTFD", "ioeventfd"),
                   ("COALESCED", "coalesced"))}},
    macros={"MMIO_READ_VALUE": (mmio_read_value, [(READ_GPA,), (0x1234,)]),
            "MMIO_WRITE_VALUE": (mmio_write_value, [(2, 3, 4), (5, 255, 999)])},
    symbols={"mmio_kinds": u32, "mmio_rounds": u32, "mmio_addr": u64 * len(KINDS),
             "mmio_accesses": u64 * len(KINDS), "mmio_rounds_done": u32 * len(KINDS),
             "mmio_round_tsc": (u64 * MMIO_MAX_ROUNDS) * len(KINDS)},
)


def parse_kinds(text: str) -> tuple[str, ...]:
    """``all`` or a comma-separated subset of KINDS, returned in guest (KINDS) order."""
    if text.strip() in ("", "all"):
        return KINDS
    wanted = {k.strip() for k in text.split(",") if k.strip()}
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"kinds: unknown {sorted(unknown)} (known: {', '.join(KINDS)})")
    return tuple(k for k in KINDS if k in wanted)


class KindList(str):
    """``--param kinds=`` text, checked when the command line is parsed."""

    expected = "'all' or a comma list of " + ", ".join(KINDS)

    def __new__(cls, text: str) -> KindList:
        parse_kinds(text)
        return super().__new__(cls, text)


@dataclasses.dataclass
class KindCounts:
    """What the host saw for one kind, across all its rounds."""

    accesses: int = 0
    userspace_exits: int = 0
    eventfd_signals: int = 0
    ring_entries: int = 0
    ring_full_exits: int = 0


_clock = time.perf_counter_ns  # the clock Vcpu.run() times KVM_RUN with


class ExitClock:
    """Splits the host time of one round's access exits into KVM_RUN and the rest.

    The handler of every access exit reads the clock and the vCPU's ``run_ns_total`` (the
    sum of its KVM_RUN syscall ns, kvm/vcpu.py).  Between the first and the last access exit
    of a round lie ``exits - 1`` whole exit round trips and nothing else: each is one KVM_RUN
    (counted in ``run_ns_total``) plus one pass through the harness (decode, dispatch,
    handler, completion, back to KVM_RUN).  So per exit

        kvm_ns     = delta(run_ns_total) / (exits - 1)
        harness_ns = (delta(clock) - delta(run_ns_total)) / (exits - 1)

    and the two add up to the window's host time per exit exactly.  The clock is
    ``time.perf_counter_ns``, the one KVM_RUN is timed with, so the subtraction compares
    like with like; a thread CPU clock would not (it stops while the thread is preempted
    inside KVM_RUN, the wall clock around the syscall does not).  A preemption lands on the
    side it happened in.  The window leaves out the vCPU thread's start, the SYNC and DONE
    ucalls and the round's checks; it includes this clock read (one per exit, a small part
    of ``harness_ns``)."""

    def __init__(self) -> None:
        self.vcpu: Vcpu | None = None
        self.reset()

    def reset(self) -> None:
        self.exits = 0
        self.first_ns = self.last_ns = self.first_run_ns = self.last_run_ns = 0

    def tick(self) -> None:
        now = _clock()
        run = self.vcpu.run_ns_total if self.vcpu is not None else 0
        if not self.exits:
            self.first_ns, self.first_run_ns = now, run
        self.last_ns, self.last_run_ns = now, run
        self.exits += 1

    @property
    def intervals(self) -> int:
        """Whole exit round trips inside the window."""
        return max(0, self.exits - 1)

    @property
    def window_ns(self) -> int:
        return self.last_ns - self.first_ns

    @property
    def kvm_ns(self) -> int:
        return self.last_run_ns - self.first_run_ns


class MmioHost:
    """The host side of guests/mmio.c: answers exits, drains the coalesced ring and the
    eventfd after every round, and checks that each access landed where it should."""

    def __init__(self) -> None:
        self.counts = {k: KindCounts() for k in KINDS}
        self.clock = ExitClock()
        self.eventfd: IoEventFd | None = None
        # Values of this round's writes that reached userspace (exit or ring), in order.
        self.written: list[int] = []
        self.errors: list[str] = []

    def on_io(self, m: Machine, vcpu: int, exit_: Io) -> bytes | None:
        if exit_.port != PIO_PORT or exit_.is_out or exit_.size != 4:
            raise AssertionError(f"mmio: unexpected PIO {exit_}")
        self.clock.tick()
        self.counts["pio"].userspace_exits += exit_.count
        return MMIO_PIO_VALUE.to_bytes(4, "little") * exit_.count

    def on_mmio(self, m: Machine, vcpu: int, exit_: Mmio) -> bytes | None:
        addr = exit_.phys_addr
        if addr == READ_GPA and not exit_.is_write:
            self.clock.tick()
            self.counts["mmio_read"].userspace_exits += 1
            return mmio_read_value(addr).to_bytes(8, "little")[: exit_.len]
        if exit_.is_write and addr == WRITE_GPA and exit_.len == 8:
            self.clock.tick()
            self.counts["mmio_write"].userspace_exits += 1
            self.written.append(exit_.value)
            return None
        if exit_.is_write and addr == ROM_GPA and exit_.len == 8:
            self.clock.tick()
            self.counts["rom_write"].userspace_exits += 1
            self.written.append(exit_.value)
            return None
        if exit_.is_write and addr == IOEVENTFD_GPA:
            # Only if the ioeventfd did not match: recorded, and the tests assert it is 0.
            self.counts["ioeventfd"].userspace_exits += 1
            return None
        if exit_.is_write and addr == COALESCED_GPA and exit_.len == 8:
            # The ring was full: KVM hands the write to userspace, which must drain the
            # ring first to keep the device's write order.
            self._drain_ring(m)
            self.counts["coalesced"].userspace_exits += 1
            self.counts["coalesced"].ring_full_exits += 1
            self.written.append(exit_.value)
            return None
        raise AssertionError(f"mmio: unexpected MMIO {exit_}")

    def _drain_ring(self, m: Machine) -> None:
        for phys_addr, length, data in m.vm.read_coalesced_mmio():
            if phys_addr != COALESCED_GPA or length != 8:
                self.errors.append(f"coalesced ring entry at {phys_addr:#x} len {length}, "
                                   f"expected {COALESCED_GPA:#x} len 8")
            self.counts["coalesced"].ring_entries += 1
            self.written.append(int.from_bytes(data, "little"))

    def on_sync(self, m: Machine, vcpu: int, values: tuple[int, ...]) -> None:
        if len(values) != 4 or values[0] != MMIO_SYNC_ROUND:
            raise AssertionError(f"mmio: unexpected GUEST_SYNC{values}")
        _, kind_index, round_, accesses = values
        kind = KINDS[kind_index]
        self.counts[kind].accesses += accesses
        if kind == "coalesced":
            self._drain_ring(m)
        if kind in ("mmio_write", "rom_write", "coalesced"):
            # Every write must reach userspace exactly once, with its value, in order.
            expected = [mmio_write_value(kind_index, round_, i) for i in range(accesses)]
            if self.written != expected:
                self.errors.append(f"{kind} round {round_}: userspace got {len(self.written)} "
                                   f"writes, not the guest's {accesses} in order")
        elif self.written:
            self.errors.append(f"{kind} round {round_}: {len(self.written)} stray writes")
        self.written = []
        if kind == "ioeventfd" and self.eventfd is not None:
            # An eventfd is a counter: the signals since the last read.
            self.counts[kind].eventfd_signals += self.eventfd.count()


class MmioScenario(GuestScenario):
    """Each iteration runs the guest once per kind, one timed round each."""

    name = "mmio"
    guest = "mmio"
    watchdog_s = 60.0

    def __init__(self, req: RunRequest) -> None:
        super().__init__(req)
        self.kinds = parse_kinds(str(self.params["kinds"]))
        self.accesses = int(self.params["accesses"])
        if self.accesses < 1:
            raise ValueError(f"accesses={self.accesses}: need at least 1")
        self.host = MmioHost()
        self.active: tuple[str, ...] = ()
        self.per_kind: dict[str, int] = {}
        self.skipped: dict[str, str] = {}

    def vcpus(self) -> int:
        return 1

    def layout(self) -> Layout:
        return Layout.of([
            Region("mmio", MMIO_GPA, MMIO_PAGES * 0x1000, "mmio"),
            Region("rom", ROM_GPA, ROM_SIZE, "rom"),
        ])

    def handlers(self) -> Handlers:
        return {"on_io": self.host.on_io, "on_mmio": self.host.on_mmio,
                "on_sync": self.host.on_sync}

    def prepare(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        vm = m.vm
        requirements = {"rom_write": KvmCap.KVM_CAP_READONLY_MEM,
                        "ioeventfd": KvmCap.KVM_CAP_IOEVENTFD,
                        "coalesced": KvmCap.KVM_CAP_COALESCED_MMIO}
        for kind, cap in requirements.items():
            if kind in self.kinds and not vm.check_extension(cap):
                self.skipped[kind] = f"kernel lacks {cap.name}"
        self.active = tuple(k for k in self.kinds if k not in self.skipped)
        self.per_kind = {k: min(self.accesses, RING_CAPACITY) if k == "coalesced"
                         else self.accesses for k in self.active}
        addrs = (u64 * len(KINDS))()
        counts = (u64 * len(KINDS))()
        for i, k in enumerate(KINDS):
            addrs[i] = KIND_ADDR[k]
            counts[i] = self.per_kind.get(k, 1)
        m.write_var("mmio_addr", addrs, u64 * len(KINDS))
        m.write_var("mmio_accesses", counts, u64 * len(KINDS))
        m.write_var("mmio_rounds", 1, u32)
        if "ioeventfd" in self.active:
            self.host.eventfd = vm.add_ioeventfd(IOEVENTFD_GPA, 8)
        if "coalesced" in self.active:
            vm.register_coalesced_mmio(COALESCED_GPA, 0x1000)
        self.host.clock.vcpu = m.vcpus[0]

    def iteration(self, ctx: Context, m: Machine, recorder: PhaseRecorder, i: int,
                  warm: bool) -> str:
        cycles = []
        for n, kind in enumerate(self.active):
            if n:
                m.reset()
            m.write_var("mmio_kinds", 1 << KINDS.index(kind), u32)
            m.write_var("mmio_rounds_done", (u32 * len(KINDS))(), u32 * len(KINDS))
            self.host.clock.reset()
            with recorder.phase(kind):
                m.run(timeout_s=self.watchdog_s * 4)
                start_ns, end_ns = m.run_span_ns()  # vCPU-thread stamps, not the poll's
                run_ns = end_ns - start_ns
            if self.host.errors:
                raise AssertionError("mmio: " + "; ".join(self.host.errors))
            if kind == "rom_write" and any(m.read(ROM_GPA, ROM_SIZE)):
                raise AssertionError("mmio: a write to the read-only slot reached its memory")
            per_access = _record_kind(m, ctx.outcome, kind, self.per_kind[kind], warm)
            if kind in EXIT_KINDS:
                _record_exit_split(ctx.outcome, kind, self.host.clock, run_ns, warm)
            cycles.append(f"{kind} {per_access:.0f}")
        return ", ".join(cycles) + " cycles/access"

    def finish(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        rounds = self.req.warmup + self.req.iterations
        _record_effective(m, ctx.outcome, self.host, self.active, self.per_kind, rounds,
                          self.skipped)
        if self.per_kind.get("coalesced", self.accesses) < self.accesses:
            ctx.outcome.effective["coalesced_note"] = (
                f"coalesced rounds use {self.per_kind['coalesced']} of the {self.accesses} "
                f"accesses: the ring holds {RING_CAPACITY} entries and a write into a "
                "full ring exits to userspace")


def _record_kind(m: Machine, outcome: RunOutcome, kind: str, accesses: int,
                 warm: bool) -> float:
    """Record the guest's one timed round of ``kind``; returns its cycles per access."""
    index = KINDS.index(kind)
    done = m.read_var("mmio_rounds_done", u32 * len(KINDS))[index]
    if done != 1:
        raise AssertionError(f"mmio {kind}: the guest finished {done} of 1 rounds")
    tsc = m.read_var("mmio_round_tsc", (u64 * MMIO_MAX_ROUNDS) * len(KINDS))[index][0]
    outcome.add(f"{kind}_cycles", tsc / accesses, warmup=warm)
    outcome.add(f"{kind}_ns", m.tsc_to_ns(tsc) / accesses, warmup=warm)
    return float(tsc / accesses)


def _record_exit_split(outcome: RunOutcome, kind: str, clock: ExitClock, run_ns: int,
                       warm: bool) -> None:
    """``<kind>_kvm_ns`` and ``<kind>_harness_ns`` of one round (ExitClock), and the figures
    they come from in ``effective["exit_split"][kind]`` (per round, warm-ups first):
    ``intervals`` (exit round trips timed), ``window_ns`` (their host time), ``kvm_ns``
    (their KVM_RUN time) and ``run_ns`` (the whole run: the vCPU's first entry to its DONE
    exit, Machine.run_span_ns)."""
    split = outcome.effective.setdefault("exit_split", {}).setdefault(
        kind, {"intervals": [], "window_ns": [], "kvm_ns": [], "run_ns": []})
    split["intervals"].append(clock.intervals)
    split["window_ns"].append(clock.window_ns)
    split["kvm_ns"].append(clock.kvm_ns)
    split["run_ns"].append(run_ns)
    if clock.intervals:  # one access (accesses=1) times no whole round trip
        outcome.add(f"{kind}_kvm_ns", clock.kvm_ns / clock.intervals, warmup=warm)
        outcome.add(f"{kind}_harness_ns", (clock.window_ns - clock.kvm_ns) / clock.intervals,
                    warmup=warm)


def _record_effective(m: Machine, outcome: RunOutcome, host: MmioHost, active: tuple[str, ...],
                      per_kind: Mapping[str, int], rounds: int,
                      skipped: Mapping[str, str]) -> None:
    eff: dict[str, Any] = outcome.effective
    eff["tsc_khz"] = m.tsc_khz
    eff["kinds"] = list(active)
    eff["kinds_skipped"] = dict(skipped)
    eff["rounds"] = rounds
    eff["accesses_per_round"] = dict(per_kind)
    eff["host_counts"] = {k: dataclasses.asdict(host.counts[k]) for k in active}
    try:
        with open("/sys/module/kvm/parameters/mmio_caching") as f:
            eff["kvm.mmio_caching"] = f.read().strip()
    except OSError:
        eff["kvm.mmio_caching"] = "unknown"


SPEC = ScenarioSpec(
    name="mmio",
    summary="cost per access, in guest TSC cycles, of MMIO read/write exits, read-only-slot "
            "writes, ioeventfd and coalesced-MMIO writes, with a PIO round-trip baseline "
            "and MMIO-SPTE counters",
    parameters=(
        Parameter("accesses", "accesses", 1000, 32, "accesses per timed round (coalesced: "
                  f"at most {RING_CAPACITY}, the ring's capacity)", minimum=1, maximum=100_000),
        Parameter("kinds", "kinds", "all", "all", "access kinds to run",
                  type=KindList),
    ),
    metrics=tuple(
        metric
        for kind in KINDS
        for metric in (
            Metric(f"{kind}_cycles", "cycles", "lower",
                   f"{KIND_HELP[kind]}: guest TSC cycles per access"),
            Metric(f"{kind}_ns", "ns", "lower",
                   f"{KIND_HELP[kind]}: ns per access (TSC cycles / KVM_GET_TSC_KHZ)"),
        )
    ) + tuple(
        metric
        for kind in EXIT_KINDS
        for metric in (
            Metric(f"{kind}_kvm_ns", "ns", "lower",
                   f"{kind}: host ns per exit inside KVM_RUN (the kernel's exit and "
                   "entry, guest included), between the round's first and last exit"),
            Metric(f"{kind}_harness_ns", "ns", "lower",
                   f"{kind}: host ns per exit outside KVM_RUN (the harness's decoding, "
                   f"dispatch, handler and completion); {kind}_kvm_ns + this = one exit's "
                   "host round trip.  ioeventfd and coalesced make no exit: their whole "
                   "cost is inside KVM_RUN"),
        )
    ),
    variant_axes=MmioScenario.variant_axes,
    run=MmioScenario.run,
    headline=tuple(f"{kind}_cycles" for kind in KINDS),
    pivot=Pivot(suffixes=("cycles", "ns")),
    default_iterations=10,
    default_warmup=2,
)
