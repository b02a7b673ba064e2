"""Interrupting ``kvmharness run`` (SIGINT, SIGTERM, SIGHUP, twice) at varied moments, runs
racing for one file name, and kernel state left by killed runs: the real command in a child
process, with a fake scenario whose runs make and remove real tracefs instances."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmharness.observe import tracefs
from kvmharness.results.store import load_result

ROOT = Path(__file__).resolve().parents[2]
# Keep what the caller had (inside a vng boot: the folder holding psutil and friends).
PYTHONPATH = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

# The command line, in a child, with a fake scenario registered.  Each run counts
# tracepoints in fresh tracefs instances (where tracefs is usable) so that signals land in
# their creation and removal too, and then "closes its VM" for CLEANUP_S seconds.
DRIVER = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, even
signal.signal(signal.SIGHUP,  # when pytest runs in a script's nohup ... &, unless asked
              signal.SIG_IGN if os.environ.get("FAKE_NOHUP") else signal.SIG_DFL)
from kvmharness import cli
from kvmharness.cli import common
from kvmharness.observe import tracefs
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import ZAP_AXIS, Metric, RunOutcome, ScenarioSpec

TRACE = tracefs.tracefs_status().usable
CLEANUP_S = float(os.environ.get("FAKE_CLEANUP_S", "0"))

def run(req):
    o = RunOutcome()
    try:
        for i in range(req.iterations):
            if TRACE:
                with tracefs.TraceCounter(tracefs.ZAP_EVENTS, buffer_kb=64):
                    time.sleep(0.005)
            else:
                time.sleep(0.01)
            o.add("total", float(os.getpid()))
    finally:
        time.sleep(CLEANUP_S)
    return o

spec = ScenarioSpec(name="fake", summary="", parameters=(),
                    metrics=(Metric("total", "ms", "lower", ""),), variant_axes=(ZAP_AXIS,),
                    run=run, default_iterations=int(os.environ.get("FAKE_ITERATIONS", "4")),
                    default_warmup=0)
registry.all_scenarios = lambda: {"fake": spec}
common.collect_fingerprint = lambda: {"kernel": {"release": "test"}}
if os.environ.get("FAKE_KVM_OK"):
    common.kvm_access_problem = lambda device="/dev/kvm": None
if os.environ.get("FAKE_SECOND"):
    import datetime
    from kvmharness.cli import run as run_cmd
    from kvmharness.results import store
    frozen = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    run_cmd.default_result_path = lambda d, s, l: store.default_result_path(d, s, l, frozen)
start_at = float(os.environ.get("FAKE_START_AT", "0"))
while time.time() < start_at:
    time.sleep(0.001)
sys.exit(cli.main())  # as the program: argv from sys.argv
"""


def driver(tmp_path: Path) -> Path:
    path = tmp_path / "driver.py"
    if not path.exists():
        path.write_text(DRIVER)
    return path


def start(tmp_path: Path, out: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(driver(tmp_path)), "run", "fake", "--label", "L", "--out",
         str(out), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": PYTHONPATH, "FAKE_KVM_OK": "1", **env})


def instances_of(pid: int) -> list[str]:
    status = tracefs.tracefs_status(())
    if not status.usable:
        return []
    return [n for n in os.listdir(Path(status.path) / "instances")  # type: ignore[arg-type]
            if n.startswith(f"kvmharness-{pid}-")]


def wait_for_first_run(proc: subprocess.Popen[str], mark: str = "[1/") -> list[str]:
    """Read progress until a line starts with ``mark``: by default, until the first run has
    started (signals before that would hit the interpreter's start-up, where nothing of
    ours runs yet)."""
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith(mark):
            return lines
    raise AssertionError(f"never saw {mark!r}: {''.join(lines)}")


EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
# Into the first run (a run makes and removes a tracefs instance every ~0.1 s, one run
# takes ~0.4 s): inside instance set-up and removal, between runs, in file writes.
DELAYS = (0.0, 0.02, 0.1, 0.3, 0.7, 1.5)
FIRST_DONE = "  done in"  # progress line: the first run has completed


def interrupt_and_check(tmp_path: Path, sig: signal.Signals, delay: float,
                        second_after: float | None = None, mark: str = "[1/") -> int:
    """Start a long run, send ``sig`` ``delay`` s after its progress line ``mark`` (the
    first run's start, by default), again ``second_after`` s later, check what it left;
    returns the completed runs kept."""
    out = tmp_path / f"out-{sig.name}-{delay}-{second_after}-{len(mark)}"
    proc = start(tmp_path, out, "--repeat", "200",
                 FAKE_CLEANUP_S="0.05" if second_after is not None else "0")
    early = wait_for_first_run(proc, mark)
    time.sleep(delay)
    proc.send_signal(sig)
    if second_after is not None:
        time.sleep(second_after)
        proc.send_signal(sig)
    _stdout, stderr = proc.communicate(timeout=60)
    where = f"{sig.name} after {delay} s, second after {second_after}: {''.join(early)}{stderr}"
    assert proc.returncode == EXIT[sig], where
    assert "Traceback" not in stderr, where
    assert instances_of(proc.pid) == [], where
    files = list(out.glob("*")) if out.exists() else []
    assert [f for f in files if f.suffix != ".json"] == [], where  # no temp file left
    if not files:
        assert "nothing written" in stderr or "interrupted" in stderr, where
        return 0
    (path,) = files
    result = load_result(path)  # valid
    assert result.status == "interrupted", where
    assert all(r.status == "ok" for r in result.runs), where
    return len(result.runs)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=lambda s: s.name)
def test_a_signal_at_any_moment_keeps_completed_runs_and_leaves_no_instance(
        tmp_path: Path, sig: signal.Signals) -> None:
    for delay in DELAYS:
        interrupt_and_check(tmp_path, sig, delay)
    # Once a run has completed, it is kept (however loaded the machine running this is).
    assert interrupt_and_check(tmp_path, sig, 0.0, mark=FIRST_DONE) >= 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_second_signal_during_cleanup_still_leaves_a_final_file(
        tmp_path: Path, sig: signal.Signals) -> None:
    # The first signal lands in a run; the second while that run is still closing its VM
    # (FAKE_CLEANUP_S) or while the session writes the file.
    for delay, gap in ((0.3, 0.0), (0.3, 0.01), (0.3, 0.03), (0.4, 0.06)):
        interrupt_and_check(tmp_path, sig, delay, second_after=gap)
    assert interrupt_and_check(tmp_path, sig, 0.0, second_after=0.02, mark=FIRST_DONE) >= 1


def test_nohup_keeps_a_run_going_on_sighup(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start(tmp_path, out, "--repeat", "2", FAKE_NOHUP="1")
    wait_for_first_run(proc)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    (path,) = out.iterdir()
    result = load_result(path)
    assert result.status == "complete" and len(result.ok_runs()) == 4


def test_parallel_runs_in_the_same_second_each_get_their_own_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    start_at = f"{time.time() + 3:.3f}"  # all children past their start-up by then
    procs = [start(tmp_path, out, "--repeat", "1", FAKE_SECOND="1", FAKE_START_AT=start_at,
                   FAKE_ITERATIONS="1")
             for _ in range(8)]
    for p in procs:
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
    files = sorted(out.iterdir())
    assert len(files) == 8, files
    assert {f.name for f in files} == {"fake-L-20260102T030405Z.json"} | {
        f"fake-L-20260102T030405Z-{n}.json" for n in range(2, 9)}
    writers = {load_result(f).runs[0].samples["total"].values[0] for f in files}
    assert writers == {float(p.pid) for p in procs}  # every run's result, none overwritten


def usable_tracefs() -> Path:
    status = tracefs.tracefs_status(())
    if not status.usable:
        pytest.skip(f"tracefs not usable: {status.reason}")
    return Path(status.path)  # type: ignore[arg-type]


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_instances_of_ended_processes_are_removed_at_start(tmp_path: Path) -> None:
    instances = usable_tracefs() / "instances"
    live = subprocess.Popen(["sleep", "60"])
    mine = instances / f"kvmharness-{live.pid}-0"
    mine.mkdir()
    said = []
    try:
        # Any harness starting meanwhile on this host (another test session) removes the
        # stale instance too; then the run here has nothing to say, so try again.
        for attempt in range(3):
            gone = instances / f"kvmharness-{dead_pid()}-0"
            gone.mkdir()
            (gone / "events" / tracefs.ZAP_EVENTS[0] / "enable").write_text("1")
            (gone / "tracing_on").write_text("1")
            proc = start(tmp_path, tmp_path / f"out{attempt}", "--repeat", "1")
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, stderr
            assert not gone.exists()
            assert mine.exists()  # its process is running
            lines = [line for line in stderr.splitlines()
                     if line.startswith("kvmharness: removed ")]
            assert len(lines) <= 1, stderr  # said once
            said.append(sum(gone.name in line and "left by ended runs" in line
                            for line in lines))
            if said[-1]:
                break
        assert said[-1] == 1, said
    finally:
        live.kill()
        live.wait()
        mine.rmdir()


def test_an_instance_in_use_is_never_removed(tmp_path: Path) -> None:
    # A harness whose pid we cannot see (another pid namespace) holds free_buffer open;
    # rmdir then fails with EBUSY and the instance stays, whatever its name says.
    instances = usable_tracefs() / "instances"
    busy = instances / f"kvmharness-{dead_pid()}-7"
    busy.mkdir()
    fd = os.open(busy / "free_buffer", os.O_WRONLY)
    err = tmp_path / "err"
    try:
        with open(err, "w") as f:
            assert busy.name not in tracefs.remove_stale_instances(err=f, force=True)
        assert busy.exists()
        assert f"{busy.name} of ended runs still in use; not removed" in err.read_text()
    finally:
        os.close(fd)
        busy.rmdir()


def test_a_killed_counter_leaves_an_empty_stopped_instance(tmp_path: Path) -> None:
    # SIGKILL cannot be caught: the kernel closes free_buffer, which frees the ring buffer
    # and (disable_on_free) turns tracing off; the next start removes the directory.
    root = usable_tracefs()
    code = ("import os, sys, time\n"
            "from kvmharness.observe.tracefs import TraceCounter\n"
            "with TraceCounter() as tc:\n"
            "    print(tc.instance, flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert proc.stdout is not None
    instance = Path(proc.stdout.readline().strip())
    try:
        assert (instance / "tracing_on").read_text().strip() == "1"
        proc.kill()
        proc.wait()
        assert (instance / "tracing_on").read_text().strip() == "0"
        assert int((instance / "buffer_size_kb").read_text().split()[0]) < 64
        err = tmp_path / "err"
        with open(err, "w") as f:
            tracefs.remove_stale_instances(root, err=f, force=True)  # or another harness
        assert not instance.exists()
    finally:
        if instance.exists():
            instance.rmdir()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_script_killed_inside_a_counter_leaves_no_instance(sig: signal.Signals) -> None:
    # Outside `kvmharness run` (a script, a test session) SIGTERM/SIGHUP keep their default
    # action: the process still dies of the signal, but removes its instance first, even
    # while it has a file of it open.
    usable_tracefs()
    code = ("import signal, time\n"
            "for s in (signal.SIGTERM, signal.SIGHUP):  # as from a terminal, not nohup\n"
            "    signal.signal(s, signal.SIG_DFL)\n"
            "from kvmharness.observe.tracefs import TraceCounter\n"
            "with TraceCounter() as tc:\n"
            "    trace = open(tc.instance / 'trace')\n"
            "    print(tc.instance, flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert proc.stdout is not None
    try:
        instance = Path(proc.stdout.readline().strip())
        assert instance.exists()
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -sig
    assert not instance.exists()


def test_signals_held_defers_and_then_delivers(sigint_default: None) -> None:
    import _thread

    from kvmharness.observe.signals import signals_held

    steps = []
    with pytest.raises(KeyboardInterrupt), signals_held():
        _thread.interrupt_main()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        steps.append("block finished")
    assert steps == ["block finished"]


def test_a_signal_before_any_run_completed_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start(tmp_path, out, "--repeat", "5", FAKE_CLEANUP_S="2")
    wait_for_first_run(proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert not out.exists()
    assert "interrupted before any run completed: nothing written" in stderr
    assert "fake: no run completed; no result file written" in stdout
