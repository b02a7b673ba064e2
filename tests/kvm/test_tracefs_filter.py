"""Tracepoint counts belong to this process: another process's VM zapping at the same time
must not show up in our counts (it would fake a zap=all on a zap=slot run)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvmharness.kvm import HostMemory
from kvmharness.observe.tracefs import TraceCounter

EVENT = "kvmmmu/kvm_mmu_zap_all_fast"
OTHER_PROCESS = """
from kvmharness.kvm import Kvm, HostMemory
with Kvm() as kvm, HostMemory(0x10000) as mem:
    vm = kvm.create_vm()
    for _ in range(5):
        slot = vm.add_memslot(0x100000, 0x10000, mem.addr)
        vm.delete_memslot(slot.slot)
    vm.close()
"""


def delete_one_slot(kvm) -> None:
    with kvm.create_vm() as vm, HostMemory(0x10000) as mem:
        slot = vm.add_memslot(0x100000, 0x10000, mem.addr)
        vm.delete_memslot(slot.slot)
        vm.close()


@pytest.mark.requires_tracefs
def test_counts_exclude_other_processes(kvm):
    # Calibrated through the filter too: other processes on the host (parallel test runs,
    # other VMs) zap whenever they like and must not change what one delete counts.
    with TraceCounter((EVENT,)) as probe:
        delete_one_slot(kvm)
    per_delete = probe.counts()["kvm_mmu_zap_all_fast"]
    if per_delete == 0:
        pytest.skip("this kernel raises no kvm_mmu_zap_all_fast on a plain slot delete")
    with TraceCounter((EVENT,)) as ours, TraceCounter((EVENT,), this_process_only=False) as all_:
        delete_one_slot(kvm)
        subprocess.run([sys.executable, "-c", OTHER_PROCESS], check=True)
    assert ours.counts()["kvm_mmu_zap_all_fast"] == per_delete
    assert all_.counts()["kvm_mmu_zap_all_fast"] >= per_delete + 5 * per_delete
