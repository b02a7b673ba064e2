"""What every subcommand shares: exit statuses, argument types, the scenario options of
``run`` and ``ab`` (one argparse parent), and the host fingerprint indirection."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

# Looked up through this module at call time, so tests can substitute them.
from kvmharness import numbers
from kvmharness.kvm.access import (  # noqa: F401
    KVM_DEVICE,
    kvm_access_advice,
)
from kvmharness.kvm.access import (
    kvm_access_problem as kvm_access_problem,
)
from kvmharness.observe import fingerprint, pinning
from kvmharness.results.store import DEFAULT_MAX_BYTES
from kvmharness.results.validate import printable_report
from kvmharness.scenarios.base import ScenarioSpec
from kvmharness.scenarios.metrics import parse_size
from kvmharness.session import DEFAULT_REPEAT as DEFAULT_REPEAT
from kvmharness.session import QUICK_REPEAT as QUICK_REPEAT
from kvmharness.session import SessionPlan, until_ci
from kvmharness.session.plan import check_count

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class EscapingStream:
    """A text stream whose writes have their control characters escaped except tabs and
    newlines (``results.validate.printable_report``); everything else is the stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(printable_report(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def collect_fingerprint() -> dict[str, Any]:
    """Indirection so tests can substitute a canned fingerprint."""
    return fingerprint.collect()


def with_host(environment: dict[str, Any], host: str | None) -> dict[str, Any]:
    """The fingerprint with the fleet host name (``--host``) recorded, when given."""
    if host:
        environment["fleet"] = {"host": host}
    return environment


# --- argument types --------------------------------------------------------------------


def percent(option: str, *, allow_zero: bool = True,
            upper: float = 100) -> Callable[[str], float]:
    """The argparse type of an option that takes a percentage: '5' and '5%' both mean five
    percent (0.05); a bare value below 1 is refused with a hint."""
    def parse(text: str) -> float:
        try:
            return until_ci.parse_percent(text, option, allow_zero=allow_zero, upper=upper)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def fraction(text: str) -> float:
    """'1%' -> 0.01; '0.01' -> 0.01."""
    try:
        value = (numbers.parse_decimal(text[:-1], "") / 100 if text.endswith("%")
                 else numbers.parse_decimal(text, ""))
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


def _integer_at_least(text: str, minimum: int, knob: str | None = None) -> int:
    """An ASCII decimal integer >= ``minimum`` (and within ``knob``'s ceiling)."""
    try:
        value = numbers.parse_int(text, "")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer, got {text!r} (ASCII digits 0-9 only)") from None
    try:
        if knob is not None:
            check_count(knob, value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
    return value


def positive(text: str) -> int:
    return _integer_at_least(text, 1)


def non_negative(text: str) -> int:
    return _integer_at_least(text, 0)


def count_of(knob: str, minimum: int) -> Callable[[str], int]:
    """The argparse type of ``--repeat``/``--iterations``/``--warmup``: an integer from
    ``minimum`` up to the knob's ceiling (session.plan.COUNT_CEILINGS)."""
    def parse(text: str) -> int:
        return _integer_at_least(text, minimum, knob)
    return parse


def byte_size(text: str) -> int:
    """``--max-size``: a size like 512M or 2G (bare: bytes); 0 for no limit."""
    if text.strip() == "0":
        return 0
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (or 0 for no limit)") from None


def add_max_size(p: argparse.ArgumentParser) -> None:
    """The result-file size limit of the commands that read files (show, compare, plot)."""
    p.add_argument("--max-size", type=byte_size, default=DEFAULT_MAX_BYTES, metavar="SIZE",
                   help="refuse result files larger than SIZE, like 512M or 2G; 0: no limit "
                   f"(default {DEFAULT_MAX_BYTES >> 20}M; loading takes about 5x the "
                   "file's size in memory)")


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
    g.add_argument("--repeat", type=count_of("repeat", 1), metavar="N",
                   help=(f"runs per variant in each boot (default: {QUICK_REPEAT} with "
                         f"--quick, else {DEFAULT_REPEAT}, split over the rounds)") if per_boot
                   else f"runs (fresh VMs) per variant (default {DEFAULT_REPEAT})")
    g.add_argument("--iterations", type=count_of("iterations", 1), metavar="I",
                   help="measured iterations per run (default: the scenario's)")
    g.add_argument("--warmup", type=count_of("warmup", 0), metavar="W",
                   help="discarded iterations per run (default: the scenario's)")
    where = " inside each boot" if per_boot else ""
    g.add_argument("--pin", metavar="SPEC",
                   help=f"CPUs for the vCPU threads, memslot togglers and main thread{where}, "
                   "recorded per run: 'auto' (main and togglers on the first usable CPU, "
                   "vCPUs on the others), a CPU list for everything ('1', '0-3'), or "
                   "'vcpus=1,togglers=0,main=0'")
    g.add_argument("--until-ci", type=until_ci_percent, metavar="PCT",
                   help=f"keep adding rounds of runs (one per variant){where} until the 95%% "
                   "CI of every headline metric's median is within +-PCT of it, or "
                   f"--max-time is up (at least {until_ci.MIN_RUNS} runs per variant; "
                   "--repeat raises that minimum).  The rule looks only at how precise "
                   "each median is, never at whether variants or kernels differ, so "
                   "stopping cannot bias the comparison's p-values")
    g.add_argument("--max-time", type=seconds, metavar="S",
                   help=f"with --until-ci: start no round that would end after S seconds"
                   f"{' per scenario in each boot' if per_boot else ''} (default "
                   f"{until_ci.DEFAULT_MAX_TIME_S:g})")
    g.add_argument("--host", metavar="NAME",
                   help="the name of this host in a fleet (its inventory name), recorded in "
                   "the result file: `compare --by host` names the host's side by it")
    return p


until_ci_percent = percent("--until-ci", allow_zero=False)


# --until-ci's bound: its rounds stop at --max-time, so the ceiling is on that.
MAX_TIME_CEILING_S = 7 * 86400


def seconds(text: str) -> float:
    try:
        value = numbers.parse_decimal(text, "expected seconds")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not 0 < value <= MAX_TIME_CEILING_S:
        raise argparse.ArgumentTypeError(
            f"expected seconds > 0 and at most {MAX_TIME_CEILING_S} (a week), got {text!r}")
    return value


def until_ci_rule(args: argparse.Namespace) -> until_ci.UntilCi | None:
    """The --until-ci/--max-time rule of ``args`` (None without --until-ci)."""
    target, max_time = getattr(args, "until_ci", None), getattr(args, "max_time", None)
    if target is None:
        if max_time is not None:
            raise ValueError("--max-time applies only with --until-ci")
        return None
    return until_ci.UntilCi(target, max_time or until_ci.DEFAULT_MAX_TIME_S)


def per_boot_options(args: argparse.Namespace, scenarios: int = 1) -> list[str]:
    """``ab``: the --pin/--until-ci/--max-time options passed on to the ``run`` inside each
    boot.  The pin spec's CPUs are checked there, against the boot's own CPUs (here only
    its form, and its CPUs against --cpus when given).  Raises ValueError."""
    options: list[str] = []
    if args.pin is not None:
        cpus = getattr(args, "cpus", None)
        if cpus:
            try:
                pinning.parse(args.pin, allowed=range(cpus), siblings=())
            except pinning.PinError as e:
                raise pinning.PinError(f"{e} inside a boot with --cpus {cpus}") from None
        else:
            pinning.check_syntax(args.pin)
        options += ["--pin", args.pin]
    if getattr(args, "host", None):
        options += ["--host", args.host]
    rule = until_ci_rule(args)
    if rule is not None:
        options += ["--until-ci", f"{rule.target * 100:g}", "--max-time", f"{rule.max_time_s:g}"]
        timeout = getattr(args, "timeout", None)
        if timeout is not None and rule.max_time_s * scenarios >= timeout:
            raise ValueError(f"--max-time {rule.max_time_s:g} s for each of {scenarios} "
                             f"scenario(s) does not fit in a boot's --timeout of {timeout} s: "
                             "lower --max-time or raise --timeout")
    return options


def plan_from_args(spec: ScenarioSpec, args: argparse.Namespace, *,
                   label: str | None = None) -> SessionPlan:
    """``args`` carries the scenario options above; raises ValueError/KeyError."""
    selected: dict[str, list[str]] = {}
    for axis, values in args.variant:
        chosen = [v.strip() for v in values.split(",")]
        known = {a.name: a.values for a in spec.variant_axes}.get(axis)
        if known and not all(chosen):  # an unknown axis is named by expand_variants
            raise ValueError(f"--variant {axis}={values}: an empty value "
                             f"(values: {', '.join(known)})")
        selected.setdefault(axis, []).extend(chosen)
    params: dict[str, str] = {}
    for key, value in args.param:
        if key in params:
            raise ValueError(f"--param {key} given twice ({key}={params[key]} and "
                             f"{key}={value}): give it once")
        params[key] = value
    return SessionPlan.resolve(spec, params=params, variants=selected,
                               quick=args.quick, repeat=args.repeat,
                               iterations=args.iterations, warmup=args.warmup,
                               label=label, pinning=getattr(args, "pin", None),
                               until_ci=until_ci_rule(args))


# --- checks before anything runs -------------------------------------------------------

def output_dir_problem(out_dir: Path, file_name: str | None = None,
                       expected_bytes: int = 0) -> str | None:
    """None if result files can be created in ``out_dir`` (made when the first run has
    completed); else why not: a missing or read-only folder, a ``file_name`` too long
    for the file system, a file that cannot be created there (probed: created and
    removed), or less free space than twice ``expected_bytes`` plus 1 MiB.  Nothing is
    left behind."""
    target = Path(out_dir)
    probe = target
    while not probe.exists():
        if probe.is_symlink():
            return f"{target}: {probe} is a dangling symbolic link"
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{target}: {probe} is not a folder (choose another with --out)"
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return f"{target}: {probe} is on a read-only file system (choose a folder with --out)"
    if not os.access(probe, os.W_OK | os.X_OK, effective_ids=True):
        return f"{target}: no permission to write in {probe} (choose a folder with --out)"
    return _name_problem(target, probe, file_name) or _probe_problem(
        target, probe) or _space_problem(target, probe, expected_bytes)


# What a result file is written through: ".NAME.XXXXXXXX.tmp" next to it (store), and a
# "-NN" a name collision may add.
_TEMP_EXTRA = len("..12345678.tmp") + len("-99")
# Free space wanted beyond the file: the atomic rewrite holds the old and the new copy.
_SPACE_HEADROOM = 1 << 20


def _name_problem(target: Path, probe: Path, file_name: str | None) -> str | None:
    if file_name is None:
        return None
    try:
        name_max = os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    longest = len(os.fsencode(file_name)) + _TEMP_EXTRA
    if longest > name_max:
        return (f"{target}: the result file's name would be {longest - _TEMP_EXTRA} bytes "
                f"(its temporary copy {longest}), more than the {name_max} this file system "
                "allows: shorten --label")
    if len(os.fsencode(str(target.absolute() / file_name))) + _TEMP_EXTRA >= 4096:
        return f"{target}: the result file's path would be longer than 4096 bytes (PATH_MAX)"
    return None


def _probe_problem(target: Path, probe: Path) -> str | None:
    """Create and remove a file in ``probe``: the file system's answer, not a permission
    guess (/sys/kernel looks writable to root and is not)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".kvmharness-probe-", dir=probe)
    except OSError as e:
        return (f"{target}: cannot create a file in {probe}: {e.strerror or e} (choose a "
                "folder with --out)")
    os.close(fd)
    try:
        os.unlink(name)
    except OSError as e:
        return f"{target}: cannot remove a test file {name}: {e.strerror or e}"
    return None


def _space_problem(target: Path, probe: Path, expected_bytes: int) -> str | None:
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    needed = 2 * expected_bytes + _SPACE_HEADROOM
    if free < needed:
        return (f"{target}: {free >> 10} KiB free on its file system, less than the "
                f"{needed >> 10} KiB a result file of this session may need (twice its "
                f"expected {expected_bytes >> 10} KiB while it is rewritten, and 1 MiB): "
                "free space or choose a folder with --out")
    return None


def expected_result_bytes(plan: SessionPlan) -> int:
    """A generous estimate of the session's result file: a run record is 6-10 KiB with a
    few iterations (rom-toggle quick: 7 KiB), plus the samples of more iterations, and
    the environment; ``--until-ci`` sessions are counted at their minimum."""
    per_run = 16 << 10
    per_run += (plan.iterations + plan.warmup) * (2 << 10)
    return 64 * 1024 + plan.repeat * len(plan.variants) * per_run
