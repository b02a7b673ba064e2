"""The process group a boot runs in: nothing of it may outlive the harness.

vng and QEMU start in a session (and process group) of their own.  On a timeout, Ctrl-C,
SIGTERM or SIGHUP the whole group is sent SIGTERM (vng removes its temporary files), then
SIGKILL, and the caller waits until no live process of the group is left; a second Ctrl-C
meanwhile is held off, so it cannot cut that cleanup short and leave QEMU running.

Standard library only (tools/vng-run runs this under a bare /usr/bin/python3).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator


class BootInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM / SIGHUP during a boot; QEMU has already been killed.  ``signum``
    says which (the caller exits with 128 + it)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


def group_members(pgid: int) -> list[int]:
    """Live PIDs whose process group is ``pgid``.  Zombies are left out: they are dead
    already and only wait for init to reap them (which takes a second or two here)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = 5.0,
               settle_s: float = 10.0) -> list[int]:
    """SIGTERM the group (vng cleans up), then SIGKILL it, and wait until it is empty.
    Returns the PIDs still there afterwards (should be none)."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    return reap_group(proc, settle_s)


def reap_group(proc: subprocess.Popen[bytes], settle_s: float = 10.0) -> list[int]:
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(settle_s)
    deadline = time.monotonic() + settle_s
    left = group_members(pgid)
    while left and time.monotonic() < deadline:
        # Orphans are reparented and reaped by init; give it a moment.
        time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        left = group_members(pgid)
    return left


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP interrupt a boot like Ctrl-C, so the cleanup runs for them too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise BootInterrupted(f"signal {signal.Signals(signum).name}", signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """While QEMU is being killed, a second Ctrl-C must not cut the cleanup short (and
    leave QEMU running): hold SIGINT/SIGTERM/SIGHUP off until it is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN)
           for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
