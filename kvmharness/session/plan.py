"""A session plan: one scenario, its resolved parameters, the variants to interleave, and
how many runs of each (a fixed ``repeat``, or ``--until-ci``'s minimum)."""

from __future__ import annotations

import dataclasses
import itertools
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from kvmharness.observe import pinning as pins
from kvmharness.scenarios.base import ScenarioSpec
from kvmharness.session.until_ci import UntilCi

DEFAULT_REPEAT = 10
QUICK_REPEAT = 5  # the smallest n per side whose exact test can still reach p < 0.01
# Ceilings on the counts, checked before anything runs: a typo of 100000000000 would
# otherwise run until killed (one run is a fresh VM; an iteration, seconds of guest work).
# Far above any real session (defaults: 10 runs, 3-10 iterations).
COUNT_CEILINGS = {"repeat": 100_000, "iterations": 100_000, "warmup": 100_000}


def check_count(knob: str, value: int) -> int:
    """``value`` if within ``knob``'s ceiling, else ValueError naming the knob."""
    ceiling = COUNT_CEILINGS[knob]
    if value > ceiling:
        raise ValueError(f"--{knob} {value} is more than the {ceiling} a session "
                         f"allows: lower --{knob}")
    return value


@dataclasses.dataclass(frozen=True)
class SessionPlan:
    spec: ScenarioSpec
    params: Mapping[str, Any]
    variants: Sequence[Mapping[str, str]]
    repeat: int
    iterations: int
    warmup: int
    label: str
    quick: bool
    # CPUs per role (observe.pinning); empty: the scheduler places every thread.
    pinning: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    # Run until precise (session.until_ci); ``repeat`` is then the minimum per variant.
    until_ci: UntilCi | None = None

    @classmethod
    def resolve(cls, spec: ScenarioSpec, *, params: Mapping[str, Any] | None = None,
                variants: Mapping[str, Sequence[str]] | None = None, quick: bool = False,
                repeat: int | None = None, iterations: int | None = None,
                warmup: int | None = None, label: str | None = None,
                pinning: str | Mapping[str, Sequence[int]] | None = None,
                until_ci: UntilCi | None = None) -> SessionPlan:
        """The one place a request (command line, ``ab``'s per-boot check, Python API)
        becomes a plan: defaults or quick values, overridden by ``params`` given as values
        or as the strings ``--param`` takes.  Raises ValueError/KeyError naming what is
        wrong."""
        for knob, count in (("repeat", repeat), ("iterations", iterations),
                            ("warmup", warmup)):
            if count is not None:
                check_count(knob, count)
        values = spec.resolve_params({}, quick=quick)
        for key, value in (params or {}).items():
            parameter = spec.parameter(key)
            values[key] = (parameter.parse(value) if isinstance(value, str)
                           else parameter.check(value))
        return cls(
            spec=spec, params=values, variants=expand_variants(spec, variants),
            repeat=repeat or (until_ci.min_runs if until_ci else
                              QUICK_REPEAT if quick else DEFAULT_REPEAT),
            iterations=spec.default_iterations if iterations is None else iterations,
            warmup=spec.default_warmup if warmup is None else warmup,
            label=label or platform.release(), quick=quick,
            pinning=pins.resolve(pinning), until_ci=until_ci)


def expand_variants(spec: ScenarioSpec,
                    selected: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, str]]:
    """Cartesian product over the spec's axes; unselected axes take all their values.

    Raises ValueError for an unknown axis or value, naming what is allowed.
    """
    selected = dict(selected or {})
    axes = {a.name: a for a in spec.variant_axes}
    for name, values in selected.items():
        if name not in axes:
            known = ", ".join(axes) or "none"
            raise ValueError(f"scenario {spec.name!r} has no variant axis {name!r} (axes: {known})")
        for v in values:
            if v not in axes[name].values:
                raise ValueError(f"variant axis {name!r} has no value {v!r} "
                                 f"(values: {', '.join(axes[name].values)})")
    choices = [list(dict.fromkeys(selected.get(a.name, a.values))) for a in spec.variant_axes]
    names = [a.name for a in spec.variant_axes]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]
