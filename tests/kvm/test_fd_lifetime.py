"""fd lifetime: a Vm or Vcpu dropped without close releases its fds and says so with a
ResourceWarning (parents hold weak references); explicit close still goes vCPU -> VM ->
/dev/kvm."""

from __future__ import annotations

import gc
import time
import warnings

from kvmharness.kvm import Kvm, Vcpu, Vm


def test_dropped_vms_and_vcpus_release_their_fds_with_a_resource_warning(kvm, open_fds):
    gc.collect()
    baseline = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(100):
            vm = kvm.create_vm()
            vm.create_vcpu()  # dropped at once: the VM holds it weakly
            vm.stats()
            vm = None
        gc.collect()
    assert open_fds() == baseline
    assert kvm.vms == []
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(m.startswith("unclosed VM fd") for m in messages)
    assert any(m.startswith("unclosed vCPU fd") for m in messages)


def test_dropped_vcpu_is_released_while_its_vm_lives(kvm, open_fds):
    with kvm.create_vm() as vm:
        fds = open_fds()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            vcpu = vm.create_vcpu()
            assert vm.vcpus == [vcpu] and open_fds() == fds + 1
            del vcpu
        assert vm.vcpus == [] and open_fds() == fds
        assert [w.category for w in caught] == [ResourceWarning]
        kept = vm.create_vcpu()  # the next id, not the dropped one's
        assert kept.index == 1
        vm.close()


def test_closed_objects_do_not_warn_when_dropped(kvm):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with kvm.create_vm() as vm:
            vm.create_vcpu().close()
            vm.close()
        del vm
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_explicit_close_goes_vcpu_then_vm_then_dev_kvm(kvm, monkeypatch):
    # ``kvm`` only for its skip when /dev/kvm is missing: this test closes its own Kvm.
    order: list[str] = []
    for cls in (Vcpu, Vm, Kvm):
        original = cls.close

        def close(self, _original=original, _name=cls.__name__):  # type: ignore[no-untyped-def]
            was_open = not self.closed
            _original(self)
            if was_open:
                order.append(_name)

        monkeypatch.setattr(cls, "close", close)
    kvm = Kvm()
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu()
    kvm.close()
    assert order == ["Vcpu", "Vm", "Kvm"]
    assert vcpu.closed and vm.closed and kvm.closed


def test_close_reports_the_close_syscall_ns(kvm):
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu()
    assert vm.close_ns is None and vcpu.close_ns is None
    t0 = time.perf_counter_ns()
    vm.close()
    wall = time.perf_counter_ns() - t0
    assert vcpu.close_ns is not None and 0 < vcpu.close_ns <= wall
    assert vm.close_ns is not None and 0 < vm.close_ns <= wall
    assert vcpu.close_ns + vm.close_ns <= wall
