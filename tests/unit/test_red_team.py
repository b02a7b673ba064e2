"""Red-team cases: what a hostile or careless user tried, each replayed so it stays fixed.

The cases that once took the host down (a CPU range materialised, a 100 TiB RAM typo, a
FIFO or /dev/zero read) run ``kvmharness`` in a child process under ``setrlimit``
(address space and CPU time) and a wall-clock timeout: should one regress, it fails
here with a MemoryError or a kill, not by exhausting the machine.  Each asserts the exit
status, that the error is one line naming what was wrong, and that nothing was written.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvmharness import cli
from kvmharness.bench.scale import synthetic_result

# A child gets this much address space and CPU time; the cases need ~100 MB and 2 s.
CHILD_MEMORY = 1 << 30
CHILD_CPU_S = 60
CHILD_WALL_S = 120
# The checkout first, then the caller's path: inside a tools/vng-run boot that holds the
# runtime dependencies (psutil, ...), which the child needs as much as the parent.
PYTHONPATH = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                         os.environ.get("PYTHONPATH")) if p)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (CHILD_CPU_S, CHILD_CPU_S))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def bounded(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``kvmharness ARGV`` in a child bounded in memory, CPU and wall time."""
    return subprocess.run([sys.executable, "-m", "kvmharness", *argv], cwd=cwd,
                          preexec_fn=_limits, capture_output=True, text=True,
                          timeout=CHILD_WALL_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": PYTHONPATH})


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode > 0, (proc.returncode, proc.stderr)  # < 0: killed by a limit
    return " ".join(proc.stderr.split())


# --- command lines: bounded before anything is allocated --------------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (["--pin", "0-1000000000"], "CPU 1000000000 is beyond the 8192 CPUs"),
    (["--param", "mem_per_vcpu=100000000"], "lower vcpus x mem_per_vcpu"),
    (["--param", "mem_per_vcpu=1000000000"], "lower vcpus x mem_per_vcpu"),
    (["--iterations", "100000000000"], "--iterations 100000000000 is more than"),
    (["--warmup", "1e11"], "expected an integer, got '1e11'"),
    (["--param", "vcpus=1_0"], "'vcpus' expects 1..64"),
    (["--param", "vcpus=\uff11"], "'vcpus' expects 1..64"),
    (["--param", "vcpus=2", "--param", "vcpus=3"], "--param vcpus given twice"),
    (["--pin", ""], "--pin: empty spec"),
])
def test_run_command_lines_are_bounded(tmp_path: Path, argv: list[str], message: str) -> None:
    out = tmp_path / "out"
    proc = bounded("run", "rom-toggle", "--quick", *argv, "--out", str(out), cwd=tmp_path)
    if "mem_per_vcpu" in message and "/dev/kvm" in proc.stderr:
        pytest.skip("the RAM preflight runs after the /dev/kvm check, and there is none")
    assert message in one_line_error(proc)
    assert proc.returncode == 2 and not out.exists()


def test_mmio_empty_kind_list_is_an_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert cli.main(["run", "mmio", "--quick", "--param", "kinds=", "--out", str(out)]) == 2
    assert "'kinds' has an empty value" in capsys.readouterr().err
    assert not out.exists()


# --- files that are not result files: refused by type, size or schema ------------------

def _doc(runs: int = 4, **changes: Any) -> dict[str, Any]:
    doc = synthetic_result(runs)
    doc.update(changes)
    return doc


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "f.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["show", "compare", "plot"])
def test_special_files_are_refused_by_type_without_hanging(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    extra = ["--out", str(tmp_path / "f.png")] if command == "plot" else []
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    # Those that could hang or fill memory: in a bounded child.
    for path, kind in [(fifo, "a FIFO (named pipe)"), (Path("/dev/zero"), "a character device"),
                       (Path("/dev/urandom"), "a character device")]:
        proc = bounded(command, str(path), *extra, cwd=tmp_path)
        assert f"{path}: is {kind}, not a result file" in one_line_error(proc)
        assert proc.returncode == 1
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.json"))
    try:
        for path, kind in [(tmp_path / "sock.json", "a socket"), (tmp_path, "a folder")]:
            assert cli.main([command, str(path), *extra]) == 1
            assert f"{path}: is {kind}, not a result file" in capsys.readouterr().err
    finally:
        sock.close()
    assert not (tmp_path / "f.png").exists()


def test_size_limit_is_named_and_can_be_raised(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, _doc(40))
    size = path.stat().st_size
    assert cli.main(["show", "--max-size", str(size - 1), str(path)]) == 1
    err = capsys.readouterr().err
    assert f"more than the {size - 1} bytes limit" in err and "--max-size" in err
    assert cli.main(["show", "--max-size", str(size), str(path)]) == 0
    assert cli.main(["show", "--max-size", "0", str(path)]) == 0


@pytest.mark.parametrize(("where", "value", "message"), [
    ("kernel", None, "environment.kernel: expected an object, got null"),
    ("kernel", "6.12", "environment.kernel: expected an object, got str"),
    ("kernel", ["6.12"], "environment.kernel: expected an object, got list"),
    ("backend", None, "environment.backend: expected an object, got null"),
    ("backend", "pvm", "environment.backend: expected an object, got str"),
    ("backend", [1], "environment.backend: expected an object, got list"),
    ("kernel.release", 612, "environment.kernel.release: expected a string, got int"),
    ("fleet", "host1", "environment.fleet: expected an object, got str"),
])
def test_environment_types_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       where: str, value: Any, message: str) -> None:
    doc = _doc(environment={"kernel": {"release": "6.12"}, "backend": {"kind": "svm"}})
    section, _, key = where.partition(".")
    if key:
        doc["environment"][section][key] = value
    else:
        doc["environment"][section] = value
    bad, good = _write(tmp_path, doc, "bad.json"), _write(tmp_path, _doc(), "good.json")
    for argv, status in [(["show", str(bad)], 1), (["compare", str(bad), str(good)], 1),
                         (["compare", "--fail-on-regression", "5", str(good), str(bad)], 125)]:
        assert cli.main(argv) == status
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("timeline", [
    "not a timeline", {"pass_end_s": "0.5"}, {"pass_ms": [1.0, "x"]}, {"delete_s": None}])
def test_malformed_timeline_is_a_format_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              timeline: Any) -> None:
    doc = _doc()
    doc["runs"][1]["effective"]["timeline"] = timeline
    path = _write(tmp_path, doc)
    assert cli.main(["plot", str(path), "--out", str(tmp_path / "f.png")]) == 1
    err = capsys.readouterr().err
    assert "runs[1].effective.timeline" in err
    assert not (tmp_path / "f.png").exists()


def test_negative_tracepoint_count_is_refused(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc()
    doc["runs"][2]["tracepoints"]["hammer"]["mark_mmio_spte"] = -5
    assert cli.main(["show", str(_write(tmp_path, doc))]) == 1
    assert ("runs[2].tracepoints.hammer.mark_mmio_spte: expected an integer >= 0, got -5"
            in capsys.readouterr().err)


def test_control_characters_from_a_file_never_reach_the_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = "lab\x1b[31mel\r\nforged line\x07"
    doc = _doc(label=evil)
    doc["runs"][0]["warnings"] = ["w\x1b]0;title\x07"]
    doc["environment"] = {"kernel": {"release": "6\x1b[2J", "version": "v"},
                          "cpu": {"model": "cpu\x1b[5m"}}
    a = _write(tmp_path, doc, "a.json")
    b = _write(tmp_path, _doc(label="other"), "b.json")
    for argv in (["show", str(a)], ["compare", str(a), str(b)],
                 ["compare", "--format", "markdown", str(a), str(b)],
                 ["compare", "--format", "csv", str(a), str(b)],
                 ["compare", "--detail", str(a), str(b)]):
        assert cli.main(argv) == 0
        captured = capsys.readouterr()
        for text in (captured.out, captured.err):
            assert not any(c in text for c in "\x1b\r\x07"), argv
        # The label's newline stays inside its line: no line of the report begins with it.
        assert not any(line.lstrip(" |,").startswith("forged line")
                       for line in captured.out.splitlines()), argv
    assert cli.main(["show", str(a)]) == 0
    assert "lab\\x1b[31mel\\r\\nforged line\\x07" in capsys.readouterr().out


# --- exit statuses ---------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_during_start_up_is_one_line_and_128_plus_signal(tmp_path: Path,
                                                               signum: int) -> None:
    # The program's entry guards start-up; the signal arrives while the CLI is imported.
    code = ("import os, sys\n"
            "from kvmharness import entry\n"
            "entry.guard_startup()\n"
            f"os.kill(os.getpid(), {int(signum)})\n"
            "import kvmharness.cli\n"
            "sys.exit(0)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, preexec_fn=_limits,
                          capture_output=True, text=True, timeout=CHILD_WALL_S,
                          stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert proc.returncode == 128 + signum, (proc.returncode, proc.stderr)
    assert proc.stderr == (f"kvmharness: {signal.Signals(signum).name} while starting: "
                           "nothing was run\n")


def test_sigterm_during_a_command_is_128_plus_signal(tmp_path: Path) -> None:
    # After start-up too: show stopped by SIGTERM exits 143 with one line, not -15.
    code = ("import os, signal, sys\n"
            "from kvmharness.compare.render import show\n"
            "real = show.format_show\n"
            "def slow(f):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return real(f)\n"
            "show.format_show = slow\n"
            "import kvmharness.cli.show as cli_show\n"
            "cli_show.format_show = slow\n"
            "from kvmharness.entry import main\n"
            f"sys.argv = ['kvmharness', 'show', {str(_write(tmp_path, _doc()))!r}]\n"
            "sys.exit(main())\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, preexec_fn=_limits,
                          capture_output=True, text=True, timeout=CHILD_WALL_S,
                          stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert proc.returncode == 143, (proc.returncode, proc.stderr)
    assert proc.stderr == "interrupted\n"


# --- the output path: proven before the first run; a failed write loses no run ---------

@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch, fake_spec: Any) -> list[int]:
    """``run fake-toggle`` without KVM; the list counts the runs started."""
    from kvmharness.cli import common as cli_common
    from kvmharness.scenarios import registry
    started: list[int] = []
    default = fake_spec().run

    def run(req: Any) -> Any:
        started.append(1)
        return default(req)

    spec = fake_spec(run=run)
    monkeypatch.setattr(cli_common, "collect_fingerprint",
                        lambda: {"kernel": {"release": "6.12.0-test"}})
    monkeypatch.setattr(cli_common, "kvm_access_problem", lambda: None)
    monkeypatch.setattr(registry, "all_scenarios", lambda: {spec.name: spec})
    return started


def _run_fake(out: Path, *extra: str) -> int:
    return cli.main(["run", "fake-toggle", "--quick", "--repeat", "2", "--out", str(out),
                     *extra])


def test_a_label_too_long_for_a_file_name_is_refused_before_any_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_run: list[int]) -> None:
    assert _run_fake(tmp_path / "out", "--label", "x" * 300) == 1
    assert "more than the 255 this file system allows: shorten --label" in " ".join(
        capsys.readouterr().err.split())
    assert not fake_run and not (tmp_path / "out").exists()


def test_an_unwritable_folder_is_found_by_a_probe_before_any_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_run: list[int]) -> None:
    # /sys/kernel passes a permission check for root, and takes no new file.
    assert _run_fake(Path("/sys/kernel")) == 1
    assert "/sys/kernel: cannot create a file in /sys/kernel" in " ".join(
        capsys.readouterr().err.split())
    assert not fake_run


def test_too_little_free_space_is_refused_before_any_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_run: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmharness.cli import common as cli_common

    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    monkeypatch.setattr(cli_common, "expected_result_bytes", lambda plan: free)
    assert _run_fake(tmp_path / "out") == 1
    assert "less than the" in capsys.readouterr().err and not fake_run


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_tiny_tmpfs_is_refused_before_any_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_run: list[int]) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        assert _run_fake(tiny) == 1
        assert "KiB free on its file system, less than the" in " ".join(
            capsys.readouterr().err.split())
        assert not fake_run and not any(tiny.iterdir())
    finally:
        subprocess.run(["umount", str(tiny)], check=True)


def _failing_writes(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """The result file's rewrites fail with ENOSPC from the ``after``-th on."""
    import errno

    from kvmharness.session import run as session_run

    real = session_run.write_result
    calls = []

    def write(path: Path, result: Any) -> None:
        calls.append(path)
        if len(calls) >= after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, result)

    monkeypatch.setattr(session_run, "write_result", write)


def test_a_write_failing_mid_session_rescues_every_completed_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_run: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmharness.results.store import load_result
    from kvmharness.session import run as session_run

    rescue = tmp_path / "rescue"
    monkeypatch.setattr(session_run, "rescue_dirs", lambda: [rescue])
    _failing_writes(monkeypatch, after=2)  # run 1 creates the file, run 2 rewrites it
    out = tmp_path / "out"
    assert _run_fake(out) == 1
    err = " ".join(capsys.readouterr().err.split())
    (saved,) = rescue.glob("*.json")
    assert f"No space left on device): runs 1-3 saved to {saved} instead" in err
    assert "removed (the rescued file holds its runs too); the session stopped" in err
    result = load_result(saved)
    assert result.status == "interrupted" and len(result.ok_runs()) == 3 == len(fake_run)
    assert not list(out.glob("*.json"))  # no file left saying "running"


def test_a_write_failing_with_nowhere_to_rescue_says_which_runs_are_where(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_run: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmharness.results.store import load_result
    from kvmharness.session import run as session_run

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(session_run, "rescue_dirs", lambda: [blocker / "rescue"])
    _failing_writes(monkeypatch, after=2)
    out = tmp_path / "out"
    assert _run_fake(out) == 1
    err = " ".join(capsys.readouterr().err.split())
    (kept,) = out.glob("*.json")
    assert f"{kept} keeps runs 1-2 (its status still says running" in err
    assert "run 3 lost; the session stopped" in err
    assert len(load_result(kept).ok_runs()) == 2
