"""``kvmharness info | list | run | compare | ab``.

Exit status: 0 success; 1 a run failed or a file could not be used; 2 usage error;
130 interrupted by Ctrl-C (completed runs are kept in the result file).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from kvmharness.compare.build import CompareError, Settings, build_report
from kvmharness.compare.tables import FORMATS, format_report, format_run_summary
from kvmharness.observe import fingerprint
from kvmharness.results.model import spec_metadata
from kvmharness.results.session import SessionPlan, expand_variants, run_session
from kvmharness.results.store import DEFAULT_DIR, default_result_path, load_result
from kvmharness.results.validate import ResultFormatError
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import ScenarioSpec

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_REPEAT = 10
QUICK_REPEAT = 5  # the smallest n per side whose exact test can still reach p < 0.01


def collect_fingerprint() -> dict[str, Any]:
    """Indirection so tests can substitute a canned fingerprint."""
    return fingerprint.collect()


# --- argument types --------------------------------------------------------------------


def _fraction(text: str) -> float:
    """'1%' -> 0.01; '0.01' -> 0.01."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or a percentage, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1) or [0%, 100%), got {text!r}")
    return value


def _alpha(text: str) -> float:
    value = _fraction(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("alpha must be > 0")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    return 0 if text.strip() == "0" else _positive(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmharness",
                                     description="Drive KVM through /dev/kvm; run and compare "
                                                 "memslot/MMU zap scenarios.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="host fingerprint and what it can measure")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("list", help="scenarios, their parameters, variants and metrics")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("run", help="run a scenario and write a result file")
    p.add_argument("scenario")
    p.add_argument("--quick", action="store_true",
                   help=f"CI-sized parameters; --repeat defaults to {QUICK_REPEAT}")
    p.add_argument("--param", action="append", type=_key_value, default=[], metavar="K=V",
                   help="override a parameter (repeatable)")
    p.add_argument("--variant", action="append", type=_key_value, default=[],
                   metavar="AXIS=V1,V2", help="variant values to run, e.g. zap=all,slot "
                   "(default: every value of every axis)")
    p.add_argument("--repeat", type=_positive, metavar="N",
                   help=f"runs (fresh VMs) per variant (default {DEFAULT_REPEAT})")
    p.add_argument("--iterations", type=_positive, metavar="I",
                   help="measured iterations per run (default: the scenario's)")
    p.add_argument("--warmup", type=_non_negative, metavar="W",
                   help="discarded iterations per run (default: the scenario's)")
    p.add_argument("--label", help="name for this setup, e.g. the kernel under test "
                   "(default: the kernel release)")
    p.add_argument("--out", type=Path, default=DEFAULT_DIR, metavar="DIR",
                   help=f"directory for the result file (default {DEFAULT_DIR}/)")

    p = sub.add_parser("compare", help="compare result files (labels or variants)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--format", choices=FORMATS, default="plain")
    p.add_argument("--alpha", type=_alpha, default=0.05)
    p.add_argument("--min-change", type=_fraction, default=0.01, metavar="PCT",
                   help="smallest |change| reported as significant (default 1%%)")
    p.add_argument("--by", choices=("auto", "label", "variant", "file"), default="auto",
                   help="what differs between A and B (default: labels if the files have "
                   "several, else variants, else files)")
    p.add_argument("--seed", type=int, default=Settings().seed,
                   help="bootstrap seed (same files + seed = same output)")

    p = sub.add_parser("ab", help="boot kernels A and B under QEMU (virtme-ng), run the "
                       "scenarios inside each, compare them")
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO")
    p.add_argument("--kernel", action="append", type=_key_value, default=[], required=True,
                   metavar="NAME=PATH", help="a kernel to boot: an image (bzImage/vmlinuz) "
                   "with its modules tree, a build directory or an unpacked Debian "
                   "linux-image package; NAME labels its results (repeat: A first)")
    p.add_argument("--modules", action="append", type=_key_value, default=[],
                   metavar="NAME=DIR", help="the lib/modules/VERSION tree of an image given "
                   "as PATH, when it is not beside the image")
    p.add_argument("--quick", action="store_true", help="CI-sized parameters")
    p.add_argument("--param", action="append", type=_key_value, default=[], metavar="K=V",
                   help="override a parameter of every scenario that has it (repeatable)")
    p.add_argument("--variant", action="append", type=_key_value, default=[],
                   metavar="AXIS=V1,V2", help="variant values to run (default: all)")
    p.add_argument("--repeat", type=_positive, metavar="N",
                   help=f"runs per variant in each boot (default: {QUICK_REPEAT} with --quick, "
                   f"else {DEFAULT_REPEAT}, split over the rounds)")
    p.add_argument("--iterations", type=_positive, metavar="I")
    p.add_argument("--warmup", type=_non_negative, metavar="W")
    p.add_argument("--rounds", type=_positive, default=2, metavar="R",
                   help="boots per kernel, interleaved A B A B (default 2)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help=f"folder for result files, logs and tables (default {DEFAULT_DIR}/"
                   "ab-<UTC time>/)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto: -cpu host with nested KVM where the host has VT-x/AMD-V and a "
                   "real /dev/kvm, else TCG -cpu max (timings not representative)")
    p.add_argument("--cpus", type=_positive, help="vCPUs per boot (TCG: 1 only)")
    p.add_argument("--memory", default="4G", help="guest memory (default 4G)")
    p.add_argument("--timeout", type=_positive, default=1800, metavar="S",
                   help="seconds per boot before QEMU is killed (default 1800)")
    p.add_argument("--format", choices=FORMATS, default="plain",
                   help="table format printed (plain and Markdown files are always written)")
    p.add_argument("--alpha", type=_alpha, default=0.05)
    p.add_argument("--min-change", type=_fraction, default=0.01, metavar="PCT")
    p.add_argument("--dry-run", action="store_true",
                   help="check prerequisites and print the vng commands; boot nothing")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="do not echo the guests' output (it is in each boot's output.log)")
    return parser


# --- info ------------------------------------------------------------------------------


def _gib(n: Any) -> str:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, (int, float)) else str(n)


def info_text(fp: dict[str, Any]) -> str:
    k, cpu, h = fp["kernel"], fp["cpu"], fp["harness"]
    commit = h.get("git_commit")
    version = f"kvmharness {h['version']}" + (
        f" (git {commit[:12]}{', modified' if h.get('git_dirty') else ''})" if commit else "")
    backend = fp["backend"]
    lines = [
        version,
        f"kernel:   {k['release']} {k['version']}",
        f"cmdline:  {k['cmdline']}",
        f"cpu:      {cpu['model']} ({cpu['vendor']}, microcode {cpu['microcode']}), "
        f"{cpu['nproc']} CPUs",
        f"memory:   {_gib(fp['memory']['total_bytes'])}",
        f"backend:  {backend['kind']}{' (nested)' if backend['nested'] else ''}",
    ]
    for module, params in fp["kvm_modules"].items():
        keys = fingerprint.KEY_PARAMETERS.get(module, ())
        shown = " ".join(f"{n}={params[n]}" for n in keys if n in params)
        rest = len(params) - sum(1 for n in keys if n in params)
        if shown:
            lines.append(f"module {module}: {shown}" + (f"; {rest} more in --json" if rest else ""))
        else:
            lines.append(f"module {module}: loaded ({rest} parameters in --json)")
    kvm = fp["kvm"]
    if kvm.get("status") == "ok":
        caps = kvm.get("capabilities", {})
        lines.append(f"capabilities: {sum(1 for v in caps.values() if v)} of {len(caps)} "
                     "known KVM_CAP_* supported (--json lists them)")
        quirks = [q for q, on in kvm.get("quirks", {}).items() if on]
        lines.append(f"quirks (KVM_CAP_DISABLE_QUIRKS2): {', '.join(quirks) or 'none'}")
    else:
        lines.append(f"KVM: {kvm.get('status')}")
    lines += ["", "What this host can measure:"]
    lines += [f"  - {s}" for s in fingerprint.statements(fp)]
    return "\n".join(lines) + "\n"


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    fp = collect_fingerprint()
    if args.json:
        json.dump({"fingerprint": fp, "statements": fingerprint.statements(fp)}, out, indent=2)
        out.write("\n")
    else:
        out.write(info_text(fp))
    return 0


# --- list ------------------------------------------------------------------------------


def spec_json(spec: ScenarioSpec) -> dict[str, Any]:
    return {**spec_metadata(spec), "default_iterations": spec.default_iterations,
            "default_warmup": spec.default_warmup}


def list_text(specs: dict[str, ScenarioSpec]) -> str:
    if not specs:
        return "no scenarios registered (kvmharness/scenarios/registry.py)\n"
    lines: list[str] = []
    for spec in specs.values():
        lines += [f"{spec.name}: {spec.summary}",
                  f"  iterations {spec.default_iterations}, warmup {spec.default_warmup}"]
        if spec.parameters:
            lines.append("  parameters (default / --quick):")
            lines += [f"    {p.name} = {p.default} / {p.quick} {p.unit}: {p.help}"
                      for p in spec.parameters]
        if spec.variant_axes:
            lines.append("  variants:")
            lines += [f"    {a.name} = {','.join(a.values)}: {a.help}" for a in spec.variant_axes]
        lines.append("  metrics:")
        lines += [f"    {m.name} [{m.unit}], {m.direction} is better: {m.help}"
                  for m in spec.metrics]
        lines.append("")
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    specs = registry.all_scenarios()
    if args.json:
        json.dump({"scenarios": [spec_json(s) for s in specs.values()]}, out, indent=2)
        out.write("\n")
    else:
        out.write(list_text(specs))
    return 0


# --- run -------------------------------------------------------------------------------


def _plan(args: argparse.Namespace, spec: ScenarioSpec) -> SessionPlan:
    """Raises ValueError/KeyError with a message fit for the user."""
    params = spec.resolve_params(dict(args.param), quick=args.quick)
    selected: dict[str, list[str]] = {}
    for axis, values in args.variant:
        selected.setdefault(axis, []).extend(v for v in values.split(",") if v)
    return SessionPlan(
        spec=spec,
        params=params,
        variants=expand_variants(spec, selected),
        repeat=args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT),
        iterations=args.iterations or spec.default_iterations,
        warmup=spec.default_warmup if args.warmup is None else args.warmup,
        label=args.label or platform.release(),
        quick=args.quick,
    )


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    specs = registry.all_scenarios()
    spec = specs.get(args.scenario)
    if spec is None:
        err.write(f"kvmharness run: unknown scenario {args.scenario!r} "
                  f"(known: {', '.join(specs) or 'none'})\n")
        return EXIT_USAGE
    try:
        plan = _plan(args, spec)
    except (ValueError, KeyError) as e:
        err.write(f"kvmharness run: {e.args[0] if e.args else e}\n")
        return EXIT_USAGE
    environment = collect_fingerprint()
    path = default_result_path(args.out, spec.name, plan.label)

    def progress(message: str) -> None:
        err.write(message + "\n")
        err.flush()

    try:
        session = run_session(plan, path, environment, progress=progress)
    except OSError as e:
        # Scenario errors are recorded as failed runs; what escapes is (almost always)
        # writing the result file: its folder or the disk.
        err.write(f"kvmharness run: {e if e.filename else f'{path}: {e}'}\n")
        return EXIT_FAILED
    result = session.result
    counts = ", ".join(f"{len(result.ok_runs(v))} {('/'.join(v.values()) or 'runs')}"
                       for v in result.variants)
    out.write(f"{spec.name}: {len(result.ok_runs())} completed runs ({counts}) "
              f"-> {path}\n")
    if result.ok_runs():
        out.write(format_run_summary(result))
    for w in result.warnings:
        out.write(f"warning: {w}\n")
    if len(result.variants) > 1 and result.ok_runs():
        out.write(f"A/B statistics: kvmharness compare {path}\n")
    if session.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if session.failed_runs else 0


# --- compare ---------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        files = [load_result(p) for p in args.files]
        report = build_report(files, by=args.by,
                              settings=Settings(alpha=args.alpha, min_change=args.min_change,
                                                seed=args.seed))
    except (ResultFormatError, CompareError) as e:
        err.write(f"kvmharness compare: {e}\n")
        return EXIT_FAILED
    out.write(format_report(report, args.format))
    if args.format == "csv":
        # CSV stays machine-readable; the caveats still reach the person running it.
        for c in report.comparisons:
            for line in (*c.differences, *c.warnings):
                err.write(f"warning: {c.scenario} ({c.context}) {c.a.name} vs {c.b.name}: "
                          f"{line}\n")
    return 0


# --- ab --------------------------------------------------------------------------------


def _ab_calls(args: argparse.Namespace, specs: dict[str, ScenarioSpec]
              ) -> list[Any]:
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
    repeat = args.repeat or math.ceil((QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
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
        _plan(argparse.Namespace(param=params, variant=variants, quick=args.quick,
                                 repeat=repeat, iterations=args.iterations,
                                 warmup=args.warmup, label="ab"), spec)
        options = ["--quick"] if args.quick else []
        options += [x for k, v in params for x in ("--param", f"{k}={v}")]
        options += [x for k, v in variants for x in ("--variant", f"{k}={v}")]
        options += ["--repeat", str(repeat)]
        if args.iterations:
            options += ["--iterations", str(args.iterations)]
        if args.warmup is not None:
            options += ["--warmup", str(args.warmup)]
        calls.append(ScenarioCall(name, tuple(options)))
    stray = [k for k, _ in args.param if k not in used_params]
    stray += [k for k, _ in args.variant if k not in used_axes]
    if stray:
        raise ValueError(f"{', '.join(map(repr, stray))}: not a parameter or variant axis of "
                         f"{', '.join(args.scenarios)}")
    return calls


def cmd_ab(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    import datetime

    from kvmharness.runner import ab
    from kvmharness.runner.kernels import KernelPathError, resolve_kernel

    try:
        calls = _ab_calls(args, registry.all_scenarios())
    except (ValueError, KeyError) as e:
        err.write(f"kvmharness ab: {e.args[0] if e.args else e}\n")
        return EXIT_USAGE
    names = [n for n, _ in args.kernel]
    if len(set(names)) != len(names):
        err.write(f"kvmharness ab: kernel names must differ: {', '.join(names)}\n")
        return EXIT_USAGE
    modules = dict(args.modules)
    stray = set(modules) - set(names)
    if stray:
        err.write(f"kvmharness ab: --modules for unknown kernel {', '.join(sorted(stray))}\n")
        return EXIT_USAGE
    try:
        kernels = tuple(resolve_kernel(n, p, modules.get(n)) for n, p in args.kernel)
    except KernelPathError as e:
        err.write(f"kvmharness ab: {e}\n")
        return EXIT_USAGE
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    opts = ab.AbOptions(
        kernels=kernels, calls=tuple(calls), rounds=args.rounds,
        out_dir=args.out or DEFAULT_DIR / f"ab-{stamp}", accel=args.accel, cpus=args.cpus,
        memory=args.memory, timeout_s=args.timeout, fmt=args.format,
        settings=Settings(alpha=args.alpha, min_change=args.min_change),
        dry_run=args.dry_run, quiet=args.quiet)
    try:
        return ab.execute(opts, argv, out, err)
    except OSError as e:
        # The out folder, a boot folder, ab.json or a table cannot be written (a boot's
        # QEMU is already gone: boot() cleans up before anything propagates).
        err.write(f"kvmharness ab: {e}\n")
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help or a usage error: return the status, don't exit
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "info":
            return cmd_info(args, out)
        if args.command == "list":
            return cmd_list(args, out)
        if args.command == "run":
            return cmd_run(args, out, err)
        if args.command == "ab":
            return cmd_ab(args, sys.argv[1:] if argv is None else list(argv), out, err)
        return cmd_compare(args, out, err)
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `kvmharness compare ... | head`: the reader left; not an error of ours.
        return 0
