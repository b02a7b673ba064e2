"""The vCPUs of a Machine on host threads: start, wait (with the watchdog), stop, pinning,
and the time each vCPU really began and finished, stamped on its own thread.

Each vCPU runs ``KVM_RUN`` in a loop on its own thread and hands every exit to a dispatch
function (guest/exit_dispatch.py) that says whether the guest goes on, has finished, or
failed.  ``wait()`` polls, so it returns up to POLL_S after the last vCPU finished: the
moments a measurement needs are ``entered_ns`` (just before the first KVM_RUN) and
``finished_ns`` (just after the KVM_RUN whose exit ended the vCPU), read with
``time.perf_counter_ns`` by the vCPU's own thread, never when a poller notices."""

from __future__ import annotations

import dataclasses
import enum
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence

from kvmharness.guest.errors import GuestError
from kvmharness.kvm import Vcpu
from kvmharness.kvm.exits import Exit

DEFAULT_WATCHDOG_S = 30.0
# After one vCPU fails, how long its peers may run on before they are stopped: long enough
# for a peer that faulted at the same moment to deliver its own report (every faulting vCPU
# is named), short enough that a peer spinning on a barrier is not waited for long.
PEER_REPORT_GRACE_S = 0.5
# How often wait() looks at the vCPUs (and the watchdog).  It bounds how late wait()
# returns, never a measured time: see ``entered_ns``/``finished_ns``.
POLL_S = 0.02


class VcpuState(enum.Enum):
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclasses.dataclass
class VcpuRunner:
    index: int
    vcpu: Vcpu
    thread: threading.Thread | None = None
    # Set by the vCPU thread as its very last act.  Used instead of Thread.is_alive():
    # CPython 3.11's Thread.join() interrupted by Ctrl-C marks a still-running thread as
    # stopped, and unmapping kvm_run under a running vCPU thread would crash the process.
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)
    state: VcpuState = VcpuState.READY
    error: BaseException | None = None
    last_activity: float = 0.0
    timed_out: str = ""  # why the host stopped it: the watchdog or the wait's deadline
    timeout_limit: float = 0.0
    in_guest: bool = False  # inside KVM_RUN, as opposed to in a host handler
    stack_top: int = 0
    arg: int = 0
    cpu: int | None = None  # host CPU its thread is pinned to
    # perf_counter_ns on this vCPU's thread: just before its first KVM_RUN of this start(),
    # and just after the KVM_RUN whose exit ended it (DONE, HLT-as-done, stopped).  0: not yet.
    entered_ns: int = 0
    finished_ns: int = 0

    @property
    def running(self) -> bool:
        return self.thread is not None and not self.finished.is_set()


# One exit in, None (enter the guest again) or the vCPU's final state out; raises its failure.
Dispatch = Callable[[VcpuRunner, Exit], "VcpuState | None"]


def checked_cpus(vcpu_cpus: Sequence[int] | None) -> tuple[int, ...]:
    cpus = tuple(vcpu_cpus or ())
    ncpu = os.cpu_count() or 1
    for cpu in cpus:
        if not isinstance(cpu, int) or not 0 <= cpu < ncpu:
            raise ValueError(f"vcpu_cpus: CPU {cpu!r} is not a host CPU (0..{ncpu - 1})")
    return cpus


def pin_thread(index: int, cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})  # 0: this thread
    except OSError as exc:
        raise GuestError(f"vCPU {index}: cannot pin its thread to host CPU {cpu} "
                         f"(vcpu_cpus): {exc.strerror or exc}") from exc


class VcpuThreads:
    """The host threads of one VM's vCPUs (``runners``, in index order)."""

    def __init__(self, dispatch: Dispatch, watchdog_s: float) -> None:
        self.dispatch = dispatch
        self.watchdog_s = watchdog_s
        self.runners: list[VcpuRunner] = []

    def start(self) -> None:
        for runner in self.runners:
            if runner.thread is not None:
                raise GuestError(f"vCPU {runner.index} was already started")
            runner.state = VcpuState.RUNNING
            runner.finished.clear()
            runner.entered_ns = runner.finished_ns = 0
            runner.last_activity = time.monotonic()
            runner.thread = threading.Thread(target=self._thread_main, args=(runner,),
                                             name=f"kvmharness-vcpu{runner.index}", daemon=True)
            runner.thread.start()

    def note_progress(self) -> None:
        now = time.monotonic()
        for r in self.runners:
            if r.running:
                r.last_activity = now

    def span_ns(self) -> tuple[int, int]:
        """(first vCPU's entry, last vCPU's finish) of the last run, perf_counter_ns, each
        stamped on the vCPU's own thread; raises if a vCPU has not both begun and ended."""
        if not self.runners or any(not r.entered_ns or not r.finished_ns for r in self.runners):
            raise GuestError("span_ns(): not every vCPU of the last start() has finished")
        return (min(r.entered_ns for r in self.runners),
                max(r.finished_ns for r in self.runners))

    # --- wait ------------------------------------------------------------------------------
    def wait(self, timeout_s: float | None = None) -> None:
        """Wait until every vCPU is done.  A vCPU silent (no ucall, no exit) for
        ``watchdog_s`` is stopped and reported as GuestTimeout; ``timeout_s`` bounds the
        whole wait.  On a failure the other vCPUs get PEER_REPORT_GRACE_S to report a
        failure of their own, are stopped, and the first failure (lowest vCPU index) is
        raised naming every other vCPU that failed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while not self._settled():
                self._enforce_limits(deadline, timeout_s)
                # sleep, not Event.wait(): a Ctrl-C raised just after wait() took the
                # Event's lock leaves it held, and stop() and the thread's set() deadlock.
                time.sleep(POLL_S)
        except BaseException:
            self.stop()
            raise
        self._raise_failures()

    def _settled(self) -> bool:
        """No vCPU runs, or one failed and its thread is over (after its peers' grace)."""
        return (not any(r.running for r in self.runners)
                or any(r.error is not None and r.finished.is_set() for r in self.runners))

    def _enforce_limits(self, deadline: float | None, timeout_s: float | None) -> None:
        now = time.monotonic()
        for r in self.runners:
            if not r.running or r.timed_out:
                continue
            if r.in_guest and now - r.last_activity > self.watchdog_s:
                r.timed_out = "no ucall or exit within the watchdog's limit"
                r.timeout_limit = self.watchdog_s
            elif deadline is not None and timeout_s is not None and now > deadline:
                r.timed_out = "still running when wait()'s timeout ran out"
                r.timeout_limit = timeout_s
            else:
                continue
            r.vcpu.request_stop()

    def _raise_failures(self) -> None:
        failed = [(r.index, r.error) for r in self.runners if r.error is not None]
        if not failed:
            return
        self.stop()
        first = failed[0][1]
        for index, error in failed[1:]:
            if isinstance(first, GuestError):
                first.add_peer_failure(index, error)
            else:
                first.add_note(f"also vCPU {index}: {error}")  # type: ignore[attr-defined,unused-ignore]
        raise first

    # --- stop ------------------------------------------------------------------------------
    def stop(self, join_timeout_s: float = 10.0) -> None:
        """Kick every vCPU out of KVM_RUN and wait for its thread to finish."""
        for r in self.runners:
            if r.running:
                r.vcpu.request_stop()
        deadline = time.monotonic() + join_timeout_s
        for r in self.runners:
            if r.thread is None:
                continue
            kicked = time.monotonic()
            while not r.finished.is_set():  # lock-free, unlike Event.wait(): see wait()
                time.sleep(0.001)
                now = time.monotonic()
                if now > deadline:
                    raise GuestError(f"vCPU {r.index} thread did not stop within "
                                     f"{join_timeout_s} s")
                if now - kicked > 0.05:
                    r.vcpu.request_stop()  # a kick that raced with the thread's start
                    kicked = now
            r.thread.join()

    # --- the vCPU's own thread -----------------------------------------------------------
    def _thread_main(self, runner: VcpuRunner) -> None:
        # Ctrl-C must reach the main thread, not interrupt a vCPU's KVM_RUN.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            if runner.cpu is not None:
                pin_thread(runner.index, runner.cpu)
            runner.state = self._run_loop(runner)
        except BaseException as exc:
            runner.error = exc
            runner.state = VcpuState.FAILED
            self._stop_peers(runner)
        finally:
            runner.finished.set()

    def _stop_peers(self, runner: VcpuRunner) -> None:
        """Fail fast, so nobody waits on a dead peer's barrier; but first give a peer that
        faulted at the same moment a short grace to deliver its own report."""
        peers = [r for r in self.runners if r is not runner]
        grace_end = time.monotonic() + PEER_REPORT_GRACE_S
        for other in peers:
            if other.error is None:  # a failed peer is not waited for: it is waiting too
                other.finished.wait(max(0.0, grace_end - time.monotonic()))
        for other in peers:
            other.vcpu.request_stop()

    def _run_loop(self, runner: VcpuRunner) -> VcpuState:
        vcpu = runner.vcpu
        runner.entered_ns = time.perf_counter_ns()
        while True:
            # The watchdog times the guest only: time the host spends in a handler (a slot
            # operation in on_sync, say) is never charged to it.
            runner.last_activity = time.monotonic()
            runner.in_guest = True
            try:
                exit_ = vcpu.run()
            finally:
                runner.in_guest = False
            exited_ns = time.perf_counter_ns()  # before any handler: the exit's own moment
            runner.last_activity = time.monotonic()
            state = self.dispatch(runner, exit_)
            if state is not None:
                runner.finished_ns = exited_ns
                return state
