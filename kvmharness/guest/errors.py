"""Errors about guests: building and loading their images, and what a running guest reports.

Everything derives from ``GuestError`` so a caller can catch "the guest went wrong" apart
from ``KvmError`` ("the kernel refused an ioctl").  Messages are written to be read in a
pytest failure without further context, e.g. ``hammer.c:57: pass < npasses (7 vs 5)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: ucall.py imports this module
    from kvmharness.guest.ucall import GuestException


class GuestError(Exception):
    """Base class of every guest-side failure.

    When several vCPUs fail in one run, the machine raises the first and records the others
    with ``add_peer_failure``; ``str()`` then names every failing vCPU, one per line, since
    a result file keeps only the message."""

    peers: tuple[tuple[int, BaseException], ...] = ()

    def add_peer_failure(self, vcpu: int, error: BaseException) -> None:
        """Record that vCPU ``vcpu`` failed too, with ``error``."""
        self.peers = self.peers + ((vcpu, error),)

    def _text(self) -> str:
        return super().__str__()

    def __str__(self) -> str:
        return self._text() + "".join(f"\nalso vCPU {vcpu}: {error}" for vcpu, error in self.peers)

    def _state(self) -> dict[str, object]:
        # Exceptions cross process boundaries (multiprocessing) by pickling; keep the peers.
        return {"peers": self.peers} if self.peers else {}


class GuestBuildError(GuestError):
    """The guest sources could not be compiled (toolchain missing, make failed)."""


class GuestImageError(GuestError):
    """A guest ELF is malformed or does not fit the machine; the message names the problem."""


class UcallError(GuestError):
    """A ucall struct in guest memory does not follow guests/ABI.md (bad cmd, nargs, pointer)."""


def format_assert_value(value: int) -> str:
    """Show an assert operand the way a reader expects it.

    Counters and sizes print in decimal; values that look like small negative numbers
    (two's complement) print signed; anything larger than 32 bits is most likely an
    address or a mask, so it prints in hex.
    """
    value &= (1 << 64) - 1
    if value < 1 << 32:
        return str(value)
    if value >= (1 << 64) - (1 << 31):
        return str(value - (1 << 64))
    return hex(value)


class GuestAssertionError(GuestError):
    """A GUEST_ASSERT* failed.  ``str()`` is ``file:line: expr (left vs right): msg``;
    the ``(left vs right)`` part only for the two-operand asserts, ``: msg`` only when the
    guest gave a message."""

    def __init__(self, file: str, line: int, expr: str, values: Sequence[int] = (),
                 msg: str = "", vcpu: int | None = None) -> None:
        self.file = file
        self.line = line
        self.expr = expr
        self.values = tuple(values)
        self.msg = msg
        self.vcpu = vcpu
        super().__init__(self._format())

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only state would be lost by Exception's default pickling (multiprocessing).
        return (type(self), (self.file, self.line, self.expr, self.values, self.msg, self.vcpu),
                self._state())

    def _format(self) -> str:
        text = f"{self.file}:{self.line}: {self.expr}"
        if len(self.values) == 2:
            left, right = (format_assert_value(v) for v in self.values)
            text += f" ({left} vs {right})"
        if self.msg:
            text += f": {self.msg}"
        return text

    def _text(self) -> str:
        return self._format()


class GuestExceptionError(GuestError):
    """The guest took a CPU exception (its IDT stub reported it): the message has the vector
    name, RIP, error code, CR2 and a register dump."""

    def __init__(self, exception: GuestException, vcpu: int | None = None) -> None:
        self.exception = exception
        self.vcpu = vcpu
        super().__init__(exception.describe(vcpu))

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.exception, self.vcpu), self._state())

    @property
    def vector(self) -> int:
        """The exception vector (14 for #PF)."""
        return self.exception.vector

    @property
    def rip(self) -> int:
        """Guest RIP of the faulting instruction (as pushed by the CPU)."""
        return self.exception.rip


class GuestTimeout(GuestError):
    """A vCPU did not finish before its deadline (watchdog).  ``rip`` is where it was when the
    watchdog looked, if known; ``deadline`` is the allowed time in seconds."""

    def __init__(self, vcpu: int, rip: int | None, deadline: float, detail: str = "") -> None:
        self.vcpu = vcpu
        self.rip = rip
        self.deadline = deadline
        self.detail = detail
        where = f" (RIP {rip:#x})" if rip is not None else ""
        text = f"vCPU {vcpu} did not finish within {deadline:g} s{where}"
        super().__init__(f"{text}: {detail}" if detail else text)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.vcpu, self.rip, self.deadline, self.detail), self._state())


def format_regs(regs: Mapping[str, int], per_line: int = 4) -> str:
    """Register dump, ``per_line`` registers a line, in the order given."""
    items = [f"{name}={value:#018x}" for name, value in regs.items()]
    return "\n".join("  " + " ".join(items[i:i + per_line]) for i in range(0, len(items), per_line))


class GuestCrash(GuestError):
    """The vCPU stopped in a way the guest could not report: shutdown (triple fault), failed
    VM entry, KVM internal error, an unexpected exit.  ``reason`` is a short name
    (``"shutdown"``), ``detail`` the exit's specifics, ``regs`` the vCPU registers and
    ``control`` the control registers (cr0, cr2, cr3, cr4, efer) if they could be read.
    CR2 is the address of the last page fault, often the cause of a triple fault."""

    def __init__(self, vcpu: int, reason: str, regs: Mapping[str, int] | None = None,
                 detail: str = "", control: Mapping[str, int] | None = None) -> None:
        self.vcpu = vcpu
        self.reason = reason
        self.regs = dict(regs) if regs else {}
        self.detail = detail
        self.control = dict(control) if control else {}
        text = f"vCPU {vcpu} crashed: {reason}"
        if detail:
            text += f": {detail}"
        if self.regs:
            text += "\n" + format_regs(self.regs)
        if self.control:
            text += "\n" + format_regs(self.control, per_line=5)
        super().__init__(text)

    @property
    def cr2(self) -> int | None:
        """CR2 when the vCPU stopped (the last page-fault address), if it could be read."""
        return self.control.get("cr2")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.vcpu, self.reason, self.regs, self.detail, self.control),
                self._state())
