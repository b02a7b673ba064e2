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
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kvmharness.compare.build import Report, Settings
from kvmharness.observe import signals
from kvmharness.runner.ab_guest import (
    GUEST_OUT,
    GuestPython,
    guest_body,
    guest_env,
    pick_guest_python,
    recorded_mmu,
)
from kvmharness.runner.ab_report import build_comparisons, manifest, ordered_files, write_tables
from kvmharness.runner.boot import (
    BootResult,
    BootSpec,
    binds_for,
    boot,
    kernel_binds,
    prepare_kernel,
)
from kvmharness.runner.host import Accel
from kvmharness.runner.kernels import Kernel, KernelPathError


@dataclasses.dataclass(frozen=True)
class ScenarioCall:
    """One ``kvmharness run`` inside each boot: the scenario and its options (all but
    --label and --out, which the boot supplies)."""

    scenario: str
    options: tuple[str, ...]


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
        except KeyboardInterrupt as e:
            # BootInterrupted (during the boot), or Interrupted/KeyboardInterrupt between
            # its steps: each says or implies its signal, so SIGTERM exits 143, never 130.
            _collect(record)
            progress.note(f"interrupted during {kernel.name} round {rnd}: QEMU stopped")
            return records, int(getattr(e, "signum", None) or signals.last_signal()
                                or signal.SIGINT)
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
    reports, notes = build_comparisons(ordered_files(records, opts.kernels), opts.kernels,
                                       opts.settings, relative_to=out_dir)
    written = write_tables(out_dir, reports)
    return dataclasses.replace(done, reports=tuple(reports), notes=tuple(notes),
                               written=(manifest_path, *written))
