"""The /dev/kvm layer against the real kernel, with a hand-assembled real-mode guest."""

from __future__ import annotations

import errno

import pytest

from kvmharness.kvm import Hlt, HostMemory, Io, KvmCapabilityError, KvmError, Mmio
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.kvm import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY
from kvmharness.uapi.x86 import KVM_X86_QUIRK_SLOT_ZAP_ALL
from tests.kvm.realmode import (
    CODE_GPA,
    HLT,
    asm,
    in_al,
    jmp_to,
    load_al,
    mov_al,
    mov_ds,
    out_al,
    realmode_vm,
    store_al,
)


def test_pio_out_then_hlt(kvm):
    with realmode_vm(kvm, asm(mov_al(0x42), out_al(0x10), HLT)) as (_, vcpu, _):
        exit_ = vcpu.run()
        assert exit_ == Io(is_out=True, port=0x10, size=1, count=1, data=b"\x42")
        assert isinstance(vcpu.run(), Hlt)


def test_pio_in_data_reaches_guest(kvm):
    with realmode_vm(kvm, asm(in_al(0x11), out_al(0x12), HLT)) as (_, vcpu, _):
        exit_ = vcpu.run()
        assert isinstance(exit_, Io) and not exit_.is_out and exit_.port == 0x11
        vcpu.complete_io_in(b"\x5a")
        echoed = vcpu.run()
        assert isinstance(echoed, Io) and echoed.port == 0x12 and echoed.value == 0x5A


def test_mmio_read_and_write_without_memslot(kvm):
    # DS = 0x2000 -> GPA 0x20000, which no memslot covers.
    code = asm(mov_ds(0x2000), load_al(0x0), store_al(0x4), HLT)
    with realmode_vm(kvm, code) as (_, vcpu, _):
        read = vcpu.run()
        assert isinstance(read, Mmio)
        assert (read.phys_addr, read.len, read.is_write) == (0x20000, 1, False)
        vcpu.complete_mmio_read(b"\x77")
        write = vcpu.run()
        assert write == Mmio(phys_addr=0x20004, len=1, is_write=True, data=b"\x77")
        assert isinstance(vcpu.run(), Hlt)


@pytest.mark.requires_cap(KvmCap.KVM_CAP_READONLY_MEM)
def test_readonly_slot_reads_memory_and_writes_exit(kvm):
    code = asm(mov_ds(0x3000), load_al(0x0), out_al(0x10), mov_al(0x99), store_al(0x1), HLT)
    with realmode_vm(kvm, code) as (vm, vcpu, _), HostMemory(0x1000) as rom:
        rom.write(0, b"\xA5\x5A")
        vm.add_memslot(0x30000, 0x1000, rom.addr, flags=KVM_MEM_READONLY)
        read = vcpu.run()
        assert isinstance(read, Io) and read.value == 0xA5
        write = vcpu.run()
        assert write == Mmio(phys_addr=0x30001, len=1, is_write=True, data=b"\x99")
        assert isinstance(vcpu.run(), Hlt)
        assert rom.read(0, 2) == b"\xA5\x5A", "a write to a read-only slot changed its memory"
        vm.close()


def _reader_loop() -> bytes:
    # loop: al = [0x40000]; out 0x10, al; jmp loop
    prefix = mov_ds(0x4000)
    start = CODE_GPA + len(prefix)
    body = asm(load_al(0x0), out_al(0x10))
    return asm(prefix, body, jmp_to(start, start + len(body)))


def test_create_move_delete_observed_by_guest(kvm):
    with realmode_vm(kvm, _reader_loop()) as (vm, vcpu, _), \
            HostMemory(0x1000) as page_a, HostMemory(0x1000) as page_b:
        page_a.write(0, b"\x11")
        page_b.write(0, b"\x22")
        slot_a = vm.add_memslot(0x40000, 0x1000, page_a.addr)
        assert vcpu.run().value == 0x11

        vm.move_memslot(slot_a.slot, 0x50000)
        gone = vcpu.run()
        assert isinstance(gone, Mmio) and gone.phys_addr == 0x40000 and not gone.is_write
        vcpu.complete_mmio_read(b"\x33")
        assert vcpu.run().value == 0x33

        slot_b = vm.add_memslot(0x40000, 0x1000, page_b.addr)
        assert vcpu.run().value == 0x22
        vm.delete_memslot(slot_b.slot)
        assert isinstance(vcpu.run(), Mmio)
        vcpu.complete_mmio_read(b"\x44")
        assert vcpu.run().value == 0x44
        assert set(vm.memslots) == {0, slot_a.slot}
        assert vm.memslots[slot_a.slot].guest_phys_addr == 0x50000
        vm.close()


def test_dirty_logging_flag_change_sees_guest_write(kvm):
    code = asm(mov_ds(0x6000), mov_al(0x1), store_al(0x1008), HLT)  # writes page 1
    with realmode_vm(kvm, code) as (vm, vcpu, _), HostMemory(0x4000) as data:
        slot = vm.add_memslot(0x60000, 0x4000, data.addr)
        vm.set_memslot_flags(slot.slot, KVM_MEM_LOG_DIRTY_PAGES)
        assert vm.get_dirty_log(slot.slot)[0] == 0
        assert isinstance(vcpu.run(), Hlt)
        assert vm.get_dirty_log(slot.slot)[0] == 0b0010
        assert data.read(0x1008, 1) == b"\x01"
        vm.set_memslot_flags(slot.slot, 0)
        with pytest.raises(KvmError, match="does not have KVM_MEM_LOG_DIRTY_PAGES"):
            vm.get_dirty_log(slot.slot)
        vm.close()


def test_overlapping_slot_names_eexist_and_both_slots(vm):
    with HostMemory(0x4000) as mem:
        vm.add_memslot(0x100000, 0x2000, mem.addr)
        with pytest.raises(KvmError) as info:
            vm.add_memslot(0x101000, 0x2000, mem.addr + 0x2000)
        assert info.value.errno == errno.EEXIST
        message = str(info.value)
        assert "KVM_SET_USER_MEMORY_REGION" in message and "EEXIST" in message
        assert "slot 1 [0x101000-0x103000)" in message
        assert "overlaps slot 0 [0x100000-0x102000)" in message
        assert set(vm.memslots) == {0}, "a refused slot must not enter the table"
        vm.close()


def test_misaligned_slot_names_einval_and_field(vm):
    with HostMemory(0x2000) as mem:
        with pytest.raises(KvmError) as info:
            vm.add_memslot(0x100800, 0x1000, mem.addr)
        assert info.value.errno == errno.EINVAL
        assert "guest_phys_addr=0x100800 is not 4 KiB aligned" in str(info.value)
        vm.close()


def test_quirk_disable(vm):
    if not vm.slot_zap_all_supported:
        with pytest.raises(KvmCapabilityError, match="SLOT_ZAP_ALL"):
            vm.disable_quirks(KVM_X86_QUIRK_SLOT_ZAP_ALL)
        pytest.skip("quirk not supported: KVM_X86_QUIRK_SLOT_ZAP_ALL (needs v6.12+)")
    vm.disable_quirks(KVM_X86_QUIRK_SLOT_ZAP_ALL)
    # Disabling again is allowed; an unknown bit is refused by the kernel with EINVAL.
    vm.disable_quirks(KVM_X86_QUIRK_SLOT_ZAP_ALL)
    with pytest.raises(KvmError) as info:
        vm.enable_cap(KvmCap.KVM_CAP_DISABLE_QUIRKS2, 1 << 62)
    assert info.value.errno == errno.EINVAL and info.value.ioctl == "KVM_ENABLE_CAP"


def test_stats_deltas_follow_exits(kvm):
    code = asm(mov_al(1), out_al(0x10), out_al(0x10), out_al(0x10), HLT)
    with realmode_vm(kvm, code) as (vm, vcpu, _):
        stats = vcpu.stats()
        before = stats.snapshot()
        for _ in range(3):
            assert isinstance(vcpu.run(), Io)
        assert isinstance(vcpu.run(), Hlt)
        delta = stats.snapshot().delta(before)
        assert delta["halt_exits"] == 1
        assert delta["exits"] >= 4
        if delta["insn_emulation"] >= 5:
            # An instruction-emulating KVM (PVM) completes PIO inside the emulator and
            # never takes the VMX/SVM IO-exit path that counts io_exits.
            assert delta["io_exits"] == 0
        else:
            assert delta["io_exits"] == 3
        assert stats.descriptor("io_exits").type.name == "CUMULATIVE"
        assert "remote_tlb_flush" in vm.stats().snapshot().values
