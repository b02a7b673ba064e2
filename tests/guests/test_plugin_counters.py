"""The pytest plugin's kvm_counters helper: stats deltas and tracepoint counts across a with
block, asserted on a real memslot delete."""

from __future__ import annotations

import pytest

from kvmharness.guest.layout import GiB, Layout, Region
from kvmharness.uapi.x86 import KVM_X86_QUIRK_SLOT_ZAP_ALL

ZAP_ALL_FAST = "kvmmmu/kvm_mmu_zap_all_fast"


def test_counters_see_guest_exits(machine, kvm_counters):
    m = machine("hello")
    with kvm_counters(m.vm, m.vcpus) as c:
        m.run(timeout_s=60)
    assert c.stats["vcpu.exits"] >= 4  # two SYNCs, a PRINT and DONE are PIO exits
    assert "vm.remote_tlb_flush" in c.stats


@pytest.mark.requires_tracefs
@pytest.mark.parametrize("disable", [0, KVM_X86_QUIRK_SLOT_ZAP_ALL], ids=["zap=all", "zap=slot"])
def test_rom_delete_zap_path_follows_quirk(kvm, machine, kvm_counters, disable):
    if disable and not kvm.check_extension(213) & disable:
        pytest.skip("quirk not supported: KVM_X86_QUIRK_SLOT_ZAP_ALL")
    layout = Layout.of([Region("rom", 2 * GiB, 64 * 4096, "rom")])
    m = machine("hello", layout, disable_quirks=disable)
    m.run(timeout_s=60)  # the vCPU has run: there are MMU pages to zap
    with kvm_counters(m.vm, m.vcpus, events=(ZAP_ALL_FAST,)) as c:
        m.unplug("rom")
        m.plug("rom")
    assert c.tracepoints["kvm_mmu_zap_all_fast"] == (0 if disable else 1)
