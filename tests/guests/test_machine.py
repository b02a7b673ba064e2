"""Long-mode guests on the real /dev/kvm: calls, asserts, exceptions, watchdog, N vCPUs."""

from __future__ import annotations

import ctypes
import os
import threading

import pytest

from kvmharness.guest.build import guests_source_dir
from kvmharness.guest.errors import (
    GuestAssertionError,
    GuestCrash,
    GuestExceptionError,
    GuestImageError,
    GuestTimeout,
)
from kvmharness.guest.layout import PAGE_2M, GiB, Layout, LayoutError, MiB, Region

HELLO_ASSERT_FAIL, HELLO_DIVIDE_ERROR, HELLO_PAGE_FAULT, HELLO_SPIN = 1, 2, 3, 4
HELLO_TRIPLE_FAULT, HELLO_BARRIER_SUM, HELLO_READ_GPAS = 5, 6, 7
u32, u64 = ctypes.c_uint32, ctypes.c_uint64


def source_line(guest_file: str, needle: str) -> int:
    lines = (guests_source_dir() / guest_file).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if needle in text)


def test_hello_syncs_prints_and_finishes(machine):
    m = machine("hello")
    m.run(timeout_s=60)
    assert m.syncs == [(0, (1, 0)), (0, (2, sum(range(101))))]
    assert m.prints and m.prints[0][1].startswith("hello from vcpu 0 of 1")
    assert [s.value for s in m.states()] == ["done"]


@pytest.mark.parametrize("nvcpus", [1, 2, 4])
def test_vcpus_compute_checkable_sums_across_barrier(machine, nvcpus):
    m = machine("hello", vcpus=nvcpus)
    m.write_var("hello_mode", HELLO_BARRIER_SUM, u32)
    m.run(timeout_s=120)
    results = m.read_var("hello_result", u64 * 64)
    per_vcpu = 1000  # hello.c: vCPU v sums [v*1000, (v+1)*1000)
    expected = [sum(range(v * per_vcpu, (v + 1) * per_vcpu)) for v in range(nvcpus)]
    assert list(results[:nvcpus]) == expected
    assert all(r == 0 for r in results[nvcpus:])
    assert m.syncs == [(0, (HELLO_BARRIER_SUM, sum(expected)))]


def test_guest_assert_reports_file_line_and_values(machine):
    m = machine("hello")
    m.write_var("hello_mode", HELLO_ASSERT_FAIL, u32)
    with pytest.raises(GuestAssertionError) as info:
        m.run(timeout_s=60)
    line = source_line("hello.c", "GUEST_ASSERT_EQ(hello_seven, 5)")
    assert str(info.value).startswith(f"hello.c:{line}: hello_seven == 5 (7 vs 5)")


def test_divide_error_reported_with_vector_and_rip(machine):
    m = machine("hello")
    m.write_var("hello_mode", HELLO_DIVIDE_ERROR, u32)
    with pytest.raises(GuestExceptionError) as info:
        m.run(timeout_s=60)
    exc = info.value.exception
    assert exc.vector == 0 and "#DE" in str(info.value)
    assert m.image.segments[0].gpa <= exc.rip < m.image.end
    assert f"RIP {exc.rip:#x}" in str(info.value)
    assert "rax=" in str(info.value)


def test_page_fault_reports_cr2_and_error_code(machine):
    m = machine("hello")
    m.write_var("hello_mode", HELLO_PAGE_FAULT, u32)
    m.write_var("hello_fault_addr", 5 * GiB)  # canonical, no page-table entry
    with pytest.raises(GuestExceptionError) as info:
        m.run(timeout_s=60)
    exc = info.value.exception
    assert exc.vector == 14 and exc.cr2 == 5 * GiB
    assert exc.error_code & 1 == 0, "not-present fault expected"
    assert "#PF" in str(info.value) and f"CR2 {5 * GiB:#x}" in str(info.value)


def test_watchdog_stops_spinning_guest(machine):
    m = machine("hello", watchdog_s=0.5)
    m.write_var("hello_mode", HELLO_SPIN, u32)
    threads = threading.active_count()
    with pytest.raises(GuestTimeout) as info:
        m.run(timeout_s=60)
    assert info.value.vcpu == 0 and info.value.rip is not None
    assert "vCPU 0" in str(info.value) and f"{info.value.rip:#x}" in str(info.value)
    assert threading.active_count() <= threads


def test_triple_fault_is_a_crash_with_registers(machine):
    m = machine("hello")
    m.write_var("hello_mode", HELLO_TRIPLE_FAULT, u32)
    with pytest.raises(GuestCrash) as info:
        m.run(timeout_s=60)
    assert "KVM_EXIT_SHUTDOWN" in str(info.value) and "rip=" in str(info.value)


def test_guest_reads_host_values_through_4k_2m_and_mmio(machine):
    layout = Layout.of([
        Region("small", 1 * GiB, 8 * MiB, "ram"),
        Region("huge", 2 * GiB, 8 * MiB, "ram", page_size=PAGE_2M),
        Region("hole", 3 * GiB, 2 * MiB, "mmio", page_size=PAGE_2M),
    ])
    mmio_reads = []

    def on_mmio(m, vcpu, exit_):
        mmio_reads.append(exit_.phys_addr)
        return (0xD00D0000 + (exit_.phys_addr & 0xFFFF)).to_bytes(exit_.len, "little")

    m = machine("hello", layout, on_mmio=on_mmio)
    gpas = [1 * GiB, 1 * GiB + 8 * MiB - 8, 2 * GiB + 0x1000, 2 * GiB + 7 * MiB + 8, 3 * GiB + 0x40]
    for i, gpa in enumerate(gpas[:4]):
        m.write(gpa, (0x1111_0000 + i).to_bytes(8, "little"))
    addrs = (u64 * 16)(*gpas)
    m.write_var("hello_read_gpas", addrs, u64 * 16)
    m.write_var("hello_read_count", len(gpas), u32)
    m.write_var("hello_mode", HELLO_READ_GPAS, u32)
    m.run(timeout_s=60)
    values = list(m.read_var("hello_read_values", u64 * 16)[: len(gpas)])
    assert values == [0x1111_0000, 0x1111_0001, 0x1111_0002, 0x1111_0003, 0xD00D0040]
    assert mmio_reads == [3 * GiB + 0x40]


def test_symbol_access_checks_names_and_sizes(machine):
    m = machine("hello")
    assert m.read_var("hello_seven", u32) == 7
    m.write_var("hello_seven", 9, u32)
    assert m.read_var("hello_seven", u32) == 9
    with pytest.raises(GuestImageError, match="is 4 bytes but c_ulong is 8 bytes"):
        m.read_var("hello_seven", u64)
    with pytest.raises(GuestImageError, match="no symbol 'hello_sevn'.*hello_seven"):
        m.read_var("hello_sevn", u32)


def test_hammer_records_per_pass_per_vcpu_timings(machine):
    pages, passes, nvcpus = 256, 3, 2
    layout = Layout.of([Region("hammer", 1 * GiB, nvcpus * pages * 4096, "ram")])
    m = machine("hammer", layout, vcpus=nvcpus)
    m.write_var("hammer_base", 1 * GiB)
    m.write_var("hammer_stride_per_vcpu", pages * 4096)
    m.write_var("hammer_pages", pages)
    m.write_var("hammer_passes", passes, u32)
    m.write_var("hammer_write", 1, u32)
    m.run(timeout_s=120)
    done = m.read_var("hammer_passes_done", u32 * 64)
    tsc = m.read_var("hammer_pass_tsc", (u64 * 4096) * 64)
    assert list(done[:nvcpus]) == [passes] * nvcpus
    for v in range(nvcpus):
        assert all(tsc[v][p] > 0 for p in range(passes)), f"vCPU {v} has a zero pass time"
        assert tsc[v][passes] == 0
        # The last writer of every page of vCPU v's range is vCPU v's last pass.
        last = m.read(1 * GiB + v * pages * 4096 + (pages - 1) * 4096, 8)
        assert int.from_bytes(last, "little") == (v << 32) | passes
    assert m.tsc_to_ns(tsc[0][0]) > 0


def test_layout_errors_are_typed():
    with pytest.raises(LayoutError, match="overlaps"):
        Layout.of([Region("a", 1 * GiB, 4 * MiB), Region("b", 1 * GiB + 2 * MiB, 4 * MiB)])
    with pytest.raises(LayoutError, match="low memory"):
        Layout.of([Region("a", 8 * MiB, 4 * MiB)])
    with pytest.raises(LayoutError, match="multiples of its page size"):
        Layout.of([Region("a", 1 * GiB + 4096, 2 * MiB, page_size=PAGE_2M)])
    with pytest.raises(LayoutError, match="1 GiB guest pages"):
        Layout.of([Region("a", 1 * GiB, 1 * GiB, page_size=1 * GiB)])
    with pytest.raises(LayoutError, match="two regions are named"):
        Layout.of([Region("a", 1 * GiB, 1 * MiB), Region("a", 2 * GiB, 1 * MiB)])
    Layout.of([Region("a", 1 * GiB, 1 * MiB), Region("b", 1 * GiB + 1 * MiB, 1 * MiB)])


def test_memory_guard_refuses_before_allocating(kvm, open_fds):
    import psutil

    from kvmharness.guest.machine import Machine

    fds = open_fds()
    # Twice what the host has free, but inside the guest's physical address space.
    too_big = (2 * psutil.virtual_memory().available // PAGE_2M + 1) * PAGE_2M
    layout = Layout.of([Region("too-big", 4 * GiB, too_big, page_size=PAGE_2M)])
    with pytest.raises(LayoutError, match="GiB available"):
        Machine(kvm, "hello", layout)
    assert open_fds() == fds


def test_no_fd_or_thread_leak_after_failures(kvm, open_fds):
    from kvmharness.guest.machine import Machine

    with Machine(kvm, "hello") as m:
        m.run(timeout_s=60)
    fds, threads = open_fds(), threading.active_count()
    for mode in (HELLO_ASSERT_FAIL, HELLO_DIVIDE_ERROR, HELLO_TRIPLE_FAULT, HELLO_SPIN):
        with Machine(kvm, "hello", vcpus=2, watchdog_s=0.5) as m:
            m.write_var("hello_mode", mode, u32)
            with pytest.raises((GuestAssertionError, GuestExceptionError, GuestCrash,
                                GuestTimeout)):
                m.run(timeout_s=60)
    assert open_fds() == fds
    assert threading.active_count() == threads
    assert kvm.vms == []


def test_reset_runs_the_guest_again_in_the_same_vm(machine):
    m = machine("hello")
    m.run(timeout_s=60)
    vm_fd = m.vm.fd
    m.reset()
    m.run(timeout_s=60)
    assert m.vm.fd == vm_fd
    assert [values for _, values in m.syncs] == [(1, 0), (2, 5050)] * 2


def test_host_backing_is_recorded_and_hugetlb_errors_are_clear(machine):
    layout = Layout.of([Region("thp", 1 * GiB, 4 * MiB, hugepages=True),
                        Region("small", 2 * GiB, 4 * MiB, hugepages=False)])
    m = machine("hello", layout)
    report = m.memory.report()
    assert report["thp"]["host_backing"] == "thp" and report["small"]["host_backing"] == "nothp"
    assert report["low"]["host_backing"] == "default"
    assert report["small"]["guest_page_size"] == 4096
    from kvmharness.kvm import HostMemory

    with pytest.raises(ValueError, match="multiple of the 2 MiB hugetlb page"):
        HostMemory(4096, hugetlb=True)
    try:
        mem = HostMemory(2 * MiB, hugetlb=True)
    except OSError as exc:
        assert "nr_hugepages" in str(exc)
    else:
        assert mem.backing == "hugetlb-2M"
        mem.close()


def test_ctrl_c_during_wait_stops_every_vcpu(machine, sigint_default):
    import _thread

    m = machine("hello", vcpus=2, watchdog_s=60)
    m.write_var("hello_mode", HELLO_SPIN, u32)
    threads = threading.active_count()
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        m.run(timeout_s=60)
    timer.join()
    assert [s.value for s in m.states()] == ["stopped", "stopped"]
    assert threading.active_count() == threads


def test_wait_timeout_is_reported_as_such(machine):
    m = machine("hello", watchdog_s=60)
    m.write_var("hello_mode", HELLO_SPIN, u32)
    with pytest.raises(GuestTimeout, match=r"within 0.3 s.*wait\(\)'s timeout"):
        m.run(timeout_s=0.3)


def test_slow_host_handler_is_not_charged_to_the_guest(machine):
    import time as _time

    def slow_sync(m, vcpu, values):
        _time.sleep(0.8)  # longer than the watchdog: the guest is waiting on the host

    m = machine("hello", watchdog_s=0.5, on_sync=slow_sync)
    m.run(timeout_s=60)
    assert [v for _, v in m.syncs] == [(1, 0), (2, 5050)]


HELLO_GP_FAULT, HELLO_FAULT_TOGETHER, HELLO_TRIPLE_FAULT_PF = 8, 9, 10
CR0_PG = 1 << 31


def test_general_protection_report_has_no_cr2(machine):
    m = machine("hello")
    m.write_var("hello_mode", HELLO_GP_FAULT, u32)
    with pytest.raises(GuestExceptionError) as info:
        m.run(timeout_s=60)
    assert info.value.vector == 13 and info.value.exception.error_code == 0
    assert "error code 0x0" in str(info.value) and "cr2" not in str(info.value).lower()


def test_every_faulting_vcpu_is_reported(machine):
    m = machine("hello", vcpus=2)
    m.write_var("hello_mode", HELLO_FAULT_TOGETHER, u32)
    m.write_var("hello_fault_addr", 5 * GiB)
    with pytest.raises(GuestExceptionError) as info:
        m.run(timeout_s=60)
    first, peers = info.value, info.value.peers
    assert first.vcpu == 0 and first.exception.cr2 == 5 * GiB
    assert [vcpu for vcpu, _ in peers] == [1]
    assert isinstance(peers[0][1], GuestExceptionError)
    assert peers[0][1].exception.cr2 == 5 * GiB + 4096
    text = str(first)
    assert f"on vCPU 0 at RIP {first.rip:#x}" in text
    assert "\nalso vCPU 1: guest exception #PF page fault on vCPU 1" in text
    assert f"CR2 {5 * GiB + 4096:#x}" in text
    assert [s.value for s in m.states()] == ["failed", "failed"]


def test_triple_fault_report_has_cr2(machine):
    m = machine("hello")
    m.write_var("hello_mode", HELLO_TRIPLE_FAULT_PF, u32)
    m.write_var("hello_fault_addr", 5 * GiB)
    with pytest.raises(GuestCrash) as info:
        m.run(timeout_s=60)
    assert "KVM_EXIT_SHUTDOWN" in str(info.value) and "cr2=" in str(info.value)
    if info.value.control["cr0"] & CR0_PG:
        assert info.value.cr2 == 5 * GiB and f"cr2={5 * GiB:#018x}" in str(info.value)
    else:  # AMD SVM re-inits a vCPU on shutdown: the report must say so
        assert "KVM reset the vCPU (paging is off)" in str(info.value)


def test_error_during_construction_closes_what_was_built(kvm, open_fds):
    from kvmharness.guest.machine import Machine
    from kvmharness.kvm import KvmError

    fds, threads = open_fds(), threading.active_count()
    # The VM, its memory and its memslots exist when KVM refuses the quirk mask.
    with pytest.raises(KvmError):
        Machine(kvm, "hello", disable_quirks=1 << 62)
    assert open_fds() == fds and threading.active_count() == threads
    assert kvm.vms == []


def test_plug_and_unplug_return_the_syscall_time(machine):
    layout = Layout.of([Region("rom", 1 * GiB, 2 * MiB, "rom"),
                        Region("hole", 2 * GiB, 2 * MiB, "mmio")])
    m = machine("hello", layout)
    slot = m.slots["rom"]
    unplug_ns = m.unplug("rom")
    assert m.vm.memslot_at(1 * GiB) is None
    plug_ns = m.plug("rom")
    assert m.slots["rom"] == slot and m.vm.memslot_at(1 * GiB).slot == slot
    for ns in (unplug_ns, plug_ns):
        assert isinstance(ns, int) and ns > 0
    assert m.vm.last_memslot_ns == plug_ns  # the Vm's own syscall timing, not a wrapper's
    with pytest.raises(LayoutError, match="'hole' has no memslot backing"):
        m.plug("hole")
    m.run(timeout_s=60)  # the guest still runs with the re-created slot


def test_vcpu_cpus_pins_each_vcpu_thread(machine):
    cpus = sorted(os.sched_getaffinity(0))
    main_mask = os.sched_getaffinity(0)
    wanted = [cpus[-1], cpus[0], cpus[-1]]
    seen: dict[int, set[int]] = {}

    def on_sync(m, vcpu, values):  # runs on the vCPU's thread
        seen[vcpu] = os.sched_getaffinity(0)

    m = machine("hello", vcpus=3, vcpu_cpus=wanted[:2], on_sync=on_sync)
    m.run(timeout_s=120)
    assert seen == {v: {wanted[v]} for v in range(3)}  # vCPU 2 wraps around to cpus[-1]
    assert os.sched_getaffinity(0) == main_mask


def test_vcpu_cpus_outside_the_host_is_refused_before_anything_is_built(kvm, open_fds):
    from kvmharness.guest.machine import Machine

    fds = open_fds()
    with pytest.raises(ValueError, match=r"vcpu_cpus: CPU 4096 is not a host CPU \(0\.\."):
        Machine(kvm, "hello", vcpu_cpus=[0, 4096])
    assert open_fds() == fds and kvm.vms == []
