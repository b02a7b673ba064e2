"""mmio-flip: no stale RAM or MMIO mapping survives a memslot update (the 2019 MMIO-generation
fixes in "KVM: x86/mmu: Remove fast invalidate mechanism").

A GPA range alternates between RAM (a memslot whose words hold P = FLIP_RAM_WORD(gpa)) and
MMIO (no memslot; the host answers reads with Q = FLIP_MMIO_WORD(gpa)) while vCPUs keep
reading it (guests/flip.c).  The host publishes a sequence word in always-present guest RAM
around each ioctl (guests/flip.h): state = seq % 4 is present / deleting / absent /
creating.  A read bracketed by equal sequence values must see P while present (the create
ioctl returned and the next delete has not begun) and Q while absent; every read must see
P or Q.  KVM keeps this true by zapping the slot's SPTEs on delete and by tagging cached
MMIO SPTEs with the memslot generation so a create makes them stale.  Any violation makes
the run FAIL (``FlipViolation``) with the time, vCPU, GPA, value and sequence number.

``wrap``: after the iterations, toggle as fast as possible until the memslot generation has
passed an x86 MMIO-generation wraparound (19 bits), where KVM must zap everything whatever
the quirk says, while still checking the invariant.

Tests inject a broken host through ``run_flip(req, answer=...)``; the SPEC runs the honest one."""

from __future__ import annotations

import array
import ctypes
import dataclasses
import math
import time
from collections.abc import Callable, Sequence

from kvmharness.guest.layout import GiB, Layout, Region
from kvmharness.guest.machine import Machine, VcpuState
from kvmharness.kvm import Mmio
from kvmharness.observe.tracefs import ZAP_EVENTS
from kvmharness.scenarios.abi import GuestAbi
from kvmharness.scenarios.base import (
    ZAP_AXIS,
    Metric,
    Parameter,
    RunOutcome,
    RunRequest,
    ScenarioSpec,
)
from kvmharness.scenarios.common import KH_MAX_VCPUS, PhaseRecorder, u64
from kvmharness.scenarios.skeleton import Context, GuestScenario, Handlers, HostToggler, execute
from kvmharness.uapi.caps import KvmCap

# guests/flip.h
FLIP_LOG_MAX = 8
PAGE = 4096
PRESENT, DELETING, ABSENT, CREATING = 0, 1, 2, 3
STATE_NAMES = {PRESENT: "present (create returned, next delete not begun)",
               DELETING: "deleting (delete ioctl in flight)",
               ABSENT: "absent (delete returned, next create not begun)",
               CREATING: "creating (create ioctl in flight)"}

FLIP_GPA = 2 * GiB  # below 4 GiB: the words carry the GPA in their low 32 bits
WATCHDOG_S = 120.0
# x86 MMIO SPTEs keep 19 bits of the memslot generation (MMIO_SPTE_GEN_MASK); generation
# values of address space 0 are multiples of the number of address spaces.
MMIO_GEN_BITS = 19
STEPS_PER_DELETE, STEPS_PER_CREATE = 2, 1  # kvm_swap_active_memslots calls per ioctl
STEPS_PER_TOGGLE = STEPS_PER_DELETE + STEPS_PER_CREATE
WRAP_DWELL_EVERY = 64

Answer = Callable[[int, int, int], bytes]
"""``answer(gpa, length, seq)``: the bytes an MMIO read of ``gpa`` returns, given the host's
current sequence value.  The honest one always answers Q."""


def ram_word(gpa: int) -> int:
    """P: FLIP_RAM_WORD(gpa), the word at the start of each page while the slot exists."""
    return 0x52414D2100000000 | gpa


def mmio_word(gpa: int) -> int:
    """Q: FLIP_MMIO_WORD(gpa), what the host answers while the slot is absent."""
    return 0x4D4D494F00000000 | gpa


def honest_answer(gpa: int, length: int, seq: int) -> bytes:
    return mmio_word(gpa).to_bytes(8, "little")[:length]


class flip_violation(ctypes.Structure):
    """struct flip_violation (guests/flip.h)."""

    _fields_ = [("tsc", ctypes.c_uint64), ("seq_before", ctypes.c_uint64),
                ("seq_after", ctypes.c_uint64), ("gpa", ctypes.c_uint64),
                ("value", ctypes.c_uint64)]


GUEST_ABI = GuestAbi(
    header="flip.h",
    constants={"FLIP_LOG_MAX": FLIP_LOG_MAX, "FLIP_PAGE_SIZE": PAGE, "FLIP_PRESENT": PRESENT,
               "FLIP_DELETING": DELETING, "FLIP_ABSENT": ABSENT, "FLIP_CREATING": CREATING},
    macros={"FLIP_RAM_WORD": (ram_word, [(FLIP_GPA,), (FLIP_GPA + 0x5000,)]),
            "FLIP_MMIO_WORD": (mmio_word, [(FLIP_GPA,), (FLIP_GPA + 0x5000,)])},
    structs={"flip_violation": flip_violation},
    symbols={"flip_seq": u64, "flip_base": u64, "flip_pages": u64,
             **dict.fromkeys(("flip_start_tsc", "flip_reads", "flip_checked", "flip_seen_ram",
                             "flip_seen_mmio", "flip_violations"), u64 * KH_MAX_VCPUS),
             "flip_log": (flip_violation * FLIP_LOG_MAX) * KH_MAX_VCPUS},
)


@dataclasses.dataclass(frozen=True)
class Violation:
    phase: str
    vcpu: int
    gpa: int
    value: int
    seq_before: int
    seq_after: int
    guest_ns: float  # since this vCPU started reading (guest TSC)
    host_ns: float | None  # when the host stored seq_before, since the phase began

    @property
    def seen(self) -> str:
        if self.value == ram_word(self.gpa):
            return "P (RAM word)"
        if self.value == mmio_word(self.gpa):
            return "Q (MMIO answer)"
        return "neither P nor Q"

    @property
    def expected(self) -> str:
        if self.seq_before == self.seq_after and self.seq_before % 4 == PRESENT:
            return "P"
        if self.seq_before == self.seq_after and self.seq_before % 4 == ABSENT:
            return "Q"
        return "P or Q"

    def describe(self) -> str:
        seq = (f"seq {self.seq_before}" if self.seq_before == self.seq_after else
               f"seq {self.seq_before}->{self.seq_after}")
        host = "" if self.host_ns is None else (
            f"; the host stored it {self.host_ns / 1e6:.3f} ms into the phase")
        return (f"[{self.phase}] vCPU {self.vcpu} at +{self.guest_ns / 1e6:.3f} ms "
                f"(guest TSC since it started): "
                f"GPA {self.gpa:#x} read {self.value:#018x} = {self.seen}, expected "
                f"{self.expected}; {seq} (toggle #{self.seq_before // 4}, "
                f"{STATE_NAMES[self.seq_before % 4]}{host})")


class FlipViolation(Exception):
    """The invariant broke: a stale RAM mapping after a delete, a stale MMIO answer after a
    create, or a value that is neither.  ``str()`` lists the logged violations."""

    def __init__(self, count: int, violations: Sequence[Violation], outcome: RunOutcome) -> None:
        self.count = count
        self.violations = tuple(violations)
        self.outcome = outcome
        shown = "\n  ".join(v.describe() for v in self.violations)
        more = count - len(self.violations)
        super().__init__(f"mmio-flip FAIL: {count} violation(s) of the RAM/MMIO invariant"
                         + (f" ({more} more not logged)" if more > 0 else "")
                         + (f":\n  {shown}" if shown else ""))


class Flipper(HostToggler):
    """Deletes and re-creates the region's memslot ``toggles`` times, storing the sequence
    word (guests/flip.h) before and after each ioctl.  ``seq_ns[s - 1]`` is when sequence
    value ``s`` was stored, relative to ``t0_ns``.  It stores into guest RAM: the base
    class's stop() keeps guest RAM mapped until the thread has really finished."""

    thread_name = "kvmharness-mmio-flipper"

    def __init__(self, m: Machine, region: str, seq: ctypes.c_uint64, toggles: int,
                 dwell_s: float, seq_ns: array.array[int], t0_ns: int, dwell_every: int = 1,
                 cpus: tuple[int, ...] = ()) -> None:
        super().__init__(cpus)
        self.m = m
        self.dwell_every = max(1, dwell_every)
        self.region = region
        self.seq = seq
        self.toggles = toggles
        self.dwell_s = dwell_s
        self.seq_ns = seq_ns
        self.t0_ns = t0_ns
        self.done = 0
        self.delete_ns: list[int] = []
        self.create_ns: list[int] = []
        self.elapsed_ns = 0
        self._start_ns = 0
        self._deleted = False

    def _publish(self) -> None:
        # One aligned 8-byte store into guest RAM; the ioctl that follows is a syscall, so
        # the store is globally visible before KVM starts the memslot update.
        value = self.seq.value + 1
        self.seq.value = value
        self.seq_ns.append(time.perf_counter_ns() - self.t0_ns)

    def loop(self) -> None:
        unplug, plug, publish = self.m.unplug, self.m.plug, self._publish
        stopping, every = self.stopping, self.dwell_every
        self._start_ns = time.perf_counter_ns()
        for i in range(self.toggles):
            if stopping():
                break
            dwell = self.dwell_s if i % every == 0 else 0.0
            publish()                       # deleting
            delete_ns = unplug(self.region)
            self._deleted = True
            self.delete_ns.append(delete_ns)
            publish()                       # absent
            if dwell and stopping(dwell):
                break
            publish()                       # creating
            create_ns = plug(self.region)
            self._deleted = False
            publish()                       # present
            self.create_ns.append(create_ns)
            self.done += 1
            if dwell and stopping(dwell):
                break

    def restore(self) -> None:
        if self._start_ns:
            self.elapsed_ns = time.perf_counter_ns() - self._start_ns
        if self._deleted:  # leave the slot present for the next phase
            self._publish()
            self.m.plug(self.region)
            self._publish()


@dataclasses.dataclass(frozen=True)
class WrapPlan:
    """How many toggles take the generation past one MMIO-generation wraparound."""

    address_spaces: int
    steps_per_wrap: int
    toggles: int

    @classmethod
    def for_address_spaces(cls, n: int) -> WrapPlan:
        # Each step adds n; address space 0's generations are multiples of n, so the
        # 19-bit value returns to 0 every 2^19 / n steps.  Doing that many steps from any
        # starting value crosses exactly one multiple of 2^19.
        steps = (1 << MMIO_GEN_BITS) // n
        return cls(n, steps, math.ceil(steps / STEPS_PER_TOGGLE))


def address_spaces(m: Machine) -> int:
    """KVM_CAP_MULTI_ADDRESS_SPACE on the VM (0 when the kernel has one, e.g. without SMM)."""
    return max(1, m.vm.check_extension(KvmCap.KVM_CAP_MULTI_ADDRESS_SPACE))


class FlipRun:
    """One VM: the flip region, the guest, the honest or injected answer, and the checks."""

    def __init__(self, m: Machine, pages: int, nvcpus: int, answer: Answer,
                 toggler_cpus: tuple[int, ...] = ()) -> None:
        self.m = m
        self.toggler_cpus = toggler_cpus
        self.pages = pages
        self.nvcpus = nvcpus
        self.answer = answer
        sym = m.image.symbol("flip_seq")
        self.seq = ctypes.c_uint64.from_address(m.memory.host_address(sym.address, 8))
        self.seq_ns = array.array("q")
        self.mmio_exits = [0] * nvcpus

    def on_mmio(self, m: Machine, vcpu: int, exit_: Mmio) -> bytes | None:
        if exit_.is_write or not FLIP_GPA <= exit_.phys_addr < FLIP_GPA + self.pages * PAGE:
            raise AssertionError(f"mmio-flip: unexpected MMIO {exit_}")
        self.mmio_exits[vcpu] += 1  # one slot per vCPU thread: no lock needed
        return self.answer(exit_.phys_addr, exit_.len, self.seq.value)

    def clear_results(self) -> None:
        zeros = (u64 * KH_MAX_VCPUS)()
        for name in ("flip_reads", "flip_checked", "flip_seen_ram", "flip_seen_mmio",
                     "flip_violations", "flip_start_tsc"):
            self.m.write_var(name, zeros, u64 * KH_MAX_VCPUS)
        log_t = (flip_violation * FLIP_LOG_MAX) * KH_MAX_VCPUS
        self.m.write_var("flip_log", log_t(), log_t)

    def phase(self, name: str, toggles: int, dwell_s: float,
              dwell_every: int = 1) -> tuple[Flipper, int]:
        """Run the guest while a Flipper does ``toggles`` toggles, dwelling ``dwell_s`` in
        each stable state of every ``dwell_every``-th toggle; returns it and wall ns."""
        m = self.m
        self.clear_results()
        t0 = time.perf_counter_ns()
        flipper = Flipper(m, "flip", self.seq, toggles, dwell_s, self.seq_ns, t0, dwell_every,
                          self.toggler_cpus)
        m.start()
        try:
            flipper.start()
            while flipper.is_alive():
                flipper.join(0.05)
                if VcpuState.FAILED in m.states():
                    break  # a dead vCPU: stop toggling, wait() raises its error
        finally:
            try:
                flipper.stop()
            finally:
                m.request_guest_stop()
                m.wait(timeout_s=WATCHDOG_S)
        return flipper, time.perf_counter_ns() - t0

    def violations(self, name: str) -> tuple[int, list[Violation]]:
        m = self.m
        counts = m.read_var("flip_violations", u64 * KH_MAX_VCPUS)
        log = m.read_var("flip_log", (flip_violation * FLIP_LOG_MAX) * KH_MAX_VCPUS)
        starts = m.read_var("flip_start_tsc", u64 * KH_MAX_VCPUS)
        total, out = 0, list[Violation]()
        for v in range(self.nvcpus):
            total += counts[v]
            out.extend(Violation(
                phase=name, vcpu=v, gpa=e.gpa, value=e.value, seq_before=e.seq_before,
                seq_after=e.seq_after, guest_ns=m.tsc_to_ns(e.tsc - starts[v]),
                host_ns=self._host_ns(e.seq_before))
                for e in log[v][: min(counts[v], FLIP_LOG_MAX)])
        out.sort(key=lambda x: (x.seq_before, x.vcpu))
        return total, out

    def _host_ns(self, seq: int) -> float | None:
        # Each entry is relative to the start of the phase that stored it, which is the
        # phase whose guest read logged this seq (the guest starts with the phase).
        if seq == 0 or seq > len(self.seq_ns):
            return None
        return float(self.seq_ns[seq - 1])

    def reads(self) -> tuple[int, int, int, int]:
        m, n = self.m, self.nvcpus
        return (sum(m.read_var("flip_reads", u64 * KH_MAX_VCPUS)[:n]),
                sum(m.read_var("flip_checked", u64 * KH_MAX_VCPUS)[:n]),
                sum(m.read_var("flip_seen_ram", u64 * KH_MAX_VCPUS)[:n]),
                sum(m.read_var("flip_seen_mmio", u64 * KH_MAX_VCPUS)[:n]))


class MmioFlip(GuestScenario):
    name = "mmio-flip"
    variant_axes = (ZAP_AXIS,)
    guest = "flip"
    zap_phase = "flip"

    def __init__(self, req: RunRequest, answer: Answer | None = None) -> None:
        super().__init__(req)
        p = self.params
        self.nvcpus, self.pages = int(p["vcpus"]), int(p["pages"])
        self.toggles, self.dwell_s = int(p["toggles"]), int(p["dwell_us"]) / 1e6
        if self.pages < 1 or FLIP_GPA + self.pages * PAGE > 4 * GiB:
            raise ValueError(f"pages={self.pages}: need 1 .. {(2 * GiB) // PAGE}")
        if self.toggles < 1:
            raise ValueError(f"toggles={self.toggles}: need at least 1")
        self.injected = answer
        self.answer = answer or honest_answer
        self.totals = {"reads": 0, "checked": 0, "seen_ram": 0, "seen_mmio": 0}

    def vcpus(self) -> int:
        return self.nvcpus

    def layout(self) -> Layout:
        return Layout.of([Region("flip", FLIP_GPA, self.pages * PAGE, "ram")])

    def handlers(self) -> Handlers:
        return {"on_mmio": lambda m, vcpu, exit_: self.flip.on_mmio(m, vcpu, exit_)}

    def prepare(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        self.flip = FlipRun(m, self.pages, self.nvcpus, self.answer, ctx.toggler_cpus)
        # One word per page, straight into guest RAM: no host copy of the whole range
        # (up to 2 GiB) beside the guest memory that the Machine's guard counted.
        for i in range(self.pages):
            gpa = FLIP_GPA + i * PAGE
            m.write(gpa, ram_word(gpa).to_bytes(8, "little"))
        m.write_var("flip_base", FLIP_GPA)
        m.write_var("flip_pages", self.pages)
        self.plan = WrapPlan.for_address_spaces(address_spaces(m))
        ctx.outcome.effective.update(
            address_spaces=self.plan.address_spaces, tsc_khz=m.tsc_khz,
            answer="honest" if self.injected is None else
            getattr(self.injected, "__name__", "injected"))

    def iteration(self, ctx: Context, m: Machine, recorder: PhaseRecorder, i: int,
                  warm: bool) -> str:
        name = "warmup" if warm else "flip"
        with recorder.phase(name):
            flipper, _ = self.flip.phase(name, self.toggles, self.dwell_s)
        ctx.deletes += 0 if warm else len(flipper.delete_ns)
        count, found = self.flip.violations(name)
        reads, checked, ram, mmio = self.flip.reads()
        for key, value in zip(self.totals, (reads, checked, ram, mmio)):
            self.totals[key] += 0 if warm else value
        add = ctx.outcome.add
        add("violations", count, warmup=warm)
        add("toggles_per_s", flipper.done / (flipper.elapsed_ns / 1e9), warmup=warm)
        add("reads_checked", checked, warmup=warm)
        for ns in flipper.delete_ns:
            add("slot_delete", ns / 1e3, warmup=warm)
        for ns in flipper.create_ns:
            add("slot_create", ns / 1e3, warmup=warm)
        if count:
            self.finish_effective(ctx)
            raise FlipViolation(count, found, ctx.outcome)
        return f"{flipper.done} toggles, {reads} reads ({checked} checked), {count} violations"

    def finish(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        wrap_violations: tuple[int, list[Violation]] = (0, [])
        if self.params["wrap"]:
            wrap_violations = _wrap_phase(m, self.flip, ctx.outcome, self.plan, self.req,
                                          self.dwell_s)
        self.finish_effective(ctx)
        if wrap_violations[0]:
            raise FlipViolation(*wrap_violations, ctx.outcome)

    def finish_effective(self, ctx: Context) -> None:
        eff = ctx.outcome.effective
        eff.update({f"{k}_total": v for k, v in self.totals.items()})
        eff["mmio_exits_all_phases"] = sum(self.flip.mmio_exits)
        eff["final_seq"] = self.flip.seq.value
        eff["toggles_to_wrap"] = self.plan.toggles
        eff["steps_per_wrap"] = self.plan.steps_per_wrap
        self.record_axes(ctx)


def run_flip(req: RunRequest, *, answer: Answer | None = None) -> RunOutcome:
    """One run (a fresh VM).  ``answer`` replaces the host's MMIO answer (a test double);
    raises FlipViolation, carrying the outcome, as soon as a phase saw a violation."""
    return execute(MmioFlip(req, answer))


def _wrap_phase(m: Machine, run: FlipRun, outcome: RunOutcome, plan: WrapPlan,
                req: RunRequest, dwell_s: float) -> tuple[int, list[Violation]]:
    """Toggle flat out until the generation has wrapped once, vCPUs still reading;
    returns the phase's violation count and logged violations."""
    zap = req.variant.get("zap", "all")
    # Only the zap-all event: with zap=slot each one is a wrap (the only zap-all left); the
    # per-page and MMIO events would overrun the buffer over ~10^5 toggles.
    wrap_recorder = PhaseRecorder(m, outcome, events=ZAP_EVENTS[:1])
    req.progress(f"mmio-flip wrap: {plan.toggles} toggles = "
                 f"{plan.toggles * STEPS_PER_TOGGLE} generation steps "
                 f"(wrap every {plan.steps_per_wrap} with {plan.address_spaces} address "
                 "space(s))")
    m.reset()
    with wrap_recorder.phase("wrap"):
        # Back-to-back toggles leave almost no stable window for a strict check; a dwell
        # every WRAP_DWELL_EVERY toggles guarantees some on both sides of the wrap.
        flipper, wall_ns = run.phase("wrap", plan.toggles, dwell_s, WRAP_DWELL_EVERY)
    if flipper.done != plan.toggles:
        raise AssertionError(f"mmio-flip wrap: only {flipper.done} of {plan.toggles} "
                             "toggles happened")
    steps = flipper.done * STEPS_PER_TOGGLE
    wrap_s = flipper.elapsed_ns / 1e9
    count, found = run.violations("wrap")
    reads, checked, _ram, _mmio = run.reads()
    outcome.add("wrap_steps", steps)
    outcome.add("wrap_steps_per_s", steps / wrap_s)
    outcome.add("wrap_time", wrap_s)
    outcome.add("wrap_reads_checked", checked)
    outcome.add("violations_wrap", count)
    eff = outcome.effective
    eff["wrap"] = {
        "toggles": flipper.done, "generation_steps": steps,
        "steps_per_wrap": plan.steps_per_wrap, "address_spaces": plan.address_spaces,
        "wraps_guaranteed": steps // plan.steps_per_wrap, "wall_s": wall_ns / 1e9,
        "reads": reads, "reads_checked": checked, "dwell_every": WRAP_DWELL_EVERY,
    }
    fast = outcome.tracepoints.get("wrap", {}).get("kvm_mmu_zap_all_fast")
    if fast is not None:
        # Expected: zap=slot one per wrap, zap=all one per delete plus one per wrap.  The
        # count is this process's only (TraceCounter filters by thread group); the key's
        # "hostwide" is historical, kept so existing results and readers stay valid.  A
        # buffer overrun (see warnings) can make it an undercount.
        eff["wrap"]["zap_all_fast_hostwide"] = fast
        eff["wrap"]["zap_all_fast_expected_at_least"] = (
            steps // plan.steps_per_wrap + (flipper.done if zap == "all" else 0))
    req.progress(f"mmio-flip wrap: {steps} steps in {wrap_s:.1f} s "
                 f"({steps / wrap_s:.0f} steps/s), {checked} reads checked, "
                 f"{count} violations")
    return count, found


SPEC = ScenarioSpec(
    name="mmio-flip",
    summary="correctness under memslot churn: a GPA range alternates between RAM (pattern P) "
            "and MMIO (host answers Q) while vCPUs read it; a stale P or Q is a FAIL",
    parameters=(
        Parameter("vcpus", "vCPUs", 4, 2, "vCPUs reading the range", minimum=1,
                  maximum=KH_MAX_VCPUS),
        Parameter("pages", "pages", 16, 4, "pages in the flipping range (one word read each)",
                  minimum=1, maximum=4096),
        Parameter("toggles", "toggles", 2000, 40, "delete+create pairs per iteration",
                  minimum=1, maximum=10_000_000),
        Parameter("dwell_us", "us", 100, 500, "time the range stays RAM, then MMIO, per toggle",
                  minimum=1, maximum=10_000_000),
        Parameter("wrap", "bool", False, False, "afterwards, toggle until the memslot "
                  "generation passes an MMIO-generation wraparound (2^19 / address spaces "
                  "steps) while checking", type=bool),
    ),
    metrics=(
        Metric("violations", "violations", "lower", "reads that saw a stale or foreign word"),
        Metric("toggles_per_s", "toggles/s", "higher", "delete+create pairs per second, "
               "dwell included"),
        Metric("reads_checked", "reads", "higher", "reads made inside one stable state (the "
               "strict checks)"),
        Metric("slot_delete", "us", "lower", "delete ioctl while vCPUs read the range"),
        Metric("slot_create", "us", "lower", "create ioctl while vCPUs read the range"),
        Metric("wrap_steps", "steps", "higher", "memslot generation steps in the wrap phase"),
        Metric("wrap_steps_per_s", "steps/s", "higher", "generation steps per second "
               f"(a dwell every {WRAP_DWELL_EVERY} toggles included)"),
        Metric("wrap_time", "s", "lower", "time to drive the generation past a wraparound"),
        Metric("wrap_reads_checked", "reads", "higher", "strict checks during the wrap phase"),
        Metric("violations_wrap", "violations", "lower", "violations during the wrap phase"),
    ),
    variant_axes=MmioFlip.variant_axes,
    run=MmioFlip.run,
    headline=("violations", "slot_delete", "slot_create", "toggles_per_s"),
    default_iterations=3,
    default_warmup=1,
)
