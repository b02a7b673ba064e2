"""``kvmharness run``: run one scenario's variants, interleaved, into a result file."""

from __future__ import annotations

import argparse
import shlex
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from kvmharness.cli import common, planfile
from kvmharness.compare.render.summary import format_run_summary
from kvmharness.observe import signals
from kvmharness.observe.tracefs import remove_stale_instances
from kvmharness.results.store import DEFAULT_DIR, default_result_path, result_file_name
from kvmharness.scenarios import registry
from kvmharness.session import run_session
from kvmharness.session.run import ResultWriteError
from kvmharness.session.until_ci import spread_line, spread_too_high


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("run", help="run a scenario and write a result file",
                       parents=[common.scenario_options(per_boot=False)])
    p.add_argument("scenario", nargs="?")
    p.add_argument("--plan", type=Path, metavar="FILE",
                   help="run what a plan file (TOML) names instead of one SCENARIO: its "
                   "scenarios, parameters, variants, repeat (docs/FLEET.md); only --out and "
                   "--host may be given with it")
    p.add_argument("--label", help="name for this setup, e.g. the kernel under test "
                   "(default: the kernel release)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help=f"directory for the result file (default {DEFAULT_DIR}/)")
    p.set_defaults(handler=lambda args, argv, out, err: cmd_run(args, out, err, argv))


# Human output fits a 75-column mail or terminal (the result file has everything).
TEXT_WIDTH = 75


def wrapped(text: str) -> str:
    """``text`` as lines of at most TEXT_WIDTH columns, continuations indented; the
    ``kvmharness run:`` or ``warning:`` prefix stays with the word after it."""
    cut = text.find(": ") + 2
    glued = text[:cut].replace(" ", "\0") + text[cut:]
    lines = textwrap.wrap(glued, TEXT_WIDTH, subsequent_indent="    ",
                          break_on_hyphens=False, break_long_words=False)
    return "\n".join(lines).replace("\0", " ") + "\n"


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO,
            argv: Sequence[str] = ()) -> int:
    if args.plan is not None:
        return run_plan(args, err)
    if args.scenario is None:
        err.write("kvmharness run: give a SCENARIO or --plan FILE\n")
        return common.EXIT_USAGE
    args.out = args.out or DEFAULT_DIR
    specs = registry.all_scenarios()
    spec = specs.get(args.scenario)
    if spec is None:
        err.write(wrapped(f"kvmharness run: unknown scenario {args.scenario!r} "
                          f"(known: {', '.join(specs) or 'none'})"))
        return common.EXIT_USAGE
    try:
        plan = common.plan_from_args(spec, args, label=args.label)
    except (ValueError, KeyError) as e:
        err.write(wrapped(f"kvmharness run: {e.args[0] if e.args else e}"))
        return common.EXIT_USAGE
    # Checked before anything runs or is written, cheapest and most basic first.
    name = result_file_name(spec.name, plan.label)
    problem = common.kvm_access_problem() or common.output_dir_problem(
        args.out, name, common.expected_result_bytes(plan))
    if problem:
        err.write(wrapped(f"kvmharness run: {problem}"))
        return common.EXIT_FAILED
    preflight = getattr(spec, "preflight", None)
    problems = list(preflight(plan.params)) if callable(preflight) else []
    if problems:
        for p in problems:
            err.write(wrapped(f"kvmharness run: {p}"))
        return common.EXIT_USAGE

    def progress(message: str) -> None:
        err.write(message + "\n")
        err.flush()

    with signals.interrupts_raise(ignore_once_interrupted=getattr(args, "as_program", False)):
        remove_stale_instances(err=err)  # a killed run's tracefs instance would skew ours
        environment = common.with_host(common.collect_fingerprint(), args.host)
        path = default_result_path(args.out, spec.name, plan.label)
        try:
            session = run_session(plan, path, environment, progress=progress,
                                  command=shlex.join(["kvmharness", *argv]) if argv else "")
        except OSError as e:
            # Scenario errors are recorded as failed runs; what escapes is (almost always)
            # writing the result file: its folder or the disk.
            named = e.filename or isinstance(e, ResultWriteError)
            err.write(wrapped(f"kvmharness run: {e if named else f'{path}: {e}'}"))
            return common.EXIT_FAILED
    result = session.result
    if session.path is None:
        out.write(f"{spec.name}: no run completed; no result file written\n")
        for w in result.warnings:
            out.write(wrapped(f"warning: {w}"))
        return signals.exit_status() if session.interrupted else common.EXIT_FAILED
    path = session.path
    counts = ", ".join(f"{len(result.ok_runs(v))} {('/'.join(v.values()) or 'runs')}"
                       for v in result.variants)
    out.write(f"{spec.name}: {len(result.ok_runs())} completed runs ({counts}) "
              f"-> {path}\n")
    if result.ok_runs():
        out.write(format_run_summary(result))
    for w in result.warnings:
        out.write(wrapped(f"warning: {w}"))
    spread = spread_line(spread_too_high(result, spec.precision_metrics()))
    if spread:
        out.write(wrapped(f"warning: {spread}"))
    if len(result.variants) > 1 and result.ok_runs():
        out.write(f"A/B statistics: kvmharness compare {path}\n")
    if session.interrupted:
        return signals.exit_status()
    return common.EXIT_FAILED if session.failed_runs else 0


# With --plan these come from the plan file; given on the command line too they would
# make the run differ from the fleet's run of the same plan.
PLAN_OWNS = ("scenario", "quick", "param", "variant", "repeat", "iterations", "warmup", "pin",
             "until_ci", "max_time", "label")


def run_plan(args: argparse.Namespace, err: TextIO) -> int:
    given = [name for name in PLAN_OWNS if getattr(args, name) not in (None, False, [])]
    if given:
        err.write(wrapped(f"kvmharness run: --plan names the scenarios and their options; "
                          f"drop {', '.join(given)} (only --out and --host go with it)"))
        return common.EXIT_USAGE
    try:
        plan = planfile.load(args.plan)
    except planfile.PlanError as e:
        err.write(wrapped(f"kvmharness run: --plan {e}"))
        return common.EXIT_USAGE
    return planfile.run(plan, out_dir=args.out, host=args.host, err=err)
