"""The run skeleton every scenario shares, after the KVM selftests' memslot_perf_test (a test
names only what differs; one function owns the VM's life) and pyperf's Runner (the runner
owns warmups and loops).

A scenario is a ``GuestScenario`` (one VM for the whole run) or ``BareScenario`` (its body
builds its own VMs) subclass: it checks its parameters in ``__init__`` (before any VM
exists), declares its variant axes, ``guest``, ``layout()`` and exit ``handlers()``, and
writes the body of one iteration.  ``execute`` does the rest, the same way for every
scenario: pins the main thread, opens /dev/kvm, applies the variant axes (the zap quirk),
builds the ``Machine`` (vCPU threads pinned), records phases, runs warmups then
iterations with one progress line each, undoes the scenario's cleanups, records the zap
path the kernel took and stamps the end time.

``HostToggler`` is the base of host threads that change memslots while vCPUs run."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypedDict

from kvmharness.guest.layout import Layout
from kvmharness.guest.machine import IoHandler, Machine, MmioHandler, SyncHandler
from kvmharness.kvm import Kvm
from kvmharness.observe.pinning import pin_current_thread, pinned
from kvmharness.observe.signals import signals_held
from kvmharness.scenarios.base import RunOutcome, RunRequest, VariantAxis, ZapAxis
from kvmharness.scenarios.common import PhaseRecorder


def wait_finished(finished: threading.Event, poll_s: float = 0.05) -> None:
    """Block until ``finished`` is set, holding back a Ctrl-C until then (re-raised after).

    For host threads that use the VM or guest memory (memslot togglers): the caller has
    already asked the thread to stop, so this is one ioctl or one dwell long, and whatever
    the caller does next (closing the VM, unmapping guest RAM) must not run under a thread
    that is still going.  ``Thread.join()`` is no substitute: on CPython 3.11 a Ctrl-C inside
    it can mark a running thread stopped (see kvmharness/guest/machine.py).  Nor is catching
    the KeyboardInterrupt around ``Event.wait``: raised just after the Event's lock was
    taken, it leaves the lock held, and the next wait() and the thread's set() deadlock.  So
    the signals are deferred (observe.signals), never raised inside the wait."""
    with signals_held():
        while not finished.wait(poll_s):
            pass


class HostToggler:
    """A host thread that changes memslots while vCPUs run.  Subclasses write ``loop()``
    (poll ``self.stopping(seconds)`` between operations) and ``restore()`` (leave the VM
    as the next iteration expects it, e.g. re-create a deleted slot), which runs however
    the loop ended.  ``stop()`` returns only once the thread has really finished (Ctrl-C
    held back meanwhile), then raises the thread's error, if any."""

    thread_name: ClassVar[str] = "kvmharness-toggler"

    def __init__(self, cpus: Sequence[int] = ()) -> None:
        self.cpus = tuple(cpus)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        # Completion is an Event, not Thread.join()/is_alive(): see wait_finished.  The
        # thread issues memslot ioctls (and may store into guest RAM), so the VM must not
        # be closed, nor guest RAM unmapped, before it has finished.
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._main, name=self.thread_name, daemon=True)

    def loop(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        """Runs after ``loop()``, however it ended."""

    def stopping(self, seconds: float = 0.0) -> bool:
        """Wait up to ``seconds``; True once ``stop()`` was called."""
        return self._stop.wait(seconds) if seconds > 0 else self._stop.is_set()

    def _main(self) -> None:
        try:
            if self.cpus:
                pin_current_thread(self.cpus)
            self.loop()
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                self.restore()
            except BaseException as exc:
                self.error = self.error or exc
            finally:
                self._finished.set()

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait up to ``timeout_s`` for the thread to finish on its own."""
        return self._finished.wait(timeout_s)

    def is_alive(self) -> bool:
        return self._thread.ident is not None and not self._finished.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            wait_finished(self._finished)
            self._thread.join()
        if self.error is not None:
            raise self.error


class Handlers(TypedDict, total=False):
    on_sync: SyncHandler
    on_mmio: MmioHandler
    on_io: IoHandler


class Context:
    """What the harness built for one run, handed whole to the scenario's hooks."""

    def __init__(self, req: RunRequest, kvm: Kvm, outcome: RunOutcome, quirks: int) -> None:
        self.req = req
        self.params: Mapping[str, Any] = req.params
        self.kvm = kvm
        self.outcome = outcome
        self.quirks = quirks  # the quirk bits the variant disables
        self.toggler_cpus: tuple[int, ...] = tuple(req.pinning.get("togglers", ()))
        self.vcpu_cpus: tuple[int, ...] = tuple(req.pinning.get("vcpus", ()))
        # Memslot deletes and moves of the measured iterations and of whatever else the
        # zap phase spans: the zap path is proven against this count.
        self.deletes = 0
        # Undone (last in, first out) before the shared VM closes, whatever happened.
        self.cleanups = contextlib.ExitStack()

    def machine(self, guest: str, layout: Layout, *, vcpus: int, watchdog_s: float,
                handlers: Handlers | None = None, **options: Any) -> Machine:
        """A Machine with this run's quirks and vCPU pinning."""
        return Machine(self.kvm, guest, layout, vcpus=vcpus, disable_quirks=self.quirks,
                       watchdog_s=watchdog_s, vcpu_cpus=self.vcpu_cpus or None,
                       **(handlers or {}), **options)


class ScenarioRun:
    """What every scenario declares: its name, variant axes and the phase whose tracepoints
    prove the zap path; ``__init__`` checks the parameters (ValueError naming them) before
    any VM exists.  Subclass ``GuestScenario`` (one VM for the whole run) or ``BareScenario``
    (the body builds its own VMs).  ``SPEC.run = MyScenario.run``."""

    name: ClassVar[str]
    variant_axes: ClassVar[tuple[VariantAxis, ...]] = ()
    zap_phase: ClassVar[str | None] = None

    def __init__(self, req: RunRequest) -> None:
        self.req = req
        self.params = req.params

    @property
    def zap_axis(self) -> ZapAxis | None:
        return next((a for a in self.variant_axes if isinstance(a, ZapAxis)), None)

    def record_axes(self, ctx: Context) -> None:
        """Record the variant axes' effective values (the zap path the kernel took).
        The harness calls it after the last iteration; a body that ends the run early
        with an error carrying the outcome calls it first."""
        axis = self.zap_axis
        if axis is not None and self.zap_phase is not None:
            axis.record(ctx.outcome, self.req.variant, ctx.deletes, self.zap_phase)

    @classmethod
    def run(cls, req: RunRequest) -> RunOutcome:
        return execute(cls(req))


class GuestScenario(ScenarioRun):
    """A scenario whose iterations share one VM running ``guest`` with ``layout()``; the
    harness resets the vCPUs between iterations."""

    guest: ClassVar[str]
    watchdog_s: ClassVar[float] = 120.0
    trace: ClassVar[bool] = True  # kvmmmu tracepoints per phase

    def vcpus(self) -> int:
        return int(self.params.get("vcpus", 1))

    def layout(self) -> Layout:
        raise NotImplementedError

    def handlers(self) -> Handlers:
        return {}

    def prepare(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        """Once, before the first iteration: guest parameters, host-side state."""

    def iteration(self, ctx: Context, m: Machine, recorder: PhaseRecorder, i: int,
                  warm: bool) -> str:
        """One iteration (``i`` counts warmups too); returns its progress text."""
        raise NotImplementedError

    def finish(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        """Once, after the last iteration, the VM still open."""


class BareScenario(ScenarioRun):
    """A scenario whose body builds its own VMs with ``ctx.machine(...)``."""

    def iteration(self, ctx: Context, i: int, warm: bool) -> str:
        raise NotImplementedError


def execute(scenario: ScenarioRun) -> RunOutcome:
    """Own one run's life: main-thread pinning, /dev/kvm, variant axes, the Machine, the
    phases, warmups and iterations with their progress lines, and the times."""
    req = scenario.req
    outcome = RunOutcome()
    runs = req.warmup + req.iterations

    def progress(i: int, warm: bool, summary: str) -> None:
        req.progress(f"{scenario.name} {'warmup' if warm else 'iteration'} "
                     f"{i + 1}/{runs}: {summary}")

    with pinned(req.pinning.get("main")), Kvm() as kvm:
        zap = scenario.zap_axis
        ctx = Context(req, kvm, outcome, zap.quirk_mask(kvm, req.variant) if zap else 0)
        if isinstance(scenario, GuestScenario):
            with ctx.machine(scenario.guest, scenario.layout(), vcpus=scenario.vcpus(),
                             watchdog_s=scenario.watchdog_s,
                             handlers=scenario.handlers()) as m, ctx.cleanups:
                recorder = PhaseRecorder(m, outcome, trace=scenario.trace)
                scenario.prepare(ctx, m, recorder)
                for i in range(runs):
                    if i:
                        m.reset()
                    warm = i < req.warmup
                    progress(i, warm, scenario.iteration(ctx, m, recorder, i, warm))
                scenario.finish(ctx, m, recorder)
                scenario.record_axes(ctx)
        elif isinstance(scenario, BareScenario):
            for i in range(runs):
                warm = i < req.warmup
                progress(i, warm, scenario.iteration(ctx, i, warm))
            scenario.record_axes(ctx)
        else:
            raise TypeError(f"{type(scenario).__name__}: subclass GuestScenario or BareScenario")
    outcome.end_time = time.time()
    return outcome
