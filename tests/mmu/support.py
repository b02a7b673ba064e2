"""Shared by the tests/mmu tests: the MMU mode this KVM runs in, and the hammer guest run
across one ROM memslot delete with its counters.

The mode comes from the same place result files take it (kvmharness.observe.fingerprint):
tdp_mmu, legacy_tdp (kvm.tdp_mmu=0) or shadow (kvm_amd.npt=0 / kvm_intel.ept=0; also PVM).
CI boots 6.12 once per mode (.ci/run), so each test runs where its mode is and skips,
naming the mode and how to get the one it needs, everywhere else."""

from __future__ import annotations

import ctypes
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmharness.guest.layout import GiB, Layout, MiB, Region
from kvmharness.observe.fingerprint import mmu_mode, mmu_text, module_parameters

HAMMER_GPA = 1 * GiB
ROM_GPA = 2 * GiB
ROM_SIZE = 1 * MiB
PAGES = 1000          # per hammer vCPU: 4 KiB pages written once per pass
VCPUS = 2             # hammer vCPUs (guest threads; the boot may have one CPU)
SYNC_TIMEOUT_S = 120  # a vCPU waiting for its peer at the end of a pass
HOW_TO = {"tdp_mmu": "the default on 6.x with NPT/EPT",
          "legacy_tdp": "boot with kvm.tdp_mmu=0",
          "shadow": "boot with kvm_amd.npt=0 or kvm_intel.ept=0"}


def live_mmu() -> dict[str, Any]:
    """The loaded KVM's MMU mode (call after /dev/kvm was opened: modules are loaded)."""
    return mmu_mode(module_parameters(Path("/")))


def is_pvm() -> bool:
    return (Path("/sys/module/kvm_pvm")).is_dir()


def require_mode(*modes: str) -> dict[str, Any]:
    mmu = live_mmu()
    if mmu["mode"] not in modes:
        wanted = " or ".join(f"{m} ({HOW_TO[m]})" for m in modes)
        pytest.skip(f"MMU mode here is {mmu_text(mmu)}; this test needs {wanted}")
    return mmu


def skip_unless_faults_counted(first_pass_faults: int, pages: int) -> None:
    if first_pass_faults < pages:
        pytest.skip(f"this KVM counted {first_pass_faults} pf_fixed for {pages} first "
                    "touches: an instruction-emulating backend (PVM) maps no guest data "
                    "pages, so there is nothing to refault")


def configure_hammer(m: Any, *, base: int, pages: int, passes: int, stride: int,
                     write: bool = True, sync_each_pass: bool = True) -> None:
    """The hammer guest's parameters (guests/hammer.h), set before the vCPUs start."""
    u32 = ctypes.c_uint32
    m.write_var("hammer_base", base)
    m.write_var("hammer_pages", pages)
    m.write_var("hammer_page_size", 4096)
    m.write_var("hammer_stride_per_vcpu", stride)
    m.write_var("hammer_passes", passes, u32)
    m.write_var("hammer_write", int(write), u32)
    m.write_var("hammer_sync_each_pass", int(sync_each_pass), u32)


def pf_fixed(m: Any) -> int:
    return sum(v.stats().snapshot(["pf_fixed"])["pf_fixed"] for v in m.vcpus)


def pages_4k(m: Any) -> int:
    """4 KiB leaf SPTEs the VM has now (VM stat pages_4k, an instant value)."""
    return int(m.vm.stats().snapshot(["pages_4k"])["pages_4k"])


# The shadow MMU (legacy TDP and shadow paging) maps up to PTE_PREFETCH_NUM (8) neighbours
# of a faulting page whose host pages are present (direct_pte_prefetch / FNAME(pte_prefetch)):
# after a zap-all the refault pass takes about one pf_fixed per 8 pages; the first touch,
# with host pages not yet there, one per page.  The TDP MMU does not prefetch.
PTE_PREFETCH_NUM = 8


def faults_per_refault_pass(mode: str, pages: int) -> float:
    return pages / (1 if mode == "tdp_mmu" else PTE_PREFETCH_NUM)


@dataclasses.dataclass
class AcrossDelete:
    pages: int                      # pages touched per pass, all vCPUs together
    first_pass_faults: int          # pf_fixed during pass 0 (first touches)
    second_pass_faults: int         # pf_fixed during pass 1, after the ROM delete
    mapped_before: int              # VM pages_4k just before the delete
    mapped_after_delete: int        # ... just after it
    mapped_end: int                 # ... after pass 1
    stats: dict[str, int]           # KVM stats deltas across the delete (vm.*, vcpu.*)
    tracepoints: dict[str, int]     # kvmmmu events across the delete (this process)


def hammer_across_rom_delete(machine: Callable[..., Any], kvm_counters: Callable[..., Any],
                             *, disable_quirks: int, events: tuple[str, ...],
                             vcpus: int = VCPUS, pages: int = PAGES) -> AcrossDelete:
    """Every hammer vCPU writes its own ``pages`` pages (pass 0), all wait, the ROM slot
    (never touched by the guest) is deleted, and they write the same pages again (pass 1).
    The ROM lies outside the hammer's memory: a zap of only its slot leaves the hammer's
    mappings alone, a zap of everything makes every page fault again."""
    layout = Layout.of([Region("hammer", HAMMER_GPA, vcpus * pages * 4096, hugepages=False),
                        Region("rom", ROM_GPA, ROM_SIZE, "rom")])
    seen: dict[str, Any] = {}

    def at_every_vcpus_sync() -> None:  # one vCPU thread runs it while the others wait
        m = seen["machine"]
        seen["syncs"] = seen.get("syncs", 0) + 1
        if seen["syncs"] == 1:
            seen["after_first"] = pf_fixed(m)
            seen["mapped_before"] = pages_4k(m)
            with seen["counters"]:
                m.unplug("rom")
            seen["after_delete"] = pf_fixed(m)
            seen["mapped_after_delete"] = pages_4k(m)

    barrier = threading.Barrier(vcpus, action=at_every_vcpus_sync)

    def on_sync(m: Any, vcpu: int, values: tuple[int, ...]) -> None:
        barrier.wait(SYNC_TIMEOUT_S)

    m = machine("hammer", layout, vcpus=vcpus, disable_quirks=disable_quirks,
                on_sync=on_sync)
    seen["machine"] = m
    # Made here, not in the vCPU thread: the factory skips the test when tracefs is unusable.
    seen["counters"] = kvm_counters(m.vm, m.vcpus, events=events)
    configure_hammer(m, base=HAMMER_GPA, pages=pages, passes=2, stride=pages * 4096)
    start = pf_fixed(m)
    m.run(timeout_s=600)
    c = seen["counters"]
    return AcrossDelete(vcpus * pages, seen["after_first"] - start,
                        pf_fixed(m) - seen["after_delete"], seen["mapped_before"],
                        seen["mapped_after_delete"], pages_4k(m), dict(c.stats),
                        dict(c.tracepoints))
