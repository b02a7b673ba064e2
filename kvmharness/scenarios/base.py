"""Scenario declarations: what a workload measures, with which parameters and variants.

A scenario is a declaration (``ScenarioSpec``) plus a function that performs one run
(a fresh VM) and returns a ``RunOutcome``.  The results layer serialises outcomes; the
compare layer only ever sees what a ``RunOutcome`` carries, so every number a table
prints has a unit and a direction here.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Literal, Mapping

Direction = Literal["lower", "higher"]


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One scenario knob.  ``default`` is sized for real VT-x/AMD-V hardware, ``quick`` for CI."""

    name: str
    unit: str
    default: Any
    quick: Any
    help: str
    type: type = int

    def parse(self, text: str) -> Any:
        """Convert a ``--param name=value`` string; raises ValueError naming the parameter."""
        try:
            if self.type is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return self.type(text)
        except ValueError:
            raise ValueError(
                f"parameter {self.name!r} expects {self.type.__name__} ({self.unit}), got {text!r}"
            ) from None


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    direction: Direction
    help: str


@dataclasses.dataclass(frozen=True)
class VariantAxis:
    """An axis that A/B runs vary within one kernel, e.g. ``zap`` in ``("all", "slot")``."""

    name: str
    values: tuple[str, ...]
    help: str


ZAP_AXIS = VariantAxis(
    name="zap",
    values=("all", "slot"),
    help="all: KVM_X86_QUIRK_SLOT_ZAP_ALL left enabled (pre-2019 behaviour, zap every "
    "SPTE on memslot delete/move); slot: quirk disabled (zap only the slot's SPTEs)",
)


class VariantUnsupported(Exception):
    """This kernel cannot run the requested variant (e.g. zap=slot without the quirk)."""


@dataclasses.dataclass
class RunOutcome:
    """Everything one run produced.  Samples are raw (per iteration), never summaries."""

    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    warmups: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    kvm_stats: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    tracepoints: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    noise: dict[str, Any] = dataclasses.field(default_factory=dict)
    effective: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    start_time: float = dataclasses.field(default_factory=time.time)
    end_time: float | None = None

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

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.parameters)
        raise KeyError(f"scenario {self.name!r} has no parameter {name!r} (known: {known})")

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"scenario {self.name!r} has no metric {name!r}")

    def resolve_params(self, overrides: Mapping[str, str], *, quick: bool) -> dict[str, Any]:
        values = {p.name: (p.quick if quick else p.default) for p in self.parameters}
        for name, text in overrides.items():
            values[name] = self.parameter(name).parse(text)
        return values
