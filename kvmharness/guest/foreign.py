"""Exception stubs the harness puts in guest memory for a foreign guest (one that does not
link the kvmharness runtime, so has no ``kh_exception_stubs``).  guests/ABI.md, "Foreign
guests".

Stub N (16 bytes at ``EXCEPTION_STUBS_GPA + 16 * N``) pushes a 0 where the CPU pushes no
error code, pushes N, and executes ``out %al, $FOREIGN_EXCEPTION_PORT``: ``out`` with an
immediate port changes no register, so the host reads every general register as it was
when the exception was taken (except RSP, which points at the frame: vector, error code,
RIP, CS, RFLAGS, RSP, SS).  The exit counts as an exception report only when the guest's RIP
is inside the stub page, so a foreign guest may use the same port for its own purposes.
"""

from __future__ import annotations

import struct

from kvmharness.guest.errors import GuestCrash, GuestError
from kvmharness.guest.layout import EXCEPTION_STUBS_GPA
from kvmharness.guest.ucall import ERROR_CODE_VECTORS, EXCEPTION_REGS, GuestException, ReadFn

FOREIGN_EXCEPTION_PORT = 0xE5
STUB_SIZE = 16
STUB_COUNT = 256
STUBS_END = EXCEPTION_STUBS_GPA + STUB_SIZE * STUB_COUNT

_PUSH_0 = b"\x6a\x00"            # push $0 (dummy error code)
_PUSH_IMM32 = b"\x68"            # push $imm32 (the vector; imm8 would sign-extend >= 128)
_OUT_AL_IMM8 = b"\xe6"           # out %al, $imm8
_HLT_LOOP = b"\xf4\xeb\xfd"      # 1: hlt; jmp 1b (never reached: the report is terminal)
_INT3 = b"\xcc"

_FRAME = struct.Struct("<7Q")    # vector, error code, rip, cs, rflags, rsp, ss


def stub_addresses() -> list[int]:
    """The IDT's 256 handler addresses."""
    return [EXCEPTION_STUBS_GPA + STUB_SIZE * vector for vector in range(STUB_COUNT)]


def stubs_bytes() -> bytes:
    """The stub page's contents (written at ``EXCEPTION_STUBS_GPA``)."""
    out = bytearray()
    for vector in range(STUB_COUNT):
        stub = (b"" if vector in ERROR_CODE_VECTORS else _PUSH_0) + _PUSH_IMM32 \
            + struct.pack("<I", vector) + _OUT_AL_IMM8 + bytes([FOREIGN_EXCEPTION_PORT]) \
            + _HLT_LOOP
        out += stub.ljust(STUB_SIZE, _INT3)
    return bytes(out)


def is_stub_report(port: int, rip: int) -> bool:
    """True for the exit of a stub's ``out``.  KVM may show RIP at the ``out`` or just after
    it (fast PIO skips the instruction only when the exit completes; the emulator before
    it), both inside the stub, so the vector is ``(rip - base) // STUB_SIZE`` either way."""
    return port == FOREIGN_EXCEPTION_PORT and EXCEPTION_STUBS_GPA <= rip < STUBS_END


def decode_report(vcpu: int, regs: dict[str, int], cr2: int, read: ReadFn) -> GuestException:
    """The exception a stub reported, from the vCPU's registers and the frame at RSP."""
    vector = (regs["rip"] - EXCEPTION_STUBS_GPA) // STUB_SIZE
    try:
        pushed_vector, error_code, rip, cs, rflags, rsp, ss = _FRAME.unpack(
            read(regs["rsp"], _FRAME.size))
    except (GuestError, struct.error) as exc:
        raise GuestCrash(vcpu, f"exception vector {vector}, but its frame at RSP "
                               f"{regs['rsp']:#x} is not readable ({exc})", regs) from exc
    if pushed_vector != vector:
        raise GuestCrash(vcpu, f"exception stub {vector} found vector {pushed_vector} on its "
                               f"stack at RSP {regs['rsp']:#x}: the guest jumped into the "
                               "harness's stub page", regs)
    gprs = {name: regs[name] for name in EXCEPTION_REGS}
    return GuestException(vector, error_code, rip, cs, rflags, rsp, ss, cr2, gprs)
