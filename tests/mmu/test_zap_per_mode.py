"""A ROM memslot delete in each MMU mode (kvm.tdp_mmu, kvm_amd.npt / kvm_intel.ept):

* zap=all (KVM_X86_QUIRK_SLOT_ZAP_ALL on, and always on kernels before 6.12): the legacy
  TDP MMU and shadow paging throw away their shadow pages (kvm_mmu_prepare_zap_page events,
  VM stat mmu_shadow_zapped), the TDP MMU its roots (kvm_mmu_zap_all_fast, but no shadow
  page counted); in every hardware mode each hammer vCPU then refaults every page;
* zap=slot (quirk off): no zap-all, no shadow page of the untouched ROM, and the hammer's
  pages, outside the deleted slot, are not refaulted.

Two hammer vCPUs each write their own pages.  Where pf_fixed does not count guest faults
(PVM emulates guest code) the refault half skips with that reason."""

from __future__ import annotations

import pytest

from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.x86 import KVM_X86_QUIRK_SLOT_ZAP_ALL

from .support import (
    faults_per_refault_pass,
    hammer_across_rom_delete,
    is_pvm,
    require_mode,
    skip_unless_faults_counted,
)

EVENTS = ("kvmmmu/kvm_mmu_zap_all_fast", "kvmmmu/kvm_mmu_prepare_zap_page")


def require_slot_quirk(kvm) -> None:
    if not kvm.check_extension(KvmCap.KVM_CAP_DISABLE_QUIRKS2) & KVM_X86_QUIRK_SLOT_ZAP_ALL:
        pytest.skip("quirk not supported: KVM_X86_QUIRK_SLOT_ZAP_ALL (v6.12+); "
                    "deletes always zap all on this kernel")


def test_zap_all_zaps_shadow_pages(kvm, machine, kvm_counters):
    require_mode("legacy_tdp", "shadow")
    seen = hammer_across_rom_delete(machine, kvm_counters, disable_quirks=0, events=EVENTS)
    assert seen.tracepoints["kvm_mmu_zap_all_fast"] >= 1
    assert seen.tracepoints["kvm_mmu_prepare_zap_page"] > 0
    assert seen.stats["vm.mmu_shadow_zapped"] > 0
    # Every shadow page the zap prepared is one the VM counts as zapped.
    assert seen.stats["vm.mmu_shadow_zapped"] >= seen.tracepoints["kvm_mmu_prepare_zap_page"]


def test_tdp_mmu_zap_all_counts_no_shadow_page(kvm, machine, kvm_counters):
    require_mode("tdp_mmu")
    seen = hammer_across_rom_delete(machine, kvm_counters, disable_quirks=0, events=EVENTS)
    assert seen.tracepoints["kvm_mmu_zap_all_fast"] >= 1
    # The TDP MMU invalidates its roots: no struct kvm_mmu_page of the shadow MMU exists.
    assert seen.stats["vm.mmu_shadow_zapped"] == 0


def test_zap_all_makes_every_vcpu_refault(kvm, machine, kvm_counters):
    mode = require_mode("tdp_mmu", "legacy_tdp", "shadow")["mode"]
    seen = hammer_across_rom_delete(machine, kvm_counters, disable_quirks=0, events=EVENTS)
    skip_unless_faults_counted(seen.first_pass_faults, seen.pages)
    # The delete threw the hammer's mappings away ...
    assert seen.mapped_after_delete <= seen.mapped_before - 0.9 * seen.pages, seen
    # ... and the next pass faulted them back in (fewer faults than pages where the shadow
    # MMU prefetches neighbours, see support.PTE_PREFETCH_NUM).
    assert seen.second_pass_faults >= 0.9 * faults_per_refault_pass(mode, seen.pages), (
        f"zap=all, {mode}: {seen.second_pass_faults} refaults for {seen.pages} pages")
    assert seen.mapped_end >= seen.mapped_before - 0.1 * seen.pages, seen


def test_zap_slot_leaves_the_rest_mapped(kvm, machine, kvm_counters):
    require_mode("tdp_mmu", "legacy_tdp", "shadow")
    require_slot_quirk(kvm)
    seen = hammer_across_rom_delete(machine, kvm_counters,
                                    disable_quirks=KVM_X86_QUIRK_SLOT_ZAP_ALL, events=EVENTS)
    assert seen.tracepoints["kvm_mmu_zap_all_fast"] == 0
    # The guest never touched the ROM: no shadow page maps it, none is zapped.
    assert seen.stats["vm.mmu_shadow_zapped"] == 0
    if is_pvm():
        pytest.skip("zap path checked; PVM maps no guest data pages (pf_fixed stays 0), "
                    "so refaults cannot be counted")
    skip_unless_faults_counted(seen.first_pass_faults, seen.pages)
    assert seen.mapped_after_delete >= seen.mapped_before - 0.1 * seen.pages, seen
    assert seen.second_pass_faults <= 0.1 * seen.pages, (
        f"zap=slot: {seen.second_pass_faults} refaults for {seen.pages} pages")
