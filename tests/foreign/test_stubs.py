"""The harness's exception stubs for foreign guests (kvmharness/guest/foreign.py): their
bytes, which exits count as a report, and decoding the frame.  No /dev/kvm needed."""

from __future__ import annotations

import struct

import pytest

from kvmharness.guest import foreign
from kvmharness.guest.errors import GuestCrash
from kvmharness.guest.layout import (
    EXCEPTION_STUBS_GPA,
    IDT_GPA,
    STACKS_GPA,
    TSS_GPA,
    LayoutError,
)
from kvmharness.guest.ucall import ERROR_CODE_VECTORS, EXCEPTION_REGS

PORT = foreign.FOREIGN_EXCEPTION_PORT


def test_stub_page_sits_in_free_harness_memory() -> None:
    assert TSS_GPA < EXCEPTION_STUBS_GPA and foreign.STUBS_END <= STACKS_GPA
    assert IDT_GPA + 256 * 16 <= EXCEPTION_STUBS_GPA
    assert foreign.stub_addresses() == [EXCEPTION_STUBS_GPA + 16 * v for v in range(256)]


@pytest.mark.parametrize("vector", range(256))
def test_each_stub_pushes_the_frame_the_cpu_does_not(vector: int) -> None:
    stub = foreign.stubs_bytes()[16 * vector:16 * (vector + 1)]
    code = stub if vector in ERROR_CODE_VECTORS else stub[2:]
    if vector not in ERROR_CODE_VECTORS:
        assert stub[:2] == b"\x6a\x00"  # push $0: a dummy error code
    assert code[:5] == b"\x68" + struct.pack("<I", vector)  # push $vector (imm32)
    assert code[5:7] == bytes([0xE6, PORT])  # out %al, $port: changes no register
    assert code[7:10] == b"\xf4\xeb\xfd"  # hlt; jmp back (never reached)


def test_only_the_stub_page_counts_as_a_report() -> None:
    out_rip = EXCEPTION_STUBS_GPA + 16 * 13 + 5  # #GP stub: at its out (fast PIO) ...
    assert foreign.is_stub_report(PORT, out_rip)
    assert foreign.is_stub_report(PORT, out_rip + 2)  # ... or just after it (emulator)
    assert not foreign.is_stub_report(PORT, 0x401000)  # the guest's own out to the port
    assert not foreign.is_stub_report(PORT + 1, out_rip)
    assert not foreign.is_stub_report(PORT, foreign.STUBS_END)


def _regs(rip: int, rsp: int) -> dict[str, int]:
    regs = {name: 0x1000 + i for i, name in enumerate(EXCEPTION_REGS)}
    regs.update(rip=rip, rsp=rsp, rflags=0x2)
    return regs


def test_report_decodes_vector_frame_and_registers() -> None:
    rsp = 0x17F00
    frame = struct.pack("<7Q", 14, 2, 0x401234, 8, 0x10046, 0x17FF0, 0x10)
    memory = {rsp: frame}
    regs = _regs(EXCEPTION_STUBS_GPA + 16 * 14 + 7, rsp)
    exc = foreign.decode_report(0, regs, 0xDEAD000, lambda gpa, size: memory[gpa][:size])
    assert (exc.vector, exc.error_code, exc.rip, exc.rsp, exc.cr2) == \
        (14, 2, 0x401234, 0x17FF0, 0xDEAD000)
    assert exc.regs["rax"] == 0x1000 and exc.regs["r15"] == 0x1000 + 14
    assert "CR2 0xdead000" in str(exc.error(0))


def test_report_with_a_foreign_frame_or_no_frame_is_a_crash() -> None:
    rsp = 0x17F00
    regs = _regs(EXCEPTION_STUBS_GPA + 16 * 13 + 7, rsp)
    wrong = struct.pack("<7Q", 6, 0, 0x401234, 8, 0x2, 0x17FF0, 0x10)
    with pytest.raises(GuestCrash, match="stub 13 found vector 6 on its stack"):
        foreign.decode_report(1, regs, 0, lambda gpa, size: wrong)

    def unreadable(gpa: int, size: int) -> bytes:
        raise LayoutError(f"GPA {gpa:#x} is not inside one memory region")

    with pytest.raises(GuestCrash, match=r"vector 13, but its frame at RSP 0x17f00 is not "
                                         r"readable") as info:
        foreign.decode_report(1, regs, 0, unreadable)
    assert info.value.vcpu == 1 and info.value.regs["rip"] == regs["rip"]
