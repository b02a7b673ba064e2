"""MMIO SPTEs (kvm.mmio_caching): the first access to a GPA with no memslot makes KVM
install an MMIO SPTE (kvmmmu:mark_mmio_spte, vCPU stat pf_mmio_spte_created); later
accesses to that page fault on its reserved bits and go straight to MMIO emulation
(kvmmmu:handle_mmio_page_fault) without a page-table walk.  With caching off no MMIO SPTE
is ever made.  The hammer guest reads one word per page of an MMIO region on two vCPUs;
the host answers every read, and every read must have exited to it."""

from __future__ import annotations

import itertools
import threading

import pytest

from kvmharness.guest.layout import GiB, Layout, Region
from kvmharness.observe.fingerprint import mmu_text

from .support import configure_hammer, live_mmu

MMIO_GPA = 3 * GiB
PAGES = 64     # per vCPU
PASSES = 3
VCPUS = 2
WORD = 0x5A5A_0000_0000_0000
EVENTS = ("kvmmmu/mark_mmio_spte", "kvmmmu/handle_mmio_page_fault")


def read_mmio_pages(machine, kvm_counters):
    """Run the hammer over the MMIO region; returns (counters, reads the host answered)."""
    size = VCPUS * PAGES * 4096
    layout = Layout.of([Region("dev", MMIO_GPA, size, "mmio")])
    answered = itertools.count()
    lock = threading.Lock()

    def on_mmio(m, vcpu, mmio):
        # A failed assert here fails the vCPU, and m.run() raises it.
        assert not mmio.is_write and MMIO_GPA <= mmio.phys_addr < MMIO_GPA + size
        with lock:
            next(answered)
        return (WORD | mmio.phys_addr).to_bytes(8, "little")[:mmio.len]

    m = machine("hammer", layout, vcpus=VCPUS, on_mmio=on_mmio)
    configure_hammer(m, base=MMIO_GPA, pages=PAGES, passes=PASSES, stride=PAGES * 4096,
                     write=False, sync_each_pass=False)
    with kvm_counters(m.vm, m.vcpus, events=EVENTS) as c:
        m.run(timeout_s=600)
    return c, next(answered)


def test_mmio_accesses_create_mmio_sptes_when_caching_is_on(kvm, machine, kvm_counters):
    mmu = live_mmu()
    if mmu["mmio_caching"] is not True:
        pytest.skip(f"MMIO SPTE caching is not on here ({mmu_text(mmu)})")
    c, answered = read_mmio_pages(machine, kvm_counters)
    pages = VCPUS * PAGES
    assert answered == pages * PASSES  # every read exited to the host
    # One MMIO SPTE per page, at its first access ...
    assert c.tracepoints["mark_mmio_spte"] >= pages
    assert c.stats["vcpu.pf_mmio_spte_created"] >= pages
    # ... and the later passes take the MMIO-SPTE fast path.
    assert c.tracepoints["handle_mmio_page_fault"] >= pages * (PASSES - 1)


def test_no_mmio_spte_without_caching(kvm, machine, kvm_counters):
    mmu = live_mmu()
    if mmu["mmio_caching"] is not False:
        pytest.skip(f"MMIO SPTE caching is not off here ({mmu_text(mmu)}); boot with "
                    "kvm.mmio_caching=0 to run this")
    c, answered = read_mmio_pages(machine, kvm_counters)
    assert answered == VCPUS * PAGES * PASSES
    assert c.tracepoints["mark_mmio_spte"] == 0
    assert c.stats.get("vcpu.pf_mmio_spte_created", 0) == 0
