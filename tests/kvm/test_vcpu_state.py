"""vCPU state ioctls and the error subclasses, on the real /dev/kvm."""

from __future__ import annotations

import errno

import pytest

from kvmharness.kvm import KvmCapabilityError, KvmError, VmDeadError, fdobject
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.kvm import KVM_MP_STATE_RUNNABLE

MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS = 0x174


def test_regs_sregs_cpuid_msrs_mp_state_round_trip(kvm, vm):
    vcpu = vm.create_vcpu()
    supported = kvm.supported_cpuid()
    vcpu.set_cpuid2(supported)
    got = vcpu.get_cpuid2()
    assert {(e.function, e.index) for e in got} == {(e.function, e.index) for e in supported}
    regs = vcpu.get_regs()
    regs.rbx, regs.rip = 0x1234, 0x5000
    vcpu.set_regs(regs)
    assert (vcpu.get_regs().rbx, vcpu.get_regs().rip) == (0x1234, 0x5000)
    sregs = vcpu.get_sregs()
    sregs.cs.base = 0x10000
    vcpu.set_sregs(sregs)
    assert vcpu.get_sregs().cs.base == 0x10000
    vcpu.set_msrs({MSR_IA32_SYSENTER_CS: 0x10})
    assert vcpu.get_msrs([MSR_IA32_SYSENTER_CS])[MSR_IA32_SYSENTER_CS] == 0x10
    with pytest.raises(KvmError, match="MSR 0xdeadbeef is not supported"):
        vcpu.get_msrs([MSR_IA32_TSC, 0xDEADBEEF])
    assert vcpu.get_mp_state() == KVM_MP_STATE_RUNNABLE
    assert vcpu.get_tsc_khz() > 0
    vcpu.close()


def test_missing_capability_is_typed(kvm):
    missing = next((cap for cap in KvmCap if not kvm.check_extension(cap)), None)
    if missing is None:
        pytest.skip("this kernel reports every mirrored capability")
    with pytest.raises(KvmCapabilityError, match=missing.name):
        kvm.require(missing)


def test_eio_with_failing_probe_means_vm_dead(vm, monkeypatch):
    real_ioctl, real_errno = fdobject.syscall.ioctl, fdobject.syscall.ioctl_errno

    def dead_ioctl(fd, request, arg=0):
        raise KvmError(errno.EIO, getattr(request, "name", "?"))

    monkeypatch.setattr(fdobject.syscall, "ioctl", dead_ioctl)
    monkeypatch.setattr(fdobject.syscall, "ioctl_errno", lambda fd, req, arg=0: (-1, errno.EIO))
    with pytest.raises(VmDeadError, match="KVM_CREATE_VCPU"):
        vm.create_vcpu()
    # A plain EIO where the VM still answers the probe stays a plain KvmError.
    monkeypatch.setattr(fdobject.syscall, "ioctl_errno", real_errno)
    with pytest.raises(KvmError) as info:
        vm.create_vcpu()
    assert not isinstance(info.value, VmDeadError) and info.value.errno == errno.EIO
    monkeypatch.setattr(fdobject.syscall, "ioctl", real_ioctl)
