"""What a scenario mirrors from its guest's C header, declared once so a test can compile a
probe against guests/*.h and compare (tests/unit/test_guest_abi.py)."""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Macro = tuple[Callable[..., int], Sequence[tuple[int, ...]]]


@dataclasses.dataclass(frozen=True)
class GuestAbi:
    """``header`` (under guests/) and the Python mirrors of what it defines:
    ``constants`` (#define or enum name -> value), ``macros`` (function-like macro -> the
    Python function computing it and argument tuples to compare it on), ``structs``
    (struct tag -> ctypes mirror: size and every field's offset) and ``symbols`` (extern
    variable -> the ctypes type the host reads it as: its size)."""

    header: str
    constants: Mapping[str, int] = dataclasses.field(default_factory=dict)
    macros: Mapping[str, Macro] = dataclasses.field(default_factory=dict)
    structs: Mapping[str, type[ctypes.Structure]] = dataclasses.field(default_factory=dict)
    symbols: Mapping[str, Any] = dataclasses.field(default_factory=dict)
