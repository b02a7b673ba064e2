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
