"""A plan file (TOML): the scenarios, parameters, variants and repetitions of a run, written
once and run as it is on one host (``kvmharness run --plan FILE``) or on every host of a
fleet (``kvmharness fleet``, whose hosts run that same command), so a fleet's result files
are exactly the files a local run writes.

A plan becomes ``kvmharness`` command lines, the ones a user would type: one ``run`` per
``[[scenario]]``, or, when the plan names ``[kernels]``, one ``ab`` that boots each kernel
and runs every scenario inside.  Nothing here runs a scenario itself.

    quick = true               # plan-wide defaults, each optional
    repeat = 2
    # until_ci = "5%"  max_time = 120  pin = "auto"  label = "..."  iterations/warmup

    [[scenario]]
    name = "slot-ops"
    variants = { zap = ["all", "slot"] }
    params = { slots = 8 }     # any plan-wide key may be given here for this scenario

    [kernels]                  # optional: kvmharness ab, one boot per kernel per round
    v6_1 = "/boot/vmlinuz-6.1.0-56-amd64"
    [ab]                       # optional: rounds = 2, append = { v6_1 = "kvm.tdp_mmu=0" }
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Keys a plan may set for every scenario (top level) or for one ([[scenario]]).
RUN_KEYS = ("quick", "repeat", "iterations", "warmup", "until_ci", "max_time", "pin", "label")
SCENARIO_KEYS = ("name", "params", "variants", *RUN_KEYS)
TOP_KEYS = ("scenario", "kernels", "ab", *RUN_KEYS)
AB_KEYS = ("rounds", "append", "cpus", "memory", "timeout", "accel")

TOML_HINT = ("reading a plan file needs Python >= 3.11 (tomllib) or the tomli package: "
             "pip install 'kvmharness[fleet]'")


class PlanError(ValueError):
    """The plan file cannot be read or says something the harness cannot run."""


@dataclasses.dataclass(frozen=True)
class Plan:
    path: Path
    # One kvmharness command line (without the program name) per step, in order.
    commands: tuple[tuple[str, ...], ...]
    scenarios: tuple[str, ...]
    kernels: tuple[str, ...] = ()  # kernel names when the plan is an ``ab``


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        try:
            import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise PlanError(TOML_HINT) from None
    try:
        return dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"not valid TOML: {e}") from None


def load(path: Path) -> Plan:
    """The plan in ``path``; PlanError naming the file and what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"{path}: {e.strerror if isinstance(e, OSError) else e}") from None
    try:
        return parse(_toml_loads(text), Path(path))
    except PlanError as e:
        raise PlanError(f"{path}: {e}") from None


def _unknown(where: str, table: Mapping[str, Any], allowed: Sequence[str]) -> None:
    stray = [k for k in table if k not in allowed]
    if stray:
        raise PlanError(f"{where}: unknown key {', '.join(map(repr, stray))} "
                        f"(known: {', '.join(allowed)})")


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PlanError(f"{where} must be a table, got {type(value).__name__}")
    return value


def _scalar(where: str, value: Any) -> str:
    """A TOML value as ``--param``/``--variant`` text (a bool as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise PlanError(f"{where}: expected a string, number or boolean, got {value!r}")


def _run_options(where: str, settings: Mapping[str, Any]) -> list[str]:
    """The scenario options (cli.common.scenario_options) for RUN_KEYS values."""
    out: list[str] = []
    quick = settings.get("quick", False)
    if not isinstance(quick, bool):
        raise PlanError(f"{where}: quick must be true or false, got {quick!r}")
    if quick:
        out.append("--quick")
    for key in ("repeat", "iterations", "warmup"):
        value = settings.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanError(f"{where}: {key} must be an integer, got {value!r}")
        out += [f"--{key}", str(value)]
    for key in ("until_ci", "max_time", "pin"):
        if settings.get(key) is not None:
            out += [f"--{key.replace('_', '-')}", _scalar(f"{where}: {key}", settings[key])]
    return out


def _scenario_options(where: str, entry: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(--param options, --variant options) of one [[scenario]]."""
    params = _table(f"{where}: params", entry.get("params", {}))
    variants = _table(f"{where}: variants", entry.get("variants", {}))
    p = [x for k, v in params.items()
         for x in ("--param", f"{k}={_scalar(f'{where}: params.{k}', v)}")]
    v_opts: list[str] = []
    for axis, values in variants.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise PlanError(f"{where}: variants.{axis} is empty")
        texts = [_scalar(f"{where}: variants.{axis}", x) for x in values]
        v_opts += ["--variant", f"{axis}={','.join(texts)}"]
    return p, v_opts


def parse(doc: Mapping[str, Any], path: Path = Path("plan.toml")) -> Plan:
    _unknown("top level", doc, TOP_KEYS)
    entries = doc.get("scenario")
    if not isinstance(entries, list) or not entries:
        raise PlanError("no [[scenario]] given (each names a scenario: name = \"slot-ops\")")
    defaults = {k: doc[k] for k in RUN_KEYS if k in doc}
    kernels = _table("[kernels]", doc.get("kernels", {}))
    ab = _table("[ab]", doc.get("ab", {}))
    if ab and not kernels:
        raise PlanError("[ab] given without [kernels]")
    _unknown("[ab]", ab, AB_KEYS)
    steps: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
    for i, entry in enumerate(entries, 1):
        where = f"scenario {i}"
        entry = _table(f"[[scenario]] {i}", entry)
        _unknown(where, entry, SCENARIO_KEYS)
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise PlanError(f"{where}: name = \"SCENARIO\" missing")
        params, variants = _scenario_options(f"{where} ({name})", entry)
        steps.append((name, params, variants, {**defaults, **{k: entry[k] for k in RUN_KEYS
                                                                if k in entry}}))
    if not kernels:
        commands = []
        for name, params, variants, settings in steps:
            label = settings.get("label")
            commands.append(("run", name, *_run_options(name, settings), *params, *variants,
                             *(["--label", _scalar(f"{name}: label", label)] if label else [])))
        return Plan(path, tuple(commands), tuple(dict.fromkeys(s[0] for s in steps)))
    return _ab_plan(path, steps, kernels, ab)


def _ab_plan(path: Path, steps: Sequence[tuple[str, list[str], list[str], dict[str, Any]]],
             kernels: Mapping[str, Any], ab: Mapping[str, Any]) -> Plan:
    """One ``ab`` call: its scenario options apply to every scenario, so the scenarios must
    agree on them (a parameter goes to each scenario that has it, as ``ab`` does)."""
    shared = {_key(s) for s in steps}
    if len(shared) > 1:
        raise PlanError("with [kernels] the scenarios run inside one `kvmharness ab`, whose "
                        "run options (quick, repeat, ...) are shared: give them once at the "
                        "top level, not per scenario")
    settings = steps[0][3]
    if "label" in settings:
        raise PlanError("with [kernels] each kernel's name is its label: drop label")
    scenarios = tuple(dict.fromkeys(s[0] for s in steps))
    command = ["ab", *scenarios, *_run_options("plan", settings)]
    seen: dict[str, str] = {}
    for name, params, variants, _ in steps:
        for flag, value in zip(params[::2] + variants[::2], params[1::2] + variants[1::2]):
            key = f"{flag} {value.partition('=')[0]}"
            if seen.setdefault(key, value) != value:
                raise PlanError(f"{name}: {flag} {value} differs from another scenario's "
                                f"{seen[key]} (inside `ab` one value applies to every "
                                "scenario that has it)")
    command += [x for k, v in seen.items() for x in (k.split(" ")[0], v)]
    for kname, kpath in kernels.items():
        command += ["--kernel", f"{kname}={_scalar(f'kernels.{kname}', kpath)}"]
    appends = _table("[ab] append", ab.get("append", {}))
    stray = set(appends) - set(kernels)
    if stray:
        raise PlanError(f"[ab] append names no kernel of [kernels]: {', '.join(sorted(stray))}")
    for kname, text in appends.items():
        command += ["--append", f"{kname}={_scalar(f'[ab] append.{kname}', text)}"]
    for key in ("rounds", "cpus", "memory", "timeout", "accel"):
        if key in ab:
            command += [f"--{key}", _scalar(f"[ab] {key}", ab[key])]
    return Plan(path, (tuple(command),), scenarios, tuple(kernels))


def _key(step: tuple[str, list[str], list[str], dict[str, Any]]) -> str:
    return repr(sorted(step[3].items()))


def run(plan: Plan, *, out_dir: Path | None, host: str | None, err: Any) -> int:
    """Each command of ``plan`` in turn through ``kvmharness.cli.main``, with ``--out`` and
    ``--host`` added.  Returns 0, the first interrupt's status (the rest is not started),
    or else the highest status of any step."""
    from kvmharness.cli import main  # the package imports this module

    worst = 0
    for i, command in enumerate(plan.commands, 1):
        argv = [*command, *(["--out", str(out_dir)] if out_dir is not None else []),
                *(["--host", host] if host else [])]
        err.write(f"plan {plan.path} step {i}/{len(plan.commands)}: kvmharness "
                  f"{' '.join(argv)}\n")
        err.flush()
        status = main(argv)
        if status >= 128:
            return status
        worst = max(worst, status)
    return worst
