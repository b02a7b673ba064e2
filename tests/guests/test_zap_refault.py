"""What only a hardware-virtualization KVM shows: after a ROM memslot delete, zap=all makes
the hammer's next pass refault every page (pf_fixed delta ~ pages touched) and zap=slot does
not.  On an instruction-emulating KVM (PVM) pf_fixed never counts guest faults, so these
tests skip there with that reason; CI runs them inside QEMU with kvm_amd (tools/vng-run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmharness.guest.layout import GiB, Layout, MiB, Region
from kvmharness.observe.counters import KvmCounters
from kvmharness.observe.fingerprint import mmu_mode, module_parameters
from kvmharness.scenarios.common import HammerConfig
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.x86 import KVM_X86_QUIRK_SLOT_ZAP_ALL

PAGES = 2000
HAMMER_GPA = 1 * GiB
ROM_GPA = 2 * GiB


def refault_after_rom_delete(machine, disable: int) -> tuple[int, int, dict[str, int]]:
    """(pf_fixed of the first pass, pf_fixed of the pass after the delete, tracepoints)."""
    layout = Layout.of([Region("hammer", HAMMER_GPA, PAGES * 4096, hugepages=False),
                        Region("rom", ROM_GPA, 1 * MiB, "rom")])
    observed: dict[str, object] = {}

    def on_sync(m, vcpu, values):
        pf = m.vcpus[0].stats().snapshot(["pf_fixed"])["pf_fixed"]
        if values == (0,):
            observed["first"] = pf - observed["start"]
            with KvmCounters(m.vm, events=observed["events"]) as c:
                m.unplug("rom")
            observed["tracepoints"] = c.tracepoints
            observed["before_second"] = m.vcpus[0].stats().snapshot(["pf_fixed"])["pf_fixed"]
        else:
            observed["second"] = pf - observed["before_second"]

    m = machine("hammer", layout, disable_quirks=disable, on_sync=on_sync)
    HammerConfig(base=HAMMER_GPA, pages=PAGES, passes=2, stride_per_vcpu=0,
                 sync_each_pass=True).apply(m)
    from kvmharness.observe.tracefs import ZAP_EVENTS, tracefs_status

    observed["events"] = ZAP_EVENTS if tracefs_status().usable else ()
    observed["start"] = m.vcpus[0].stats().snapshot(["pf_fixed"])["pf_fixed"]
    m.run(timeout_s=300)
    return observed["first"], observed["second"], observed["tracepoints"]  # type: ignore[return-value]


def skip_unless_faults_counted(first: int) -> None:
    mode = mmu_mode(module_parameters(Path("/")))["mode"]
    if mode in ("legacy_tdp", "shadow") and not Path("/sys/module/kvm_pvm").is_dir():
        # The legacy MMU prefetches neighbouring SPTEs on a fault, so pf_fixed counts about
        # one fault in eight pages there; tests/mmu checks these modes on their own terms.
        pytest.skip(f"MMU mode {mode}: faults are prefetched, not one per page "
                    "(tests/mmu covers this mode)")
    if first < PAGES:
        pytest.skip(f"this KVM counted {first} pf_fixed for {PAGES} first touches: an "
                    "instruction-emulating backend (PVM) has no refaults to observe")


def test_zap_all_refaults_every_page(kvm, machine):
    first, second, tracepoints = refault_after_rom_delete(machine, 0)
    skip_unless_faults_counted(first)
    assert second >= 0.9 * PAGES, f"zap=all: only {second} refaults for {PAGES} pages"
    if tracepoints:
        assert tracepoints["kvm_mmu_zap_all_fast"] >= 1


def test_zap_slot_keeps_other_mappings(kvm, machine):
    if not kvm.check_extension(KvmCap.KVM_CAP_DISABLE_QUIRKS2) & KVM_X86_QUIRK_SLOT_ZAP_ALL:
        pytest.skip("quirk not supported: KVM_X86_QUIRK_SLOT_ZAP_ALL (v6.12+); "
                    "deletes always zap all on this kernel")
    first, second, tracepoints = refault_after_rom_delete(machine, KVM_X86_QUIRK_SLOT_ZAP_ALL)
    skip_unless_faults_counted(first)
    assert second <= 0.1 * PAGES, f"zap=slot: {second} refaults for {PAGES} pages"
    if tracepoints:
        assert tracepoints["kvm_mmu_zap_all_fast"] == 0
