"""rom-toggle: the benchmark behind "KVM: x86/mmu: Remove fast invalidate mechanism" (2019).

The seed ran ``mmtest -c 8 -m 2000 -e ./rom.sh``: 8 threads touching 2000 MB each while a
guest read a PCI ROM, which makes the VMM unmap and remap the ROM memslot.  Here V hammer
vCPUs each own M MiB mapped with 4 KiB guest pages and write one word per page per pass;
meanwhile a host thread deletes and re-creates a read-only ROM slot every T ms, and the
hammer vCPUs read the ROM between passes (pattern while present, all-ones via an MMIO exit
while absent).  With zap=all every delete throws away all of the hammer's SPTEs, which the
next pass must fault back in."""

from __future__ import annotations

import threading
import time

from kvmharness.guest.layout import GiB, KiB, MiB, Layout, Region
from kvmharness.guest.machine import Machine
from kvmharness.kvm import Kvm, Mmio
from kvmharness.scenarios.base import (
    ZAP_AXIS, Metric, Parameter, RunOutcome, RunRequest, ScenarioSpec,
)
from kvmharness.scenarios.common import (
    HAMMER_MAX_PASSES, KH_MAX_VCPUS, HammerConfig, PhaseRecorder, hammer_pass_ns, record_zap_path, u64, wait_finished,
    zap_quirk_mask,
)

HAMMER_GPA = 4 * GiB
ROM_GPA = 2 * GiB
ROM_ABSENT = b"\xff" * 8
WATCHDOG_S = 120.0


def rom_image(size: int) -> bytes:
    """The ROM's bytes: word at each page start is HAMMER_ROM_WORD(offset) (guests/hammer.h)."""
    out = bytearray(size)
    for offset in range(0, size, 4096):
        out[offset:offset + 8] = (0x524F4D0000000000 | offset).to_bytes(8, "little")
    return bytes(out)


class RomToggler:
    """Host thread deleting and re-creating the ROM slot every ``interval_s``; times each
    Machine.unplug()/plug() with perf_counter_ns (the ioctl plus the binding's ~1-2 us of
    Python around it, the same on both sides of an A/B)."""

    def __init__(self, machine: Machine, region: str, interval_s: float) -> None:
        self.machine = machine
        self.region = region
        self.interval_s = interval_s
        self.delete_ns: list[int] = []
        self.create_ns: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        # Completion is an Event, not Thread.join()/is_alive(): see common.wait_finished.
        # This thread issues memslot ioctls on the VM, which must not be closed under it.
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kvmharness-rom-toggler",
                                        daemon=True)

    def _loop(self) -> None:
        clock = time.perf_counter_ns
        try:
            while not self._stop.wait(self.interval_s):
                t0 = clock()
                self.machine.unplug(self.region)
                t1 = clock()
                self.delete_ns.append(t1 - t0)
                if self._stop.wait(self.interval_s / 2):
                    break
                t0 = clock()
                self.machine.plug(self.region)
                self.create_ns.append(clock() - t0)
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                if len(self.create_ns) < len(self.delete_ns):
                    try:
                        self.machine.plug(self.region)  # leave the ROM present for the next run
                    except BaseException as exc:
                        self.error = self.error or exc
            finally:
                self._finished.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop toggling and wait until the thread has really finished (Ctrl-C held back
        until then); raises the thread's error, if any."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            wait_finished(self._finished)
            self._thread.join()
        if self.error is not None:
            raise self.error


def run(req: RunRequest) -> RunOutcome:
    p = req.params
    nvcpus, mem = int(p["vcpus"]), int(p["mem_per_vcpu"]) * MiB
    rom_size = int(p["rom_size"]) * KiB
    outcome = RunOutcome()
    layout = Layout.of([
        Region("hammer", HAMMER_GPA, nvcpus * mem, "ram", hugepages=bool(p["thp"])),
        Region("rom", ROM_GPA, rom_size, "rom"),
    ])

    def on_mmio(m: Machine, vcpu: int, exit_: Mmio) -> bytes:
        if exit_.is_write or not ROM_GPA <= exit_.phys_addr < ROM_GPA + rom_size:
            raise AssertionError(f"rom-toggle: unexpected MMIO {exit_}")
        return ROM_ABSENT[: exit_.len]

    with Kvm() as kvm:
        mask = zap_quirk_mask(kvm, req.variant)
        with Machine(kvm, "hammer", layout, vcpus=nvcpus, disable_quirks=mask,
                     on_mmio=on_mmio, watchdog_s=WATCHDOG_S) as m:
            m.memory.backing["rom"].write(0, rom_image(rom_size))  # type: ignore[union-attr]
            HammerConfig(base=HAMMER_GPA, pages=mem // 4096, passes=int(p["passes"]),
                         stride_per_vcpu=mem).apply(m)
            m.write_var("hammer_rom_base", ROM_GPA)
            m.write_var("hammer_rom_bytes", rom_size)
            outcome.effective["thp"] = bool(p["thp"])
            recorder = PhaseRecorder(m, outcome)
            total_deletes = 0
            runs = req.warmup + req.iterations
            for i in range(runs):
                warm = i < req.warmup
                if i:
                    m.reset()
                toggler = RomToggler(m, "rom", int(p["toggle_ms"]) / 1000)
                with recorder.phase("warmup" if warm else "hammer") as stats:
                    t0 = time.perf_counter_ns()
                    m.start()
                    try:
                        toggler.start()
                        m.wait()
                    finally:
                        t1 = time.perf_counter_ns()
                        toggler.stop()
                if not warm:
                    total_deletes += len(toggler.delete_ns)
                outcome.add("total", (t1 - t0) / 1e6, warmup=warm)
                for passes in hammer_pass_ns(m, nvcpus):
                    for ns in passes:
                        outcome.add("pass", ns / 1e6, warmup=warm)
                for ns in toggler.delete_ns:
                    outcome.add("slot_delete", ns / 1e3, warmup=warm)
                for ns in toggler.create_ns:
                    outcome.add("slot_create", ns / 1e3, warmup=warm)
                outcome.add("toggles", len(toggler.delete_ns), warmup=warm)
                outcome.add("pf_fixed", stats.get("vcpu.pf_fixed", 0), warmup=warm)
                outcome.add("remote_tlb_flush", stats.get("vm.remote_tlb_flush", 0), warmup=warm)
                req.progress(f"rom-toggle {'warmup' if warm else 'iteration'} {i + 1}/{runs}: "
                             f"{(t1 - t0) / 1e6:.1f} ms, {len(toggler.delete_ns)} ROM deletes")
            present = m.read_var("hammer_rom_present", u64 * KH_MAX_VCPUS)
            absent = m.read_var("hammer_rom_absent", u64 * KH_MAX_VCPUS)
            outcome.effective["rom_words_present"] = sum(present[:nvcpus])
            outcome.effective["rom_words_absent"] = sum(absent[:nvcpus])
            record_zap_path(outcome, req.variant, total_deletes, "hammer")
    outcome.end_time = time.time()
    return outcome


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
        Parameter("rom_size", "KiB", 128, 128, "size of the read-only ROM slot (4 KiB granular)",
                  minimum=4, maximum=1 << 20),
        Parameter("thp", "bool", False, False, "back guest RAM with transparent huge pages",
                  type=bool),
    ),
    metrics=(
        Metric("total", "ms", "lower", "time for all vCPUs to finish every pass (the seed's ms)"),
        Metric("pass", "ms", "lower", "one vCPU's pass over its memory (guest TSC)"),
        Metric("slot_delete", "us", "lower", "KVM_SET_USER_MEMORY_REGION delete of the ROM"),
        Metric("slot_create", "us", "lower", "re-creating the ROM slot"),
        # A by-product of the iteration's length (one delete per 1.5 x toggle_ms), not a
        # rate: it rises exactly when "total" gets worse, so it shares total's direction.
        Metric("toggles", "deletes", "lower", "ROM deletes during the iteration (tracks "
               "its length: fewer = the passes finished sooner)"),
        Metric("pf_fixed", "faults", "lower", "vCPU pf_fixed during the iteration (refaults)"),
        Metric("remote_tlb_flush", "flushes", "lower", "VM remote TLB flushes"),
    ),
    variant_axes=(ZAP_AXIS,),
    run=run,
    headline=("total", "pass", "slot_delete", "pf_fixed"),
    default_iterations=3,
    default_warmup=1,
)
