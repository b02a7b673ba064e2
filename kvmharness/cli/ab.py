"""``kvmharness ab``: boot each kernel under virtme-ng, run the scenarios inside, compare."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from kvmharness.cli import common
from kvmharness.compare import stats
from kvmharness.compare.build import Settings
from kvmharness.compare.render import FORMATS, format_report
from kvmharness.results.store import DEFAULT_DIR
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import ScenarioSpec

if TYPE_CHECKING:  # the runner is imported when `ab` runs, not at every CLI start
    from kvmharness.runner.ab import AbOutcome, Progress


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("ab", help="boot kernels A, B, ... under QEMU (virtme-ng), run the "
                       "scenarios inside each, compare each with A",
                       parents=[common.scenario_options(per_boot=True)])
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO")
    p.add_argument("--kernel", action="append", type=common.key_value, default=[], required=True,
                   metavar="NAME=PATH", help="a kernel to boot: an image (bzImage/vmlinuz) "
                   "with its modules tree, a build directory or an unpacked Debian "
                   "linux-image package; NAME labels its results (repeat: A first; one "
                   "PATH may be given under several names, with different --append)")
    p.add_argument("--append", action="append", type=common.key_value, default=[],
                   metavar="NAME=ARGS", help="kernel command line for kernel NAME, e.g. "
                   "kvm.tdp_mmu=0 (legacy TDP MMU), kvm_amd.npt=0 or kvm_intel.ept=0 (shadow "
                   "paging); repeatable")
    p.add_argument("--modules", action="append", type=common.key_value, default=[],
                   metavar="NAME=DIR", help="the lib/modules/VERSION tree of an image given "
                   "as PATH, when it is not beside the image")
    p.add_argument("--kvm", action="append", type=common.key_value, default=[],
                   metavar="NAME=OVERLAY", help="boot kernel NAME with the KVM modules of a "
                   "kvmharness build-kvm --out folder (the stock modules tree with kvm*.ko "
                   "rebuilt); NAME's PATH may be a package folder, an image or a build dir")
    p.add_argument("--rounds", type=common.positive, default=2, metavar="R",
                   help="boots per kernel, interleaved A B C A B C (default 2)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help=f"folder for result files, logs and tables (default {DEFAULT_DIR}/"
                   "ab-<UTC time>/)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto: -cpu host with nested KVM where the host has VT-x/AMD-V and a "
                   "real /dev/kvm, else TCG -cpu max (timings not representative)")
    p.add_argument("--cpus", type=common.positive, help="vCPUs per boot (default: 1 under "
                   "TCG, where more run on one TCG thread; up to 8 with KVM)")
    p.add_argument("--memory", default="4G", help="guest memory (default 4G)")
    p.add_argument("--timeout", type=common.positive, default=1800, metavar="S",
                   help="seconds per boot before QEMU is killed (default 1800)")
    p.add_argument("--format", choices=FORMATS, default="plain",
                   help="table format printed (plain and Markdown files are always written)")
    p.add_argument("--alpha", type=common.alpha, default=0.05)
    p.add_argument("--min-change", type=common.percent("--min-change"), default=0.01,
                   metavar="PCT", help="smallest |change| reported as significant, in "
                   "percent: 1 or 1%% (default 1%%)")
    p.add_argument("--dry-run", action="store_true",
                   help="check prerequisites and print the vng commands; boot nothing")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="do not echo the guests' output (it is in each boot's output.log)")
    p.set_defaults(handler=cmd_ab)


def scenario_calls(args: argparse.Namespace, specs: dict[str, ScenarioSpec]) -> list[Any]:
    """One `kvmharness run` call per scenario, with the options that apply to it.

    A --param or --variant goes to every scenario that declares it, and must fit at least
    one; each call is checked here exactly as `run` would check it, so a typo fails before
    any kernel boots.  Raises ValueError/KeyError with a message for the user.
    """
    import math

    from kvmharness.runner.ab import ScenarioCall

    unknown = [s for s in args.scenarios if s not in specs]
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(specs) or 'none'})")
    repeat = args.repeat or math.ceil((common.QUICK_REPEAT if args.quick
                                       else common.DEFAULT_REPEAT)
                                      / args.rounds)
    used_params: set[str] = set()
    used_axes: set[str] = set()
    calls = []
    for name in dict.fromkeys(args.scenarios):
        spec = specs[name]
        pnames = {p.name for p in spec.parameters}
        axes = {a.name for a in spec.variant_axes}
        params = [(k, v) for k, v in args.param if k in pnames]
        variants = [(k, v) for k, v in args.variant if k in axes]
        used_params |= {k for k, _ in params}
        used_axes |= {k for k, _ in variants}
        common.plan_from_args(spec, argparse.Namespace(
            param=params, variant=variants, quick=args.quick, repeat=repeat,
            iterations=args.iterations, warmup=args.warmup), label="ab")
        calls.append(ScenarioCall(name, call_options(args, params, variants, repeat)))
    stray = [k for k, _ in args.param if k not in used_params]
    stray += [k for k, _ in args.variant if k not in used_axes]
    if stray:
        raise ValueError(f"{', '.join(map(repr, stray))}: not a parameter or variant axis of "
                         f"{', '.join(args.scenarios)}")
    return calls


def call_options(args: argparse.Namespace, params: list[tuple[str, str]],
                 variants: list[tuple[str, str]], repeat: int) -> tuple[str, ...]:
    """The `kvmharness run` options of one scenario's call inside each boot."""
    options = ["--quick"] if args.quick else []
    options += [x for k, v in params for x in ("--param", f"{k}={v}")]
    options += [x for k, v in variants for x in ("--variant", f"{k}={v}")]
    options += ["--repeat", str(repeat)]
    if args.iterations:
        options += ["--iterations", str(args.iterations)]
    if args.warmup is not None:
        options += ["--warmup", str(args.warmup)]
    options += common.per_boot_options(args, len(dict.fromkeys(args.scenarios)))
    return tuple(options)


def check_append(name: str, text: str) -> None:
    """vng puts the command line into QEMU's -append and virtme-ng-init reads it back:
    quotes would be taken apart differently there than here."""
    from kvmharness.runner.kernels import KernelPathError

    if any(c in text for c in "'\"\\\n"):
        raise KernelPathError(f"--append {name}={text!r}: no quotes, backslashes or "
                              "newlines in a kernel command line given here")


def cmd_ab(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    import dataclasses
    import datetime

    from kvmharness.runner import ab
    from kvmharness.runner.kernels import KernelPathError, resolve_kernel, with_kvm_overlay

    try:
        calls = scenario_calls(args, registry.all_scenarios())
    except (ValueError, KeyError) as e:
        err.write(f"kvmharness ab: {e.args[0] if e.args else e}\n")
        return common.EXIT_USAGE
    names = [n for n, _ in args.kernel]
    if len(set(names)) != len(names):
        err.write(f"kvmharness ab: kernel names must differ: {', '.join(names)}\n")
        return common.EXIT_USAGE
    modules = dict(args.modules)
    overlays = dict(args.kvm)
    appends: dict[str, list[str]] = {}
    for n, text in args.append:
        appends.setdefault(n, []).append(text)
    both = sorted(set(modules) & set(overlays))
    if both:
        err.write(f"kvmharness ab: --modules and --kvm both given for {', '.join(both)}: "
                  "the overlay is a whole modules tree; give one\n")
        return common.EXIT_USAGE
    for option, given in (("--modules", modules), ("--append", appends),
                          ("--kvm", overlays)):
        stray = set(given) - set(names)
        if stray:
            err.write(f"kvmharness ab: {option} for unknown kernel "
                      f"{', '.join(sorted(stray))}\n")
            return common.EXIT_USAGE
    try:
        resolved = [resolve_kernel(n, p, modules.get(n)) for n, p in args.kernel]
        resolved = [with_kvm_overlay(k, overlays[k.name]) if k.name in overlays else k
                    for k in resolved]
        kernels = tuple(dataclasses.replace(k, append=" ".join(appends.get(k.name, ())))
                        for k in resolved)
        for k in kernels:
            check_append(k.name, k.append)
    except KernelPathError as e:
        err.write(f"kvmharness ab: {e}\n")
        return common.EXIT_USAGE
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    opts = ab.AbOptions(
        kernels=kernels, calls=tuple(calls), rounds=args.rounds,
        out_dir=args.out or DEFAULT_DIR / f"ab-{stamp}", accel=args.accel, cpus=args.cpus,
        memory=args.memory, timeout_s=args.timeout,
        settings=Settings(alpha=args.alpha, min_change=args.min_change),
        dry_run=args.dry_run)
    try:
        outcome = ab.execute(opts, argv, progress(out, err, quiet=args.quiet))
    except OSError as e:
        # The out folder, a boot folder, ab.json or a table cannot be written (a boot's
        # QEMU is already gone: boot() cleans up before anything propagates).
        err.write(f"kvmharness ab: {e}\n")
        return common.EXIT_FAILED
    return report_outcome(outcome, args.format, out, err)


def progress(out: TextIO, err: TextIO, quiet: bool) -> Progress:
    """Progress lines to stderr as they come; the guests' own output unless --quiet."""
    from kvmharness.runner.ab import Progress

    def to(stream: TextIO, enabled: bool = True) -> Callable[[str], None]:
        def write(line: str) -> None:
            if enabled:
                stream.write(line + "\n")
                stream.flush()
        return write

    return Progress(note=to(err), guest_out=to(out, not quiet), guest_err=to(err, not quiet))


def report_outcome(outcome: AbOutcome, fmt: str, out: TextIO, err: TextIO) -> int:
    """Print what ``ab`` did and choose the exit status: 1 when it could not run or a boot
    or scenario failed, 128 + signal when a signal stopped it, else 0."""
    if outcome.failure is not None:
        err.writelines(f"kvmharness ab: {line}\n" for line in outcome.failure.splitlines())
        return common.EXIT_FAILED
    if outcome.dry_run:
        print_dry_run(outcome, out)
        return 0
    if outcome.interrupted is not None:
        err.write(f"interrupted: completed result files are kept in {outcome.out_dir}\n")
        return 128 + outcome.interrupted
    for name, report in outcome.reports:
        title = ("Kernels compared" if name == "kernels"
                 else f"Variants compared within {name.split('-', 1)[1]}")
        out.write(f"\n== {title} (compare-{name}.txt / .md) ==\n")
        out.write(format_report(report, fmt))
    err.writelines(f"note: {n}\n" for n in outcome.notes)
    print_boots(outcome, out)
    return 0 if outcome.ok else common.EXIT_FAILED


def print_dry_run(outcome: AbOutcome, out: TextIO) -> None:
    from kvmharness.runner.boot import shq

    for b in outcome.dry_run:
        out.write(f"# round {b.round}, {b.kernel}\n{' '.join(shq(c) for c in b.command)}\n")
        out.write(f"# guest.sh runs, after modprobe {b.modprobe}:\n")
        out.writelines(f"#   {line}\n" for line in b.guest_lines)
    rounds = max((b.round for b in outcome.dry_run), default=0)
    if rounds:
        out.writelines(f"# {line}\n" for line in rounds_verdict(rounds))


def rounds_verdict(rounds: int, alpha: float = 0.05) -> list[str]:
    """Whether ``rounds`` can reach significance in a kernel comparison, which tests
    per-boot medians (one boot per kernel per round): the exact test's smallest p at
    rounds/rounds boots, and the rounds a family of 1, 3 or 10 headline tests needs."""
    floor = stats.smallest_p(rounds, rounds)
    needs = ", ".join(f"{stats.runs_needed(t, alpha)} for {t}" for t in (1, 3, 10))
    if rounds < 2:
        head = ("1 round: one boot per kernel, so no kernel-level claim is possible "
                "(boot-to-boot variance unknown)")
    else:
        can = [t for t in (1, 3, 10) if floor * t < alpha]
        verdict = (f"can reach p < {alpha:g} with up to {int((alpha - 1e-12) / floor)} "
                   "headline tests" if can else f"cannot reach p < {alpha:g}: no kernel "
                   "difference can be significant")
        head = (f"{rounds} rounds = {rounds} boots per kernel; kernels are compared on "
                f"per-boot medians, smallest p {floor:.3g}: {verdict}")
    return [head, f"rounds needed for a family of headline tests: {needs} tests "
            "(--rounds)"]


def print_boots(outcome: AbOutcome, out: TextIO) -> None:
    out.write("\nboots:\n")
    for r in outcome.boots:
        state = r.result.summary() if r.result else (r.skipped or "not run")
        bad = {s: rc for s, rc in r.scenario_status.items() if rc}
        extra = f"; scenarios failed: {bad}" if bad else ""
        out.write(f"  round {r.round} {r.kernel}: {state}{extra}\n")
        if r.mmu:
            out.write(f"    MMU: {r.mmu}\n")
    if outcome.accel and outcome.accel.warning:
        out.write(f"\nWARNING: {outcome.accel.warning}\n")
    out.write(f"files: {outcome.out_dir}\n")
