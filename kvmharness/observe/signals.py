"""Ending a run on a signal, and holding signals off around steps that must not be cut.

``interrupts_raise()`` makes SIGTERM and SIGHUP end a run the way Ctrl-C does: they raise
``Interrupted`` (a KeyboardInterrupt), so the same cleanup runs, and ``last_signal()``
tells the caller which signal it was (exit status 128 + signal).

``signals_held()`` defers SIGINT/SIGTERM/SIGHUP for the duration of a block: creating or
removing kernel state (a tracefs instance) or writing the final result file.  A signal
that arrives meanwhile is delivered when the block ends, so it is never lost either.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ENDING = (signal.SIGTERM, signal.SIGHUP)

_last: int | None = None
_held = threading.local()  # .depth: this thread's nesting of signals_held


class Interrupted(KeyboardInterrupt):
    """A run ended by SIGTERM or SIGHUP; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signal.Signals(signum).name}")
        self.signum = signum


def last_signal() -> int | None:
    """The most recent of SIGINT/SIGTERM/SIGHUP that ``interrupts_raise`` saw, if any."""
    return _last


def exit_status(default: int = 128 + signal.SIGINT) -> int:
    """128 + the signal that ended the run (the shell's convention), else ``default``."""
    return 128 + _last if _last is not None else default


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    global _last
    _last = signum
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts_raise(*, ignore_once_interrupted: bool = False) -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Interrupted``, SIGINT KeyboardInterrupt as usual; a
    signal ignored when we start stays ignored (a script's ``cmd &`` ignores SIGINT,
    ``nohup`` SIGHUP: the user asked for that).  Main thread only; elsewhere (signal
    handlers cannot be set there) this does nothing.

    ``ignore_once_interrupted``: for a program that is ending because of a signal, leave
    the signals ignored rather than at their defaults, so a second one while it prints
    its summary cannot turn exit status 128 + signal into a kill."""
    global _last
    _last = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict[signal.Signals, Any] = {}
    for s in HELD:
        if signal.getsignal(s) is signal.SIG_IGN:
            continue
        old[s] = signal.signal(s, _raise_interrupt)
    try:
        yield
    finally:
        ending = ignore_once_interrupted and _last is not None
        for s, h in old.items():
            signal.signal(s, signal.SIG_IGN if ending else
                          h if h is not None else signal.SIG_DFL)


def ignore_from_now() -> None:
    """Ignore SIGINT, SIGTERM and SIGHUP from now on: for a program about to exit, whose
    work is done (main thread only; elsewhere nothing)."""
    if threading.current_thread() is threading.main_thread():
        for s in HELD:
            signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Defer SIGINT, SIGTERM and SIGHUP until the block ends, then deliver them.

    Blocking them (pthread_sigmask) in this thread is not enough in a threaded process: the
    kernel hands a process signal to any thread that does not block it, and CPython then
    runs the Python handler in the main thread at its next bytecode.  So in the main thread
    the handlers are also swapped for one that only records the signal.  Nested blocks
    share the outermost one."""
    depth = getattr(_held, "depth", 0)
    if depth:
        yield
        return
    main = threading.current_thread() is threading.main_thread()
    pending: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    _held.depth = 1
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    old: dict[signal.Signals, Any] = {}
    try:
        if main:
            for s in HELD:
                current = signal.getsignal(s)
                if current in (signal.SIG_IGN, signal.SIG_DFL, None):
                    continue  # nothing of ours runs on it (SIG_DFL: the block above holds it)
                old[s] = signal.signal(s, record)
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _held.depth = 0
        # Signals that arrived while blocked are delivered here, to the restored handlers.
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for n in dict.fromkeys(pending):
            handler = old.get(signal.Signals(n))
            if callable(handler):
                handler(n, None)
