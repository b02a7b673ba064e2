"""Stopping a vCPU that is inside KVM_RUN, from another thread.

Mechanism (the one QEMU and the selftests use): the stopper sets ``kvm_run.immediate_exit``
and then sends a signal to the vCPU's thread.  A vCPU thread in guest mode is forced out
by the signal and KVM_RUN returns EINTR; a thread that is just about to enter KVM_RUN sees
``immediate_exit`` and returns EINTR without running the guest, so the stop cannot be lost
between the check and the ioctl.  The signal needs a handler (a default action would kill
the process, SIG_IGN would never interrupt): Python's own C-level handler is
async-signal-safe, and the Python callable it schedules on the main thread does nothing.
"""

from __future__ import annotations

import signal
import threading

# A realtime signal: no library or test runner claims it (SIGUSR1/2 and SIGALRM are taken).
KICK_SIGNAL: int = int(signal.SIGRTMIN) + 2

_installed = False
_lock = threading.Lock()


def _ignore_kick(signum: int, frame: object) -> None:
    """Runs later on the main thread; the work was done by interrupting KVM_RUN."""


def install_kick_handler() -> bool:
    """Install the kick signal's handler; returns False if it cannot be installed because
    this is not the main thread and nobody installed it before."""
    global _installed
    with _lock:
        if _installed:
            return True
        current = signal.getsignal(KICK_SIGNAL)
        if current not in (signal.SIG_DFL, None) and current is not signal.SIG_IGN:
            _installed = True  # someone (an earlier import, the embedding program) did it
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        signal.signal(KICK_SIGNAL, _ignore_kick)
        _installed = True
        return True


def kick(thread_ident: int) -> None:
    """Interrupt ``thread_ident`` if it is blocked in a syscall such as KVM_RUN."""
    try:
        signal.pthread_kill(thread_ident, KICK_SIGNAL)
    except ProcessLookupError:
        pass  # the thread already ended
