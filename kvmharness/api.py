"""The Python API behind ``kvmharness run``: run a scenario from a script or a notebook and
get its result object.

    from kvmharness import api
    outcome = api.run_once("rom-toggle", quick=True, variant={"zap": "slot"})
    session = api.run("rom-toggle", quick=True, variants={"zap": ["all", "slot"]}, repeat=5)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kvmharness.observe import fingerprint
from kvmharness.results.store import DEFAULT_DIR, default_result_path
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import RunOutcome, RunRequest, ScenarioSpec
from kvmharness.session import SessionOutcome, SessionPlan, run_session

Progress = Callable[[str], None]


def scenario(name: str) -> ScenarioSpec:
    """The registered scenario ``name``; KeyError lists the known ones."""
    specs = registry.all_scenarios()
    try:
        return specs[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r} (known: {', '.join(specs)})") from None


def run_once(name: str, *, quick: bool = False, params: Mapping[str, Any] | None = None,
             variant: Mapping[str, str] | None = None, iterations: int | None = None,
             warmup: int | None = None, progress: Progress | None = None,
             pinning: str | Mapping[str, Sequence[int]] | None = None) -> RunOutcome:
    """One run (one fresh VM) of one variant; raises VariantUnsupported where the kernel
    cannot run it.  ``pinning``: ``--pin``'s text or role -> CPUs.  Nothing is written to
    disk."""
    spec = scenario(name)
    chosen = {axis.name: (variant or {}).get(axis.name, axis.values[0])
              for axis in spec.variant_axes}
    plan = SessionPlan.resolve(spec, params=params, quick=quick, iterations=iterations,
                               warmup=warmup, variants={k: [v] for k, v in chosen.items()},
                               pinning=pinning)
    return spec.run(RunRequest(params=plan.params, variant=plan.variants[0],
                               iterations=plan.iterations, warmup=plan.warmup,
                               progress=progress or (lambda message: None),
                               pinning=plan.pinning))


def run(name: str, *, quick: bool = False, params: Mapping[str, Any] | None = None,
        variants: Mapping[str, Sequence[str]] | None = None, repeat: int = 5,
        iterations: int | None = None, warmup: int | None = None, label: str | None = None,
        out: Path | str = DEFAULT_DIR, progress: Progress | None = None,
        pinning: str | Mapping[str, Sequence[int]] | None = None) -> SessionOutcome:
    """What ``kvmharness run`` does: ``repeat`` runs per variant, interleaved, written to a
    result file under ``out`` after every run.  Returns the session (``.result``, ``.path``
    (None when no run completed: nothing is written then), ``.failed_runs``); Ctrl-C is
    re-raised after the completed runs were saved."""
    spec = scenario(name)
    plan = SessionPlan.resolve(spec, params=params, variants=variants, quick=quick,
                               repeat=repeat, iterations=iterations, warmup=warmup,
                               label=label, pinning=pinning)
    path = default_result_path(Path(out), spec.name, plan.label)
    session = run_session(plan, path, fingerprint.collect(),
                          progress=progress or (lambda message: None))
    if session.interrupted:
        raise KeyboardInterrupt(f"interrupted; completed runs are in {session.path}"
                                if session.path else "interrupted before any run completed")
    return session
