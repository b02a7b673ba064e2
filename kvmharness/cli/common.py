"""What every subcommand shares: exit statuses, argument types, the scenario options of
``run`` and ``ab`` (one argparse parent), and the host fingerprint indirection."""

from __future__ import annotations

import argparse
from typing import Any

from kvmharness.observe import fingerprint
from kvmharness.results.session import DEFAULT_REPEAT, QUICK_REPEAT, SessionPlan
from kvmharness.scenarios.base import ScenarioSpec

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def collect_fingerprint() -> dict[str, Any]:
    """Indirection so tests can substitute a canned fingerprint."""
    return fingerprint.collect()


# --- argument types --------------------------------------------------------------------


def fraction(text: str) -> float:
    """'1%' -> 0.01; '0.01' -> 0.01."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or a percentage, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1) or [0%, 100%), got {text!r}")
    return value


def alpha(text: str) -> float:
    value = fraction(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("alpha must be > 0")
    return value


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def scenario_options(*, per_boot: bool) -> argparse.ArgumentParser:
    """The options that shape scenario runs, shared by ``run`` and ``ab`` (``per_boot``:
    ``ab`` passes them on to the ``run`` inside each boot)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("scenario options")
    g.add_argument("--quick", action="store_true",
                   help=f"CI-sized parameters; --repeat defaults to {QUICK_REPEAT}")
    g.add_argument("--param", action="append", type=key_value, default=[], metavar="K=V",
                   help="override a parameter" + (" of every scenario that has it" if per_boot
                                                  else "") + " (repeatable)")
    g.add_argument("--variant", action="append", type=key_value, default=[],
                   metavar="AXIS=V1,V2", help="variant values to run, e.g. zap=all,slot "
                   "(default: every value of every axis)")
    g.add_argument("--repeat", type=positive, metavar="N",
                   help=(f"runs per variant in each boot (default: {QUICK_REPEAT} with "
                         f"--quick, else {DEFAULT_REPEAT}, split over the rounds)") if per_boot
                   else f"runs (fresh VMs) per variant (default {DEFAULT_REPEAT})")
    g.add_argument("--iterations", type=positive, metavar="I",
                   help="measured iterations per run (default: the scenario's)")
    g.add_argument("--warmup", type=non_negative, metavar="W",
                   help="discarded iterations per run (default: the scenario's)")
    return p


def plan_from_args(spec: ScenarioSpec, args: argparse.Namespace, *,
                   label: str | None = None) -> SessionPlan:
    """``args`` carries the scenario options above; raises ValueError/KeyError."""
    selected: dict[str, list[str]] = {}
    for axis, values in args.variant:
        selected.setdefault(axis, []).extend(v for v in values.split(",") if v)
    return SessionPlan.resolve(spec, params=dict(args.param), variants=selected,
                               quick=args.quick, repeat=args.repeat,
                               iterations=args.iterations, warmup=args.warmup,
                               label=label)
