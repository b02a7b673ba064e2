"""Base for objects that own one KVM fd: ioctl with the object's context, close, context
manager, and turning EIO into VmDeadError when KVM has killed the VM.

A parent (Kvm, Vm) holds only weak references to its children, so a Vm or Vcpu dropped
without ``close()`` releases its fd (and mmaps) as soon as it is unreachable, with a
ResourceWarning as for an unclosed file.  A child holds its parent strongly: the parent
outlives every child, and an explicit ``close()`` still closes vCPUs, then VMs, then
/dev/kvm."""

from __future__ import annotations

import errno
import itertools
import os
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Generic, TypeVar

from kvmharness.kvm import syscall
from kvmharness.kvm.closeable import Closeable
from kvmharness.kvm.errors import KvmClosedError, KvmError, VmDeadError
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.ioctls import KVM_CHECK_EXTENSION

_CHECK_EXTENSION = int(KVM_CHECK_EXTENSION)

_Child = TypeVar("_Child", bound="FdObject")
_clock = time.perf_counter_ns


class FdObject(Closeable):
    """Owns ``self.fd``; subclasses release their own resources in ``_close_children``."""

    kind = "fd"

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # Nanoseconds of the close(2) of this fd alone, once closed: for a VM, whose vCPU
        # and stats fds are closed first, that is where KVM destroys it (kvm_destroy_vm).
        self.close_ns: int | None = None

    def ioctl(self, request: int, arg: object = 0, detail: str | None = None) -> int:
        if self.fd < 0:
            raise KvmClosedError(self.kind, getattr(request, "name", hex(request)))
        try:
            return syscall.ioctl(self.fd, request, arg)
        except KvmError as exc:
            raise self._typed_error(exc.errno or errno.EIO, exc.ioctl, detail) from None

    def _typed_error(self, err: int, ioctl: str, detail: str | None = None) -> KvmError:
        """The error to raise for a failed ioctl: VmDeadError when KVM killed the VM,
        KvmClosedError when this object is closed, else a KvmError naming the ioctl."""
        if self.fd < 0:
            return KvmClosedError(self.kind, ioctl)
        if err == errno.EIO and self._vm_is_dead():
            return VmDeadError(errno.EIO, ioctl, "KVM has marked this VM dead "
                               "(KVM_BUG_ON or a fatal error); see the host's dmesg")
        return KvmError(err, ioctl, detail)

    def _vm_fd(self) -> int:
        """The VM fd that tells "VM killed" (EIO + failed probe) from a plain EIO; -1 for
        objects that belong to no VM."""
        return -1

    def _vm_is_dead(self) -> bool:
        fd = self._vm_fd()
        if fd < 0:
            return False
        ret, err = syscall.ioctl_errno(fd, KVM_CHECK_EXTENSION, KvmCap.KVM_CAP_USER_MEMORY)
        return ret < 0 and err == errno.EIO

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def _close_children(self) -> None:
        """Release what depends on this fd (mmaps, child objects) before it is closed."""

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            self._close_children()
        finally:
            fd, self.fd = self.fd, -1
            t0 = _clock()
            os.close(fd)
            self.close_ns = _clock() - t0

    def __del__(self) -> None:
        # Like an unclosed file: say so (ResourceWarning is shown under -X dev, -W default
        # and pytest), then release the fd.  No ``source=self``: a recorded warning would
        # keep this object, and through it its parent VM and fds, alive.  Never raise from a
        # finaliser.
        try:
            fd = getattr(self, "fd", -1)
            if fd >= 0:
                self.close()
                warnings.warn(f"unclosed {self.kind} fd {fd}: call close() or use 'with' "
                              "(closed it now)", ResourceWarning, stacklevel=2)
        except Exception:
            pass


class ExtensionQueries(FdObject):
    """KVM_CHECK_EXTENSION, valid on /dev/kvm and on VM fds (a VM fd answers for its VM
    type); the success path is one prebound libc call."""

    def check_extension(self, cap: int) -> int:
        """0 if ``cap`` is unsupported, else a capability-specific value."""
        if not 0 <= cap < syscall.SMALL_ARG_LIMIT:
            raise ValueError(f"capability {cap} is outside 0..{syscall.SMALL_ARG_LIMIT - 1}")
        ret = syscall.ioctl_small(self.fd, _CHECK_EXTENSION, cap)
        if ret < 0:
            raise self._typed_error(syscall.get_errno(), "KVM_CHECK_EXTENSION",
                                    f"capability {cap}")
        return ret  # type: ignore[no-any-return]


class Children(Generic[_Child]):
    """A parent's weak references to its children, in creation order."""

    def __init__(self) -> None:
        self._refs: weakref.WeakValueDictionary[int, _Child] = weakref.WeakValueDictionary()
        self._keys = itertools.count()

    def add(self, child: _Child) -> None:
        self._refs[next(self._keys)] = child

    def discard(self, child: _Child) -> None:
        for key, value in list(self._refs.items()):
            if value is child:
                del self._refs[key]

    def live(self) -> list[_Child]:
        return list(self._refs.values())

    def __iter__(self) -> Iterator[_Child]:
        return iter(self.live())

    def __len__(self) -> int:
        return len(self._refs)

    def clear(self) -> None:
        self._refs.clear()
