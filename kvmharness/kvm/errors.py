"""Errors raised by the /dev/kvm layer.  Every failed ioctl becomes a ``KvmError`` that carries
errno and the ioctl's kernel name, so a message reads like ``KVM_SET_USER_MEMORY_REGION2:
[Errno 17] File exists (slot 3 [0x100000-0x200000) overlaps slot 1 ...)``."""

from __future__ import annotations

import errno as _errno
import os


class KvmError(OSError):
    """A KVM ioctl (or /dev/kvm open) failed.  ``ioctl`` is the kernel's name of the request."""

    def __init__(self, err: int, ioctl: str, detail: str | None = None) -> None:
        message = os.strerror(err)
        if detail:
            message = f"{message} ({detail})"
        super().__init__(err, message)
        self.ioctl = ioctl
        self.detail = detail

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno or 0, str(self.errno))
        return f"{self.ioctl}: {name}: {self.strerror}"


class KvmUnavailableError(KvmError):
    """/dev/kvm cannot be opened or speaks an unexpected API; the message says what to do."""


class KvmCapabilityError(KvmError):
    """The kernel lacks a capability the caller needs (KVM_CHECK_EXTENSION returned 0)."""

    def __init__(self, capability: str, detail: str | None = None) -> None:
        super().__init__(_errno.EOPNOTSUPP, "KVM_CHECK_EXTENSION",
                         f"{capability} not supported" + (f": {detail}" if detail else ""))
        self.capability = capability


class VmDeadError(KvmError):
    """KVM has killed the VM (KVM_BUG_ON / kvm_vm_dead): every further ioctl fails with EIO."""


class KvmClosedError(KvmError):
    """The object's fd was already closed."""

    def __init__(self, what: str, ioctl: str) -> None:
        super().__init__(_errno.EBADF, ioctl, f"{what} is closed")
