"""Running a scenario ``repeat`` times per variant, interleaved, into one result file.

Variants are interleaved (A B A B ...) rather than batched so that slow drifts of the host
(medians move several-fold between identical runs, docs/ARCHITECTURE.md §6) hit both
sides alike.  The file is rewritten atomically after every run, so an interrupt or crash
keeps every completed run.
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kvmharness.observe import noise
from kvmharness.observe import pinning as pins
from kvmharness.observe.signals import signals_held
from kvmharness.results.model import (
    ResultFile,
    RunRecord,
    RunStatus,
    spec_metadata,
    variant_text,
)
from kvmharness.results.store import create_result, write_result
from kvmharness.scenarios.base import RunRequest, VariantUnsupported
from kvmharness.session.plan import SessionPlan
from kvmharness.session.until_ci import Stopper

# A variant that keeps failing is almost always failing for a systematic reason; stop
# spending the whole session on it.
MAX_CONSECUTIVE_FAILURES = 3

Progress = Callable[[str], None]


@dataclasses.dataclass
class SessionOutcome:
    result: ResultFile
    path: Path | None  # None: no run completed, so no file was written
    interrupted: bool
    failed_runs: int


def new_result(plan: SessionPlan, environment: Mapping[str, Any],
               command: str = "") -> ResultFile:
    return ResultFile(
        command=command,
        scenario=spec_metadata(plan.spec),
        parameters=dict(plan.params),
        quick=plan.quick,
        label=plan.label,
        variants=[dict(v) for v in plan.variants],
        repeat=plan.repeat,
        iterations=plan.iterations,
        warmup=plan.warmup,
        environment=dict(environment),
    )


def _non_ok(result: ResultFile, variant: Mapping[str, str], repeat: int, start: float,
            status: RunStatus, reason: str) -> RunRecord:
    return RunRecord(index=len(result.runs), repeat=repeat, variant=dict(variant),
                     status=status, reason=reason, start_time=start, end_time=time.time())


class ResultWriteError(OSError):
    """The result file could not be written mid-session; the message says where each
    completed run is.  The session stops: every later run would be lost the same way."""


def _runs_text(runs: list[RunRecord]) -> str:
    numbers = [r.index + 1 for r in runs]
    if not numbers:
        return "no completed runs"
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 1:
        return f"runs {numbers[0]}-{numbers[-1]}"
    return ("run " if len(numbers) == 1 else "runs ") + ", ".join(map(str, numbers))


def rescue_dirs() -> list[Path]:
    """Where a result that cannot be written to its own folder goes instead."""
    return [Path(tempfile.gettempdir()) / "kvmharness-rescue", Path.home() / "kvmharness-rescue"]


def rescue(result: ResultFile, target: Path, written: Path | None, saved_ok: int,
           error: OSError) -> ResultWriteError:
    """After a failed write of ``target``: every run so far saved to a rescue folder,
    ``written`` (the file holding the earlier runs) removed once the copy is safe, so no
    file is left saying ``running``; else ``written`` kept as it is.  The error names
    which runs are where."""
    result.status = "interrupted"
    result.warnings.append(f"written to a rescue folder: {target}: "
                           f"{error.strerror or error}")
    why = f"cannot write {target} ({error.strerror or error})"
    kept = result.ok_runs()
    for folder in rescue_dirs():
        if folder in target.parents:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            saved = create_result(folder / target.name, result)
        except OSError:
            continue
        moved = ""
        if written is not None:
            try:
                written.unlink()
                moved = f"; {written} removed (the rescued file holds its runs too)"
            except OSError as e:
                moved = f"; {written} also holds the earlier runs ({e.strerror or e})"
        return ResultWriteError(f"{why}: {_runs_text(kept)} saved to {saved} instead"
                                f"{moved}; the session stopped")
    earlier, lost = kept[:saved_ok], kept[saved_ok:]
    where = (f"{written} keeps {_runs_text(earlier)} (its status still says running: it "
             "could not be rewritten)" if written is not None else "nothing was written")
    return ResultWriteError(f"{why}, and no rescue folder could take the result "
                            f"({', '.join(map(str, rescue_dirs()))}): {where}; "
                            f"{_runs_text(lost)} lost; the session stopped")


def run_session(
    plan: SessionPlan,
    path: Path,
    environment: Mapping[str, Any],
    *,
    progress: Progress = lambda message: None,
    snapshot: Callable[[], noise.NoiseSnapshot] = noise.snapshot,
    command: str = "",
) -> SessionOutcome:
    """Run the plan, writing the result file after every run.  The file is created
    (exclusively: ``path``, or ``path`` with ``-2``, ``-3``... if that name is taken) once
    a run has completed; a session in which none did writes nothing (``outcome.path`` is
    None).  Ctrl-C (or SIGTERM/SIGHUP, see observe.signals) ends the session cleanly: the
    file keeps every completed run and says ``"status": "interrupted"``."""
    result = new_result(plan, environment, command)
    written: Path | None = None

    saved_ok = 0  # completed runs in the file as last written

    def save() -> None:
        nonlocal written, saved_ok
        try:
            if written is not None:
                write_result(written, result)
            elif result.ok_runs():
                with signals_held():  # an interrupt between link and assignment: a second file
                    written = create_result(path, result)
        except OSError as e:
            raise rescue(result, written or path, written, saved_ok, e) from None
        saved_ok = len(result.ok_runs())

    active = [dict(v) for v in plan.variants]
    consecutive_failures = {variant_text(v): 0 for v in active}
    failed = 0
    total = plan.repeat * len(active)
    done = 0
    stopper = (Stopper(plan.until_ci, plan.spec.precision_metrics(), plan.repeat)
               if plan.until_ci else None)
    try:
        for rep in itertools.count() if stopper else range(plan.repeat):
            if stopper and (line := stopper.check(result, rep, len(active))):
                progress(line)
                break
            for variant in list(active):
                name = variant_text(variant)
                done += 1
                progress(f"[{done}/{total}] {plan.spec.name} {name} "
                         f"run {rep + 1}/{plan.repeat}" if stopper is None else
                         f"[{done}] {plan.spec.name} {name} run {rep + 1} "
                         f"(until +-{stopper.rule.target * 100:g}%)")
                request = RunRequest(params=dict(plan.params), variant=dict(variant),
                                     iterations=plan.iterations, warmup=plan.warmup,
                                     progress=progress, pinning=plan.pinning)
                start = time.time()
                before = snapshot()
                try:
                    outcome = plan.spec.run(request)
                except VariantUnsupported as e:
                    reason = str(e) or type(e).__name__
                    result.runs.append(_non_ok(result, variant, rep, start, "skipped", reason))
                    result.warnings.append(f"{name}: skipped: {reason}")
                    active.remove(variant)
                    total -= plan.repeat - rep - 1
                    progress(f"  {name} skipped (not supported here): {reason}")
                    save()
                    continue
                except Exception as e:  # noqa: BLE001 - record it, keep the other runs going
                    reason = f"{type(e).__name__}: {e}"
                    failed += 1
                    result.runs.append(_non_ok(result, variant, rep, start, "failed", reason))
                    progress(f"  {name} failed: {reason}")
                    consecutive_failures[name] += 1
                    if consecutive_failures[name] >= MAX_CONSECUTIVE_FAILURES:
                        active.remove(variant)
                        total -= plan.repeat - rep - 1
                        result.warnings.append(
                            f"{name}: dropped after {MAX_CONSECUTIVE_FAILURES} consecutive "
                            f"failures; last: {reason}")
                    save()
                    continue
                host = noise.delta(before, snapshot())
                if plan.pinning:
                    outcome.effective.setdefault("pinning", pins.record(plan.pinning))
                if outcome.end_time is None:
                    outcome.end_time = time.time()
                consecutive_failures[name] = 0
                result.runs.append(RunRecord.from_outcome(
                    outcome, plan.spec, index=len(result.runs), repeat=rep,
                    variant=variant, host_noise=host))
                save()
                progress(f"  done in {host['wall_s']:.2f} s")
    except KeyboardInterrupt:
        # A run cut short is dropped: its samples would be a biased subset of iterations.
        # Signals held: a second Ctrl-C must not leave the file saying "running".
        with signals_held():
            result.status = "interrupted"
            save()
            progress(f"interrupted: {len(result.ok_runs())} completed runs kept in {written}"
                     if written else "interrupted before any run completed: nothing written")
        return SessionOutcome(result, written, True, failed)
    with signals_held():
        result.status = "complete"
        save()
    return SessionOutcome(result, written, False, failed)
