"""The kernel's _IOC encoding (include/uapi/asm-generic/ioctl.h), so that ioctl numbers are
derived from direction and struct size exactly as <linux/kvm.h> derives them."""

from __future__ import annotations

import ctypes

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


class IoctlNumber(int):
    """An ioctl request number that remembers the kernel's name for it (for error messages)."""

    name: str

    def __new__(cls, name: str, value: int) -> IoctlNumber:
        self = super().__new__(cls, value)
        self.name = name
        return self

    def __repr__(self) -> str:
        return f"{self.name}({int(self):#x})"

    # Pickling and copy must keep the name.
    def __getnewargs__(self) -> tuple[str, int]:  # type: ignore[override]
        return (self.name, int(self))


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _size(argtype: type | int) -> int:
    return argtype if isinstance(argtype, int) else ctypes.sizeof(argtype)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, argtype: type | int) -> int:
    return _IOC(_IOC_READ, type_, nr, _size(argtype))


def _IOW(type_: int, nr: int, argtype: type | int) -> int:
    return _IOC(_IOC_WRITE, type_, nr, _size(argtype))


def _IOWR(type_: int, nr: int, argtype: type | int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(argtype))


def decode(request: int) -> tuple[int, int, int, int]:
    """Split a request into (direction, type, nr, size) — the inverse of _IOC."""
    return (
        (request >> _IOC_DIRSHIFT) & 0x3,
        (request >> _IOC_TYPESHIFT) & 0xFF,
        (request >> _IOC_NRSHIFT) & 0xFF,
        (request >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1),
    )
