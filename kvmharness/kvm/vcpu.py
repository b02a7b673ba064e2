"""One vCPU fd (KVM_CREATE_VCPU) with its mmap'd struct kvm_run (api.rst 4.10 KVM_RUN, 5. The
kvm_run structure)."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kvmharness.kvm import kick, syscall
from kvmharness.kvm.errors import KvmError, VmDeadError
from kvmharness.kvm.exits import _STOPPED, Exit, ExitDecoder
from kvmharness.kvm.fdobject import FdObject
from kvmharness.kvm.stats import StatsReader
from kvmharness.uapi import ioctls
from kvmharness.uapi.kvm import (
    KVM_COALESCED_MMIO_MAX,
    PAGE_SIZE,
    kvm_coalesced_mmio,
    kvm_coalesced_mmio_ring,
    kvm_mp_state,
    kvm_run,
)
from kvmharness.uapi.x86 import (
    KVM_COALESCED_MMIO_PAGE_OFFSET,
    kvm_cpuid_entry2,
    kvm_regs,
    kvm_sregs,
    make_kvm_cpuid2,
    make_kvm_msrs,
)

if TYPE_CHECKING:
    from kvmharness.kvm.vm import Vm

_KVM_RUN = int(ioctls.KVM_RUN)
_clock = time.perf_counter_ns
_get_ident = threading.get_ident


class Vcpu(FdObject):
    """A vCPU.  ``run()`` is meant to be called from one thread at a time (the vCPU's own);
    ``request_stop()`` may be called from any thread."""

    kind = "vCPU"

    def __init__(self, vm: Vm, fd: int, index: int, mmap_size: int) -> None:
        super().__init__(fd)
        self.vm = vm
        self.index = index
        self._mmap_size = mmap_size
        self._run_addr = 0
        self._stats: StatsReader | None = None
        try:
            if not kick.install_kick_handler():
                raise RuntimeError(
                    "cannot install the vCPU kick signal handler (SIGRTMIN+2) "
                    "from this thread: create the first Kvm() from the main thread or call "
                    "kvmharness.kvm.kick.install_kick_handler() there first")
            self._run_addr = syscall.mmap(mmap_size, syscall.PROT_READ | syscall.PROT_WRITE,
                                          syscall.MAP_SHARED, fd, 0, what=f"vCPU {index} kvm_run")
        except BaseException:
            self.fd = -1
            os.close(fd)
            raise
        self.run_struct = kvm_run.from_address(self._run_addr)
        self._decode = ExitDecoder(self._run_addr, mmap_size).decode
        self.last_run_ns = 0
        # Sum of every successful KVM_RUN's syscall ns: read it before and after a phase to
        # split the vCPU thread's time into the kernel's (guest included) and the harness's.
        self.run_ns_total = 0
        self._stop_requested = False
        self._thread_ident: int | None = None
        self._kick_lock = threading.Lock()

    # --- running -----------------------------------------------------------------------
    def run(self) -> Exit:
        """KVM_RUN until an exit userspace must handle.  EINTR from stray signals is retried;
        EINTR after ``request_stop()`` returns ``Stopped``.  ``last_run_ns`` holds the
        nanoseconds of the last successful KVM_RUN syscall alone (clock read immediately
        around it), so a caller can tell the kernel's share of an exit from its own;
        ``run_ns_total`` adds them up."""
        fd = self.fd
        if fd < 0:
            raise KvmError(errno.EBADF, "KVM_RUN", f"vCPU {self.index} is closed")
        self._thread_ident = _get_ident()
        ioctl, clock = syscall.ioctl_noarg, _clock
        try:
            while True:
                if self._stop_requested:
                    return _STOPPED
                t0 = clock()
                try:
                    ioctl(fd, _KVM_RUN)
                    t1 = clock()
                except OSError as exc:
                    err = exc.errno
                    if err == errno.EINTR or err == errno.EAGAIN:
                        continue  # loop top returns Stopped if that was a stop request
                    if err == errno.EIO and self._vm_is_dead():
                        raise VmDeadError(errno.EIO, "KVM_RUN",
                                          "KVM has marked this VM dead") from None
                    raise KvmError(err or errno.EIO, "KVM_RUN", f"vCPU {self.index}") from None
                ns = self.last_run_ns = t1 - t0
                self.run_ns_total += ns
                return self._decode()
        finally:
            self._thread_ident = None

    def request_stop(self) -> None:
        """Make a concurrent or future ``run()`` return ``Stopped`` promptly (see kick.py)."""
        with self._kick_lock:
            self._stop_requested = True
            if self._run_addr:
                self.run_struct.immediate_exit = 1
            ident = self._thread_ident
            if ident is not None and ident != threading.get_ident():
                kick.kick(ident)

    def clear_stop(self) -> None:
        """Allow ``run()`` to enter the guest again after a stop."""
        with self._kick_lock:
            self._stop_requested = False
            if self._run_addr:
                self.run_struct.immediate_exit = 0

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def complete_pending_exit(self) -> None:
        """Let KVM finish an IO/MMIO exit's emulation without running guest code
        (KVM_RUN with immediate_exit=1; api.rst: 'immediate_exit')."""
        self.run_struct.immediate_exit = 1
        try:
            ret, err = syscall.ioctl_errno(self.fd, ioctls.KVM_RUN, 0)
            if ret < 0 and err != errno.EINTR:
                raise KvmError(err, "KVM_RUN", f"vCPU {self.index}: completing a pending exit")
        finally:
            self.run_struct.immediate_exit = 1 if self._stop_requested else 0

    def complete_io_in(self, data: bytes) -> None:
        """Answer a KVM_EXIT_IO IN: the bytes the guest's IN instruction(s) will read."""
        io = self.run_struct.io
        expected = io.size * io.count
        if len(data) != expected:
            raise ValueError(f"IN on port {io.port:#x} wants {expected} bytes, got {len(data)}")
        ctypes.memmove(self._run_addr + io.data_offset, data, expected)

    def complete_mmio_read(self, data: bytes) -> None:
        """Answer a KVM_EXIT_MMIO read with ``len`` bytes."""
        mmio = self.run_struct.mmio
        if len(data) != mmio.len:
            raise ValueError(f"MMIO read of {mmio.phys_addr:#x} wants {mmio.len} bytes, "
                             f"got {len(data)}")
        ctypes.memmove(ctypes.addressof(mmio.data), data, mmio.len)

    def _vm_fd(self) -> int:
        return self.vm.fd

    # --- state -------------------------------------------------------------------------
    def get_regs(self) -> kvm_regs:
        regs = kvm_regs()
        self.ioctl(ioctls.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: kvm_regs) -> None:
        self.ioctl(ioctls.KVM_SET_REGS, regs)

    def get_sregs(self) -> kvm_sregs:
        sregs = kvm_sregs()
        self.ioctl(ioctls.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: kvm_sregs) -> None:
        self.ioctl(ioctls.KVM_SET_SREGS, sregs)

    def set_cpuid2(self, entries: Iterable[kvm_cpuid_entry2]) -> None:
        """KVM_SET_CPUID2.  Must precede KVM_SET_SREGS (CR4/EFER are checked against it)."""
        entries = list(entries)
        buf = make_kvm_cpuid2(len(entries))
        for i, entry in enumerate(entries):
            buf.entries[i] = entry
        self.ioctl(ioctls.KVM_SET_CPUID2, buf)

    def get_cpuid2(self, max_entries: int = 256) -> list[kvm_cpuid_entry2]:
        buf = make_kvm_cpuid2(max_entries)
        self.ioctl(ioctls.KVM_GET_CPUID2, buf)
        return [buf.entries[i] for i in range(buf.nent)]

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        indices = list(indices)
        buf = make_kvm_msrs(len(indices))
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        got = self.ioctl(ioctls.KVM_GET_MSRS, buf)
        if got != len(indices):
            raise KvmError(errno.EINVAL, "KVM_GET_MSRS",
                           f"MSR {indices[got]:#x} is not supported (read {got} of {len(indices)})")
        return {buf.entries[i].index: buf.entries[i].data for i in range(got)}

    def set_msrs(self, values: dict[int, int]) -> None:
        buf = make_kvm_msrs(len(values))
        for i, (index, data) in enumerate(values.items()):
            buf.entries[i].index = index
            buf.entries[i].data = data
        done = self.ioctl(ioctls.KVM_SET_MSRS, buf)
        if done != len(values):
            failed = list(values)[done]
            raise KvmError(errno.EINVAL, "KVM_SET_MSRS",
                           f"MSR {failed:#x} was rejected (wrote {done} of {len(values)})")

    def get_mp_state(self) -> int:
        state = kvm_mp_state()
        self.ioctl(ioctls.KVM_GET_MP_STATE, state)
        return int(state.mp_state)

    def set_mp_state(self, mp_state: int) -> None:
        self.ioctl(ioctls.KVM_SET_MP_STATE, kvm_mp_state(mp_state))

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ: the guest TSC frequency, to turn rdtsc deltas into time."""
        return self.ioctl(ioctls.KVM_GET_TSC_KHZ)

    # --- stats and coalesced MMIO -------------------------------------------------------
    def stats(self) -> StatsReader:
        """The vCPU's binary stats (opened once, owned by this vCPU)."""
        if self._stats is None:
            self._stats = StatsReader(self.ioctl(ioctls.KVM_GET_STATS_FD))
        return self._stats

    def read_coalesced_mmio(self) -> list[tuple[int, int, bytes]]:
        """Drain the VM's coalesced MMIO ring through this vCPU's mapping: a list of
        (phys_addr, len, data) in guest order."""
        if self._mmap_size < (KVM_COALESCED_MMIO_PAGE_OFFSET + 1) * PAGE_SIZE:
            raise KvmError(errno.ENODEV, "KVM_REGISTER_COALESCED_MMIO",
                           "this kernel maps no coalesced MMIO ring")
        base = self._run_addr + KVM_COALESCED_MMIO_PAGE_OFFSET * PAGE_SIZE
        ring = kvm_coalesced_mmio_ring.from_address(base)
        entries = base + ctypes.sizeof(kvm_coalesced_mmio_ring)
        out = []
        while ring.first != ring.last:
            e = kvm_coalesced_mmio.from_address(entries + ring.first * ctypes.sizeof(
                kvm_coalesced_mmio))
            out.append((e.phys_addr, e.len, bytes(e.data)[: e.len]))
            ring.first = (ring.first + 1) % KVM_COALESCED_MMIO_MAX
        return out

    def _close_children(self) -> None:
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        if self._run_addr:
            addr, self._run_addr = self._run_addr, 0
            syscall.munmap(addr, self._mmap_size)
