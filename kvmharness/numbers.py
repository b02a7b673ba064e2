"""Strict number parsing for everything a user types: ASCII decimal only.

Python's ``int()`` and ``float()`` accept more than a person means: ``1_0`` is 10,
fullwidth and Arabic-Indic digits are digits, ``float('nan')`` and ``'inf'`` are
numbers, and surrounding whitespace is dropped.  A typo must be an error, not a
different run.  Each function here raises ``ValueError`` with a message naming
``what`` (the option or parameter); the length is bounded before any conversion, so a
10-million-digit argument costs nothing.

Outside the layer contract (no kvmharness imports): the CLI, the scenarios' parameters
and ``observe.pinning`` all parse numbers the same way.
"""

from __future__ import annotations

import math
import re

_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# More digits than any knob needs (2**64 has 20); refused before int() sees them.
MAX_DIGITS = 30


def parse_int(text: str, what: str) -> int:
    """An ASCII decimal integer (optional sign), else ValueError naming ``what``."""
    if len(text) > MAX_DIGITS + 1:
        raise ValueError(f"{what}: {text[:20]!r}... has more than {MAX_DIGITS} digits")
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"{what}: {text!r} is not a whole number in ASCII digits 0-9")
    return int(text)


def parse_decimal(text: str, what: str) -> float:
    """An ASCII decimal number (``12``, ``1.5``, ``2e3``), finite, else ValueError."""
    if len(text) > 2 * MAX_DIGITS:
        raise ValueError(f"{what}: {text[:20]!r}... is too long for a number")
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{what}: {text!r} is not a decimal number in ASCII digits "
                         "(like 12, 1.5 or 2e3)")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{what}: {text!r} does not fit a float")
    return value
