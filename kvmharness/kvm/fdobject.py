"""Base for objects that own one KVM fd: ioctl with the object's context, close, context
manager, and turning EIO into VmDeadError when KVM has killed the VM."""

from __future__ import annotations

import errno
import os
from typing import Callable

from kvmharness.kvm import syscall
from kvmharness.kvm.closeable import Closeable
from kvmharness.kvm.errors import KvmClosedError, KvmError, VmDeadError
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.ioctls import KVM_CHECK_EXTENSION


class FdObject(Closeable):
    """Owns ``self.fd``; subclasses release their own resources in ``_close_children``."""

    kind = "fd"

    def __init__(self, fd: int, vm_fd_probe: Callable[[], int] | None = None) -> None:
        self.fd = fd
        # Returns the VM fd used to tell "VM killed" (EIO + failed probe) from a plain EIO.
        self._vm_fd_probe = vm_fd_probe

    def ioctl(self, request: int, arg: object = 0, detail: str | None = None) -> int:
        if self.fd < 0:
            raise KvmClosedError(self.kind, getattr(request, "name", hex(request)))
        try:
            return syscall.ioctl(self.fd, request, arg)
        except KvmError as exc:
            if exc.errno == errno.EIO and self._vm_is_dead():
                raise VmDeadError(errno.EIO, exc.ioctl, "KVM has marked this VM dead "
                                  "(KVM_BUG_ON or a fatal error); see the host's dmesg") from None
            if detail:
                raise KvmError(exc.errno or errno.EIO, exc.ioctl, detail) from None
            raise

    def _vm_is_dead(self) -> bool:
        if self._vm_fd_probe is None:
            return False
        fd = self._vm_fd_probe()
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
            os.close(fd)
