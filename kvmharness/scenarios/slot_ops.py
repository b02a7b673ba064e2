"""slot-ops: the latency of each memslot operation as the slot grows, and what it costs the guest.

For every slot size (4 KiB .. GiBs) one memslot, separate from the guest's RAM, goes through
create -> dirty logging on -> off -> move -> delete, each timed inside the
KVM_SET_USER_MEMORY_REGION(2) syscall (Vm.set_user_memory_region's own clock).
With ``populated`` a hammer vCPU keeps the rest of guest RAM mapped (one write per 4 KiB
page per pass) and waits after every pass, in the state ``op_state`` declares (OP_STATES,
recorded in ``effective["op_state"]``): ``parked`` spinning in the guest while the main
thread does the op (the ops' own metrics), ``exited`` at a GUEST_SYNC with the op the
first ioctl after the exit, done in the sync handler (metrics ``<op>_after_exit@<size>``:
on the PVM /dev/kvm here that first ioctl was measured at 50 us - 30 ms against 20-30 us
back to back, a cost of its own), ``outside`` at a GUEST_SYNC, its thread waiting out of
KVM_RUN while the main thread does the op (``<op>_vcpu_out@<size>``), or ``back_to_back``
as outside with ``warm_ops`` untimed round trips of the op before each timed one
(``<op>_back_to_back@<size>``; no per-op pass metrics, the pass follows the round trips
too).  In the others the guest's next pass is exactly the refault cost of the op (zap=all
throws every SPTE away on delete/move; zap=slot only the slot's).  Each iteration is one run of
the guest: a pass per op and per steady step, after a first pass that maps guest RAM (the
first iteration's) or finds it mapped (the others', not recorded).  Without ``populated``
the guest never runs and the MMU is empty: the ioctl alone.

Evidence: KVM stats per phase (``populate``: the first pass; ``cycles@<size>``: that size's
passes and ops; ``warmup``; ``slot_ops``: the whole run) and the whole run's kvmmmu
tracepoint counts (this process's only), which say which zap path ran.  Stats are read
right after each op, never just before one (that was measured to slow the ops 2-4x here),
so a phase's delta runs from one op's end to the next's: each (iteration, size) group's
first op, a create, is counted with the phase before it.  Nothing is traced per op.

The slot under test is backed by one MAP_NORESERVE mapping that nothing ever touches (the
guest's page tables do not map it), so a 4 GiB slot costs KVM's per-slot metadata only.
Memory guard, deliberately conservative: the largest slot is counted as if it were touched,
plus the populated RAM and KVM's metadata estimate, and the run is refused before any VM is
built if the host could not hold that; a stray touch (a future guest, a host read) must not
be able to OOM a shared CI host.  With the defaults (4G slot, 1 GiB populated) that is
~6 GiB available; the 4G slot itself never costs more than its ~8 MiB of metadata."""

from __future__ import annotations

import ctypes
import dataclasses
import statistics
import threading
import time
from collections.abc import Callable, Sequence

from kvmharness.guest.layout import GiB, Layout, LayoutError, MiB, Region
from kvmharness.guest.longmode import max_phys_addr
from kvmharness.guest.machine import Machine, VcpuState
from kvmharness.guest.memory import check_host_memory
from kvmharness.kvm import HostMemory, Vm
from kvmharness.observe.counters import KvmCounters, Snapshot
from kvmharness.scenarios.base import (
    ZAP_AXIS,
    Direction,
    Metric,
    Parameter,
    RunOutcome,
    RunRequest,
    ScenarioSpec,
)
from kvmharness.scenarios.common import (
    HAMMER_INSTRUCTIONS_PER_PAGE,
    HAMMER_MAX_PASSES,
    HammerConfig,
    PhaseRecorder,
    SizeList,
    hammer_max_gap_ns,
    hammer_pass_ns,
    record_stats,
)
from kvmharness.scenarios.metrics import SIZE, MetricFamily, size_label
from kvmharness.scenarios.preflight import Work, host_check
from kvmharness.scenarios.presentation import Curves
from kvmharness.scenarios.skeleton import Context, GuestScenario, Handlers
from kvmharness.uapi.kvm import KVM_MEM_LOG_DIRTY_PAGES

HAMMER_GPA = 4 * GiB
SLOT_ALIGN = 1 * GiB  # slot GPAs 1 GiB aligned, so KVM may use every huge-page level
WATCHDOG_S = 120.0
OPS = ("create", "dirty_on", "dirty_off", "move", "delete")
ZAPPING_OPS = ("move", "delete")  # the ops that take the zap-all or zap-slot path
STEADY = "steady"  # a pass with no op before it: the baseline a refault pass compares to
SETUP = "setup"  # untimed host work before a group (slot-scale: reach the slot count)
RUN_PHASE = "slot_ops"  # the whole run, warmups included: its tracepoints prove the zap path
# The state of the VM while an op is timed (parameter op_state, recorded in effective):
PARKED = "parked"  # the vCPU spins inside KVM_RUN (no exit); the op runs on the main thread
EXITED = "exited"  # the vCPU exited (GUEST_SYNC) and the op is the first ioctl after it
# The vCPU exited (GUEST_SYNC) and its thread waits, outside KVM_RUN, while the main thread
# does the op.  On the PVM /dev/kvm here a vCPU executing guest code holds off the SRCU grace
# period of every memslot update until it leaves the guest (traced: the op's
# synchronize_srcu_expedited polls for 0.3-1 ms, 30 process_srcu runs per op against 2);
# memslot_perf_test's back-to-back ops mostly find its vCPU thread off the CPU (98.7% of
# its moves at 1k slots, 16 us median; 1 ms when its vCPU was on a CPU).
OUTSIDE = "outside"
# As OUTSIDE, and each timed op follows ``warm_ops`` untimed round trips of the same op on
# the same slot (the op, then its undo), back to back on the main thread: the op as
# memslot_perf_test times it, warm.  Traced on the PVM /dev/kvm here: an op that is the
# first after a guest pass spends 38 us on a CPU in the kernel, one of the selftest's
# back-to-back ops 11 us; three untimed move round trips took slot-scale's moves from
# 85-118 us to 14-20 us.  The warm-up moves and deletes zap too (zap=all: every mapping the
# pass made), so the op meets the MMU the selftest's ops meet, not the pass's.
BACK_TO_BACK = "back_to_back"
OP_STATES = {
    PARKED: "vCPU parked in the guest (spinning inside KVM_RUN, no exit since its pass); "
            "the op runs on the main thread, as memslot_perf_test's ops run beside its "
            "vCPU thread",
    EXITED: "vCPU exited to the host at a GUEST_SYNC after its pass; the op is the first "
            "ioctl after KVM_RUN returned, issued by the vCPU thread in the sync handler",
    OUTSIDE: "vCPU out of KVM_RUN: it exited at a GUEST_SYNC after its pass and its thread "
             "waits in the sync handler while the main thread does the op (no vCPU is in "
             "the guest, as for most of memslot_perf_test's ops)",
    BACK_TO_BACK: "vCPU out of KVM_RUN as for outside; each timed op follows warm_ops "
                  "untimed round trips of the same op on the same slot (the op, then its "
                  "undo) done back to back on the main thread, as memslot_perf_test runs "
                  "its ops",
}
AFTER_EXIT = "_after_exit"  # the suffix of ops timed in the EXITED state: their own metrics
VCPU_OUT = "_vcpu_out"  # the suffix of ops timed in the OUTSIDE state
WARM = "_back_to_back"  # the suffix of ops timed in the BACK_TO_BACK state
# Each state's ops have metrics of their own: ``<op><suffix>@<size|count>``.
OP_SUFFIX = {PARKED: "", EXITED: AFTER_EXIT, OUTSIDE: VCPU_OUT, BACK_TO_BACK: WARM}
# The states whose vCPU thread waits out of KVM_RUN (Handoff) while the main thread works.
HANDED_OFF = (OUTSIDE, BACK_TO_BACK)
# Which request undoes each op (a round trip returns the slot to where the cycle had it):
# a create's is a delete at A, a move's the move back (dirty_off's arguments: flags 0 at
# A), a delete's the create at B (move's arguments).
UNDO = {"create": "delete_at_a", "dirty_on": "dirty_off", "dirty_off": "dirty_on",
        "move": "dirty_off", "delete": "move"}
# How often the main thread looks at a parked guest's pass counter: the wait sits before
# an op, never inside one, so it delays the op without entering its time.
PARK_POLL_S = 0.0002


def kvm_slot_metadata_bytes(size: int) -> int:
    """KVM's allocations for a slot that no page of is ever touched: shadow-MMU rmaps
    (8 bytes per 4 KiB page, less for the huge levels), lpage_info, and two dirty bitmaps
    while logging.  An over-estimate, for the memory guard only."""
    return size // 512 + size // 256 // 1024 + 2 * (size // 4096 // 8)


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


@dataclasses.dataclass(frozen=True)
class Step:
    """One entry of the script the sync handler (or, idle, the main thread) plays."""

    op: str  # one of OPS, STEADY or SETUP
    size: int
    iteration: int
    warm: bool
    group_end: bool = False  # last step of this (iteration, size): report progress
    key: str = ""  # the metrics' ``@`` label when not the size (slot-scale: the count)

    @property
    def label(self) -> str:
        return self.key or size_label(self.size)


class SlotUnderTest:
    """The measured memslot: one id, one untouched mapping of the largest size (smaller
    slots use its start), two GPAs to move between."""

    def __init__(self, vm: Vm, max_size: int, gpa_a: int, gpa_b: int) -> None:
        self.vm = vm
        self.gpa_a, self.gpa_b = gpa_a, gpa_b
        self.slot = vm.free_slot()  # before the mmap: nothing to undo if no slot is free
        self.mem = HostMemory(max_size, name="slot under test")

    def args(self, op: str, size: int) -> tuple[int, int, int, int]:
        """(flags, gpa, size, userspace_addr) for ``op`` in the create..delete cycle."""
        addr = self.mem.addr
        return {
            "create": (0, self.gpa_a, size, addr),
            "dirty_on": (KVM_MEM_LOG_DIRTY_PAGES, self.gpa_a, size, addr),
            "dirty_off": (0, self.gpa_a, size, addr),
            "move": (0, self.gpa_b, size, addr),
            "delete": (0, self.gpa_b, 0, 0),
            "delete_at_a": (0, self.gpa_a, 0, 0),  # undoes a create
        }[op]

    def perform(self, op: str, size: int) -> int:
        """Do ``op``; returns the ns spent inside the syscall."""
        flags, gpa, length, addr = self.args(op, size)
        return self.vm.set_user_memory_region(self.slot, flags, gpa, length, addr)

    def zaps(self, request: str, size: int) -> bool:
        """Whether ``request`` deletes or moves the slot as it now is (the updates that
        take the zap path)."""
        _, gpa, length, _ = self.args(request, size)
        old = self.vm.memslots.get(self.slot)
        return old is not None and (length == 0 or old.guest_phys_addr != gpa)

    def round_trip(self, op: str, size: int) -> int:
        """``op`` then its undo (UNDO), untimed; returns how many of the two zap."""
        zapping = 0
        for request in (op, UNDO[op]):
            zapping += self.zaps(request, size)
            self.perform(request, size)
        return zapping

    def close(self) -> None:
        try:
            if not self.vm.closed and self.slot in self.vm.memslots:
                self.vm.delete_memslot(self.slot)  # a failed cycle must not leave it behind
        finally:
            self.mem.close()


def measured_in(name: str, op_state: str) -> bool:
    """Whether metric ``name`` has samples in a run with ``op_state``: each op's metric in
    one state only (``<op>@...`` parked, ``<op>_after_exit@...`` exited, ``<op>_vcpu_out@...``
    outside, ``<op>_back_to_back@...`` back_to_back); an op's next pass (``<op>_pass``,
    ``<op>_pf_fixed``) in every state but back_to_back, where the pass follows the warm-up
    round trips too; the rest in every state."""
    base = name.split("@")[0]
    states = [state for state, suffix in OP_SUFFIX.items()
              if base.endswith(suffix) and base.removesuffix(suffix) in OPS]
    if base in OP_PASS_METRICS:
        return op_state != BACK_TO_BACK
    return not states or op_state in states


# What is kept of the hammer's pass after each op (slot-ops' ops; slot-scale's are a subset).
OP_PASS_METRICS = frozenset(f"{op}_{kind}" for op in OPS for kind in ("pass", "pf_fixed"))


def _await_pass(m: Machine, done: ctypes.c_uint32, count: int) -> bool:
    """Wait until the parked hammer has finished ``count`` passes; False if its vCPU stopped
    running first."""
    while done.value < count:
        if m.states()[0] is not VcpuState.RUNNING:
            return False
        time.sleep(PARK_POLL_S)
    return True


def thread_state(tid: int) -> str:
    """This process's thread ``tid``'s scheduler state letter (R running or runnable, S
    asleep, ...), from /proc; "" if it is gone."""
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rindex(b")") + 2:][:1].decode()


class Handoff:
    """OUTSIDE and BACK_TO_BACK: the vCPU thread hands each finished pass to the main thread and waits, out
    of KVM_RUN, until the main thread has done the op that follows it."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._released = threading.Event()
        self._abandoned = False
        self._pass = 0
        self.waiting_tid: int | None = None  # the vCPU thread, while it waits here

    def hand(self, done_pass: int) -> None:
        """vCPU thread, in the sync handler: wait until released (or abandoned)."""
        self._pass = done_pass
        self._released.clear()
        self.waiting_tid = threading.get_native_id()
        self._ready.set()
        while not self._released.wait(0.1):
            if self._abandoned:
                break
        self.waiting_tid = None

    def take(self, m: Machine) -> int | None:
        """Main thread: the next pass handed over, once the vCPU thread is asleep in its
        wait (not still on a CPU on its way there, where it would compete with the op);
        None if the vCPU stopped first."""
        while not self._ready.wait(PARK_POLL_S):
            if m.states()[0] is not VcpuState.RUNNING:
                return None
        self._ready.clear()
        deadline = time.monotonic() + 1.0
        while not self.holds_another_thread() and time.monotonic() < deadline:
            time.sleep(0)
        return self._pass

    def holds_another_thread(self) -> bool:
        """A vCPU thread other than this one waits here, asleep (out of KVM_RUN)."""
        tid = self.waiting_tid
        return tid not in (None, threading.get_native_id()) and thread_state(tid) == "S"

    def release(self) -> None:
        self._released.set()

    def abandon(self) -> None:
        self._abandoned = True
        self._released.set()


def build_steps(sizes: Sequence[int], ops_per_size: int, iteration: int, warm: bool,
                populated: bool) -> list[Step]:
    """One iteration's script."""
    steps: list[Step] = []
    for size in sizes:
        for _ in range(ops_per_size):
            steps += [Step(op, size, iteration, warm) for op in OPS]
            if populated:
                steps.append(Step(STEADY, size, iteration, warm))
        steps[-1] = dataclasses.replace(steps[-1], group_end=True)
    return steps


class SlotOpsDriver:
    """Plays one iteration's step script; ``on_sync`` is the hammer's per-pass GUEST_SYNC
    handler and runs in the vCPU thread while the guest waits, so an op never overlaps a
    pass.

    Nothing of ours runs between the guest's exit and the op: stats are read right after
    each op.  Reading them (or starting a tracefs instance) just before an op was measured
    to slow a 4 KiB create 2-4x here, so the op's own stats are not separated from the
    pass's: vCPU stats only move while the guest runs, so a pass's pf_fixed is exact, and
    the rest is kept per size (``cycles@<size>``)."""

    def __init__(self, outcome: RunOutcome, slot: SlotUnderTest, counters: KvmCounters,
                 on_setup: Callable[[Step], None] | None = None,
                 op_state: str = PARKED, warm_ops: int = 0) -> None:
        if op_state not in OP_STATES:
            raise ValueError(f"op_state={op_state!r}: one of {', '.join(OP_STATES)}")
        if op_state == BACK_TO_BACK and warm_ops < 1:
            raise ValueError(f"op_state={BACK_TO_BACK} needs warm_ops >= 1, got {warm_ops}")
        self.op_suffix = OP_SUFFIX[op_state]
        self.op_state = op_state
        # Untimed round trips before each timed op: BACK_TO_BACK's, none in the others.
        self.warm_ops = warm_ops if op_state == BACK_TO_BACK else 0
        self.untimed_ops = 0  # BACK_TO_BACK's witness: the ioctls of those round trips
        self.untimed_zapping = 0  # how many of them deleted or moved the slot
        self.handoff = Handoff()
        # OUTSIDE's and BACK_TO_BACK's witness: timed ops done on this thread while the
        # vCPU thread waited asleep in the sync handler (BACK_TO_BACK: from before its
        # round trips to after the timed op).
        self.ops_with_vcpu_out = 0
        self.outcome = outcome
        self.slot = slot
        self.on_setup = on_setup
        self.counters = counters  # for its snapshot/delta only
        self.steps: list[Step] = []
        self.first_pass_phase: str | None = None
        self.last: tuple[Step | None, Snapshot] | None = None
        self.medians: list[str] = []
        self.groups: dict[str, dict[str, list[float]]] = {}  # size label -> op -> us
        self.kinds: dict[str, str] = {}  # stat -> how it is kept (KvmCounters.kinds_of)

    def perform(self, step: Step) -> None:
        if step.op == STEADY:
            return
        if step.op == SETUP:
            if self.on_setup is not None:
                self.on_setup(step)
            return
        vcpu_out = self.handoff.holds_another_thread()
        for _ in range(self.warm_ops):
            self.untimed_zapping += self.slot.round_trip(step.op, step.size)
            self.untimed_ops += 2
        ns = self.slot.perform(step.op, step.size)
        if self.warm_ops:
            vcpu_out = vcpu_out and self.handoff.holds_another_thread()
        self.ops_with_vcpu_out += vcpu_out
        self.outcome.add(f"{step.op}{self.op_suffix}@{step.label}", ns / 1e3, warmup=step.warm)
        self.groups.setdefault(step.label, {}).setdefault(step.op, []).append(ns / 1e3)

    def report(self, step: Step) -> None:
        if not step.group_end:
            return
        group = self.groups.pop(step.label, {})
        medians = ", ".join(f"{op} {statistics.median(v):.0f} us" for op, v in group.items())
        self.medians.append(f"{step.label}: {medians}")

    def begin(self, steps: list[Step], first_pass_phase: str | None) -> None:
        """Before the guest's first pass of an iteration; that pass's stats go to
        ``first_pass_phase`` (``populate`` when it maps guest RAM; None: not kept)."""
        self.steps, self.first_pass_phase, self.medians = steps, first_pass_phase, []
        self.last = (None, self.counters.snapshot())
        self.kinds = KvmCounters.kinds_of(self.last[1])

    def run(self, m: Machine) -> None:
        """Run the guest through ``self.steps``: each step's op in the sync handler
        (EXITED: the hammer must sync after each pass), on this thread while the vCPU
        thread waits in the sync handler (OUTSIDE, BACK_TO_BACK: the hammer must sync after
        each pass),
        or (PARKED: the hammer must park after each pass) on this thread while the vCPU
        spins in the guest."""
        if self.op_state == EXITED:
            m.run()
            return
        if self.op_state in HANDED_OFF:
            self._run_outside(m)
            return
        done = ctypes.c_uint32.from_address(
            m.memory.host_address(m.image.symbol("hammer_passes_done").address, 4))
        # A run after reset() starts with the last run's counters: clear both, or the
        # first waits would pass at once and the ops would run beside unparked passes.
        done.value = 0
        m.write_var("hammer_released", 0, ctypes.c_uint32)
        m.start()
        try:
            for k in range(len(self.steps) + 1):
                if not _await_pass(m, done, k + 1):
                    break  # the guest ended or failed: wait() says which
                m.note_guest_progress()
                self.on_pass_end(k)
                m.write_var("hammer_released", k + 1, ctypes.c_uint32)
            m.wait()
        except BaseException:
            m.stop()
            raise

    def _run_outside(self, m: Machine) -> None:
        self.handoff = Handoff()
        m.start()
        try:
            for _ in range(len(self.steps) + 1):
                done_pass = self.handoff.take(m)
                if done_pass is None:
                    break  # the guest ended or failed: wait() says which
                self.on_pass_end(done_pass)
                self.handoff.release()
            m.wait()
        except BaseException:
            self.handoff.abandon()
            m.stop()
            raise

    def on_sync(self, m: Machine, vcpu: int, values: tuple[int, ...]) -> None:
        if self.op_state in HANDED_OFF:
            self.handoff.hand(values[0])
        else:
            self.on_pass_end(values[0])

    def on_pass_end(self, done_pass: int) -> None:
        """Pass ``done_pass`` is over and the vCPU waits (exited or parked): do the step
        that follows it, then account the pass's stats."""
        step = self.steps[done_pass] if done_pass < len(self.steps) else None
        if step is not None:
            self.perform(step)
        now = self.counters.snapshot()
        if self.last is not None:  # the pass that just ended followed ``previous``
            previous, before = self.last
            delta = KvmCounters.delta(before, now)
            phase = self.first_pass_phase
            if previous is not None and previous.op == SETUP:
                phase = SETUP
            elif previous is not None:
                phase = "warmup" if previous.warm else f"cycles@{previous.label}"
                name = (f"{previous.op}_pf_fixed@{previous.label}"
                        if previous.op != STEADY else "steady_pf_fixed")
                if measured_in(name, self.op_state):
                    self.outcome.add(name, delta.get("vcpu.pf_fixed", 0),
                                     warmup=previous.warm)
            if phase is not None:
                record_stats(self.outcome, phase, delta, self.kinds)
            if previous is not None:
                self.report(previous)
        self.last = (step, now) if step is not None else None

    def record_passes(self, m: Machine, warm: bool) -> None:
        """Pass k+1 follows step k (pass 0 maps guest RAM, or finds it mapped)."""
        passes = hammer_pass_ns(m, 1)[0]
        if len(passes) != len(self.steps) + 1:
            raise RuntimeError(f"slot-ops: the hammer finished {len(passes)} passes, "
                               f"expected {len(self.steps) + 1}")
        if self.first_pass_phase is not None:
            self.outcome.effective["populate_pass_ms"] = passes[0] / 1e6
        for step, ns in zip(self.steps, passes[1:]):
            name = "steady_pass" if step.op == STEADY else f"{step.op}_pass@{step.label}"
            if step.op != SETUP and measured_in(name, self.op_state):
                self.outcome.add(name, ns / 1e6, warmup=step.warm)
        gaps = [gap for step, gap in zip(self.steps, hammer_max_gap_ns(m, 1)[0][1:])
                if step.op != SETUP]
        self.outcome.add("max_stall", max(gaps) / 1e3, warmup=warm)


class SlotOps(GuestScenario):
    name = "slot-ops"
    variant_axes = (ZAP_AXIS,)
    guest = "hammer"
    zap_phase = RUN_PHASE  # the whole run, warmups included

    def __init__(self, req: RunRequest) -> None:
        super().__init__(req)
        p = self.params
        self.sizes = SizeList(p["sizes"]).sizes
        self.populated = bool(p["populated"])
        self.populated_bytes = int(p["populated_mib"]) * MiB
        self.ops_per_size = int(p["ops_per_size"])
        if self.populated_bytes <= 0 or self.ops_per_size <= 0:
            raise ValueError("slot-ops: populated_mib and ops_per_size must be positive")
        passes = len(self.steps(0, False)) + 1
        if self.populated and passes > HAMMER_MAX_PASSES:
            raise ValueError(f"slot-ops: {passes} hammer passes needed per iteration (one per "
                             "op and steady pass), the hammer guest records at most "
                             f"{HAMMER_MAX_PASSES}: use fewer sizes or ops_per_size")
        self.max_size = max(self.sizes)
        check_host_memory(
            self.layout().memslot_bytes() + self.max_size + kvm_slot_metadata_bytes(self.max_size),
            f"slot-ops with a {size_label(self.max_size)} slot (counted as if touched) "
            f"and {self.populated_bytes // MiB} MiB of guest RAM")
        self.gpa_a = align_up(self.layout().region("hammer").end, SLOT_ALIGN)
        self.gpa_b = self.gpa_a + align_up(self.max_size, SLOT_ALIGN)

    def steps(self, i: int, warm: bool) -> list[Step]:
        return build_steps(self.sizes, self.ops_per_size, i, warm, self.populated)

    def vcpus(self) -> int:
        return 1

    def work(self) -> Work:
        """One iteration's guest work: a pass over the populated RAM per step, plus the
        first (none without ``populated``: the guest never runs)."""
        passes = len(self.steps(0, False)) + 1 if self.populated else 0
        return Work(instructions=passes * (self.populated_bytes // 4096)
                    * HAMMER_INSTRUCTIONS_PER_PAGE, vcpus=1, limit_s=self.watchdog_s,
                    knobs="populated_mib, the number of sizes or ops_per_size")

    def layout(self) -> Layout:
        return Layout.of([Region("hammer", HAMMER_GPA, self.populated_bytes, "ram",
                                 hugepages=bool(self.params["thp"]))])

    def handlers(self) -> Handlers:
        return {"on_sync": lambda m, vcpu, values: self.driver.on_sync(m, vcpu, values)}

    def prepare(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        limit = max_phys_addr(ctx.kvm.supported_cpuid())
        if self.gpa_b + self.max_size > limit:
            raise LayoutError(f"slot-ops: a {size_label(self.max_size)} slot moved to "
                              f"{self.gpa_b:#x} ends above the guest physical address limit "
                              f"{limit:#x}")
        op_state = str(self.params["op_state"])
        ctx.outcome.effective.update(
            populated=self.populated, thp=bool(self.params["thp"]),
            slot_gpas=[self.gpa_a, self.gpa_b],
            timed="KVM_SET_USER_MEMORY_REGION: time inside the syscall",
            op_state=OP_STATES[op_state] if self.populated else
            "no vCPU has run (populated=false): the VM holds no guest mapping")
        slot = SlotUnderTest(m.vm, self.max_size, self.gpa_a, self.gpa_b)
        ctx.cleanups.callback(slot.close)
        self.driver = SlotOpsDriver(ctx.outcome, slot, KvmCounters(
            m.vm, m.vcpus, vm_stats=recorder.vm_stats,
            vcpu_stats=recorder.vcpu_stats), op_state=op_state if self.populated else PARKED,
            warm_ops=int(self.params["warm_ops"]))

    def iteration(self, ctx: Context, m: Machine, recorder: PhaseRecorder, i: int,
                  warm: bool) -> str:
        steps = self.steps(i, warm)
        driver = self.driver
        untimed_zapping = driver.untimed_zapping
        # One tracefs instance per iteration: per-op instances perturb the ops.
        with recorder.phase(RUN_PHASE):
            if self.populated:
                HammerConfig(base=HAMMER_GPA, pages=self.populated_bytes // 4096,
                             passes=len(steps) + 1, stride_per_vcpu=0,
                             sync_each_pass=driver.op_state in (EXITED, *HANDED_OFF),
                             park_each_pass=driver.op_state == PARKED).apply(m)
                driver.begin(steps, "populate" if i == 0 else None)
                driver.run(m)
            else:
                driver.steps, driver.medians = steps, []
                for step in steps:
                    driver.perform(step)
                    driver.report(step)
        ctx.deletes += (sum(1 for s in steps if s.op in ZAPPING_OPS)
                        + driver.untimed_zapping - untimed_zapping)
        if self.populated:
            driver.record_passes(m, warm)
            # GUEST_SYNC exits so far: the witness of op_state (one per pass when exited).
            ctx.outcome.effective["guest_syncs"] = len(m.syncs)
            # Ops done on another thread while the vCPU thread waited out of KVM_RUN (outside).
            ctx.outcome.effective["ops_with_vcpu_out"] = driver.ops_with_vcpu_out
            record_warm_ops(ctx.outcome, driver)
        return "; ".join(driver.medians)


def record_warm_ops(outcome: RunOutcome, driver: SlotOpsDriver) -> None:
    """BACK_TO_BACK's declaration and witness: the round trips asked for before each timed
    op, and the untimed memslot ioctls done so far (0 in every other state)."""
    outcome.effective["warm_ops"] = driver.warm_ops
    outcome.effective["untimed_ops"] = driver.untimed_ops


def _sized(name: str, unit: str, direction: Direction, help: str) -> Metric:
    return MetricFamily.of(name, SIZE, unit, direction, help)


_OP_HELP = {
    "create": "KVM_SET_USER_MEMORY_REGION create of the slot (allocates rmaps/lpage_info)",
    "dirty_on": "flags change enabling KVM_MEM_LOG_DIRTY_PAGES (bitmap, write-protect)",
    "dirty_off": "flags change disabling dirty logging",
    "move": "moving the slot to another GPA (zaps: all or the slot's SPTEs)",
    "delete": "deleting the slot (zaps: all or the slot's SPTEs)",
}

OP_STATE_PARAMETER = Parameter(
    "op_state", "state", PARKED, PARKED,
    f"the VM's state while an op is timed: {PARKED} (the ops' metrics: {OP_STATES[PARKED]}), "
    f"{EXITED} (metrics named <op>{AFTER_EXIT}: {OP_STATES[EXITED]}), {OUTSIDE} (metrics "
    f"named <op>{VCPU_OUT}: {OP_STATES[OUTSIDE]}) or {BACK_TO_BACK} (metrics named "
    f"<op>{WARM}, no <op>_pass or <op>_pf_fixed: {OP_STATES[BACK_TO_BACK]})",
    choices=tuple(OP_STATES), type=str)
WARM_OPS_PARAMETER = Parameter(
    "warm_ops", "round trips", 3, 3, f"op_state={BACK_TO_BACK} only: untimed round trips "
    "(the op, then its undo) before each timed op", minimum=1, maximum=100)

# The hammer's baseline pass and its worst stall, shared with slot-scale.
STEADY_METRICS = (
    Metric("steady_pass", "ms", "lower", "a hammer pass with no op before it (baseline)"),
    Metric("steady_pf_fixed", "faults", "lower", "vCPU pf_fixed during a steady pass"),
    Metric("max_stall", "us", "lower", "longest gap between two consecutive page writes "
           "in any pass after an op (guest TSC): the worst single hold-up"),
)

SPEC = ScenarioSpec(
    name="slot-ops",
    summary="latency of memslot create, delete, move and dirty-logging flag changes versus "
            "slot size, with guest RAM populated by a running guest or idle, and the "
            "guest's refault cost on its next pass",
    parameters=(
        Parameter("sizes", "sizes: comma list, K/M/G suffixes, multiples of 4K",
                  SizeList("4K,64K,1M,16M,256M,1G,4G"), SizeList("4K,64K,1M"),
                  "slot sizes to measure (the scaling curve's x axis)", type=SizeList),
        Parameter("populated", "bool", True, True, "true: a hammer vCPU keeps guest RAM "
                  "mapped and re-touches it after every op; false: the guest never runs "
                  "(empty MMU, no pass metrics)", type=bool),
        Parameter("populated_mib", "MiB", 1024, 4, "guest RAM the hammer maps with 4 KiB "
                  "pages (what a zap-all throws away)", minimum=1),
        Parameter("ops_per_size", "cycles", 5, 2, "create..delete cycles per size per "
                  "iteration (samples per metric per iteration)", minimum=1,
                  maximum=10_000),
        Parameter("thp", "bool", False, False, "back guest RAM with transparent huge pages",
                  type=bool),
        OP_STATE_PARAMETER,
        WARM_OPS_PARAMETER,
    ),
    metrics=tuple(
        _sized(op, "us", "lower", _OP_HELP[op]) for op in OPS
    ) + tuple(
        _sized(f"{op}{AFTER_EXIT}", "us", "lower", f"{_OP_HELP[op]}; op_state=exited: the "
               "first ioctl after the vCPU's exit") for op in OPS
    ) + tuple(
        _sized(f"{op}{VCPU_OUT}", "us", "lower", f"{_OP_HELP[op]}; op_state=outside: the "
               "vCPU thread waits out of KVM_RUN while the main thread does the op")
        for op in OPS
    ) + tuple(
        _sized(f"{op}{WARM}", "us", "lower", f"{_OP_HELP[op]}; op_state=back_to_back: the "
               "vCPU thread waits out of KVM_RUN and the op follows warm_ops untimed round "
               "trips of it, back to back") for op in OPS
    ) + tuple(
        _sized(f"{op}_pass", "ms", "lower", f"the hammer's next pass after {op} (guest TSC; "
               "the refault cost)") for op in OPS
    ) + tuple(
        _sized(f"{op}_pf_fixed", "faults", "lower", f"vCPU pf_fixed during the pass after "
               f"{op}") for op in OPS
    ) + STEADY_METRICS,
    variant_axes=SlotOps.variant_axes,
    run=SlotOps.run,
    check_host=host_check(SlotOps, "populated_mib or the largest of sizes",
                          lambda s: s.populated_bytes + s.max_size, SlotOps.work),
    extremes=("max_stall",),
    headline=tuple(f"{op}@{SIZE.slot}" for op in OPS) + (f"delete_pf_fixed@{SIZE.slot}",
                                                         f"delete_pass@{SIZE.slot}",
                                                         "max_stall"),
    default_iterations=3,
    default_warmup=1,
    figure=Curves("slot-ops: memslot operation latency", xlabel="slot size",
                  families=tuple(f"{op}@{SIZE.slot}" for op in OPS)),
)

# Produced only with populated=true.
PASS_METRIC_FAMILIES = tuple(f"{op}_{kind}" for op in OPS for kind in ("pass", "pf_fixed")) + (
    "steady_pass", "steady_pf_fixed", "max_stall")
