"""teardown: how long destroying a VM takes as its populated guest RAM grows, and how long a
host thread waits to run meanwhile.

Destroy zaps every SPTE (always the zap-all path, whatever the slot quirk says), so its cost
grows with the mapped RAM; a KVM that does that holding mmu_lock without rescheduling
stalls the CPU it runs on.  Per size, a fresh VM's hammer vCPUs write one word per 4 KiB
guest page once (mapping all of it), then ``Vm.close()`` is timed: the vCPU and stats fds
and last the VM fd, whose release runs kvm_destroy_vm inside that close.  Meanwhile a probe
thread sleeps 100 us at a time and records how late it wakes; with ``pin`` it shares one
CPU with the destroying thread, so it can only run where the destroy lets the scheduler in.
The probe's worst lateness over an equally long idle window right after the destroy is the
host's own noise, to read the destroy's figure against."""

from __future__ import annotations

import os
import threading
import time

from kvmharness.guest.layout import GiB, Layout, Region
from kvmharness.guest.memory import check_host_memory
from kvmharness.observe.pinning import pinned
from kvmharness.scenarios.base import Parameter, RunOutcome, RunRequest, ScenarioSpec
from kvmharness.scenarios.common import (
    KH_MAX_VCPUS,
    HammerConfig,
    MiBList,
    PhaseRecorder,
    hammer_pass_ns,
)
from kvmharness.scenarios.metrics import SIZE, MetricFamily, size_label
from kvmharness.scenarios.preflight import host_check
from kvmharness.scenarios.presentation import Curves
from kvmharness.scenarios.skeleton import BareScenario, Context

HAMMER_GPA = 4 * GiB
PAGE = 4096
PROBE_SLEEP_NS = 100_000
PROBE_WARM_SLEEPS = 20  # sleeps before the destroy, so the probe is already in its loop
MIN_BASELINE_S = 0.001
WATCHDOG_S = 300.0


class DelayProbe:
    """A host thread that sleeps PROBE_SLEEP_NS at a time and keeps, in perf_counter_ns,
    each (previous wake-up, this wake-up) interval; lateness = end - start - PROBE_SLEEP_NS.
    The intervals tile the whole run, so being kept off the CPU between two sleeps counts
    as much as a sleep that overran."""

    def __init__(self, cpu: int | None) -> None:
        self.cpu = cpu
        self.sleeps: list[tuple[int, int]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kvmharness-delay-probe",
                                        daemon=True)

    def _loop(self) -> None:
        try:
            if self.cpu is not None:
                os.sched_setaffinity(0, {self.cpu})  # 0: this thread only
            clock, sleep, record = time.perf_counter_ns, time.sleep, self.sleeps.append
            seconds = PROBE_SLEEP_NS / 1e9
            woke = clock()
            while not self._stop.is_set():
                sleep(seconds)
                now = clock()
                record((woke, now))
                woke = now
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 5.0
        while len(self.sleeps) < PROBE_WARM_SLEEPS and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("teardown: the delay probe did not start sleeping within 5 s")
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error

    def worst_delay_us(self, start: int, end: int) -> float:
        """Worst lateness of the intervals overlapping [start, end] (they tile time, so at
        least the one containing ``start`` does, once the probe has woken after it)."""
        overlapping = [(a, b) for a, b in self.sleeps if a < end and b > start]
        if not overlapping:
            overlapping = [next((a, b) for a, b in self.sleeps if b >= start)]
        return max(0, max(b - a - PROBE_SLEEP_NS for a, b in overlapping)) / 1e3


def populate_and_destroy(ctx: Context, size: int, nvcpus: int, thp: bool, pin: bool,
                         outcome: RunOutcome, warm: bool) -> tuple[float, float, float]:
    """One fresh VM: map ``size`` bytes of guest RAM, then destroy it under the probe.
    Returns (destroy ms, probe worst delay us, probe baseline us)."""
    pages = size // PAGE // nvcpus
    layout = Layout.of([Region("hammer", HAMMER_GPA, size, "ram", hugepages=thp)])
    label = size_label(size)
    with ctx.machine("hammer", layout, vcpus=nvcpus, watchdog_s=WATCHDOG_S) as m:
        HammerConfig(base=HAMMER_GPA, pages=pages, passes=1,
                     stride_per_vcpu=pages * PAGE).apply(m)
        recorder = PhaseRecorder(m, outcome, trace=False)
        with recorder.phase("warmup" if warm else f"populate@{label}"):
            m.run()
        if not warm:
            outcome.add(f"populate_pass@{label}",
                        max(p[0] for p in hammer_pass_ns(m, nvcpus)) / 1e6)
        m.stop()
        cpu = min(os.sched_getaffinity(0)) if pin else None
        probe = DelayProbe(cpu)
        with pinned(None if cpu is None else {cpu}):
            try:  # start() inside: a probe that failed to start must still be stopped
                probe.start()
                t0 = time.perf_counter_ns()
                m.vm.close()
                t1 = time.perf_counter_ns()
                b0 = time.perf_counter_ns()
                time.sleep(max((t1 - t0) / 1e9, MIN_BASELINE_S))
                b1 = time.perf_counter_ns()
            finally:
                probe.stop()
    return ((t1 - t0) / 1e6, probe.worst_delay_us(t0, t1), probe.worst_delay_us(b0, b1))


class Teardown(BareScenario):
    """One fresh VM per size and iteration: the body builds them."""

    name = "teardown"

    def __init__(self, req: RunRequest) -> None:
        super().__init__(req)
        p = self.params
        self.sizes = MiBList(p["populated_sizes"]).sizes
        self.nvcpus, self.thp, self.pin = int(p["vcpus"]), bool(p["thp"]), bool(p["pin"])
        if not 1 <= self.nvcpus <= KH_MAX_VCPUS:
            raise ValueError(f"teardown: vcpus={self.nvcpus}: expected 1..{KH_MAX_VCPUS}")
        for size in self.sizes:
            if size // PAGE < self.nvcpus:
                raise ValueError(f"teardown: {size_label(size)} is less than one page per vCPU")
        # Every size is touched; refuse the largest before building anything.
        check_host_memory(max(self.sizes),
                          f"teardown with {size_label(max(self.sizes))} of populated RAM")

    def iteration(self, ctx: Context, i: int, warm: bool) -> str:
        outcome = ctx.outcome
        if i == 0:
            outcome.effective.update(
                thp=self.thp, pin=self.pin, probe_sleep_us=PROBE_SLEEP_NS / 1e3,
                populated_bytes={size_label(s): s // PAGE // self.nvcpus * self.nvcpus * PAGE
                                 for s in self.sizes},
                timed="Vm.close(): vCPU and stats fds, then the VM fd "
                      "(kvm_destroy_vm runs in its release)")
        summary = []
        for size in self.sizes:
            label = size_label(size)
            destroy_ms, delay_us, baseline_us = populate_and_destroy(
                ctx, size, self.nvcpus, self.thp, self.pin, outcome, warm)
            outcome.add(f"destroy@{label}", destroy_ms, warmup=warm)
            outcome.add(f"probe_max_delay@{label}", delay_us, warmup=warm)
            outcome.add(f"probe_baseline@{label}", baseline_us, warmup=warm)
            summary.append(f"{label}: destroy {destroy_ms:.2f} ms, probe worst "
                           f"{delay_us:.0f} us (idle {baseline_us:.0f} us)")
        return "; ".join(summary)


SPEC = ScenarioSpec(
    name="teardown",
    summary="VM destroy time versus populated guest RAM, and a host probe thread's worst "
            "scheduling delay during it (mmu_lock held without rescheduling shows here)",
    parameters=(
        Parameter("populated_sizes", "MiB: comma list (K/M/G suffixes allowed)",
                  MiBList("256,1024,4096"), MiBList("4,16"),
                  "guest RAM mapped with 4 KiB guest pages before each destroy (one fresh "
                  "VM per size)", type=MiBList),
        Parameter("vcpus", "vCPUs", 4, 1, "vCPUs populating the RAM (each a share)",
                  minimum=1, maximum=KH_MAX_VCPUS),
        Parameter("pin", "bool", True, True, "pin the probe and the destroying thread to one "
                  "CPU, so the probe runs only where the destroy reschedules", type=bool),
        Parameter("thp", "bool", False, False, "back guest RAM with transparent huge pages",
                  type=bool),
    ),
    metrics=(
        MetricFamily.of("destroy", SIZE, "ms", "lower",
                        "Vm.close() of a VM with this much RAM mapped (kvm_destroy_vm)"),
        MetricFamily.of("probe_max_delay", SIZE, "us", "lower",
                        "worst lateness of the probe's 100 us sleeps during the destroy"),
        MetricFamily.of("probe_baseline", SIZE, "us", "lower",
                        "the same over an equally long idle window after it (host noise)"),
        MetricFamily.of("populate_pass", SIZE, "ms", "lower",
                        "the hammer's first-touch pass that maps the RAM (guest TSC, "
                        "slowest vCPU)"),
    ),
    variant_axes=Teardown.variant_axes,
    run=Teardown.run,
    check_host=host_check(Teardown, "populated_sizes", lambda s: max(s.sizes)),
    headline=(f"destroy@{SIZE.slot}", f"probe_max_delay@{SIZE.slot}"),
    default_iterations=3,
    default_warmup=1,
    figure=Curves("teardown: VM destroy vs populated RAM", xlabel="populated RAM",
                  families=(f"destroy@{SIZE.slot}", f"probe_max_delay@{SIZE.slot}")),
)
