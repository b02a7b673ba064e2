"""The kernel's own memslot benchmark beside slot-scale: ``python -m kvmharness.bench.selftests``.

Builds memslot_perf_test (tools/testing/selftests/kvm) from the kernel source of the
running kernel's series (Debian's /usr/src/linux-source-<major.minor>.tar.xz, or a tree or
tarball named with --source), times each of its memslot ioctls with an LD_PRELOAD shim
(bench/selftest_shim.py: CLOCK_MONOTONIC around KVM_SET_USER_MEMORY_REGION{,2}, each op
classified by the slot's state), and runs it alternated with slot-scale at the same slot
counts and slot sizes.  Prints, per op and count, the harness/selftest ratio of medians
with spreads, and each side's trend over the count.

What is compared, per count C (memslots present besides the one operated on):
- create: the selftest's creates of its test slots while it fills the VM (no vCPU has
  run yet), those with C - C/16 .. C others present; slot-scale's creates at C.
- move: the selftest's "move inactive area" test moves its last slot back and forth while
  its vCPU runs guest code on another thread.
- delete: the selftest's kvm_vm_free deleting every slot after its vCPU thread ended,
  those with C - C/16 .. C others left; slot-scale's deletes at C.
On the PVM /dev/kvm here an op costs ~1 ms when a vCPU is executing guest code (the memslot
update's SRCU grace period waits for it; traced) and tens of us when none is, so both sides
are split by that state: the shim reads the selftest's vCPU threads' CPU clocks around each
op (``vcpu_ns``), and slot-scale runs in three states: op_state=back_to_back (its vCPU
thread asleep out of KVM_RUN, each timed op after ``--warm-ops`` untimed round trips of it,
back to back as the selftest's ops run), op_state=outside (the same, but each op the first
after a guest pass) and op_state=parked (its vCPU spinning in the guest).  Rows
"not-in-guest": the selftest's creates (before its vCPU ran), deletes (after it ended) and
the moves during which its vCPU thread got no CPU time, against back_to_back and, in a row
of its own, outside; row "in-guest": its moves that began with its vCPU thread on a CPU,
against parked.  The selftest's plain median is whichever state most of its back-to-back
ops met, which depends on how busy the host's CPUs are.
The selftest's slot size is 512 MiB / count (its move test's memory split over the
slots); slot-scale runs with that slot size (slot_kib) at each count."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from tabulate import tabulate

from kvmharness.bench.selftest_shim import LOG_ENV, MemslotOp, build_shim, classify, parse_log
from kvmharness.scenarios import slot_scale
from kvmharness.scenarios.base import RunRequest
from kvmharness.scenarios.slot_ops import BACK_TO_BACK, OP_SUFFIX, OUTSIDE, PARKED

OPS = ("create", "move", "delete")
IN_GUEST, NOT_IN_GUEST = "in-guest", "not-in-guest"
# (op, what the selftest's vCPU was doing during it), and the slot-scale op_state compared
# with it: the table's rows.  Not-in-guest twice: back_to_back is the selftest's own way
# (warm, back to back), outside the op alone after a guest pass.
ROWS = ((("create", NOT_IN_GUEST), BACK_TO_BACK), (("create", NOT_IN_GUEST), OUTSIDE),
        (("move", NOT_IN_GUEST), BACK_TO_BACK), (("move", NOT_IN_GUEST), OUTSIDE),
        (("move", IN_GUEST), PARKED),
        (("delete", NOT_IN_GUEST), BACK_TO_BACK), (("delete", NOT_IN_GUEST), OUTSIDE))
HARNESS_STATES = (BACK_TO_BACK, OUTSIDE, PARKED)  # slot-scale's runs per round and count
Row = tuple[str, str]
MOVE_INACTIVE_TEST = 4  # memslot_perf_test's test list: 4 "move inactive area"
SELFTEST_DIR = "tools/testing/selftests/kvm"
SELFTEST = "memslot_perf_test"
# Kept out of the extraction: the selftest build needs the top-level Makefile, scripts/,
# include/, arch/x86 and tools/ (``make headers`` then the kvm selftests), nothing else.
EXTRACT_EXCLUDES = ("drivers", "Documentation", "sound", "fs", "net", "arch/arm*",
                    "arch/powerpc", "arch/mips", "arch/riscv", "arch/s390", "arch/loongarch",
                    "arch/sparc")


class SelftestError(RuntimeError):
    """The kernel source, its build, or a selftest run failed."""


# --- building the selftest -------------------------------------------------------------
def default_source(progress: Callable[[str], None]) -> Path:
    """Debian's linux-source tarball of the running kernel's series (6.12 for 6.12.x); if
    that series has none (a host kernel Debian does not ship), the newest one installed,
    said so."""
    series = ".".join(platform.release().split(".")[:2])
    own = Path(f"/usr/src/linux-source-{series}.tar.xz")
    if own.is_file():
        return own
    others = sorted(Path("/usr/src").glob("linux-source-*.tar.xz"),
                    key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)])
    if not others:
        return own  # source_tree names it as missing
    progress(f"no {own} for the running kernel {platform.release()}: using {others[-1]} "
             "(name another with --source)")
    return others[-1]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmharness" / "selftests"


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(list(cmd), cwd=cwd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise SelftestError(f"{what} failed (exit {result.returncode}):\n{tail}")


def source_tree(source: Path, work: Path, progress: Callable[[str], None]) -> Path:
    """A kernel tree: ``source`` itself if it is one, else the tarball extracted (the
    parts the selftest build needs) once into ``work``."""
    if source.is_dir():
        if not (source / SELFTEST_DIR / f"{SELFTEST}.c").is_file():
            raise SelftestError(f"{source}: not a kernel tree ({SELFTEST_DIR}/{SELFTEST}.c "
                                "is missing)")
        return source
    if not source.is_file():
        raise SelftestError(f"{source}: no such kernel source (install Debian's "
                            "linux-source-<series> package, or name a tree with --source)")
    name = re.sub(r"\.tar(\.\w+)?$", "", source.name)
    tree = work / name
    if (tree / SELFTEST_DIR / f"{SELFTEST}.c").is_file():
        return tree
    progress(f"extracting {source} into {work} (once)")
    work.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".extract-", dir=work))
    try:
        _run(["tar", "-xf", str(source), "-C", str(partial)]
             + [f"--exclude=*/{pattern}" for pattern in EXTRACT_EXCLUDES], f"tar -xf {source}")
        tops = list(partial.iterdir())
        if len(tops) != 1 or not (tops[0] / SELFTEST_DIR / f"{SELFTEST}.c").is_file():
            raise SelftestError(f"{source}: no {SELFTEST_DIR}/{SELFTEST}.c under one top "
                                "folder")
        tops[0].rename(tree)  # whole or not at all: a half-extracted tree is never reused
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return tree


def build_selftest(tree: Path, progress: Callable[[str], None]) -> Path:
    """``make headers`` (once) and the one selftest target; returns its executable."""
    exe = tree / SELFTEST_DIR / SELFTEST
    if exe.is_file():
        return exe
    jobs = f"-j{os.cpu_count() or 1}"
    if not (tree / "usr/include/linux/kvm.h").is_file():
        progress(f"make headers in {tree}")
        _run(["make", jobs, "headers"], "make headers", cwd=tree)
    progress(f"make -C {SELFTEST_DIR} {SELFTEST}")
    _run(["make", jobs, "-C", SELFTEST_DIR, str(exe)], f"building {SELFTEST}", cwd=tree)
    if not exe.is_file():
        raise SelftestError(f"the build left no {exe}")
    return exe


# --- running the selftest ----------------------------------------------------------------
def run_selftest(exe: Path, shim: Path, slots: int, seconds: int, zap: str,
                 log_dir: Path) -> list[MemslotOp]:
    """One memslot_perf_test run of the move-inactive test with ``slots`` memslots in all
    (slot 0 included), its memslot ioctls timed by the shim."""
    log = log_dir / f"shim-{slots}-{os.getpid()}.log"
    log.unlink(missing_ok=True)
    cmd = [str(exe), "-s", str(slots), "-f", str(MOVE_INACTIVE_TEST), "-e",
           str(MOVE_INACTIVE_TEST), "-l", str(seconds), "-r", "1"]
    if zap == "slot":
        cmd.append("-q")
    env = {**os.environ, "LD_PRELOAD": str(shim), LOG_ENV: str(log)}
    result = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True)
    try:
        if result.returncode != 0:
            raise SelftestError(f"{' '.join(cmd)} failed (exit {result.returncode}):\n"
                                f"{(result.stdout + result.stderr).strip()[-2000:]}")
        if not log.is_file():
            raise SelftestError(f"{SELFTEST} ran but the shim logged nothing (LD_PRELOAD "
                                "ignored? a static build?)")
        return classify(parse_log(log.read_text()))
    finally:
        log.unlink(missing_ok=True)


def selftest_samples(ops: list[MemslotOp], count: int) -> dict[Row, list[float]]:
    """The run's ops at ``count`` others (creates and deletes: the window count - max(2,
    count/16) .. count, as they fill and empty the VM one slot at a time), in us, per row.
    A move is in-guest if its vCPU thread was on a CPU as it began, not-in-guest if it got
    no CPU time from then to the op's end; one whose vCPU got a CPU only during it is
    neither (its SRCU read side began after the op's, which does not wait for it, but it
    competed for a CPU) and is left out."""
    low = count - max(2, count // 16)
    out: dict[Row, list[float]] = {row: [] for row, _ in ROWS}  # one list per row
    for op in ops:
        if op.kind == "move" and op.others == count and op.vcpu_on == 1:
            out[("move", IN_GUEST)].append(op.ns / 1e3)
        elif op.kind == "move" and op.others == count and op.vcpu_on == 0 and op.vcpu_ns == 0:
            out[("move", NOT_IN_GUEST)].append(op.ns / 1e3)
        elif op.kind in ("create", "delete") and low <= op.others <= count:
            out[(op.kind, NOT_IN_GUEST)].append(op.ns / 1e3)
    return out


def selftest_slot_size(ops: list[MemslotOp], count: int) -> int:
    """The size of the selftest's moved slot at ``count`` (its test slots' size)."""
    sizes = [op.size for op in ops if op.kind == "move" and op.others == count]
    if not sizes:
        raise SelftestError(f"{SELFTEST} made no move with {count} other memslots")
    return int(statistics.median(sizes))


# --- running slot-scale ------------------------------------------------------------------
def harness_pinning(main_cpu: int | None) -> dict[str, tuple[int, ...]]:
    """slot-scale's main thread (the one doing the ops) on ``main_cpu``, its vCPU thread on
    the other CPUs this process may use (if any: with one CPU they share it); None: the
    scheduler places both."""
    if main_cpu is None:
        return {}
    others = tuple(sorted(os.sched_getaffinity(0) - {main_cpu}))
    return {"main": (main_cpu,), **({"vcpus": others} if others else {})}


def run_harness(fillers: int, slot_size: int, zap: str, cycles: int,
                op_state: str = OUTSIDE, main_cpu: int | None = None, warm_ops: int = 3
                ) -> tuple[int, dict[str, list[float]]]:
    """One slot-scale run at ``fillers`` filler slots in ``op_state`` (back_to_back: with
    ``warm_ops`` round trips before each timed op); returns (memslots besides the slot
    under test, samples per op in us)."""
    kib = max(4, (slot_size // 4096) * 4)
    params = slot_scale.SPEC.resolve_params(
        {"counts": str(fillers), "slot_kib": str(kib), "ops_per_count": str(cycles),
         "op_state": op_state, "warm_ops": str(warm_ops)}, quick=True)
    outcome = slot_scale.SPEC.run(RunRequest(params, {"zap": zap}, 1, 1, lambda _: None,
                                             pinning=harness_pinning(main_cpu)))
    others = int(outcome.effective["memslots_during_ops"][str(fillers)])
    suffix = OP_SUFFIX[op_state]
    return others, {op: list(outcome.samples.get(f"{op}{suffix}@{fillers}", [])) for op in OPS}


# --- the comparison ----------------------------------------------------------------------
def _spread(values: Sequence[float]) -> str:
    if len(values) < 4:
        return "-"
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.0f}-{q[2]:.0f}"


Samples = dict[tuple[Row, int], list[float]]  # the selftest's, per (row, count)
HarnessSamples = dict[tuple[Row, str, int], list[float]]  # per (row, op_state, count)


def ratio_table(harness: HarnessSamples, selftest: Samples, per_round: HarnessSamples,
                counts: Sequence[int]) -> str:
    rows = []
    for row, state in ROWS:
        op, vcpu = row
        base_h = base_s = None
        for count in counts:
            h, s = harness.get((row, state, count), []), selftest.get((row, count), [])
            if not h or not s:
                rows.append([op, vcpu, state, count, len(h), len(s)] + ["-"] * 6)
                continue
            mh, ms = statistics.median(h), statistics.median(s)
            base_h, base_s = base_h or mh, base_s or ms
            rounds = per_round.get((row, state, count), [])
            rows.append([op, vcpu, state, count, len(h), len(s), f"{mh:.1f} ({_spread(h)})",
                         f"{ms:.1f} ({_spread(s)})", f"{mh / ms:.2f}",
                         f"{min(rounds):.2f}-{max(rounds):.2f}" if rounds else "-",
                         f"{mh / base_h:.2f}", f"{ms / base_s:.2f}"])
    return tabulate(rows, headers=["op", "vCPU", "harness op_state", "others", "n harness",
                                   "n selftest", "harness us (IQR)", "selftest us (IQR)",
                                   "ratio", "ratio per round", "harness trend",
                                   "selftest trend"],
                    disable_numparse=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kvmharness.bench.selftests",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--source", type=Path, default=None,
                        help="kernel tree or tarball (default: the running kernel's "
                             "series, /usr/src/linux-source-<major.minor>.tar.xz)")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="where the tarball is extracted and built (default "
                             "~/.cache/kvmharness/selftests)")
    parser.add_argument("--counts", default="1,1024,8192,32000",
                        help="filler memslot counts for slot-scale (comma list; default "
                             "1,1024,8192,32000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternated rounds (selftest then slot-scale at every count; "
                             "default 3)")
    parser.add_argument("--seconds", type=int, default=1,
                        help="the selftest's test length per run, -l (default 1)")
    parser.add_argument("--cycles", type=int, default=8,
                        help="slot-scale create/move/delete cycles per count (default 8)")
    parser.add_argument("--warm-ops", type=int, default=3,
                        help="slot-scale op_state=back_to_back: untimed round trips of "
                             "each op before it is timed (default 3)")
    parser.add_argument("--zap", choices=("all", "slot"), default="all",
                        help="zap path: slot-scale's variant, the selftest's -q (default all)")
    parser.add_argument("--main-cpu", default="0",
                        help="host CPU for slot-scale's op thread, or 'none' to let the "
                             "scheduler place it (default 0: the boot CPU, where SRCU's "
                             "small mode runs every grace period's callbacks; the selftest's "
                             "back-to-back ops end up there, measured 96%% of them; from "
                             "the other CPU each op waits for a cross-CPU wakeup)")
    args = parser.parse_args(argv)
    if args.main_cpu == "none":
        args.main_cpu = None
    elif not args.main_cpu.isdigit() or int(args.main_cpu) not in os.sched_getaffinity(0):
        parser.error(f"--main-cpu {args.main_cpu}: not a CPU this process may use "
                     f"({sorted(os.sched_getaffinity(0))}) nor 'none'")
    else:
        args.main_cpu = int(args.main_cpu)
    try:
        args.count_list = slot_scale.CountList(args.counts).counts
    except ValueError as exc:
        parser.error(f"--counts: {exc}")
    if args.rounds < 1 or args.seconds < 1 or args.cycles < 1 or args.warm_ops < 1:
        parser.error("--rounds, --seconds, --cycles and --warm-ops must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        work = args.build_dir or cache_root()
        tree = source_tree(args.source or default_source(progress), work, progress)
        exe = build_selftest(tree, progress)
        shim = build_shim(work)
        harness, selftest, per_round = compare(exe, shim, args, progress)
    except (SelftestError, OSError) as exc:
        print(f"python -m kvmharness.bench.selftests: {exc}", file=sys.stderr)
        return 1
    placed = "unpinned" if args.main_cpu is None else f"op thread on CPU {args.main_cpu}"
    print(f"slot-scale ({placed}) / {SELFTEST} ({tree.name}), zap={args.zap}, "
          f"{args.rounds} alternated rounds on {platform.release()}\n"
          "median us of KVM_SET_USER_MEMORY_REGION{,2} (harness: its syscall clock; "
          "selftest: the shim's CLOCK_MONOTONIC);\n'others' = memslots present besides the "
          "one operated on; trend = median / median at the first count\n")
    print(ratio_table(harness, selftest, per_round, sorted({c for *_, c in harness})))
    print(f"\nvCPU {NOT_IN_GUEST}: {SELFTEST}'s creates (before its vCPU ran), deletes (after "
          "it ended) and moves during which its vCPU threads got\nno CPU time, against "
          f"slot-scale op_state={BACK_TO_BACK} (its vCPU thread asleep out of KVM_RUN, each "
          f"timed op after {args.warm_ops}\nuntimed round trips of it, back to back as the "
          f"selftest's run) and op_state={OUTSIDE} (the same, each op the first after a "
          f"guest pass).\nvCPU {IN_GUEST}: its moves that began with its vCPU thread on a "
          f"CPU, against op_state={PARKED} (spinning in the guest).  A vCPU executing\n"
          "guest code can hold the memslot update's SRCU grace period (PVM: ~1 ms, traced); "
          "how many of the selftest's back-to-back\nmoves meet it depends on how busy the "
          f"CPUs are.  Known differences left: {BACK_TO_BACK} creates are create/delete round "
          "trips of one\nslot, the selftest's creates fill the VM one new slot after "
          f"another (and its deletes empty it).  {IN_GUEST}, with zap=all the\nselftest's "
          "vCPU refaults its whole area after every move (a 2-vCPU SVM boot: 11.8 ms moves; "
          "0.2-0.3 ms at 259-4099 slots\nwith --zap slot) while the parked vCPU touches "
          "nothing.")
    return 0


def compare(exe: Path, shim: Path, args: argparse.Namespace, progress: Callable[[str], None]
            ) -> tuple[HarnessSamples, Samples, HarnessSamples]:
    """Alternate: per round and filler count, the selftest then slot-scale in each op_state
    (the first round also learns the count of others and the slot size each filler count
    means)."""
    harness: HarnessSamples = {}
    selftest: Samples = {}
    per_round: HarnessSamples = {}
    others_of: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="kvmharness-selftests-") as tmp:
        for r in range(args.rounds):
            for fillers in args.count_list:
                if fillers not in others_of:  # a 4 KiB probe run: how many slots the VM has
                    others_of[fillers], _ = run_harness(fillers, 4096, args.zap, 1)
                others = others_of[fillers]
                progress(f"round {r + 1}/{args.rounds}: {SELFTEST} -s {others + 1}, then "
                         f"slot-scale counts={fillers} ({others} others)")
                ops = run_selftest(exe, shim, others + 1, args.seconds, args.zap, Path(tmp))
                s = selftest_samples(ops, others)
                size = selftest_slot_size(ops, others)
                states = {state: run_harness(fillers, size, args.zap, args.cycles, state,
                                             args.main_cpu, args.warm_ops)[1]
                          for state in HARNESS_STATES}
                for row in s:
                    selftest.setdefault((row, others), []).extend(s[row])
                for row, state in ROWS:
                    h = states[state][row[0]]
                    harness.setdefault((row, state, others), []).extend(h)
                    if h and s[row]:
                        per_round.setdefault((row, state, others), []).append(
                            statistics.median(h) / statistics.median(s[row]))
    return harness, selftest, per_round


if __name__ == "__main__":
    raise SystemExit(main())
