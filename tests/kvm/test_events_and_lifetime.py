"""ioeventfd, coalesced MMIO, stopping a spinning vCPU, and fd/thread hygiene."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from kvmharness.kvm import (
    Hlt,
    HostMemory,
    Io,
    Kvm,
    KvmClosedError,
    KvmError,
    KvmUnavailableError,
    Stopped,
    kick,
)
from kvmharness.uapi.caps import KvmCap
from tests.kvm.realmode import HLT, SPIN, asm, mov_al, mov_ds, out_al, realmode_vm, store_al


@pytest.mark.requires_cap(KvmCap.KVM_CAP_IOEVENTFD)
def test_pio_ioeventfd_with_datamatch_signals_without_exit(kvm):
    code = asm(mov_al(0x42), out_al(0x20), mov_al(0x41), out_al(0x20), HLT)
    with realmode_vm(kvm, code) as (vm, vcpu, _):
        ev = vm.add_ioeventfd(0x20, 1, pio=True, datamatch=0x42)
        # 0x42 matches: no exit.  0x41 does not: it reaches userspace as a plain PIO exit.
        miss = vcpu.run()
        assert miss == Io(is_out=True, port=0x20, size=1, count=1, data=b"\x41")
        assert ev.count() == 1
        assert isinstance(vcpu.run(), Hlt)
        assert ev.count() == 0
        ev.close()
        assert ev.fd == -1


@pytest.mark.requires_cap(KvmCap.KVM_CAP_IOEVENTFD)
def test_mmio_ioeventfd_any_value(kvm):
    code = asm(mov_ds(0x2000), mov_al(7), store_al(0x10), store_al(0x10), HLT)
    with realmode_vm(kvm, code) as (vm, vcpu, _):
        ev = vm.add_ioeventfd(0x20010, 1)
        assert isinstance(vcpu.run(), Hlt)
        assert ev.count() == 2


@pytest.mark.requires_cap(KvmCap.KVM_CAP_COALESCED_MMIO)
def test_coalesced_mmio_writes_land_in_ring_without_exit(kvm):
    code = asm(mov_ds(0x2000), mov_al(1), store_al(0x0), mov_al(2), store_al(0x1),
               mov_al(3), store_al(0x2), HLT)
    with realmode_vm(kvm, code) as (vm, vcpu, _):
        vm.register_coalesced_mmio(0x20000, 0x1000)
        stats = vcpu.stats()
        before = stats.snapshot(["mmio_exits"])
        assert isinstance(vcpu.run(), Hlt)
        assert stats.snapshot(["mmio_exits"]).delta(before)["mmio_exits"] == 0
        assert vm.read_coalesced_mmio() == [(0x20000, 1, b"\x01"), (0x20001, 1, b"\x02"),
                                            (0x20002, 1, b"\x03")]
        assert vm.read_coalesced_mmio() == [], "draining must consume the entries"
        vm.unregister_coalesced_mmio(0x20000, 0x1000)


def test_stop_spinning_vcpu_from_another_thread(kvm):
    with realmode_vm(kvm, SPIN) as (_, vcpu, _):
        result: list[object] = []
        started = threading.Event()

        def body() -> None:
            started.set()
            result.append(vcpu.run())

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        started.wait()
        time.sleep(0.05)  # let it enter the guest: the stop must interrupt a running KVM_RUN
        t0 = time.perf_counter()
        vcpu.request_stop()
        thread.join(timeout=10)  # a hang guard, not a latency assertion
        elapsed_ms = (time.perf_counter() - t0) * 1000
        assert not thread.is_alive(), "vCPU thread did not leave KVM_RUN"
        assert result == [Stopped()]
        print(f"stop latency {elapsed_ms:.2f} ms")
        # A stopped vCPU refuses to run until cleared, then runs again.
        assert vcpu.run() == Stopped()
        vcpu.clear_stop()
        timer = threading.Timer(0.05, vcpu.request_stop)
        timer.start()
        assert vcpu.run() == Stopped()
        timer.join()


def test_run_after_close_is_a_typed_error(kvm):
    with realmode_vm(kvm, HLT) as (vm, vcpu, _):
        vm.close()
        with pytest.raises(KvmError) as info:
            vcpu.run()
        assert info.value.errno == errno.EBADF
        with pytest.raises(KvmClosedError, match="KVM_GET_REGS"):
            vcpu.get_regs()


def test_missing_device_names_the_fix():
    with pytest.raises(KvmUnavailableError) as info:
        Kvm("/dev/kvm-does-not-exist")
    assert info.value.errno == errno.ENOENT
    assert "modprobe kvm_intel" in str(info.value)


def test_no_fd_or_thread_leak_over_500_vms(kvm, open_fds):
    with realmode_vm(kvm, HLT):
        pass  # warm up lazily opened state
    fds, threads = open_fds(), threading.active_count()
    for _ in range(500):
        with kvm.create_vm() as vm, HostMemory(0x10000) as mem:
            vm.add_memslot(0, 0x10000, mem.addr)
            vcpu = vm.create_vcpu()
            vcpu.stats()
            vm.stats()
            vm.close()
    assert open_fds() == fds
    assert threading.active_count() == threads
    assert kvm.vms == []


def test_no_fd_leak_after_error_paths(kvm, open_fds):
    fds = open_fds()
    for _ in range(20):
        with kvm.create_vm() as vm, HostMemory(0x2000) as mem:
            vm.add_memslot(0, 0x2000, mem.addr)
            with pytest.raises(KvmError):
                vm.add_memslot(0x1000, 0x1000, mem.addr)          # overlap
            with pytest.raises(KvmError):
                vm.create_vcpu(index=1 << 20)                       # bad vCPU id
            with pytest.raises(KvmError):
                vm.add_ioeventfd(0x20, 3, pio=True)                 # bad length
            with pytest.raises(KvmError):
                vm.delete_memslot(7)                                # unknown slot
            vm.close()
        with pytest.raises(KvmUnavailableError):
            Kvm("/dev/kvm-does-not-exist")
    assert open_fds() == fds


def test_stray_signals_are_retried_and_only_a_stop_ends_run(kvm):
    """EINTR from a signal that is not a stop request re-enters the guest; the stop that
    follows still ends run() with Stopped."""
    with realmode_vm(kvm, SPIN) as (_, vcpu, _):
        stats = vcpu.stats()
        before = stats.snapshot(["signal_exits"])
        main = threading.get_ident()
        kicks_done = threading.Event()

        def stray_kicks_then_stop() -> None:
            for _ in range(3):
                time.sleep(0.02)
                kick.kick(main)  # a signal with no stop request behind it
            kicks_done.set()
            time.sleep(0.02)
            vcpu.request_stop()

        thread = threading.Thread(target=stray_kicks_then_stop, daemon=True)
        thread.start()
        assert vcpu.run() == Stopped()
        assert kicks_done.is_set() and vcpu.stop_requested
        thread.join(timeout=10)
        assert stats.snapshot(["signal_exits"]).delta(before)["signal_exits"] >= 2
