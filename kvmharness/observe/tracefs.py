"""Counting KVM tracepoints (kvmmmu:kvm_mmu_zap_all_fast, kvm_mmu_prepare_zap_page, ...)
in a private tracefs instance, so the harness neither disturbs nor is disturbed by other
tracing on the host.  Counts are what the kernel did, not what we asked for: they are how
a result proves which zap path was taken."""

from __future__ import annotations

import atexit
import dataclasses
import errno
import itertools
import os
import re
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import TextIO

from kvmharness.observe.signals import signals_held

CANDIDATE_MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
ZAP_EVENTS = (
    "kvmmmu/kvm_mmu_zap_all_fast",
    "kvmmmu/kvm_mmu_prepare_zap_page",
)
MMIO_EVENTS = (
    "kvmmmu/mark_mmio_spte",
    "kvmmmu/handle_mmio_page_fault",
)
BUFFER_KB_PER_CPU = 8192
_instance_ids = itertools.count()
INSTANCE_PREFIX = "kvmharness-"
_INSTANCE_NAME = re.compile(r"kvmharness-(\d+)-(\d+)\Z")
# Instances this process made and has not removed yet: removed at exit if a path out of
# here skipped the ``with`` block's cleanup (sys.exit in a thread, an exception in __del__).
_live: dict[Path, TraceCounter] = {}
_live_lock = threading.Lock()
_stale_checked = False
_LINE = re.compile(r"\s\d+\.\d+:\s+([A-Za-z0-9_]+):")
# With options/record-tgid: "comm-TID (  TGID) [CPU] ..."; "-----" when unknown.
_TGID = re.compile(r"\(\s*(\d+|-----)\)\s+\[\d+\]")


class TracefsError(OSError):
    """tracefs is missing, not writable, or lacks an event; the message says which."""


@dataclasses.dataclass(frozen=True)
class TracefsStatus:
    usable: bool
    path: str | None
    reason: str

    def __str__(self) -> str:
        return f"usable ({self.path})" if self.usable else self.reason


def _mounted_tracefs() -> str | None:
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "tracefs":
                    return fields[1]
    except OSError:
        pass
    return None


def find_tracefs(mount: bool = True) -> str:
    """The tracefs mount point; mounts it at /sys/kernel/tracing if it is not mounted and
    ``mount`` is set (root only).  Raises TracefsError saying why it is unusable."""
    path = _mounted_tracefs()
    if path is None:
        for candidate in CANDIDATE_MOUNTS:
            if os.path.exists(os.path.join(candidate, "events")):
                path = candidate
                break
    if path is None and mount:
        target = CANDIDATE_MOUNTS[0]
        rc = os.system(f"mount -t tracefs nodev {target} >/dev/null 2>&1")
        if rc == 0:
            path = target
    if path is None:
        raise TracefsError(errno.ENOENT, "tracefs not mounted (mount -t tracefs nodev "
                           "/sys/kernel/tracing needs root)")
    if not os.access(os.path.join(path, "instances"), os.W_OK):
        raise TracefsError(errno.EACCES, f"tracefs at {path}: no permission (needs root)")
    return path


def tracefs_status(events: Iterable[str] = ZAP_EVENTS) -> TracefsStatus:
    try:
        path = find_tracefs()
    except TracefsError as exc:
        return TracefsStatus(False, None, exc.strerror or str(exc))
    missing = [e for e in events if not os.path.isdir(os.path.join(path, "events", e))]
    if missing:
        return TracefsStatus(False, path, f"events missing: {', '.join(missing)} "
                             "(kvm module without these tracepoints?)")
    return TracefsStatus(True, path, "usable")


class TraceCounter:
    """``with TraceCounter(events) as tc: ...; tc.counts()`` — per-event counts of what
    fired inside the block, by default only in this process's threads (KVM raises its
    memslot zap events in the ioctl's thread); ``this_process_only=False`` counts host-wide.
    ``lost`` is non-zero if the buffer overflowed."""

    def __init__(self, events: Iterable[str] = ZAP_EVENTS, buffer_kb: int = BUFFER_KB_PER_CPU,
                 *, this_process_only: bool = True):
        self.events = tuple(events)
        self.this_process_only = this_process_only
        self.buffer_kb = buffer_kb
        self.root: Path | None = None
        self.instance: Path | None = None
        self._counts: dict[str, int] | None = None
        self._free_buffer_fd: int | None = None
        self.lost = 0

    def _hold_free_buffer(self) -> None:
        """Keep instance/free_buffer open: the kernel frees the buffer (and stops tracing)
        when it is closed, which process exit does however the process ends; an open file
        also makes rmdir fail with EBUSY, so no other harness can remove a live instance."""
        assert self.instance is not None
        try:
            (self.instance / "options" / "disable_on_free").write_text("1")
        except OSError:
            pass  # kernels without the option still free the buffer
        try:
            self._free_buffer_fd = os.open(self.instance / "free_buffer", os.O_WRONLY)
        except OSError:
            self._free_buffer_fd = None

    def __enter__(self) -> TraceCounter:
        status = tracefs_status(self.events)
        if not status.usable:
            raise TracefsError(errno.ENOTSUP, f"tracefs not usable: {status.reason}")
        self.root = Path(status.path)  # type: ignore[arg-type]
        remove_stale_instances(self.root)
        name = f"{INSTANCE_PREFIX}{os.getpid()}-{next(_instance_ids)}"
        _guard_fatal_signals()
        with signals_held():
            # The cleanup is registered before the instance exists, and no signal can fall
            # between mkdir and holding free_buffer open: from then on even SIGKILL leaves
            # only an empty, stopped instance (closing free_buffer frees the ring buffer
            # and, with disable_on_free, turns tracing off), which the next start removes.
            self.instance = self.root / "instances" / name
            with _live_lock:
                _live[self.instance] = self
            try:
                self.instance.mkdir()
                self._hold_free_buffer()
            except BaseException:
                self._teardown()
                raise
        try:
            (self.instance / "buffer_size_kb").write_text(str(self.buffer_kb))
            if self.this_process_only:
                self._filter_this_process()
            for event in self.events:
                (self.instance / "events" / event / "enable").write_text("1")
            (self.instance / "trace").write_text("")
        except BaseException:
            self._teardown()
            raise
        return self

    def _filter_this_process(self) -> None:
        """Count only events raised by this process's threads (other VMs on the host zap
        too; KVM's memslot zaps run in the ioctl's thread, vCPU faults in vCPU threads).
        Each line then carries the thread group id, which ``stop`` matches against ours:
        unlike set_event_pid, that covers threads started later and excludes children."""
        (self.instance / "options" / "record-tgid").write_text("1")  # type: ignore[operator]

    def _short(self, event: str) -> str:
        return event.rsplit("/", 1)[-1]

    def stop(self) -> dict[str, int]:
        """Stop counting and return the counts (also available later from ``counts()``)."""
        if self._counts is None and self.instance is not None:
            (self.instance / "tracing_on").write_text("0")
            counts = {self._short(e): 0 for e in self.events}
            own_tgid = os.getpid()
            with open(self.instance / "trace") as f:
                for line in f:
                    if line.startswith("#"):
                        continue
                    m = _LINE.search(line)
                    if not m or m.group(1) not in counts:
                        continue
                    if self.this_process_only:
                        tgid = _TGID.search(line)
                        if tgid is None or tgid.group(1).strip() == "-----" or \
                                int(tgid.group(1)) != own_tgid:
                            continue
                    counts[m.group(1)] += 1
            self.lost = self._overruns()
            self._counts = counts
        return dict(self._counts or {})

    def counts(self) -> dict[str, int]:
        return self.stop()

    def _overruns(self) -> int:
        total = 0
        per_cpu = self.instance / "per_cpu"  # type: ignore[operator]
        for cpu in per_cpu.iterdir() if per_cpu.exists() else ():
            try:
                for line in (cpu / "stats").read_text().splitlines():
                    if line.startswith("overrun:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total

    def _teardown(self) -> None:
        # Signals held: a second Ctrl-C must not cut the removal short.
        with signals_held():
            instance, self.instance = self.instance, None
            if instance is None:
                return
            try:
                (instance / "tracing_on").write_text("0")
            except OSError:
                pass
            for event in self.events:
                try:
                    (instance / "events" / event / "enable").write_text("0")
                except OSError:
                    pass
            if self._free_buffer_fd is not None:
                fd, self._free_buffer_fd = self._free_buffer_fd, None
                try:
                    os.close(fd)
                except OSError:
                    pass  # closed already by _on_fatal_signal
            try:
                instance.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                pass  # EBUSY: someone has a file of it open; the next start retries
            with _live_lock:
                _live.pop(instance, None)
        _unguard_fatal_signals()

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.stop()
        finally:
            self._teardown()


@atexit.register
def _remove_live_instances() -> None:
    with _live_lock:
        counters = list(_live.values())
    for counter in counters:
        counter._teardown()


# SIGTERM and SIGHUP kill a process that left them at their default action (a test
# session, a script using the Python API) without unwinding a ``with`` block: while an
# instance of ours exists they first remove it, then kill the process as they would have.
_FATAL = (signal.SIGTERM, signal.SIGHUP)


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    # A file of an instance still open (the interrupted code was reading its trace) would
    # make rmdir fail with EBUSY; the process is about to die, so close it under that code.
    with _live_lock:
        prefixes = [f"{path}/" for path in _live]
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        fds = []
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(tuple(prefixes)):
                os.close(int(fd))
        except OSError:
            continue
    _remove_live_instances()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _guard_fatal_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for s in _FATAL:
        if signal.getsignal(s) is signal.SIG_DFL:
            signal.signal(s, _on_fatal_signal)


def _unguard_fatal_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    with _live_lock:
        if _live:
            return
    for s in _FATAL:
        if signal.getsignal(s) is _on_fatal_signal:
            signal.signal(s, signal.SIG_DFL)


def _pid_alive_since(pid: int, created: float) -> bool:
    """Whether ``pid`` is a process that already existed at time ``created`` (a process
    started later reused the number of the one that made the instance)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Field 22 (starttime, clock ticks since boot) counted after the ")" of comm.
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return True  # cannot tell: assume it is the owner
    started = btime + start_ticks / os.sysconf("SC_CLK_TCK")
    return started <= created + 2.0  # btime has whole-second resolution


def remove_stale_instances(root: Path | str | None = None, *,
                           err: TextIO | None = None, force: bool = False) -> list[str]:
    """Remove the tracefs instances this harness made (``kvmharness-PID-N``) whose process
    is gone: a killed run leaves its instance, which would hold 8 MiB per CPU and keep KVM
    events enabled until reboot.  Done once per process (``force`` repeats it); what was
    removed is said once on ``err`` (default stderr).  Returns the removed names."""
    global _stale_checked
    if _stale_checked and not force:
        return []
    _stale_checked = True
    if root is None:
        try:
            root = find_tracefs(mount=False)
        except TracefsError:
            return []  # not mounted or not ours to change: nothing we could have left
    instances = Path(root) / "instances"
    try:
        names = sorted(os.listdir(instances))
    except OSError:
        return []
    removed: list[str] = []
    busy: list[str] = []
    for name in names:
        m = _INSTANCE_NAME.match(name)
        if not m:
            continue
        path = instances / name
        try:
            created = path.stat().st_mtime
        except OSError:
            continue
        if int(m.group(1)) == os.getpid() or _pid_alive_since(int(m.group(1)), created):
            continue
        with signals_held():
            try:
                (path / "tracing_on").write_text("0")
            except OSError:
                pass
            try:
                path.rmdir()
            except FileNotFoundError:
                continue  # another harness removed it first
            except PermissionError:
                return removed
            except OSError:
                busy.append(name)  # a file of it is open: possibly a live owner we cannot see
                continue
        removed.append(name)
    out = err if err is not None else sys.stderr
    if removed:
        out.write(f"kvmharness: removed {len(removed)} tracefs instance"
                  f"{'s' if len(removed) > 1 else ''} left by ended runs: "
                  f"{', '.join(removed)}\n")
    if busy:
        out.write(f"kvmharness: tracefs instance{'s' if len(busy) > 1 else ''} "
                  f"{', '.join(busy)} of ended runs still in use; not removed\n")
    return removed
