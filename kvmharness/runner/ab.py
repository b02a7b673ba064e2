"""``kvmharness ab``: run the same scenarios inside kernels A, B, ..., compare them with A.

A "kernel" here is a configuration: an image plus its own extra command line (``--append
NAME=ARGS``), so one image can run as several, e.g. with the TDP MMU, the legacy TDP MMU
(kvm.tdp_mmu=0) and shadow paging (kvm_amd.npt=0).  Each round boots every configuration
once, in the order given (A B C, A B C, ...: rounds interleave so that a slow drift of the
host hits all of them alike).  Inside a boot the scenarios run with the very harness code
of this host (the root file system is shared), as ``python3 -m kvmharness run SCENARIO ...
--label NAME --out RWDIR``; the result files come back through vng's --rwdir.  Afterwards
every file is compared by label (each configuration against the first, per variant) and,
for a configuration that ran several variants, by variant (zap=all vs zap=slot).

A kernel that does not boot, panics or times out is reported with the tail of its console
log and dropped from later rounds; what the other kernel produced is kept and shown.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from kvmharness.compare.build import CompareError, Comparison, Report, Settings, build_report
from kvmharness.results.model import ResultFile, variant_text
from kvmharness.results.store import load_result
from kvmharness.results.validate import ResultFormatError
from kvmharness.runner.boot import (
    BootInterrupted,
    BootResult,
    BootSpec,
    binds_for,
    boot,
    cache_dir,
    kernel_binds,
    package_root,
    passthrough_env,
    prepare_kernel,
    shq,
)
from kvmharness.runner.host import Accel
from kvmharness.runner.kernels import Kernel, KernelPathError

SYSTEM_PYTHON = Path("/usr/bin/python3")
# Where each boot's result folder appears inside the guest.  One fixed path for every
# boot: it is on the guest kernel command line, which result files record, and boots of
# one kernel should not look like different setups to `compare`.  (/tmp is a writable
# overlay inside, so vng can create the mount point.)
GUEST_OUT = Path("/tmp/kvmharness-ab-out")
GUEST_DEPS = ("psutil", "elftools", "tabulate")


@dataclasses.dataclass(frozen=True)
class ScenarioCall:
    """One ``kvmharness run`` inside each boot: the scenario and its options (all but
    --label and --out, which the boot supplies)."""

    scenario: str
    options: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class GuestPython:
    interpreter: str
    pythonpath: tuple[Path, ...]
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class AbOptions:
    """What `kvmharness ab` was asked, after the CLI checked it: the one description of an
    A/B run (the CLI builds it; tests build it directly)."""

    kernels: tuple[Kernel, ...]         # configurations, A first; names are distinct
    calls: tuple[ScenarioCall, ...]
    rounds: int
    out_dir: Path
    accel: str = "auto"                 # requested: auto, kvm or tcg
    cpus: int | None = None
    memory: str = "4G"
    timeout_s: float = 1800.0
    settings: Settings = dataclasses.field(default_factory=Settings)
    dry_run: bool = False


@dataclasses.dataclass(frozen=True)
class AbPlan:
    """The options plus what this host decided for them (nothing the options hold)."""

    options: AbOptions
    accel: Accel
    python: GuestPython
    guest_env: Mapping[str, str]        # extra variables for the guest (guest build dir, ...)
    extra_binds: tuple[Path, ...] = ()  # host folders the guest must see (masked otherwise)


@dataclasses.dataclass
class BootRecord:
    round: int
    kernel: str
    rwdir: Path
    result: BootResult | None = None
    files: list[Path] = dataclasses.field(default_factory=list)
    scenario_status: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: str | None = None
    mmu: str | None = None          # the MMU mode its result files record (one line)


def boot_order(kernels: Sequence[Kernel], rounds: int) -> list[tuple[int, Kernel]]:
    """A B C A B C ...: every round boots each configuration once, in the order given."""
    return [(r, k) for r in range(1, rounds + 1) for k in kernels]


def guest_body(plan: AbPlan, kernel: Kernel, rwdir: Path = GUEST_OUT) -> str:
    """The shell lines the guest runs: check KVM is there, then each scenario, recording
    each exit status in RWDIR/status (the boot's own status is the worst of them).
    ``rwdir`` is the guest's view of the boot's result folder."""
    py = shq(plan.python.interpreter)
    no_kvm = shq(f"kvmharness ab: no /dev/kvm in {kernel.name} after modprobe "
                 f"{plan.accel.module}")
    lines = ["rc=0", f"[ -c /dev/kvm ] || {{ echo {no_kvm} >&2; exit 3; }}"]
    for call in plan.options.calls:
        argv = [*call.options, "--label", kernel.name, "--out", str(rwdir)]
        lines.append(f"{py} -m kvmharness run {shq(call.scenario)} "
                     + " ".join(shq(a) for a in argv))
        lines.append(f"s=$?; echo {shq(call.scenario)} $s >> {shq(str(rwdir / 'status'))}; "
                     "[ $s -eq 0 ] || rc=$s")
    lines.append("exit $rc")
    return "\n".join(lines)


def guest_env(plan: AbPlan, kernel: Kernel) -> dict[str, str]:
    return {
        **passthrough_env(),  # KVMHARNESS_* and CI, as tools/vng-run passes them
        "PYTHONPATH": ":".join(str(p) for p in plan.python.pythonpath),
        "KVMHARNESS_VNG_KERNEL": kernel.version,
        **host_commit(),
        **plan.guest_env,
    }


def host_commit() -> dict[str, str]:
    """The checkout's commit as the host's git sees it: git inside a boot may not read
    the shared checkout, and the result files must still say which harness ran."""
    from kvmharness.observe.fingerprint import HARNESS_COMMIT_ENV, harness_identity

    ident = harness_identity()
    if not ident["git_commit"]:
        return {}
    return {HARNESS_COMMIT_ENV: ident["git_commit"] + (" dirty" if ident["git_dirty"] else "")}


def pick_guest_python(cache: Path | None = None,
                      run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run
                      ) -> GuestPython:
    """Debian's /usr/bin/python3 with the pip --target folder of tools/vng-run --setup
    when it has the dependencies: it starts in ~1 s under TCG, where a pyenv or venv
    interpreter over 9p takes 6-17 s (tools/README.md).  Otherwise this very interpreter,
    which has them (it is running kvmharness)."""
    pydeps = (cache or cache_dir()) / "pydeps"
    root = package_root()
    if SYSTEM_PYTHON.exists() and pydeps.is_dir():
        probe = ("import sys; assert sys.version_info >= (3, 10); import "
                 + ", ".join(GUEST_DEPS))
        env = {**os.environ, "PYTHONPATH": str(pydeps)}
        try:
            ok = run([str(SYSTEM_PYTHON), "-c", probe], env=env, capture_output=True,
                     timeout=60, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return GuestPython(str(SYSTEM_PYTHON), (pydeps, root))
    note = (f"inside the guest kvmharness runs under {sys.executable}; under TCG a "
            f"non-system interpreter can take 10+ s to start. Faster: {SYSTEM_PYTHON} -m pip "
            f"install --target {pydeps} psutil pyelftools tabulate (or tools/vng-run --setup)")
    return GuestPython(sys.executable, (root,), note)


def recorded_mmu(path: Path) -> str | None:
    """The MMU mode line of a result file's fingerprint; None when it cannot be read."""
    import json

    from kvmharness.observe.fingerprint import mmu_of, mmu_text

    try:
        env = json.loads(path.read_text()).get("environment")
    except (OSError, ValueError, AttributeError):
        return None
    return mmu_text(mmu_of(env)) if isinstance(env, dict) else None


def _collect(record: BootRecord) -> None:
    record.files = sorted(p for p in record.rwdir.glob("*.json") if not p.name.startswith("."))
    record.mmu = next((m for m in map(recorded_mmu, record.files) if m), None)
    try:
        for line in (record.rwdir / "status").read_text().splitlines():
            name, _, rc = line.partition(" ")
            if rc.strip().lstrip("-").isdigit():
                record.scenario_status[name] = int(rc)
    except OSError:
        pass


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where ``execute`` reports while it runs (a boot takes minutes): the CLI prints these
    lines, a test may collect them.  Nothing here decides what the user sees."""

    note: Callable[[str], None]       # one line of progress: acceleration, boots, notes
    guest_out: Callable[[str], None]  # a line a guest printed, prefixed [rN kernel]
    guest_err: Callable[[str], None]

    @staticmethod
    def silent() -> Progress:
        def drop(line: str) -> None:
            pass

        return Progress(drop, drop, drop)


def boot_spec(plan: AbPlan, kernel: Kernel, target: Path, rwdir: Path) -> BootSpec:
    """How one kernel boots (the real boot and --dry-run both use this)."""
    opts = plan.options
    binds = binds_for([*kernel_binds(kernel), *plan.python.pythonpath, opts.out_dir,
                       *plan.extra_binds, Path(plan.python.interpreter).parent])
    return BootSpec(target=target, accel=plan.accel, memory=opts.memory,
                    rodirs=tuple(binds), rw_mounts=((GUEST_OUT, rwdir),),
                    append=kernel.append, timeout_s=opts.timeout_s)


def earlier_boot_folders(opts: AbOptions) -> list[Path]:
    """These options' boot folders that already exist with something in them."""
    out = []
    for rnd, k in boot_order(opts.kernels, opts.rounds):
        rwdir = opts.out_dir / f"r{rnd}-{k.name}"
        if rwdir.is_dir() and any(rwdir.iterdir()):
            out.append(rwdir)
    return out


def run_boots(plan: AbPlan, vng: str, progress: Progress, staging: Path,
              boot_fn: Callable[..., BootResult] | None = None
              ) -> tuple[list[BootRecord], int | None]:
    """Every boot of the plan, A B C A B C.  Returns the records and the signal (SIGINT,
    SIGTERM or SIGHUP) that stopped them, if one did; QEMU is never left running either
    way.  ``staging``: a folder under /tmp (the guest sees it) for kernels that need a
    symlink tree."""
    boot_fn = boot_fn or boot  # looked up now, so tests can substitute ab.boot
    opts = plan.options
    records: list[BootRecord] = []
    dropped: dict[str, str] = {}
    targets = {k.name: prepare_kernel(k, plan.accel.module, staging / k.name)
               for k in opts.kernels}
    total = len(opts.kernels) * opts.rounds
    for i, (rnd, kernel) in enumerate(boot_order(opts.kernels, opts.rounds), 1):
        record = BootRecord(rnd, kernel.name, opts.out_dir / f"r{rnd}-{kernel.name}")
        records.append(record)
        if kernel.name in dropped:
            record.skipped = dropped[kernel.name]
            progress.note(f"[{i}/{total}] round {rnd}: {kernel.name} not booted: "
                          f"{record.skipped}")
            continue
        extra = f", + {kernel.append}" if kernel.append else ""
        progress.note(f"[{i}/{total}] round {rnd}: booting {kernel.name} ({kernel.version}, "
                      f"{plan.accel.mode}{extra}) ...")
        try:
            _boot_one(plan, vng, kernel, record, targets[kernel.name], progress, staging,
                      boot_fn)
        except BootInterrupted as e:
            _collect(record)
            progress.note(f"interrupted during {kernel.name} round {rnd}: QEMU stopped")
            return records, e.signum
        result = record.result
        assert result is not None
        if result.ok:
            mmu = f"; MMU {record.mmu}" if record.mmu else ""
            progress.note(f"[{i}/{total}] {result.summary()}; {len(record.files)} result "
                          f"file(s){mmu}")
            continue
        progress.note(f"[{i}/{total}] {kernel.name} FAILED: {result.failure_report()}")
        if result.status in ("timeout", "no-status"):
            # Booting it again would most likely fail the same way and cost a timeout.
            dropped[kernel.name] = f"dropped after round {rnd}: {result.summary()}"
    return records, None


def _boot_one(plan: AbPlan, vng: str, kernel: Kernel, record: BootRecord, target: Path,
              progress: Progress, staging: Path, boot_fn: Callable[..., BootResult]) -> None:
    """One boot into ``record``: its result and the files it left in its folder."""
    record.rwdir.mkdir(parents=True, exist_ok=True)
    spec = boot_spec(plan, kernel, target, record.rwdir.resolve())
    prefix = f"[r{record.round} {kernel.name}] "
    # Same script path and working folder in every round: see boot()'s script_dir.
    record.result = boot_fn(vng, spec, name=kernel.name, version=kernel.version,
                            body=guest_body(plan, kernel), cwd=plan.options.out_dir,
                            env=guest_env(plan, kernel), modprobe=plan.accel.module,
                            out=lambda line: progress.guest_out(prefix + line),
                            err=lambda line: progress.guest_err(prefix + line),
                            output_log=record.rwdir / "output.log",
                            console_log=record.rwdir / "console.log", script_dir=staging)
    _collect(record)


def manifest(plan: AbPlan, records: Sequence[BootRecord], argv: Sequence[str],
             started: datetime.datetime, interrupted: bool) -> dict[str, Any]:
    """What ab.json records: enough to know how the files in the folder were produced."""
    opts = plan.options
    return {
        "command": ["kvmharness", *argv],
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "interrupted": interrupted,
        "accel": {"mode": plan.accel.mode, "cpus": plan.accel.cpus, "module": plan.accel.module,
                  "reason": plan.accel.reason, "warning": plan.accel.warning},
        "memory": opts.memory,
        "guest_python": plan.python.interpreter,
        "kernels": [{"name": k.name, "version": k.version, "kind": k.kind,
                     "source": str(k.source), "image": str(k.image),
                     "modules": str(k.modules) if k.modules else None,
                     "append": k.append}
                    for k in opts.kernels],
        "scenarios": [{"scenario": c.scenario, "options": list(c.options)} for c in opts.calls],
        "rounds": opts.rounds,
        "boots": [{
            "round": r.round, "kernel": r.kernel,
            "status": r.result.status if r.result else ("skipped" if r.skipped else
                                                        "interrupted"),
            "rc": r.result.rc if r.result else None,
            "elapsed_s": round(r.result.elapsed_s, 1) if r.result else None,
            "reason": r.skipped or (r.result.summary() if r.result and not r.result.ok
                                    else None),
            "scenario_status": r.scenario_status,
            "mmu": r.mmu,
            "files": [str(f.relative_to(opts.out_dir)) for f in r.files],
        } for r in records],
    }


def _ordered(records: Sequence[BootRecord], kernels: Sequence[Kernel]) -> list[Path]:
    # Kernel order first, so that the first --kernel is A (compare takes the first label
    # seen as the baseline).
    order = {k.name: i for i, k in enumerate(kernels)}
    recs = sorted(records, key=lambda r: (order.get(r.kernel, 99), r.round))
    return [f for r in recs for f in r.files]


def build_comparisons(files: Sequence[Path], kernels: Sequence[Kernel],
                      settings: Settings, relative_to: Path | None = None
                      ) -> tuple[list[tuple[str, Report]], list[str]]:
    """(name, report) pairs: "kernels" (labels compared, per variant) and "variants-NAME"
    (variants compared within one kernel); plus notes on what could not be compared.
    ``relative_to``: the tables name files relative to this folder (where they are
    written), not by absolute paths that do not fit a 78-column table."""
    loaded, notes = _load(files, relative_to)
    scenarios = list(dict.fromkeys(f.scenario_name for f in loaded))
    out: list[tuple[str, Report]] = []
    by_kernel: list[Comparison] = []
    for sc in scenarios:
        group = [f for f in loaded if f.scenario_name == sc]
        labels = list(dict.fromkeys(f.label for f in group))
        if len(labels) >= 2:
            by_kernel += _compare(group, "label", settings, notes,
                                  f"{sc}: kernels not compared")
        elif len(kernels) > 1:
            notes.append(f"{sc}: only {', '.join(labels)} produced results: no kernel "
                         "comparison")
    if by_kernel:
        out.append(("kernels", Report(tuple(by_kernel), settings)))
    for k in kernels:
        mine = _variants_within(k.name, loaded, scenarios, settings, notes)
        if mine:
            out.append((f"variants-{k.name}", Report(tuple(mine), settings)))
    return out, notes


def _variants_within(label: str, loaded: Sequence[ResultFile], scenarios: Sequence[str],
                     settings: Settings, notes: list[str]) -> list[Comparison]:
    """Per scenario, the variants one kernel ran compared with each other."""
    mine: list[Comparison] = []
    for sc in scenarios:
        group = [f for f in loaded if f.scenario_name == sc and f.label == label]
        if len({variant_text(r.variant) for f in group for r in f.ok_runs()}) >= 2:
            mine += _compare(group, "variant", settings, notes,
                             f"{sc} in {label}: variants not compared")
    return mine


def _load(files: Sequence[Path], relative_to: Path | None
          ) -> tuple[list[ResultFile], list[str]]:
    """The result files that load, and a note for each that does not."""
    loaded: list[ResultFile] = []
    notes: list[str] = []
    for f in files:
        try:
            result = load_result(f)
        except ResultFormatError as e:
            notes.append(f"not used: {e}")
            continue
        if relative_to is not None and Path(f).is_relative_to(relative_to):
            result.source = str(Path(f).relative_to(relative_to))
        loaded.append(result)
    return loaded, notes


def _compare(group: list[ResultFile], by: Literal["label", "variant"], settings: Settings, notes: list[str],
             refused: str) -> tuple[Comparison, ...]:
    """The comparisons of ``group``, or none and a note when compare refuses them."""
    try:
        return build_report(group, by=by, settings=settings).comparisons
    except CompareError as e:
        notes.append(f"{refused}: {e}")
        return ()


def check_kernels(kernels: Sequence[Kernel], module: str) -> list[str]:
    from kvmharness.runner.kernels import kernel_problems

    return [p for k in kernels for p in kernel_problems(k, module)]



# --- the whole command ---------------------------------------------------------------------


class AbError(Exception):
    """What stops ``ab`` before or between its boots: prerequisites, kernels, the guest
    build, a reused out folder, a kernel path or vng that cannot be used."""


@dataclasses.dataclass(frozen=True)
class DryBoot:
    """One boot as --dry-run shows it: the vng command and what the guest would run."""

    round: int
    kernel: str
    command: tuple[str, ...]
    modprobe: str
    guest_lines: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class AbOutcome:
    """How an ``ab`` run went: the CLI prints it and chooses the exit status."""

    accel: Accel | None = None
    failure: str | None = None              # what stopped it before its boots ended
    dry_run: tuple[DryBoot, ...] = ()       # --dry-run: the boots it would make
    out_dir: Path | None = None
    boots: tuple[BootRecord, ...] = ()      # per round and kernel, in boot order
    reports: tuple[tuple[str, Report], ...] = ()  # (name, report): compare-NAME.txt/.md
    notes: tuple[str, ...] = ()             # what could not be compared, and why
    written: tuple[Path, ...] = ()          # ab.json and the tables, in order
    interrupted: int | None = None          # the signal that stopped the boots

    @property
    def failed_boots(self) -> list[BootRecord]:
        """Boots that did not complete, or whose scenarios failed (skipped ones too)."""
        return [r for r in self.boots if not _boot_ok(r)]

    @property
    def ok(self) -> bool:
        return (self.failure is None and self.interrupted is None
                and bool(self.boots) and not self.failed_boots)


def _boot_ok(r: BootRecord) -> bool:
    return (r.result is not None and r.result.ok
            and all(v == 0 for v in r.scenario_status.values()))


def build_guests(progress: Progress) -> tuple[dict[str, str], list[Path]]:
    """Build every guest ELF here, before booting: inside, the tree is read-only and the
    guest kernel would have to compile under TCG.  Returns the variables that point the
    harness inside at them, and the folders involved (for binds)."""
    from kvmharness.guest.build import available_guests, guest_path, guests_source_dir

    source = guests_source_dir()
    built = [guest_path(name) for name in available_guests(source)]
    build_dir = built[0].parent if built else source / "build"
    progress.note(f"guests built in {build_dir}: {', '.join(p.stem for p in built)}")
    return ({"KVMHARNESS_GUESTS_DIR": str(source),
             "KVMHARNESS_GUESTS_BUILD_DIR": str(build_dir)}, [source, build_dir])


def write_tables(out_dir: Path, reports: Sequence[tuple[str, Report]]) -> list[Path]:
    """compare-NAME.txt (plain) and compare-NAME.md per report; returns the paths."""
    from kvmharness.compare.render import format_report

    written = []
    for name, report in reports:
        for suffix, fmt in ((".txt", "plain"), (".md", "markdown")):
            path = out_dir / f"compare-{name}{suffix}"
            path.write_text(format_report(report, fmt))
            written.append(path)
    return written


def plan_run(opts: AbOptions, progress: Progress) -> tuple[str, AbPlan]:
    """Prerequisites, acceleration, kernels, guest interpreter and guest builds: (vng,
    plan), or AbError naming what is missing."""
    from kvmharness.guest.errors import GuestBuildError
    from kvmharness.runner.host import AccelError, check_prerequisites, decide_accel, find_vng

    vng = find_vng()
    missing = check_prerequisites(vng=vng)
    if missing:
        raise AbError("missing prerequisites (Debian packages / pip):\n"
                      + "\n".join(f"  - {m}" for m in missing))
    assert vng is not None
    try:
        accel = decide_accel(opts.accel, opts.cpus)  # type: ignore[arg-type]
    except AccelError as e:
        raise AbError(str(e)) from e
    progress.note(f"acceleration: {accel.reason}")
    if accel.warning:
        progress.note(f"WARNING: {accel.warning}")
    problems = check_kernels(opts.kernels, accel.module)
    if problems:
        raise AbError("\n".join(problems))
    for k in opts.kernels:
        progress.note(f"kernel {k.describe()}")
    python = pick_guest_python()
    if python.note:
        progress.note(f"note: {python.note}")
    env: dict[str, str] = {}
    binds: list[Path] = []
    if not opts.dry_run:
        try:
            env, binds = build_guests(progress)
        except GuestBuildError as e:
            raise AbError(str(e)) from e
    opts = dataclasses.replace(opts, out_dir=opts.out_dir.resolve())
    return vng, AbPlan(opts, accel, python, env, tuple(binds))


def dry_boots(plan: AbPlan, vng: str) -> tuple[DryBoot, ...]:
    from kvmharness.runner.boot import vng_command

    out = []
    for rnd, k in boot_order(plan.options.kernels, plan.options.rounds):
        rwdir = plan.options.out_dir / f"r{rnd}-{k.name}"
        spec = boot_spec(plan, k, k.vng_target, rwdir)
        # As run_boots/boot() name them (the XXXXXX parts are made at boot time).
        script = Path(f"/tmp/kvmharness-ab.XXXXXX/guest-{k.name}.sh")
        cmd = vng_command(vng, spec, script, Path("/tmp/kvmharness-vng.XXXXXX/console.log"))
        out.append(DryBoot(rnd, k.name, tuple(cmd), plan.accel.module,
                           tuple(guest_body(plan, k).splitlines())))
    return tuple(out)


def boot_all(plan: AbPlan, vng: str, progress: Progress
             ) -> tuple[list[BootRecord], int | None]:
    """run_boots in a fresh out folder, with a staging folder removed afterwards."""
    import shutil
    import tempfile

    from kvmharness.runner.boot import BootError

    opts = plan.options
    stale = earlier_boot_folders(opts)
    if stale:
        # Their result files, status lines and logs would be merged into this run's
        # (the boot folders are appended to and globbed), silently adding old runs.
        raise AbError(f"{opts.out_dir} already holds boot folders of an earlier run "
                      f"({', '.join(p.name for p in stale)}): give another --out or "
                      "remove them")
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    progress.note(f"results: {opts.out_dir}")
    staging = Path(tempfile.mkdtemp(prefix="kvmharness-ab.", dir="/tmp"))
    try:
        return run_boots(plan, vng, progress, staging)
    except (KernelPathError, BootError) as e:
        raise AbError(str(e)) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def execute(opts: AbOptions, argv: Sequence[str],
            progress: Progress | None = None) -> AbOutcome:
    """Prerequisites, acceleration, guest builds, the boots, the comparison.  Writes the
    boot folders, ab.json and the tables under the out folder; prints nothing (progress
    goes to ``progress``) and returns how it went.  OSError: a file cannot be written."""
    from kvmharness.results.store import atomic_write_json

    progress = progress or Progress.silent()
    accel = None
    try:
        vng, plan = plan_run(opts, progress)
        accel, out_dir = plan.accel, plan.options.out_dir
        if opts.dry_run:
            return AbOutcome(accel, dry_run=dry_boots(plan, vng), out_dir=out_dir)
        started = datetime.datetime.now(datetime.timezone.utc)
        records, signum = boot_all(plan, vng, progress)
    except AbError as e:
        return AbOutcome(accel, failure=str(e))
    manifest_path = out_dir / "ab.json"
    atomic_write_json(manifest_path, manifest(plan, records, argv, started, signum is not None))
    done = AbOutcome(accel, out_dir=out_dir, boots=tuple(records), written=(manifest_path,),
                     interrupted=signum)
    if signum is not None:
        return done
    reports, notes = build_comparisons(_ordered(records, opts.kernels), opts.kernels,
                                       opts.settings, relative_to=out_dir)
    written = write_tables(out_dir, reports)
    return dataclasses.replace(done, reports=tuple(reports), notes=tuple(notes),
                               written=(manifest_path, *written))
