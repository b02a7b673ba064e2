"""The ``kvmharness`` program's entry point: a signal while it is still starting up
(importing the CLI, which takes a second) ends it with 128 + the signal and one line,
not a KeyboardInterrupt traceback (SIGINT) or a silent kill (SIGTERM, SIGHUP).

Standard library only, and nothing here runs on ``import kvmharness``: a library user
(the pytest plugin) keeps Python's own signal handling.  Once the CLI is loaded its
commands take the signals over (``observe.signals``).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

STARTUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _exit_while_starting(signum: int, frame: FrameType | None) -> None:
    os.write(2, f"kvmharness: {signal.Signals(signum).name} while starting: "
                "nothing was run\n".encode())
    os._exit(128 + signum)  # no interpreter clean-up: nothing has been started


def guard_startup() -> dict[int, object]:
    """Exit on SIGINT/SIGTERM/SIGHUP until ``release``; a signal already ignored (nohup,
    a script's ``cmd &``) stays ignored.  Returns the previous handlers."""
    old: dict[int, object] = {}
    for s in STARTUP_SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            old[s] = signal.signal(s, _exit_while_starting)
    return old


def release(old: dict[int, object]) -> None:
    for s, handler in old.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]


def main() -> int:
    old = guard_startup()
    from kvmharness.cli import main as cli_main

    release(old)
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
