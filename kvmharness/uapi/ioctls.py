"""KVM ioctl request numbers, derived from direction, number and argument struct exactly as
<linux/kvm.h> derives them.  Each is an ``IoctlNumber``: an int that knows its kernel name."""

from __future__ import annotations

from ctypes import c_uint64

from kvmharness.uapi.ioctl import _IO, _IOR, _IOW, _IOWR, IoctlNumber
from kvmharness.uapi.kvm import (
    KVMIO,
    kvm_coalesced_mmio_zone,
    kvm_dirty_log,
    kvm_enable_cap,
    kvm_ioeventfd,
    kvm_mp_state,
    kvm_userspace_memory_region,
    kvm_userspace_memory_region2,
)
from kvmharness.uapi.x86 import kvm_cpuid2, kvm_msrs, kvm_regs, kvm_sregs

_ALL: dict[str, IoctlNumber] = {}


def _def(name: str, value: int) -> IoctlNumber:
    number = IoctlNumber(name, value)
    _ALL[name] = number
    return number


# System ioctls (/dev/kvm).
KVM_GET_API_VERSION = _def("KVM_GET_API_VERSION", _IO(KVMIO, 0x00))
KVM_CREATE_VM = _def("KVM_CREATE_VM", _IO(KVMIO, 0x01))
KVM_CHECK_EXTENSION = _def("KVM_CHECK_EXTENSION", _IO(KVMIO, 0x03))
KVM_GET_VCPU_MMAP_SIZE = _def("KVM_GET_VCPU_MMAP_SIZE", _IO(KVMIO, 0x04))
KVM_GET_SUPPORTED_CPUID = _def("KVM_GET_SUPPORTED_CPUID", _IOWR(KVMIO, 0x05, kvm_cpuid2))

# VM ioctls.
KVM_CREATE_VCPU = _def("KVM_CREATE_VCPU", _IO(KVMIO, 0x41))
KVM_GET_DIRTY_LOG = _def("KVM_GET_DIRTY_LOG", _IOW(KVMIO, 0x42, kvm_dirty_log))
KVM_SET_USER_MEMORY_REGION = _def(
    "KVM_SET_USER_MEMORY_REGION", _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
)
KVM_SET_TSS_ADDR = _def("KVM_SET_TSS_ADDR", _IO(KVMIO, 0x47))
KVM_SET_IDENTITY_MAP_ADDR = _def("KVM_SET_IDENTITY_MAP_ADDR", _IOW(KVMIO, 0x48, c_uint64))
KVM_SET_USER_MEMORY_REGION2 = _def(
    "KVM_SET_USER_MEMORY_REGION2", _IOW(KVMIO, 0x49, kvm_userspace_memory_region2)
)
KVM_CREATE_IRQCHIP = _def("KVM_CREATE_IRQCHIP", _IO(KVMIO, 0x60))
KVM_REGISTER_COALESCED_MMIO = _def(
    "KVM_REGISTER_COALESCED_MMIO", _IOW(KVMIO, 0x67, kvm_coalesced_mmio_zone)
)
KVM_UNREGISTER_COALESCED_MMIO = _def(
    "KVM_UNREGISTER_COALESCED_MMIO", _IOW(KVMIO, 0x68, kvm_coalesced_mmio_zone)
)
KVM_IOEVENTFD = _def("KVM_IOEVENTFD", _IOW(KVMIO, 0x79, kvm_ioeventfd))
KVM_ENABLE_CAP = _def("KVM_ENABLE_CAP", _IOW(KVMIO, 0xA3, kvm_enable_cap))
KVM_GET_STATS_FD = _def("KVM_GET_STATS_FD", _IO(KVMIO, 0xCE))

# vCPU ioctls.
KVM_RUN = _def("KVM_RUN", _IO(KVMIO, 0x80))
KVM_GET_REGS = _def("KVM_GET_REGS", _IOR(KVMIO, 0x81, kvm_regs))
KVM_SET_REGS = _def("KVM_SET_REGS", _IOW(KVMIO, 0x82, kvm_regs))
KVM_GET_SREGS = _def("KVM_GET_SREGS", _IOR(KVMIO, 0x83, kvm_sregs))
KVM_SET_SREGS = _def("KVM_SET_SREGS", _IOW(KVMIO, 0x84, kvm_sregs))
KVM_GET_MSRS = _def("KVM_GET_MSRS", _IOWR(KVMIO, 0x88, kvm_msrs))
KVM_SET_MSRS = _def("KVM_SET_MSRS", _IOW(KVMIO, 0x89, kvm_msrs))
KVM_SET_CPUID2 = _def("KVM_SET_CPUID2", _IOW(KVMIO, 0x90, kvm_cpuid2))
KVM_GET_CPUID2 = _def("KVM_GET_CPUID2", _IOWR(KVMIO, 0x91, kvm_cpuid2))
KVM_GET_MP_STATE = _def("KVM_GET_MP_STATE", _IOR(KVMIO, 0x98, kvm_mp_state))
KVM_SET_MP_STATE = _def("KVM_SET_MP_STATE", _IOW(KVMIO, 0x99, kvm_mp_state))
KVM_GET_TSC_KHZ = _def("KVM_GET_TSC_KHZ", _IO(KVMIO, 0xA3))


def all_ioctls() -> dict[str, IoctlNumber]:
    """Every mirrored ioctl by kernel name (the layout test checks each against the header)."""
    return dict(_ALL)
