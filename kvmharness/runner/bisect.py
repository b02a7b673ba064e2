"""``kvmharness bisect-step``: one step of ``git bisect run`` over KVM sources.

In the checkout git bisect has put at a commit: build kvm*.ko from it (build-kvm, the
incremental module-only build), boot the target kernel with them, run the scenarios, and
compare with the known-good commit's runs (measured once, at the first step, from ``git
archive GOOD``, and kept).  The exit status is git bisect run's: 0 good, 1 bad, 125 skip
(the build or the boot failed, or the comparison cannot tell: see
``compare.gate.bisect_verdict``), 128 stop the bisect (the known-good side itself
cannot be built or measured).  Each step appends one line to OUT/bisect-steps.log.
"""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kvmharness.compare.build import CompareError, Settings, build_sides_report
from kvmharness.compare.gate import BAD, GOOD, SKIP, bisect_verdict
from kvmharness.results.store import load_result
from kvmharness.results.validate import ResultFormatError
from kvmharness.runner import ab, kvmbuild
from kvmharness.runner.kernels import KernelPathError, resolve_kernel, with_kvm_overlay
from kvmharness.runner.kvmsource import SOURCE_PARTS, SourceError

ABORT = 128  # git bisect run stops on 128..255 (except 125 and above-127 signals' use)
Log = Callable[[str], None]
_DONE = ".complete"


@dataclasses.dataclass(frozen=True)
class StepRequest:
    source: Path                         # the checkout at the commit to test
    good: str                            # a commit known to be good
    target: str                          # --for of build-kvm
    calls: tuple[ab.ScenarioCall, ...]
    out: Path                            # baselines, overlays, results, the log
    threshold: float = 0.10
    metrics: tuple[str, ...] = ()
    patches: tuple[Path, ...] = ()
    vendors: tuple[str, ...] = ("amd",)
    settings: Settings = dataclasses.field(default_factory=Settings)
    accel: str = "auto"
    memory: str = "4G"
    timeout_s: float = 1800.0
    boots: int = 1                       # boots per side (2+: tested on per-boot medians)


@dataclasses.dataclass(frozen=True)
class StepResult:
    status: int                          # GOOD, BAD, SKIP or ABORT
    commit: str
    reasons: tuple[str, ...]
    build_s: float = 0.0
    boot_s: float = 0.0


def _git(source: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    if proc.returncode != 0:
        raise SourceError(f"git {' '.join(args)} in {source}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def export_commit(source: Path, commit: str, dest: Path) -> None:
    """DEST holds the top Makefile, arch/x86/kvm and virt/kvm of COMMIT (git archive)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(source), "archive", "--format=tar", commit,
                              "--", *SOURCE_PARTS], capture_output=True, timeout=300,
                             check=False)
    if archive.returncode != 0:
        raise SourceError(f"git archive {commit}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True,
                   timeout=300)


def _measure(req: StepRequest, name: str, overlay: Path, out_dir: Path,
             log: Log) -> tuple[list[Path], str | None, float]:
    """Boot the target with OVERLAY's modules, run the scenarios: (result files, what
    went wrong or None, seconds)."""
    t0 = time.monotonic()
    target = kvmbuild.resolve_target(req.target, kvmbuild.writable_cache())
    try:
        kernel = with_kvm_overlay(resolve_kernel(name, target.root), overlay)
    except KernelPathError as e:
        return [], str(e), time.monotonic() - t0
    shutil.rmtree(out_dir, ignore_errors=True)
    opts = ab.AbOptions(kernels=(kernel,), calls=req.calls, rounds=req.boots, out_dir=out_dir,
                        accel=req.accel, memory=req.memory, timeout_s=req.timeout_s,
                        settings=req.settings)
    outcome = ab.execute(opts, ["bisect-step"], ab.Progress(log, lambda _: None,
                                                            lambda _: None))
    seconds = time.monotonic() - t0
    if outcome.failure is not None:
        return [], outcome.failure, seconds
    if outcome.interrupted is not None:
        return [], f"interrupted by signal {outcome.interrupted}", seconds
    files = [f for r in outcome.boots for f in r.files]
    if not outcome.ok:
        bad = outcome.failed_boots[0]
        if bad.result is None or not bad.result.ok:
            why = bad.skipped or (bad.result.summary() if bad.result else "did not boot")
            if bad.result is not None and bad.result.panic:
                why += f"; {bad.result.panic}"
        else:
            why = f"scenario exit statuses {bad.scenario_status}"
        return files, f"the boot failed: {why}", seconds
    return files, None, seconds


def _build(req: StepRequest, source: Path, overlay: Path, log: Log) -> float:
    t0 = time.monotonic()
    kvmbuild.build(kvmbuild.BuildRequest(source=source, target=req.target,
                                         patches=req.patches, out=overlay,
                                         vendors=req.vendors), log)
    return time.monotonic() - t0


def baseline(req: StepRequest, log: Log) -> tuple[list[Path], str]:
    """The known-good commit's result files, measured at the first step and kept."""
    good = _git(req.source, "rev-parse", "--verify", req.good + "^{commit}")
    folder = req.out / f"good-{good[:12]}"
    if (folder / _DONE).is_file():
        return _json_files(folder), good
    log(f"measuring the known-good commit {good[:12]} once")
    export_commit(req.source, good, req.out / "src-good")
    _build(req, req.out / "src-good", req.out / "overlay-good", log)
    files, failure, _ = _measure(req, f"good-{good[:8]}", req.out / "overlay-good",
                                 folder / "runs", log)
    if failure is not None:
        raise kvmbuild.BuildError(f"the known-good commit {good[:12]}: {failure}")
    (folder / _DONE).write_text("\n".join(map(str, files)) + "\n")
    return files, good


def _json_files(folder: Path) -> list[Path]:
    return [Path(line) for line in (folder / _DONE).read_text().splitlines() if line]


def step(req: StepRequest, log: Log) -> StepResult:
    req.out.mkdir(parents=True, exist_ok=True)
    try:
        commit = _git(req.source, "rev-parse", "HEAD")
    except SourceError as e:
        return StepResult(ABORT, "?", (str(e),))
    try:
        good_files, good = baseline(req, log)
    except (kvmbuild.BuildError, SourceError, OSError, subprocess.SubprocessError) as e:
        return StepResult(ABORT, commit, (f"cannot measure the good side: {e}",))
    if commit == good:
        return StepResult(GOOD, commit, ("this is the known-good commit",))
    t0 = time.monotonic()
    try:
        build_s = _build(req, req.source, req.out / "overlay-step", log)
    except (kvmbuild.BuildError, SourceError) as e:
        return StepResult(SKIP, commit, (f"build failed: {e}",), time.monotonic() - t0)
    files, failure, boot_s = _measure(req, f"rev-{commit[:8]}", req.out / "overlay-step",
                                      req.out / "steps" / commit[:12], log)
    if failure is not None:
        return StepResult(SKIP, commit, (failure,), build_s, boot_s)
    try:
        a = [load_result(p) for p in good_files]
        b = [load_result(p) for p in files]
        report = build_sides_report(a, b, settings=req.settings)
    except (ResultFormatError, OSError, CompareError) as e:
        return StepResult(SKIP, commit, (f"cannot compare: {e}",), build_s, boot_s)
    status, reasons = bisect_verdict(report, req.threshold, req.metrics)
    return StepResult(status, commit, tuple(reasons), build_s, boot_s)


def log_line(result: StepResult) -> str:
    word = {GOOD: "good", BAD: "bad", SKIP: "skip", ABORT: "abort"}[result.status]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"{stamp} {result.commit[:12]} {word} (exit {result.status}) build "
            f"{result.build_s:.0f} s, boot {result.boot_s:.0f} s: "
            + "; ".join(result.reasons))


def record(out: Path, result: StepResult) -> None:
    with open(out / "bisect-steps.log", "a") as f:
        f.write(log_line(result) + "\n")

