"""slot-scale: memslot create / move / delete latency versus the number of memslots that
already exist (the axis of the KVM selftests' memslot_perf_test, 1 to 32k), and what each
op costs a running guest.

For each count N the VM holds N filler memslots of 4 KiB beside the guest's own (one
untouched MAP_NORESERVE mapping backs them all); then one more slot (``slot_kib``, 4 KiB
by default, never touched either) is created,
moved and deleted ``ops_per_count`` times, each op timed inside the
KVM_SET_USER_MEMORY_REGION syscall.  A hammer vCPU keeps its RAM mapped and waits after
every pass in the state ``op_state`` names (slot_ops.OP_STATES: parked in the guest while
the main thread does the op; exited with the op the first ioctl after the exit, metrics
``<op>_after_exit@<count>``; or outside, its thread waiting out of KVM_RUN while the main
thread does the op, metrics ``<op>_vcpu_out@<count>``; or back_to_back, as outside with
``warm_ops`` untimed round trips of the op before each timed one, metrics
``<op>_back_to_back@<count>`` and no per-op pass metrics), so the next pass is the op's
refault cost (zap=all throws every SPTE away on move/delete, zap=slot the slot's only),
with its pf_fixed where the kernel counts it.  Reaching a count (adding or deleting
fillers) is untimed setup followed by a pass that is not recorded."""

from __future__ import annotations

from kvmharness.guest.layout import GiB, KiB, Layout, LayoutError, MiB, Region
from kvmharness.guest.longmode import max_phys_addr
from kvmharness.guest.machine import Machine
from kvmharness.guest.memory import check_host_memory
from kvmharness.kvm import HostMemory, Vm
from kvmharness.observe.counters import KvmCounters
from kvmharness.scenarios.base import ZAP_AXIS, Metric, Parameter, RunRequest, ScenarioSpec
from kvmharness.scenarios.common import (
    HAMMER_MAX_PASSES,
    HammerConfig,
    PhaseRecorder,
)
from kvmharness.scenarios.metrics import COUNT, MetricFamily
from kvmharness.scenarios.presentation import Curves
from kvmharness.scenarios.skeleton import Context, GuestScenario, Handlers
from kvmharness.scenarios.slot_ops import (
    AFTER_EXIT,
    EXITED,
    HANDED_OFF,
    OP_STATE_PARAMETER,
    OP_STATES,
    PARKED,
    SETUP,
    STEADY,
    STEADY_METRICS,
    VCPU_OUT,
    WARM,
    WARM_OPS_PARAMETER,
    SlotOpsDriver,
    SlotUnderTest,
    Step,
    align_up,
    record_warm_ops,
)

HAMMER_GPA = 4 * GiB
FILLER = 4096
OPS = ("create", "move", "delete")
ZAPPING_OPS = ("move", "delete")
MAX_COUNT = 32768  # KVM_CAP_NR_MEMSLOTS is 32764 on x86: the VM says the real limit
SLOT_METADATA = 1024  # KVM's per-slot allocations, over-estimated, for the memory guard
RUN_PHASE = "slot_scale"


class CountList(str):
    """A parameter value: comma-separated memslot counts, ascending (``"1,16,64"``)."""

    expected = "a comma list of ascending memslot counts like 1,16,64"

    def __new__(cls, text: str) -> CountList:
        items = [s.strip() for s in str(text).split(",") if s.strip()]
        if not items or not all(s.isascii() and s.isdigit() and len(s) <= 20 for s in items):
            raise ValueError(f"{text!r}: expected counts like 1,16,64")
        counts = [int(s) for s in items]
        if not all(1 <= c <= MAX_COUNT for c in counts):
            raise ValueError(f"{text!r}: each count must be 1..{MAX_COUNT}")
        if counts != sorted(set(counts)):
            raise ValueError(f"{text!r}: counts must be ascending, each once")
        return super().__new__(cls, ",".join(map(str, counts)))

    @property
    def counts(self) -> list[int]:
        return [int(s) for s in self.split(",")]


class Fillers:
    """Up to ``max_count`` 4 KiB memslots at consecutive GPAs, all backed by one untouched
    mapping; ``resize(n)`` adds or deletes the highest ones."""

    def __init__(self, vm: Vm, gpa: int, max_count: int, reserved: set[int]) -> None:
        self.vm, self.gpa, self.count = vm, gpa, 0
        used = set(vm.memslots) | reserved
        self.ids = [s for s in range(vm.max_memslots) if s not in used][:max_count]
        if len(self.ids) < max_count:
            raise ValueError(f"slot-scale: counts up to {max_count} need {max_count} filler "
                             f"memslots, but this kernel's KVM_CAP_NR_MEMSLOTS is "
                             f"{vm.max_memslots} and the guest uses {len(used)}: lower counts")
        self.mem = HostMemory(max_count * FILLER, name="filler memslots")

    def resize(self, n: int) -> int:
        """Returns how many fillers were deleted (each a possible zap)."""
        deleted = 0
        while self.count < n:
            i = self.count
            self.vm.set_user_memory_region(self.ids[i], 0, self.gpa + i * FILLER, FILLER,
                                           self.mem.addr + i * FILLER)
            self.count += 1
        while self.count > n:
            i = self.count - 1
            self.vm.set_user_memory_region(self.ids[i], 0, self.gpa + i * FILLER, 0, 0)
            self.count -= 1
            deleted += 1
        return deleted

    def close(self) -> None:
        try:
            if not self.vm.closed:
                self.resize(0)
        finally:
            self.mem.close()


class SlotScale(GuestScenario):
    name = "slot-scale"
    variant_axes = (ZAP_AXIS,)
    guest = "hammer"
    zap_phase = RUN_PHASE

    def __init__(self, req: RunRequest) -> None:
        super().__init__(req)
        p = self.params
        self.counts = CountList(p["counts"]).counts
        self.cycles = int(p["ops_per_count"])
        self.ram = int(p["populated_mib"]) * MiB
        self.slot_size = int(p["slot_kib"]) * KiB
        if self.cycles < 1 or self.ram < FILLER:
            raise ValueError("slot-scale: ops_per_count and populated_mib must be positive")
        passes = len(self.steps(0, False)) + 1
        if passes > HAMMER_MAX_PASSES:
            raise ValueError(f"slot-scale: {passes} hammer passes needed per iteration, the "
                             f"hammer guest records at most {HAMMER_MAX_PASSES}: use fewer "
                             "counts or ops_per_count")
        check_host_memory(self.ram + max(self.counts) * SLOT_METADATA,
                          f"slot-scale with {max(self.counts)} memslots and "
                          f"{self.ram // MiB} MiB of guest RAM")
        self.filler_gpa = align_up(HAMMER_GPA + self.ram, GiB)
        self.gpa_a = align_up(self.filler_gpa + max(self.counts) * FILLER, GiB)
        self.gpa_b = self.gpa_a + align_up(self.slot_size, GiB)
        self.setup_deletes = 0

    def steps(self, i: int, warm: bool) -> list[Step]:
        steps = []
        for count in self.counts:
            key = str(count)
            steps.append(Step(SETUP, FILLER, i, warm, key=key))
            for _ in range(self.cycles):
                steps += [Step(op, self.slot_size, i, warm, key=key)
                          for op in (*OPS, STEADY)]
            steps[-1] = Step(STEADY, self.slot_size, i, warm, group_end=True, key=key)
        return steps

    def vcpus(self) -> int:
        return 1

    def layout(self) -> Layout:
        return Layout.of([Region("hammer", HAMMER_GPA, self.ram, "ram",
                                 hugepages=bool(self.params["thp"]))])

    def handlers(self) -> Handlers:
        return {"on_sync": lambda m, vcpu, values: self.driver.on_sync(m, vcpu, values)}

    def prepare(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        limit = max_phys_addr(ctx.kvm.supported_cpuid())
        if self.gpa_b + self.slot_size > limit:
            raise LayoutError(f"slot-scale: the slot under test at {self.gpa_b:#x} is above "
                              f"the guest physical address limit {limit:#x}")
        slot = SlotUnderTest(m.vm, self.slot_size, self.gpa_a, self.gpa_b)
        ctx.cleanups.callback(slot.close)
        self.fillers = Fillers(m.vm, self.filler_gpa, max(self.counts), {slot.slot})
        ctx.cleanups.callback(self.fillers.close)
        self.present: dict[str, int] = {}
        ctx.outcome.effective.update(
            memslots_during_ops=self.present,
            guest_slots=len(m.vm.memslots), max_memslots=m.vm.max_memslots,
            thp=bool(self.params["thp"]), filler_gpa=self.filler_gpa,
            slot_gpas=[self.gpa_a, self.gpa_b],
            timed="KVM_SET_USER_MEMORY_REGION: time inside the syscall",
            op_state=OP_STATES[str(self.params["op_state"])])
        self.driver = SlotOpsDriver(ctx.outcome, slot, KvmCounters(
            m.vm, m.vcpus, vm_stats=recorder.vm_stats, vcpu_stats=recorder.vcpu_stats),
            on_setup=self.setup, op_state=str(self.params["op_state"]),
            warm_ops=int(self.params["warm_ops"]))
        HammerConfig(base=HAMMER_GPA, pages=self.ram // 4096,
                     passes=len(self.steps(0, False)) + 1, stride_per_vcpu=0,
                     sync_each_pass=self.driver.op_state in (EXITED, *HANDED_OFF),
                     park_each_pass=self.driver.op_state == PARKED).apply(m)

    def setup(self, step: Step) -> None:
        self.setup_deletes += self.fillers.resize(int(step.key))
        # What the ops of this count really ran beside (evidence for the x axis).
        self.present[step.key] = len(self.fillers.vm.memslots)

    def iteration(self, ctx: Context, m: Machine, recorder: PhaseRecorder, i: int,
                  warm: bool) -> str:
        steps = self.steps(i, warm)
        self.setup_deletes = 0
        untimed_zapping = self.driver.untimed_zapping
        with recorder.phase(RUN_PHASE):
            self.driver.begin(steps, "populate" if i == 0 else None)
            self.driver.run(m)
        ctx.deletes += (self.setup_deletes + sum(1 for s in steps if s.op in ZAPPING_OPS)
                        + self.driver.untimed_zapping - untimed_zapping)
        self.driver.record_passes(m, warm)
        # GUEST_SYNC exits so far: the witness of op_state (one per pass when exited).
        ctx.outcome.effective["guest_syncs"] = len(m.syncs)
        # Ops done on another thread while the vCPU thread waited out of KVM_RUN (outside).
        ctx.outcome.effective["ops_with_vcpu_out"] = self.driver.ops_with_vcpu_out
        record_warm_ops(ctx.outcome, self.driver)
        return "memslots " + "; ".join(self.driver.medians)


def _family(name: str, unit: str, help: str) -> Metric:
    return MetricFamily.of(name, COUNT, unit, "lower", help)


SPEC = ScenarioSpec(
    name="slot-scale",
    summary="latency of memslot create, move and delete versus the number of memslots "
            "that exist (1 to 32k), with a running guest's refault cost after each",
    parameters=(
        Parameter("counts", "memslots: comma list, ascending", CountList("1,64,1024,8192,32000"),
                  CountList("1,16,64"), "filler memslots present during the ops (the "
                  "scaling curve's x axis; KVM_CAP_NR_MEMSLOTS bounds it)", type=CountList),
        Parameter("ops_per_count", "cycles", 5, 2, "create, move, delete cycles per count "
                  "per iteration", minimum=1, maximum=1000),
        Parameter("populated_mib", "MiB", 1024, 4, "guest RAM the hammer maps with 4 KiB "
                  "pages (what a zap-all throws away)", minimum=1, maximum=1 << 20),
        Parameter("slot_kib", "KiB", 4, 4, "size of the slot under test, never touched (the "
                  "fillers stay 4 KiB); the kernel's memslot_perf_test uses 512 MiB / count",
                  minimum=4, maximum=1 << 20, multiple_of=4),
        Parameter("thp", "bool", False, False, "back guest RAM with transparent huge pages",
                  type=bool),
        OP_STATE_PARAMETER,
        WARM_OPS_PARAMETER,
    ),
    metrics=tuple(
        _family(op, "us", f"KVM_SET_USER_MEMORY_REGION {op} of the slot under test (time "
                "inside the syscall)") for op in OPS
    ) + tuple(
        _family(f"{op}{AFTER_EXIT}", "us", f"{op} of the slot under test, op_state=exited: "
                "the first ioctl after the vCPU's exit") for op in OPS
    ) + tuple(
        _family(f"{op}{VCPU_OUT}", "us", f"{op} of the slot under test, op_state=outside: "
                "the vCPU thread waits out of KVM_RUN while the main thread does the op")
        for op in OPS
    ) + tuple(
        _family(f"{op}{WARM}", "us", f"{op} of the slot under test, op_state=back_to_back: "
                "the vCPU thread waits out of KVM_RUN and the op follows warm_ops untimed "
                "round trips of it, back to back") for op in OPS
    ) + tuple(
        _family(f"{op}_pass", "ms", f"the hammer's next pass after {op} (guest TSC; the "
                "refault cost)") for op in OPS
    ) + tuple(
        _family(f"{op}_pf_fixed", "faults", f"vCPU pf_fixed during the pass after {op}")
        for op in OPS
    ) + STEADY_METRICS,
    variant_axes=SlotScale.variant_axes,
    run=SlotScale.run,
    headline=tuple(f"{op}@{COUNT.slot}" for op in OPS) + (f"delete_pf_fixed@{COUNT.slot}",),
    default_iterations=3,
    default_warmup=1,
    figure=Curves("slot-scale: memslot operation latency vs memslots present",
                  xlabel="memslots present",
                  families=tuple(f"{op}@{COUNT.slot}" for op in OPS)),
)
