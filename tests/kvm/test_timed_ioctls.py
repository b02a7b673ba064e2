"""Timed ioctls: memslot changes and KVM_RUN report the syscall's own nanoseconds, and the
lean paths keep the memslot table, typed errors and typed exits exactly as before."""

from __future__ import annotations

import errno
import time

import pytest

from kvmharness.kvm import HostMemory, Io, KvmClosedError, KvmError, Memslot
from kvmharness.uapi.kvm import KVM_MEM_LOG_DIRTY_PAGES
from tests.kvm.realmode import HLT, asm, jmp_to, mov_al, out_al, realmode_vm


def timed_call(call):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter_ns()
    result = call()
    return result, time.perf_counter_ns() - t0


def test_memslot_changes_report_syscall_ns_within_the_call(vm):
    with HostMemory(0x4000) as mem:
        ns, wall = timed_call(lambda: vm.set_user_memory_region(3, 0, 0x100000, 0x4000,
                                                                mem.addr))
        assert isinstance(ns, int) and 0 < ns <= wall
        assert vm.last_memslot_ns == ns
        assert vm.memslots[3] == Memslot(3, 0x100000, 0x4000, mem.addr)

        vm.last_memslot_ns = 0
        moved, wall = timed_call(lambda: vm.move_memslot(3, 0x200000))
        assert moved == Memslot(3, 0x200000, 0x4000, mem.addr) and vm.memslots[3] is moved
        assert 0 < vm.last_memslot_ns <= wall

        vm.last_memslot_ns = 0
        flagged, wall = timed_call(lambda: vm.set_memslot_flags(3, KVM_MEM_LOG_DIRTY_PAGES))
        assert flagged.flags == KVM_MEM_LOG_DIRTY_PAGES and vm.memslots[3] is flagged
        assert 0 < vm.last_memslot_ns <= wall

        vm.last_memslot_ns = 0
        added, wall = timed_call(lambda: vm.add_memslot(0x300000, 0x1000, mem.addr))
        assert added.slot == 0 and 0 < vm.last_memslot_ns <= wall

        deleted, wall = timed_call(lambda: vm.delete_memslot(3))
        assert 0 < deleted <= wall and vm.last_memslot_ns == deleted
        assert sorted(vm.memslots) == [0]
        vm.close()


def test_each_memslot_change_records_its_own_ns(vm):
    with HostMemory(0x1000) as mem:
        seen = []
        for _ in range(5):
            seen.append(vm.set_user_memory_region(1, 0, 0x100000, 0x1000, mem.addr))
            assert vm.last_memslot_ns == seen[-1]
            seen.append(vm.delete_memslot(1))
            assert vm.last_memslot_ns == seen[-1]
        assert all(ns > 0 for ns in seen)
        vm.close()


def test_toggled_slot_table_entries_stay_equal_and_immutable(vm):
    with HostMemory(0x1000) as mem:
        first = vm.add_memslot(0x100000, 0x1000, mem.addr, slot=2)
        vm.delete_memslot(2)
        second = vm.add_memslot(0x100000, 0x1000, mem.addr, slot=2)
        assert first == second
        with pytest.raises(AttributeError):
            second.guest_phys_addr = 0  # type: ignore[misc]
        vm.close()


def test_failed_memslot_change_is_typed_and_leaves_table_and_ns_alone(vm):
    with HostMemory(0x2000) as mem:
        vm.add_memslot(0x100000, 0x2000, mem.addr, slot=1)
        ns = vm.last_memslot_ns
        with pytest.raises(KvmError) as info:
            vm.set_user_memory_region(2, 0, 0x101000, 0x1000, mem.addr)
        assert info.value.errno == errno.EEXIST
        assert info.value.ioctl.startswith("KVM_SET_USER_MEMORY_REGION")
        assert "overlaps slot 1" in str(info.value)
        assert vm.last_memslot_ns == ns
        assert sorted(vm.memslots) == [1]
        vm.close()


@pytest.mark.parametrize("args, name", [
    ((0x10000, 0, 0x100000, 0x1000, 0), "memslot 65536"),
    ((-1, 0, 0x100000, 0x1000, 0), "memslot -1"),
    ((1, 0, 0x100000, -0x1000, 0), "memory_size=-4096"),
    ((1, 1 << 32, 0x100000, 0x1000, 0), "flags=4294967296"),
    ((1, 0, 1 << 64, 0x1000, 0), "guest_phys_addr="),
])
def test_out_of_range_memslot_arguments_are_named(vm, args, name):
    with pytest.raises(ValueError, match=name):
        vm.set_user_memory_region(*args)
    assert vm.memslots == {}


def test_closed_vm_memslot_and_check_extension_are_typed(kvm):
    vm = kvm.create_vm()
    vm.close()
    with pytest.raises(KvmClosedError, match="KVM_SET_USER_MEMORY_REGION"):
        vm.set_user_memory_region(1, 0, 0x100000, 0x1000, 0)
    with pytest.raises(KvmClosedError, match="KVM_CHECK_EXTENSION"):
        vm.check_extension(1)
    with pytest.raises(ValueError, match="capability -1"):
        kvm.check_extension(-1)


def test_run_records_the_kvm_run_syscall_ns(kvm):
    loop = asm(mov_al(7), out_al(0x10))
    code = asm(loop, jmp_to(0x1000, 0x1000 + len(loop)))
    with realmode_vm(kvm, code) as (_, vcpu, _):
        exits, total = [], vcpu.run_ns_total
        for _ in range(3):
            t0 = time.perf_counter_ns()
            exits.append(vcpu.run())
            wall = time.perf_counter_ns() - t0
            assert 0 < vcpu.last_run_ns <= wall
            total += vcpu.last_run_ns
            assert vcpu.run_ns_total == total
        assert exits == [Io(is_out=True, port=0x10, size=1, count=1, data=b"\x07")] * 3


def test_repeated_and_changing_io_exits_decode_each_time(kvm):
    code = asm(mov_al(1), out_al(0x10), mov_al(1), out_al(0x10), mov_al(2), out_al(0x10),
               out_al(0x11), HLT)
    with realmode_vm(kvm, code) as (_, vcpu, _):
        got = [vcpu.run() for _ in range(5)]
    assert [(e.port, e.data) for e in got[:4]] == [(0x10, b"\x01"), (0x10, b"\x01"),
                                                   (0x10, b"\x02"), (0x11, b"\x02")]
    assert got[4].name == "KVM_EXIT_HLT"


def test_lean_memslot_path_still_tells_a_dead_vm(vm, monkeypatch):
    from kvmharness.kvm import VmDeadError, fdobject
    from kvmharness.kvm import vm as vm_module

    def eio(fd, request, arg):  # type: ignore[no-untyped-def]
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(vm_module, "_ioctl_struct", eio)
    with pytest.raises(KvmError) as info:
        vm.set_user_memory_region(1, 0, 0x100000, 0x1000, 0)
    assert not isinstance(info.value, VmDeadError), "the VM still answers the probe"
    assert info.value.errno == errno.EIO
    monkeypatch.setattr(fdobject.syscall, "ioctl_errno", lambda fd, req, arg=0: (-1, errno.EIO))
    with pytest.raises(VmDeadError, match="KVM_SET_USER_MEMORY_REGION"):
        vm.set_user_memory_region(1, 0, 0x100000, 0x1000, 0)
    assert vm.memslots == {}
