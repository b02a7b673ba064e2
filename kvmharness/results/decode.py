"""JSON text to data, one run at a time.

``json.loads`` of a result file holds the whole parsed document (about 4x the text) until
validation has copied it into typed records: two 180 MB files of 20k runs each needed
over 1 GiB.  Here the top-level object is read field by field, and each element of its
``runs`` list is handed to a converter as soon as it is parsed, so at most one raw run is
alive beside the text and the records already built.

The result equals ``json.loads``'s (the standard decoder parses every value; this module
only walks the top-level object and the runs list), and so do its errors: the same
``JSONDecodeError`` messages at the same positions.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's four, as the standard decoder skips
_DECODER = json.JSONDecoder()
# Turns one raw element and its position into what the list keeps.
Converter = Callable[[Any, int], Any]


def _skip(text: str, i: int) -> int:
    match = _WHITESPACE.match(text, i)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _value(text: str, i: int) -> tuple[Any, int]:
    return _DECODER.raw_decode(text, i)


def _elements(text: str, i: int, convert: Converter) -> tuple[list[Any], int]:
    """The array starting at ``text[i] == '['``, each element passed through
    ``convert(element, position)``; returns the converted list and the index after ``]``."""
    out: list[Any] = []
    i = _skip(text, i + 1)
    if text.startswith("]", i):
        return out, i + 1
    while True:
        element, i = _value(text, i)
        out.append(convert(element, len(out)))
        del element  # the raw run goes now, not when the next one replaces it
        i = _skip(text, i)
        if text.startswith(",", i):
            i = _skip(text, i + 1)
        elif text.startswith("]", i):
            return out, i + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)


def loads_streaming(text: str, key: str,
                    converter: Callable[[dict[str, Any]], Converter | None]) -> Any:
    """``json.loads(text)``, except that when the document is an object whose ``key`` field
    is an array, each element goes through ``convert(element, position)`` as it is parsed.
    ``convert = converter(fields read so far)`` is chosen when ``key`` is reached (a
    result file's format is checked before its runs are); ``None`` keeps the raw
    elements.  Invalid JSON raises ``json.loads``'s own error for it."""
    i = _skip(text, 0)
    if not text.startswith("{", i):
        return json.loads(text)  # not an object: nothing to stream
    try:
        return _object(text, i, key, converter)
    except json.JSONDecodeError:
        # The standard decoder words some errors differently (trailing commas, by
        # version): let it say what is wrong, and where.
        json.loads(text)
        raise


def _object(text: str, i: int, key: str,
            converter: Callable[[dict[str, Any]], Converter | None]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    i = _skip(text, i + 1)
    if text.startswith("}", i):
        i += 1
    else:
        while True:
            if not text.startswith('"', i):
                raise json.JSONDecodeError(
                    "Expecting property name enclosed in double quotes", text, i)
            name, i = _value(text, i)  # a string: it starts with a quote
            i = _skip(text, i)
            if not text.startswith(":", i):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
            i = _skip(text, i + 1)
            convert = converter(document) if name == key and text.startswith("[", i) else None
            if convert is not None:
                document[name], i = _elements(text, i, convert)
            else:
                document[name], i = _value(text, i)
            i = _skip(text, i)
            if text.startswith(",", i):
                i = _skip(text, i + 1)
            elif text.startswith("}", i):
                i += 1
                break
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
    i = _skip(text, i)
    if i != len(text):
        raise json.JSONDecodeError("Extra data", text, i)
    return document


@contextmanager
def collection_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a bulk load, and what was loaded out of its
    sight afterwards (``gc.freeze``).  Loading builds millions of containers that all stay
    alive, and each full collection walks all of them again: a third of the time to load
    40k runs, and as much again while the report is built.  Records hold no reference
    cycles, so there is nothing for the collector to find in them; they are still freed
    as soon as they are no longer used."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
