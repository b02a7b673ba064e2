"""rom-toggle: the benchmark behind "KVM: x86/mmu: Remove fast invalidate mechanism" (2019).

The 2019 patch series' benchmark ran ``mmtest -c 8 -m 2000 -e ./rom.sh``: 8 threads
touching 2000 MB each while a guest read a PCI ROM, which makes the VMM unmap and remap
the ROM memslot.  Here V hammer
vCPUs each own M MiB mapped with 4 KiB guest pages and write one word per page per pass;
meanwhile a host thread deletes and re-creates a read-only ROM slot every T ms, and the
hammer vCPUs read the ROM between passes (pattern while present, all-ones via an MMIO exit
while absent).  With zap=all every delete throws away all of the hammer's SPTEs, which the
next pass must fault back in.

Each run also keeps the timeline of its last measured iteration (``effective["timeline"]``,
see ``timeline``): every pass's end and length and every ROM delete on one clock, the
picture of the refaults after each zap."""

from __future__ import annotations

import time
from typing import Any

from kvmharness.guest.layout import GiB, KiB, Layout, MiB, Region
from kvmharness.guest.machine import Machine
from kvmharness.kvm import Mmio
from kvmharness.scenarios.base import ZAP_AXIS, Metric, Parameter, RunRequest, ScenarioSpec
from kvmharness.scenarios.common import (
    HAMMER_INSTRUCTIONS_PER_PAGE,
    HAMMER_MAX_PASSES,
    HAMMER_ROM_ABSENT,
    KH_MAX_VCPUS,
    HammerConfig,
    PhaseRecorder,
    hammer_max_gap_ns,
    hammer_pass_ns,
    hammer_rom_word,
    u32,
    u64,
)
from kvmharness.scenarios.preflight import Work, host_check
from kvmharness.scenarios.presentation import PassTimeline
from kvmharness.scenarios.skeleton import Context, GuestScenario, Handlers, HostToggler

HAMMER_GPA = 4 * GiB
ROM_GPA = 2 * GiB
ROM_ABSENT = HAMMER_ROM_ABSENT.to_bytes(8, "little")
MSR_IA32_TSC = 0x10
# A timeline holds at most this many passes (whole vCPUs, lowest first) and deletes, so a
# long run's result file stays small.
TIMELINE_MAX_POINTS = 4096


def rom_image(size: int) -> bytes:
    """The ROM's bytes: the word at each page start is HAMMER_ROM_WORD(offset)."""
    out = bytearray(size)
    for offset in range(0, size, 4096):
        out[offset:offset + 8] = hammer_rom_word(offset).to_bytes(8, "little")
    return bytes(out)


class RomToggler(HostToggler):
    """Deletes and re-creates the ROM slot every ``interval_s``, keeping each
    Machine.unplug()/plug() syscall time; leaves the ROM present when it stops."""

    thread_name = "kvmharness-rom-toggler"

    def __init__(self, machine: Machine, region: str, interval_s: float,
                 cpus: tuple[int, ...] = ()) -> None:
        super().__init__(cpus)
        self.machine = machine
        self.region = region
        self.interval_s = interval_s
        self.delete_ns: list[int] = []
        self.create_ns: list[int] = []
        # perf_counter_ns just before each delete's syscall (the timeline's marks).
        self.delete_at_ns: list[int] = []

    def loop(self) -> None:
        while not self.stopping(self.interval_s):
            self.delete_at_ns.append(time.perf_counter_ns())
            self.delete_ns.append(self.machine.unplug(self.region))
            if self.stopping(self.interval_s / 2):
                break
            self.create_ns.append(self.machine.plug(self.region))

    def restore(self) -> None:
        if len(self.create_ns) < len(self.delete_ns):
            self.machine.plug(self.region)  # leave the ROM present for the next iteration


class RomToggle(GuestScenario):
    name = "rom-toggle"
    variant_axes = (ZAP_AXIS,)
    guest = "hammer"
    zap_phase = "hammer"

    def __init__(self, req: RunRequest) -> None:
        super().__init__(req)
        p = self.params
        self.nvcpus, self.mem = int(p["vcpus"]), int(p["mem_per_vcpu"]) * MiB
        self.rom_size = int(p["rom_size"]) * KiB
        self.interval_s = int(p["toggle_ms"]) / 1000

    def vcpus(self) -> int:
        return self.nvcpus

    def work(self) -> Work:
        """One iteration's guest work.  The watchdog cannot bound it: it fires on a vCPU
        silent for watchdog_s, and the hammer exits between passes (absent-ROM reads), so
        a long run stays alive pass after pass; the preflight refuses it instead."""
        pages = self.mem // 4096
        return Work(instructions=int(self.params["passes"]) * pages * self.nvcpus
                    * HAMMER_INSTRUCTIONS_PER_PAGE, vcpus=self.nvcpus,
                    limit_s=self.watchdog_s, knobs="passes, mem_per_vcpu or vcpus")

    def layout(self) -> Layout:
        return Layout.of([
            Region("hammer", HAMMER_GPA, self.nvcpus * self.mem, "ram",
                   hugepages=bool(self.params["thp"])),
            Region("rom", ROM_GPA, self.rom_size, "rom"),
        ])

    def handlers(self) -> Handlers:
        return {"on_mmio": self.on_mmio}

    def on_mmio(self, m: Machine, vcpu: int, exit_: Mmio) -> bytes:
        if exit_.is_write or not ROM_GPA <= exit_.phys_addr < ROM_GPA + self.rom_size:
            raise AssertionError(f"rom-toggle: unexpected MMIO {exit_}")
        return ROM_ABSENT[: exit_.len]

    def prepare(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        m.memory.backing["rom"].write(0, rom_image(self.rom_size))
        HammerConfig(base=HAMMER_GPA, pages=self.mem // 4096, passes=int(self.params["passes"]),
                     stride_per_vcpu=self.mem).apply(m)
        m.write_var("hammer_rom_base", ROM_GPA)
        m.write_var("hammer_rom_bytes", self.rom_size)
        ctx.outcome.effective["thp"] = bool(self.params["thp"])

    def iteration(self, ctx: Context, m: Machine, recorder: PhaseRecorder, i: int,
                  warm: bool) -> str:
        toggler = RomToggler(m, "rom", self.interval_s, ctx.toggler_cpus)
        tsc_ref = guest_tsc_now(m)
        with recorder.phase("warmup" if warm else "hammer") as stats:
            m.start()
            try:
                toggler.start()
                m.wait()
            finally:
                toggler.stop()
        # Stamped on the vCPU threads (first entry, last finishing exit): wait() polls, and
        # a clock read after it would put every total on its 20 ms lattice.
        t0, t1 = m.run_span_ns()
        # The toggler runs on until stop(), a poll after the guest finished: a delete begun
        # outside [t0, t1] did not happen "during the passes" (no vCPU ran beside it).
        during = [k for k, at in enumerate(toggler.delete_at_ns) if t0 <= at <= t1]
        deletes = [toggler.delete_ns[k] for k in during]
        creates = [toggler.create_ns[k] for k in during if k < len(toggler.create_ns)]
        if not warm:
            ctx.deletes += len(toggler.delete_ns)  # every delete may zap: all count here
            if not deletes:
                # The benchmark's meaning is deletes *during* the passes, so none is forced:
                # the result says why slot_delete (a headline) has no sample from here.
                ctx.outcome.warnings.append(
                    f"iteration {i + 1 - self.req.warmup}: no ROM delete happened: the "
                    f"passes took {(t1 - t0) / 1e6:.1f} ms, under toggle_ms="
                    f"{self.params['toggle_ms']} (or the host was too busy to run the "
                    "toggler); raise passes or mem_per_vcpu, or lower toggle_ms")
        add = ctx.outcome.add
        add("total", (t1 - t0) / 1e6, warmup=warm)
        for passes in hammer_pass_ns(m, self.nvcpus):
            for ns in passes:
                add("pass", ns / 1e6, warmup=warm)
        add("max_stall", max(max(gaps) for gaps in hammer_max_gap_ns(m, self.nvcpus)) / 1e3,
            warmup=warm)
        for ns in deletes:
            add("slot_delete", ns / 1e3, warmup=warm)
        for ns in creates:
            add("slot_create", ns / 1e3, warmup=warm)
        add("toggles", len(deletes), warmup=warm)
        add("pf_fixed", stats.get("vcpu.pf_fixed", 0), warmup=warm)
        add("remote_tlb_flush", stats.get("vm.remote_tlb_flush", 0), warmup=warm)
        if not warm:  # each measured iteration replaces the last one's
            ctx.outcome.effective["timeline"] = timeline(m, self.nvcpus, tsc_ref, t0, t1,
                                                         toggler.delete_at_ns)
        return f"{(t1 - t0) / 1e6:.1f} ms, {len(deletes)} ROM deletes"

    def finish(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        present = m.read_var("hammer_rom_present", u64 * KH_MAX_VCPUS)
        absent = m.read_var("hammer_rom_absent", u64 * KH_MAX_VCPUS)
        ctx.outcome.effective["rom_words_present"] = sum(present[:self.nvcpus])
        ctx.outcome.effective["rom_words_absent"] = sum(absent[:self.nvcpus])


def guest_tsc_now(m: Machine) -> tuple[int, float, float]:
    """(guest TSC, perf_counter_ns at the same moment, the pair's error in ns): vCPU 0's
    TSC read through KVM_GET_MSRS between two host clock reads, placed at their midpoint,
    so the error is half the ioctl.  KVM gives the vCPUs of one VM one TSC, ticking at
    KVM_GET_TSC_KHZ, so this one pair maps any guest TSC of the VM onto the host clock."""
    before = time.perf_counter_ns()
    tsc = m.vcpus[0].get_msrs([MSR_IA32_TSC])[MSR_IA32_TSC]
    after = time.perf_counter_ns()
    return tsc, (before + after) / 2, (after - before) / 2


def timeline(m: Machine, nvcpus: int, tsc_ref: tuple[int, float, float], t0: int, t1: int,
             delete_at_ns: list[int]) -> dict[str, Any]:
    """One iteration on the host clock, seconds from its start (``t0``, the first vCPU's
    entry into the guest, to ``t1`` = ``end_s``, the last vCPU's finishing exit): every pass
    of every vCPU (``pass_end_s`` from the guest's hammer_pass_end_tsc, ``pass_ms`` its length,
    ``pass_vcpu`` whose; sorted by end) and every ROM delete begun inside the iteration
    (``delete_s``, when its syscall began).  At most TIMELINE_MAX_POINTS passes (whole
    vCPUs, lowest index first: ``vcpus`` says how many) and deletes.  ``clock_error_s``
    bounds how far a pass end may sit from where the host clock would have put it."""
    tsc0, host0, error_ns = tsc_ref
    done = m.read_var("hammer_passes_done", u32 * KH_MAX_VCPUS)
    end_tsc = m.read_var("hammer_pass_end_tsc", (u64 * HAMMER_MAX_PASSES) * KH_MAX_VCPUS)
    lengths = hammer_pass_ns(m, nvcpus)
    points: list[tuple[float, float, int]] = []
    kept = 0
    for v in range(nvcpus):
        if len(points) + done[v] > TIMELINE_MAX_POINTS:
            break
        kept += 1
        for p in range(done[v]):
            host_ns = host0 + m.tsc_to_ns(end_tsc[v][p] - tsc0)
            points.append((round((host_ns - t0) / 1e9, 6), round(lengths[v][p] / 1e6, 4), v))
    points.sort()
    deletes = [ns for ns in delete_at_ns if t0 <= ns <= t1]
    return {
        "pass_end_s": [p[0] for p in points],
        "pass_ms": [p[1] for p in points],
        "pass_vcpu": [p[2] for p in points],
        "delete_s": [round((ns - t0) / 1e9, 6) for ns in deletes[:TIMELINE_MAX_POINTS]],
        "end_s": round((t1 - t0) / 1e9, 6),
        "vcpus": kept,
        "clock_error_s": round(error_ns / 1e9, 6),
        "clock": "host perf_counter; pass ends from the guest TSC via KVM_GET_MSRS(IA32_TSC)",
    }


SPEC = ScenarioSpec(
    name="rom-toggle",
    summary="hammer guest RAM while a read-only ROM memslot is deleted and re-created "
            "(the 2019 fast-invalidate removal benchmark)",
    parameters=(
        Parameter("vcpus", "vCPUs", 8, 1, "hammer vCPUs (the 2019 benchmark's 8 threads)",
                  minimum=1, maximum=KH_MAX_VCPUS),
        Parameter("mem_per_vcpu", "MiB", 2048, 4, "RAM each vCPU touches, 4 KiB guest pages "
                  "(the 2019 benchmark's 2000 MB per thread)", minimum=1),
        Parameter("passes", "passes", 10, 5, "passes over the memory per iteration",
                  minimum=1, maximum=HAMMER_MAX_PASSES),
        Parameter("toggle_ms", "ms", 10, 2, "interval between ROM slot deletes",
                  minimum=1, maximum=60_000),
        Parameter("rom_size", "KiB", 128, 128, "size of the read-only ROM slot (whole 4 KiB pages)",
                  minimum=4, maximum=1 << 20, multiple_of=4),
        Parameter("thp", "bool", False, False, "back guest RAM with transparent huge pages",
                  type=bool),
    ),
    metrics=(
        Metric("total", "ms", "lower", "time for all vCPUs to finish every pass (the 2019 "
               "benchmark's figure): first vCPU's entry to the last one's DONE exit, "
               "stamped on the vCPU threads"),
        Metric("pass", "ms", "lower", "one vCPU's pass over its memory (guest TSC)"),
        Metric("max_stall", "us", "lower", "longest gap between two consecutive page writes "
               "of any vCPU's pass (guest TSC): how long a vCPU was held up at once"),
        Metric("slot_delete", "us", "lower", "KVM_SET_USER_MEMORY_REGION delete of the ROM "
               "(time inside the syscall), begun while the vCPUs ran"),
        Metric("slot_create", "us", "lower", "re-creating the ROM slot (time inside the "
               "syscall), after a delete begun while the vCPUs ran"),
        # A by-product of the iteration's length (one delete per 1.5 x toggle_ms), not a
        # rate: it rises exactly when "total" gets worse, so it shares total's direction.
        Metric("toggles", "deletes", "lower", "ROM deletes during the iteration (tracks "
               "its length: fewer = the passes finished sooner)"),
        Metric("pf_fixed", "faults", "lower", "vCPU pf_fixed during the iteration (refaults)"),
        Metric("remote_tlb_flush", "flushes", "lower", "VM remote TLB flushes"),
    ),
    variant_axes=RomToggle.variant_axes,
    run=RomToggle.run,
    check_host=host_check(RomToggle, "vcpus x mem_per_vcpu",
                          lambda s: s.nvcpus * s.mem + s.rom_size, RomToggle.work),
    extremes=("max_stall",),
    headline=("total", "pass", "max_stall", "slot_delete", "pf_fixed"),
    figure=PassTimeline("rom-toggle: hammer pass times while the ROM slot is deleted and "
                        "re-created", passes="pass", events="toggles",
                        event_name="ROM deletes"),
    default_iterations=3,
    default_warmup=1,
)
