"""Scenario declarations: what a workload measures, with which parameters and variants.

A scenario is a declaration (``ScenarioSpec``) plus a function that performs one run
(a fresh VM) and returns a ``RunOutcome``.  The results layer serialises outcomes; the
compare layer only ever sees what a ``RunOutcome`` carries, so every number a table
prints has a unit and a direction here.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from kvmharness import numbers
from kvmharness.scenarios.metrics import Direction as Direction
from kvmharness.scenarios.metrics import Metric as Metric
from kvmharness.scenarios.metrics import concrete_names, resolve
from kvmharness.scenarios.presentation import FAMILY_GRID, Figure, Pivot
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.x86 import KVM_X86_QUIRK_SLOT_ZAP_ALL

if TYPE_CHECKING:
    from kvmharness.kvm import Kvm

@dataclasses.dataclass(frozen=True)
class Parameter:
    """One scenario knob.  ``default`` is sized for real VT-x/AMD-V hardware, ``quick`` for CI."""

    name: str
    unit: str
    default: Any
    quick: Any
    help: str
    type: type = int
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    # A granularity: the value must be a multiple of it (rom_size in KiB: 4, a page).
    multiple_of: int | None = None

    def valid_range(self) -> str:
        """The valid values in words, for help and error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.type is bool:
            return "true or false"
        # A value type of its own (a comma list) says what it expects in words, never
        # by its Python class name.
        expected = getattr(self.type, "expected", None)
        if isinstance(expected, str):
            return expected
        step = f", a multiple of {self.multiple_of}" if self.multiple_of else ""
        # Whole numbers in full (10000000, not 1e+07: the user types them back).
        lo, hi = (None if v is None else int(v) if v == int(v) else v
                  for v in (self.minimum, self.maximum))
        unit = f" {self.unit}" if self.unit and self.type in (int, float) else ""
        if lo is not None and hi is not None:
            return f"{lo}..{hi}{unit}{step}"
        if lo is not None:
            return f">= {lo}{unit}{step}"
        if hi is not None:
            return f"<= {hi}{unit}{step}"
        return {int: "an integer", float: "a number"}.get(self.type, "a value") + step

    def check(self, value: Any) -> Any:
        """``value`` if it lies in the declared range; else ValueError naming the parameter
        and the range.  For values that arrive typed (the Python API) as well as parsed."""
        bad = (self.choices is not None and value not in self.choices) or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and (
                (self.minimum is not None and value < self.minimum)
                or (self.maximum is not None and value > self.maximum)
                or (self.multiple_of is not None and value % self.multiple_of != 0)))
        if bad:
            raise ValueError(f"parameter {self.name!r} must be {self.valid_range()}, "
                             f"got {value!r}")
        return value

    def parse(self, text: str) -> Any:
        """Convert and check a ``--param name=value`` string; raises ValueError naming the
        parameter and its valid range."""
        if not text.strip():
            # ``kinds=`` must not quietly mean every kind (or zero, or the default).
            raise ValueError(f"parameter {self.name!r} has an empty value "
                             f"(expects {self.valid_range()})")
        try:
            if self.type is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if self.type is int:
                value: Any = numbers.parse_int(text, self.name)
            elif self.type is float:
                value = numbers.parse_decimal(text, self.name)
            else:
                value = self.type(text)
        except ValueError as e:
            detail = f": {e}" if self.type not in (int, float, bool) and str(e) else ""
            raise ValueError(
                f"parameter {self.name!r} expects {self.valid_range()}, "
                f"got {text!r}{detail}") from None
        return self.check(value)


@dataclasses.dataclass(frozen=True)
class VariantAxis:
    """An axis that A/B runs vary within one kernel, e.g. ``zap`` in ``("all", "slot")``."""

    name: str
    values: tuple[str, ...]
    help: str


class VariantUnsupported(Exception):
    """This kernel cannot run the requested variant (e.g. zap=slot without the quirk)."""


LOST_EVENTS_KEY = "tracefs_lost_events"  # effective[...]: phase -> events the buffer dropped


@dataclasses.dataclass(frozen=True)
class ZapAxis(VariantAxis):
    """The zap-policy axis, whole: its values, the quirk bits a value disables, and the zap
    path the kernel was seen to take (``effective["zap_path"]``)."""

    def value(self, variant: Mapping[str, str]) -> str:
        zap = variant.get(self.name, self.values[0])
        if zap not in self.values:
            raise ValueError(f"{self.name}={zap!r}: expected one of {', '.join(self.values)}")
        return zap

    def quirk_mask(self, kvm: Kvm, variant: Mapping[str, str]) -> int:
        """The quirk bits to disable for this variant; VariantUnsupported for ``slot`` on a
        kernel without KVM_X86_QUIRK_SLOT_ZAP_ALL (before v6.12 every delete zaps all)."""
        if self.value(variant) == "all":
            return 0
        if not kvm.check_extension(KvmCap.KVM_CAP_DISABLE_QUIRKS2) & KVM_X86_QUIRK_SLOT_ZAP_ALL:
            raise VariantUnsupported(
                "quirk not supported: this kernel has no KVM_X86_QUIRK_SLOT_ZAP_ALL (v6.12+); "
                "memslot deletes always zap all here")
        return int(KVM_X86_QUIRK_SLOT_ZAP_ALL)

    def record(self, outcome: RunOutcome, variant: Mapping[str, str], deletes: int,
               phase: str) -> None:
        """Say which zap path the kernel took, from the tracepoint counts of ``phase`` (the
        phase that contains the memslot deletes/moves), and warn when it contradicts the
        requested variant: a result must never claim a policy the kernel did not apply.
        No zap-all event is evidence of zap=slot only if deletes/moves happened and the
        trace buffer lost nothing; otherwise the path is ``unverified``."""
        requested = self.value(variant)
        eff = outcome.effective
        counts = outcome.tracepoints.get(phase)
        if counts is None or "kvm_mmu_zap_all_fast" not in counts:
            ZapEvidence(requested, "unverified", "tracefs unavailable: the zap path is the "
                        "requested one, not observed").store(eff)
            return
        fast = counts["kvm_mmu_zap_all_fast"]
        lost = eff.get(LOST_EVENTS_KEY, {}).get(phase, 0)
        evidence = ZapEvidence.counted(requested, fast, deletes)
        if fast == 0 and (deletes == 0 or lost):
            dataclasses.replace(evidence, path="unverified", text=evidence.text + (
                f", but the trace buffer lost {lost} events" if lost else
                ": nothing was deleted or moved, so nothing shows the path")).store(eff)
            return
        evidence.store(eff)
        if deletes and evidence.path != requested:
            outcome.warnings.append(f"requested zap={requested} but the kernel took "
                                    f"zap={evidence.path} ({evidence.text})")


ZapPath = Literal["all", "slot", "unverified"]
_COUNTED = re.compile(r"(\d+) kvm_mmu_zap_all_fast events over (\d+) memslot")


@dataclasses.dataclass(frozen=True)
class ZapEvidence:
    """Which zap path the kernel took in one run and why the harness says so, kept in the
    run's ``effective`` as ``zap_requested``, ``zap_path``, ``zap_evidence`` (the words)
    and, where a trace was read, ``zap_all_events`` and ``zap_deletes`` (the counts)."""

    requested: str | None
    path: ZapPath
    text: str
    zap_all_events: int | None = None  # kvm_mmu_zap_all_fast events in the phase
    deletes: int | None = None  # memslot deletes/moves in the phase

    @classmethod
    def counted(cls, requested: str, zap_all_events: int, deletes: int) -> ZapEvidence:
        return cls(requested, "all" if zap_all_events > 0 else "slot",
                   f"{zap_all_events} kvm_mmu_zap_all_fast events over {deletes} memslot "
                   "deletes/moves", zap_all_events, deletes)

    def store(self, effective: dict[str, Any]) -> None:
        effective.update(zap_requested=self.requested, zap_path=self.path,
                         zap_evidence=self.text)
        if self.zap_all_events is not None and self.deletes is not None:
            effective.update(zap_all_events=self.zap_all_events, zap_deletes=self.deletes)

    @classmethod
    def of(cls, effective: Mapping[str, Any]) -> ZapEvidence | None:
        """The evidence a run recorded, or None if it recorded none.  Files written before
        the counts were kept have them only in the words; they are read from there."""
        path = effective.get("zap_path")
        if path not in ("all", "slot", "unverified"):
            return None
        text = str(effective.get("zap_evidence", ""))
        events, deletes = effective.get("zap_all_events"), effective.get("zap_deletes")
        if not (isinstance(events, int) and isinstance(deletes, int)):
            m = _COUNTED.search(text)
            events, deletes = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        requested = effective.get("zap_requested")
        return cls(requested if isinstance(requested, str) else None, path, text,
                   events, deletes)


ZAP_AXIS = ZapAxis(
    name="zap",
    values=("all", "slot"),
    help="all: KVM_X86_QUIRK_SLOT_ZAP_ALL left enabled (pre-2019 behaviour, zap every "
    "SPTE on memslot delete/move); slot: quirk disabled (zap only the slot's SPTEs)",
)


@dataclasses.dataclass(kw_only=True)
class RunEvidence:
    """What one run saw besides its samples: the same fields in a scenario's ``RunOutcome``
    and in the result file's ``RunRecord`` (results/model.py), which adds the samples'
    units and the run's place in the session."""

    warmups: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    kvm_stats: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    # How each kvm_stats key was kept over its phase: cumulative (summed deltas), instant
    # (the value at the phase's end), peak (the maximum).  Empty in schema-1 files.
    kvm_stat_types: dict[str, str] = dataclasses.field(default_factory=dict)
    tracepoints: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    noise: dict[str, Any] = dataclasses.field(default_factory=dict)
    effective: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    start_time: float = dataclasses.field(default_factory=time.time)
    end_time: float | None = None

    @property
    def zap(self) -> ZapEvidence | None:
        return ZapEvidence.of(self.effective)


@dataclasses.dataclass
class RunOutcome(RunEvidence):
    """Everything one run produced.  Samples are raw (per iteration), never summaries."""

    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def add(self, metric: str, value: float, *, warmup: bool = False) -> None:
        target = self.warmups if warmup else self.samples
        target.setdefault(metric, []).append(float(value))


@dataclasses.dataclass(frozen=True)
class RunRequest:
    params: Mapping[str, Any]
    variant: Mapping[str, str]
    iterations: int
    warmup: int
    progress: Callable[[str], None] = lambda message: None
    # CPUs per role ("vcpus", "togglers", "main"); a role left out is not pinned.
    pinning: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ScenarioSpec:
    name: str
    summary: str
    parameters: tuple[Parameter, ...]
    metrics: tuple[Metric, ...]
    variant_axes: tuple[VariantAxis, ...]
    run: Callable[[RunRequest], RunOutcome]
    default_iterations: int = 5
    default_warmup: int = 1
    # The metrics a default report shows (the answer); the rest appear with --all-metrics.
    # Names may be metric families (``create@<size>``, scenarios.metrics.MetricFamily).
    headline: tuple[str, ...] = ()
    # Headline metrics that are maxima (the worst stall of a run) swing with any host
    # hiccup; --until-ci and the spread warning judge only the others.
    extremes: tuple[str, ...] = ()
    # Limits that depend on the host (guest memory against what the host has, page-table
    # room, work a watchdog bounds): one message per problem, each naming the parameter to
    # change.  ``kvmharness run`` calls it before the first run; None: nothing to check.
    check_host: Callable[[Mapping[str, Any]], list[str]] | None = None
    # How compare's tables lay the metrics out, and what `kvmharness plot` draws (None:
    # no figure).  Declared here so that no code above scenarios/ names a scenario.
    pivot: Pivot = FAMILY_GRID
    figure: Figure | None = None

    def preflight(self, params: Mapping[str, Any]) -> list[str]:
        """What stops ``params`` from running on this host (empty: nothing known)."""
        return list(self.check_host(params)) if self.check_host is not None else []

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.parameters)
        raise KeyError(f"scenario {self.name!r} has no parameter {name!r} (known: {known})")

    def metric(self, name: str) -> Metric:
        """A declared metric, or a point of a declared family (``create@4K``)."""
        found = resolve(self.metrics, name)
        if found is None:
            raise KeyError(f"scenario {self.name!r} has no metric {name!r}")
        return found

    def metric_names(self, labels: list[str]) -> list[str]:
        """Every concrete metric name a run over family key ``labels`` can report."""
        return concrete_names(self.metrics, labels)

    def resolve_params(self, overrides: Mapping[str, str], *, quick: bool) -> dict[str, Any]:
        values = {p.name: (p.quick if quick else p.default) for p in self.parameters}
        for name, text in overrides.items():
            values[name] = self.parameter(name).parse(text)
        return values

    def headline_metrics(self) -> tuple[str, ...]:
        """``headline`` or, where a spec declares none, every metric."""
        return self.headline or tuple(m.name for m in self.metrics)

    def precision_metrics(self) -> tuple[str, ...]:
        """The headline metrics whose median should be precise (``--until-ci``, the spread
        warning): all but the ``extremes``."""
        return tuple(m for m in self.headline_metrics() if m not in self.extremes)
