"""The guest -> host call protocol (guests/ABI.md, "Calls (ucall) over PIO").

The guest fills a ``struct kh_ucall`` and does ``outl %eax, $KH_UCALL_PORT`` with eax = the
struct's GPA.  On that KVM_EXIT_IO the machine layer calls ``decode_ucall(read, gpa)`` and
gets one of ``Sync``, ``Print``, ``Assert``, ``Done`` or ``GuestException``.  ``Assert`` and
``GuestException`` turn into exceptions with ``.error(vcpu)``.

Keep the layout here, in guests/ABI.md and in guests/runtime/kh.h identical.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import struct
from collections.abc import Callable, Mapping

from kvmharness.guest.errors import (
    GuestAssertionError,
    GuestError,
    GuestExceptionError,
    UcallError,
    format_regs,
)

KH_UCALL_PORT = 0x6000
KH_UCALL_MAX_ARGS = 24
KH_UCALL_MSG_SIZE = 256
KH_UCALL_SIZE = 480
KH_MAX_VCPUS = 64

# cmd, line, file, expr, nargs, pad, args[24], msg[256]
_UCALL = struct.Struct(f"<IIQQII{KH_UCALL_MAX_ARGS}Q{KH_UCALL_MSG_SIZE}s")
assert _UCALL.size == KH_UCALL_SIZE

# Longest file/expr string we follow: a corrupt pointer must not make us read all of RAM.
_MAX_STRING = 4096

ReadFn = Callable[[int, int], bytes]
"""``read(gpa, size) -> bytes``: guest memory reader supplied by the machine layer."""


class UcallCmd(enum.IntEnum):
    """``kh_ucall.cmd`` values."""

    SYNC = 1
    PRINT = 2
    ASSERT = 3
    DONE = 4
    EXCEPTION = 5


# Order of the GPRs after the 8 fixed exception args (ABI.md).
EXCEPTION_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
                  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_EXCEPTION_NARGS = 8 + len(EXCEPTION_REGS)

VECTOR_NAMES: Mapping[int, str] = {
    0: "#DE divide error",
    1: "#DB debug",
    2: "NMI",
    3: "#BP breakpoint",
    4: "#OF overflow",
    5: "#BR bound range exceeded",
    6: "#UD invalid opcode",
    7: "#NM device not available",
    8: "#DF double fault",
    9: "coprocessor segment overrun",
    10: "#TS invalid TSS",
    11: "#NP segment not present",
    12: "#SS stack-segment fault",
    13: "#GP general protection",
    14: "#PF page fault",
    16: "#MF x87 floating-point error",
    17: "#AC alignment check",
    18: "#MC machine check",
    19: "#XM SIMD floating-point exception",
    20: "#VE virtualization exception",
    21: "#CP control protection",
    28: "#HV hypervisor injection",
    29: "#VC VMM communication",
    30: "#SX security exception",
}

# Vectors for which the CPU pushes an error code (the stubs push 0 for the others).
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
PF_VECTOR = 14


def vector_name(vector: int) -> str:
    """``"#PF page fault"`` for 14; reserved and external vectors get ``"vector N"``."""
    return VECTOR_NAMES.get(vector, f"vector {vector}")


def describe_pf_error_code(code: int) -> str:
    """Decode a #PF error code into words, e.g. ``"not-present write, supervisor"``."""
    words = ["protection-violation" if code & 1 else "not-present",
             "instruction fetch" if code & 0x10 else ("write" if code & 2 else "read")]
    text = " ".join(words) + (", user" if code & 4 else ", supervisor")
    extras = [name for bit, name in ((8, "reserved bit set"), (0x20, "protection key"),
                                     (0x40, "shadow stack"), (1 << 15, "SGX"))
              if code & bit]
    return ", ".join([text, *extras])


@dataclasses.dataclass(frozen=True)
class Sync:
    """GUEST_SYNC(values...): the guest waits for the host to resume it."""

    values: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Print:
    """GUEST_PRINTF: already formatted by the guest."""

    text: str


@dataclasses.dataclass(frozen=True)
class Assert:
    """A failed GUEST_ASSERT*; terminal for the vCPU."""

    file: str
    line: int
    expr: str
    values: tuple[int, ...]
    msg: str

    def error(self, vcpu: int | None = None) -> GuestAssertionError:
        """The exception to raise for this report."""
        return GuestAssertionError(self.file, self.line, self.expr, self.values, self.msg, vcpu)


@dataclasses.dataclass(frozen=True)
class Done:
    """guest_main returned; terminal for the vCPU."""


@dataclasses.dataclass(frozen=True)
class GuestException:
    """The guest took a CPU exception; its IDT stub reported the frame.  Terminal."""

    vector: int
    error_code: int
    rip: int
    cs: int
    rflags: int
    rsp: int
    ss: int
    cr2: int
    regs: dict[str, int] = dataclasses.field(hash=False)

    @property
    def name(self) -> str:
        """``"#PF page fault"`` etc."""
        return vector_name(self.vector)

    def describe(self, vcpu: int | None = None) -> str:
        """Multi-line message: what, where, error code (decoded for #PF), registers.  CR2
        only for #PF: for any other vector it is a stale value that would mislead."""
        who = f" on vCPU {vcpu}" if vcpu is not None else ""
        head = f"guest exception {self.name}{who} at RIP {self.rip:#x}"
        if self.vector in ERROR_CODE_VECTORS:
            head += f": error code {self.error_code:#x}"
        frame = {"rip": self.rip, "rsp": self.rsp, "rflags": self.rflags,
                 "cs": self.cs, "ss": self.ss}
        if self.vector == PF_VECTOR:
            head += f" ({describe_pf_error_code(self.error_code)}), CR2 {self.cr2:#x}"
            frame["cr2"] = self.cr2
        return "\n".join([head, format_regs(self.regs), format_regs(frame)])

    def error(self, vcpu: int | None = None) -> GuestExceptionError:
        """The exception to raise for this report."""
        return GuestExceptionError(self, vcpu)


Ucall = Sync | Print | Assert | Done | GuestException


def _read(read: ReadFn, gpa: int, size: int, what: str) -> bytes:
    # The reader is the machine layer's; a GPA outside RAM surfaces as one of these.
    try:
        data = read(gpa, size)
    except (GuestError, ValueError, IndexError, OSError) as exc:
        raise UcallError(f"ucall {what} at GPA {gpa:#x} is not readable: {exc}") from exc
    if len(data) != size:
        raise UcallError(f"ucall {what} at GPA {gpa:#x}: read {len(data)} of {size} bytes")
    return bytes(data)


def read_cstring(read: ReadFn, gpa: int, what: str, limit: int = _MAX_STRING) -> str:
    """Read a NUL-terminated string from guest memory, a page-bounded chunk at a time so we
    never ask for bytes past the page (and maybe past RAM) that holds the terminator."""
    if gpa == 0:
        raise UcallError(f"ucall {what} pointer is NULL")
    out = bytearray()
    while len(out) < limit:
        addr = gpa + len(out)
        chunk = _read(read, addr, min(4096 - addr % 4096, limit - len(out)), what)
        nul = chunk.find(b"\0")
        if nul >= 0:
            out += chunk[:nul]
            return out.decode("utf-8", errors="replace")
        out += chunk
    raise UcallError(f"ucall {what} at GPA {gpa:#x} is not NUL-terminated within {limit} bytes")


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def decode_ucall(read: ReadFn, gpa: int) -> Ucall:
    """Decode the ucall the guest placed at ``gpa`` (eax of its ``outl`` to KH_UCALL_PORT).

    Raises ``UcallError`` when the struct breaks guests/ABI.md.  ``read(gpa, size)`` must
    return exactly ``size`` bytes of guest memory.
    """
    raw = _read(read, gpa, KH_UCALL_SIZE, "struct")
    cmd, line, file_gpa, expr_gpa, nargs, _pad, *rest = _UCALL.unpack(raw)
    args: list[int] = rest[:KH_UCALL_MAX_ARGS]
    msg: bytes = rest[KH_UCALL_MAX_ARGS]
    if nargs > KH_UCALL_MAX_ARGS:
        raise UcallError(f"ucall at GPA {gpa:#x}: nargs {nargs} > {KH_UCALL_MAX_ARGS}")
    values = tuple(args[:nargs])

    if cmd == UcallCmd.SYNC:
        return Sync(values)
    if cmd == UcallCmd.PRINT:
        return Print(_cstr(msg))
    if cmd == UcallCmd.DONE:
        return Done()
    if cmd == UcallCmd.ASSERT:
        file = os.path.basename(read_cstring(read, file_gpa, "ASSERT file"))
        expr = read_cstring(read, expr_gpa, "ASSERT expr")
        return Assert(file, line, expr, values, _cstr(msg))
    if cmd == UcallCmd.EXCEPTION:
        if nargs != _EXCEPTION_NARGS:
            raise UcallError(f"ucall EXCEPTION at GPA {gpa:#x}: nargs {nargs}, "
                             f"expected {_EXCEPTION_NARGS}")
        vector, error_code, rip, cs, rflags, rsp, ss, cr2 = values[:8]
        regs = dict(zip(EXCEPTION_REGS, values[8:]))
        return GuestException(vector, error_code, rip, cs, rflags, rsp, ss, cr2, regs)
    raise UcallError(f"ucall at GPA {gpa:#x}: unknown cmd {cmd}")


def encode_ucall(cmd: int, args: tuple[int, ...] = (), *, line: int = 0, file_gpa: int = 0,
                 expr_gpa: int = 0, msg: bytes = b"") -> bytes:
    """Build a ``struct kh_ucall`` image (what the guest writes): for tests and fakes."""
    if len(args) > KH_UCALL_MAX_ARGS:
        raise ValueError(f"{len(args)} args > {KH_UCALL_MAX_ARGS}")
    if len(msg) >= KH_UCALL_MSG_SIZE:
        raise ValueError(f"msg of {len(msg)} bytes does not fit {KH_UCALL_MSG_SIZE} with its NUL")
    padded = list(args) + [0] * (KH_UCALL_MAX_ARGS - len(args))
    return _UCALL.pack(cmd, line, file_gpa, expr_gpa, len(args), 0, *padded, msg)
