"""/dev/kvm itself (api.rst 4.1–4.5: system ioctls)."""

from __future__ import annotations

import errno
import os

from kvmharness.kvm import access, kick
from kvmharness.kvm.errors import KvmCapabilityError, KvmError, KvmUnavailableError
from kvmharness.kvm.fdobject import Children, ExtensionQueries
from kvmharness.kvm.vm import Vm
from kvmharness.uapi import ioctls
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.kvm import KVM_API_VERSION
from kvmharness.uapi.x86 import kvm_cpuid_entry2, make_kvm_cpuid2

DEFAULT_DEVICE = "/dev/kvm"

_OPEN_ADVICE = {
    errno.ENOENT: "the KVM module is not loaded or this CPU has no virtualization: "
                  "`modprobe kvm_intel` or `modprobe kvm_amd`, enable VT-x/AMD-V in firmware, "
                  "or enable nested virtualization for this cloud VM",
    errno.ENXIO: "the KVM module is loaded but found no usable virtualization "
                 "(check dmesg for kvm: messages)",
    errno.ENODEV: "the KVM module is loaded but found no usable virtualization "
                  "(check dmesg for kvm: messages)",
}


class Kvm(ExtensionQueries):
    """The /dev/kvm fd.  Owns the VMs it creates; ``close()`` closes vCPUs → VMs → itself."""

    kind = "/dev/kvm"

    def __init__(self, path: str = DEFAULT_DEVICE) -> None:
        # Installed here because the signal module only allows it from the main thread, and
        # the first Kvm() is normally opened there; vCPU threads need it to be stoppable.
        kick.install_kick_handler()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            err = exc.errno or errno.EIO
            if err in (errno.EACCES, errno.EPERM):
                # Advice that matches the device's owner, group and mode, not a guess.
                problem = access.kvm_access_problem(path) or f"{path}: permission denied"
                raise KvmUnavailableError(err, "open", problem) from None
            advice = _OPEN_ADVICE.get(err, exc.strerror or str(exc))
            raise KvmUnavailableError(err, "open", f"{path}: {advice}") from None
        super().__init__(fd)
        self.path = path
        self._vms: Children[Vm] = Children()
        try:
            version = self.ioctl(ioctls.KVM_GET_API_VERSION)
            if version != KVM_API_VERSION:
                raise KvmUnavailableError(
                    errno.EPROTO, "KVM_GET_API_VERSION",
                    f"{path} speaks KVM API {version}, this harness needs {KVM_API_VERSION}")
            self.vcpu_mmap_size = self.ioctl(ioctls.KVM_GET_VCPU_MMAP_SIZE)
        except BaseException:
            self.close()
            raise
        self._supported_cpuid: list[kvm_cpuid_entry2] | None = None

    @property
    def vms(self) -> list[Vm]:
        """The VMs of this fd that are still open and referenced (weakly held)."""
        return self._vms.live()

    def require(self, cap: KvmCap) -> int:
        value = self.check_extension(cap)
        if not value:
            raise KvmCapabilityError(KvmCap(cap).name)
        return value

    def supported_cpuid(self) -> list[kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer on E2BIG (cached per fd)."""
        if self._supported_cpuid is None:
            nent = 64
            while True:
                buf = make_kvm_cpuid2(nent)
                try:
                    self.ioctl(ioctls.KVM_GET_SUPPORTED_CPUID, buf)
                    break
                except KvmError as exc:
                    if exc.errno != errno.E2BIG or nent >= 4096:
                        raise
                    nent *= 2
            self._supported_cpuid = [kvm_cpuid_entry2.from_buffer_copy(buf.entries[i])
                                     for i in range(buf.nent)]
        return [kvm_cpuid_entry2.from_buffer_copy(e) for e in self._supported_cpuid]

    def create_vm(self, vm_type: int = 0) -> Vm:
        fd = self.ioctl(ioctls.KVM_CREATE_VM, vm_type, detail=f"type {vm_type}")
        vm = Vm(self, fd, vm_type)
        self._vms.add(vm)
        return vm

    def _close_children(self) -> None:
        errors = []
        for vm in self._vms.live():
            try:
                vm.close()
            except BaseException as exc:
                errors.append(exc)
        self._vms.clear()
        if errors:
            raise errors[0]
