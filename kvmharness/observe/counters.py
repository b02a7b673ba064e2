"""KVM stats deltas and tracepoint counts across a ``with`` block: the evidence a test or a
scenario phase uses to say what the kernel did."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kvmharness.kvm import StatsSnapshot, Vcpu, Vm
from kvmharness.kvm.stats import StatKind, kind_of, sum_deltas
from kvmharness.observe.tracefs import TraceCounter

Snapshot = tuple[StatsSnapshot, list[StatsSnapshot]]


class KvmCounters:
    """``with KvmCounters(vm, vcpus, events=ZAP_EVENTS) as c: ...`` then ``c.stats`` (VM
    stats as ``vm.NAME``, vCPU stats summed as ``vcpu.NAME``; cumulative ones as deltas)
    and ``c.tracepoints`` (short event name → count; empty when ``events`` is empty).
    ``vm_stats``/``vcpu_stats`` restrict which stats are read (None: all scalars).
    ``c.kinds`` says how each was kept (kvm.stats.CUMULATIVE, INSTANT, PEAK): an instant
    stat (a level such as ``vm.pages_4k``) is its value at the end, a peak its maximum."""

    def __init__(self, vm: Vm, vcpus: Sequence[Vcpu] = (), *, events: Iterable[str] = (),
                 vm_stats: Iterable[str] | None = None,
                 vcpu_stats: Iterable[str] | None = None) -> None:
        self.vm = vm
        self.vcpus = list(vcpus)
        self.events = tuple(events)
        self.vm_stats = list(vm_stats) if vm_stats is not None else None
        self.vcpu_stats = list(vcpu_stats) if vcpu_stats is not None else None
        self.stats: dict[str, int] = {}
        self.tracepoints: dict[str, int] = {}
        self.kinds: dict[str, StatKind] = {}
        self.lost_events = 0
        self._before: Snapshot | None = None
        self._tracer: TraceCounter | None = None

    def snapshot(self) -> Snapshot:
        return (self.vm.stats().snapshot(self.vm_stats),
                [v.stats().snapshot(self.vcpu_stats) for v in self.vcpus])

    @staticmethod
    def kinds_of(snapshot: Snapshot) -> dict[str, StatKind]:
        """``vm.NAME``/``vcpu.NAME`` -> how the stat's descriptor says it is kept."""
        out = {f"vm.{k}": kind_of(d.type) for k, d in snapshot[0].descriptors.items()}
        for vcpu in snapshot[1]:
            out.update({f"vcpu.{k}": kind_of(d.type) for k, d in vcpu.descriptors.items()})
        return out

    @staticmethod
    def delta(before: Snapshot, after: Snapshot) -> dict[str, int]:
        """Counters as deltas, levels and peaks as their value at ``after``; vCPU stats
        as one value (peaks: the highest vCPU's; others summed)."""
        out = {f"vm.{k}": v for k, v in after[0].delta(before[0]).items() if isinstance(v, int)}
        per_vcpu = [a.delta(b) for a, b in zip(after[1], before[1])]
        kinds = {k: kind_of(d.type) for v in after[1] for k, d in v.descriptors.items()}
        out.update({f"vcpu.{k}": v for k, v in sum_deltas(per_vcpu, kinds).items()})
        return out

    def __enter__(self) -> KvmCounters:
        if self.events:
            # Kept before it is entered: whatever interrupts us from here on, __exit__ or
            # the except below finds it and removes its tracefs instance.
            self._tracer = TraceCounter(self.events)
            self._tracer.__enter__()
        try:
            self._before = self.snapshot()
        except BaseException:
            self._close_tracer()
            raise
        return self

    def _close_tracer(self) -> None:
        tracer, self._tracer = self._tracer, None
        if tracer is not None:
            tracer.__exit__(KeyboardInterrupt, None, None)  # remove without reading counts

    def __exit__(self, *exc: object) -> None:
        try:
            if self._before is not None:
                after = self.snapshot()
                self.stats = self.delta(self._before, after)
                self.kinds = self.kinds_of(after)
        finally:
            try:
                if self._tracer is not None:
                    self.tracepoints = self._tracer.stop()
                    self.lost_events = self._tracer.lost
            finally:
                self._close_tracer()
