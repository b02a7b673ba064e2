"""vng command construction, the guest script, and boot() failure handling with a fake
vng (a shell script that behaves like vng + QEMU: console log, exit status, hangs), so
timeouts, panics and Ctrl-C are tested without booting anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kvmharness.runner.boot import (
    BLACKLIST,
    RC_NO_STATUS,
    RC_TIMEOUT,
    BootError,
    BootSpec,
    binds_for,
    boot,
    check_dir_arg,
    exec_body,
    find_panic,
    guest_script,
    passthrough_env,
    vng_command,
)
from kvmharness.runner.host import Accel
from kvmharness.runner.procgroup import group_members
from kvmharness.runner.vng_run import VngRunArgs, parse_vng_run

TCG = Accel("tcg", "kvm_amd", 1, "test")
KVM = Accel("kvm", "kvm_intel", 4, "test")


def test_tcg_command_matches_the_recipe() -> None:
    spec = BootSpec(Path("/k/boot/vmlinuz-6.1"), TCG, rodirs=(Path("/var/cache/x"),),
                    rwdirs=(Path("/out/r1-A"),), append="foo=1", qemu_opts="-s",
                    rw_mounts=((Path("/tmp/in"), Path("/out/r2-A")),))
    cmd = vng_command("vng", spec, Path("/tmp/t/guest.sh"), Path("/tmp/t/console.log"))
    assert cmd[:3] == ["vng", "--run", "/k/boot/vmlinuz-6.1"]
    assert "--disable-kvm" in cmd
    assert cmd[cmd.index("--cpus") + 1] == "1"
    assert cmd[cmd.index("--memory") + 1] == "4G"
    assert "--force-9p" in cmd
    qemu = next(c for c in cmd if c.startswith("--qemu-opts="))
    assert qemu.startswith("--qemu-opts=-cpu max ")
    assert "chardev file,id=khlog,path=/tmp/t/console.log" in qemu and qemu.endswith(" -s")
    append = cmd[cmd.index("--append") + 1]
    assert append.startswith(BLACKLIST + " console=hvc0") and append.endswith("foo=1")
    assert " " not in BLACKLIST
    assert "--rodir=/var/cache/x" in cmd and "--rwdir=/out/r1-A" in cmd
    assert "--rwdir=/tmp/in=/out/r2-A" in cmd
    assert cmd[-2:] == ["--exec", "sh /tmp/t/guest.sh"]


def test_tcg_with_several_vcpus_is_single_threaded() -> None:
    two = Accel("tcg", "kvm_amd", 2, "test")
    cmd = vng_command("vng", BootSpec(Path("/k"), two), Path("/g"), Path("/c"))
    qemu = next(c for c in cmd if c.startswith("--qemu-opts="))
    assert " -accel tcg,thread=single" in qemu and cmd[cmd.index("--cpus") + 1] == "2"
    for accel in (TCG, KVM):
        cmd = vng_command("vng", BootSpec(Path("/k"), accel), Path("/g"), Path("/c"))
        assert "thread=single" not in " ".join(cmd)


def test_guest_command_runs_as_root() -> None:
    as_user = vng_command("vng", BootSpec(Path("/k"), TCG, user="root"), Path("/g"), Path("/c"))
    assert as_user[as_user.index("--user") + 1] == "root"
    assert "--user" not in vng_command("vng", BootSpec(Path("/k"), TCG, user=None), Path("/g"),
                                       Path("/c"))


def test_kvm_command_uses_the_host_cpu() -> None:
    cmd = vng_command("/opt/vng", BootSpec(Path("/linux"), KVM, memory="8G"), Path("/t/g.sh"),
                      Path("/t/c.log"))
    assert "--disable-kvm" not in cmd
    assert next(c for c in cmd if c.startswith("--qemu-opts=")).startswith(
        "--qemu-opts=-cpu host ")
    assert cmd[cmd.index("--cpus") + 1] == "4" and cmd[cmd.index("--memory") + 1] == "8G"


@pytest.mark.parametrize("bad", ["/a=b", "/a,b", "/a b"])
def test_folders_vng_cannot_take(bad: str) -> None:
    with pytest.raises(BootError, match="must not contain"):
        check_dir_arg(Path(bad))
    with pytest.raises(BootError):
        vng_command("vng", BootSpec(Path("/k"), TCG, rwdirs=(Path(bad),)), Path("/g"),
                    Path("/c"))


def test_binds_only_for_what_the_guest_masks() -> None:
    binds = binds_for([Path("/var/cache/kvmharness/pydeps"), Path("/var/cache/kvmharness"),
                       Path("/work/repo"), Path("/run/foo"), Path("/tmp/x"),
                       Path("/lib/modules/6.1"), Path("/var/cache/kvmharness/kernels/k")])
    assert binds == [Path("/var/cache/kvmharness"), Path("/run/foo")]


def test_guest_script_quotes_for_dash() -> None:
    text = guest_script(cwd=Path("/work/it's"), env={"PYTHONPATH": "/a:/b", "X": "$HOME `x`"},
                        modprobe="kvm_amd npt=0", body=exec_body(["python3", "-c", "print('hi')"]))
    assert "export PYTHONPATH=/a:/b\n" in text
    assert "export X='$HOME `x`'\n" in text
    assert "cd '/work/it'\"'\"'s' || exit 125\n" in text
    assert "modprobe kvm_amd npt=0 || echo 'modprobe kvm_amd npt=0 failed' >&2\n" in text
    assert text.endswith("exec python3 -c 'print('\"'\"'hi'\"'\"')'\n")
    # And dash really reads it so.
    out = subprocess.run(["sh", "-c", exec_body(["printf", "%s|", "a b", "it's", "$x"])],
                         capture_output=True, text=True, check=True).stdout
    assert out == "a b|it's|$x|"


def test_passthrough_env() -> None:
    env = {"KVMHARNESS_REQUIRE_KVM": "1", "CI": "true", "HOME": "/root", "KVMHARNESS_": "x",
           "KVMHARNESS_A-B": "no"}
    assert passthrough_env(env) == {"CI": "true", "KVMHARNESS_REQUIRE_KVM": "1"}


def test_find_panic() -> None:
    assert find_panic(["[ 1.0] ok", "[ 2.0] Kernel panic - not syncing: VFS"]) == \
        "[ 2.0] Kernel panic - not syncing: VFS"
    assert find_panic(["all fine"]) is None


def test_vng_run_argument_parsing() -> None:
    a = parse_vng_run(
        ["--chdir", "/repo", "6.1", "--rwdir", "/o", "--rodir=/r", "--cpus", "2",
         "--append", "kvm.tdp_mmu=0", "--append=kvm_amd.npt=0", "--", "python3", "-m",
         "pytest", "--rwdir", "x", "--cpus", "9"])
    assert a == VngRunArgs(Path("/repo"), "6.1", ("python3", "-m", "pytest", "--rwdir", "x",
                                                  "--cpus", "9"),
                           (Path("/o"),), (Path("/r"),), 2, "kvm.tdp_mmu=0 kvm_amd.npt=0")
    assert parse_vng_run(["6.1", "--", "true"]).cpus is None
    for bad in ([], ["6.1"], ["6.1", "--"], ["6.1", "--bogus", "x", "--", "true"],
                ["6.1", "--cpus", "--", "true"]):
        with pytest.raises(BootError, match="usage"):
            parse_vng_run(bad)
    for bad_cpus in ("0", "two", "-1"):
        with pytest.raises(BootError, match=f"--cpus='{bad_cpus}': expected a number"):
            parse_vng_run(["6.1", "--cpus", bad_cpus, "--", "true"])
    with pytest.raises(BootError, match="--cpus given twice"):
        parse_vng_run(["6.1", "--cpus", "2", "--cpus", "4", "--", "true"])


# --- boot() with a fake vng ---------------------------------------------------------------

FAKE_VNG = textwrap.dedent("""\
    #!/bin/bash
    # Stands in for vng + QEMU: writes a "console" to the file named in --qemu-opts, then
    # behaves as $FAKE_VNG_MODE says.
    console=; exec_cmd=
    while (($#)); do
        case $1 in
            --qemu-opts=*) console=$(sed -n 's/.*path=\\([^ ]*console.log\\).*/\\1/p' <<<"$1") ;;
            --exec) exec_cmd=$2; shift ;;
        esac
        shift
    done
    echo "[    0.000000] Linux version 9.9.9-fake" >> "$console"
    echo $$ > "$FAKE_VNG_PIDFILE"
    case ${FAKE_VNG_MODE:-run} in
        run) echo "[    1.000000] virtme-ng-init: starting script" >> "$console"
             sh -c "$exec_cmd" ;;
        panic) echo "[    1.500000] Kernel panic - not syncing: fake" >> "$console"; exit 255 ;;
        hang) trap '' TERM            # like a wedged QEMU: only SIGKILL ends it
              sleep 300 & sleep 300 & # children in the same process group
              wait ;;
    esac
""")


@pytest.fixture
def fake_vng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "vng"
    path.write_text(FAKE_VNG)
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_VNG_PIDFILE", str(tmp_path / "vng.pid"))
    return path


def _boot(fake_vng: Path, tmp_path: Path, body: str, timeout_s: float = 30,
          lines: list[str] | None = None) -> object:
    sink = lines if lines is not None else []
    return boot(str(fake_vng), BootSpec(Path("/k"), TCG, timeout_s=timeout_s, kill_grace_s=0.5),
                name="A",
                version="9.9.9-fake", body=body, cwd=tmp_path, env={"GREETING": "hi there"},
                modprobe="", out=sink.append, err=sink.append,
                output_log=tmp_path / "output.log", console_log=tmp_path / "console.log")


def test_boot_runs_the_script_and_keeps_logs(fake_vng: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    r = _boot(fake_vng, tmp_path, 'echo "$GREETING from $(pwd)"; echo oops >&2; exit 0',
              lines=lines)
    assert r.ok and r.rc == 0 and r.status == "ok"  # type: ignore[attr-defined]
    assert f"hi there from {tmp_path}" in lines and "oops" in lines
    assert "oops" in (tmp_path / "output.log").read_text()
    assert "Linux version 9.9.9-fake" in (tmp_path / "console.log").read_text()


def test_boot_reports_the_command_status(fake_vng: Path, tmp_path: Path) -> None:
    r = _boot(fake_vng, tmp_path, "echo failing; exit 7")
    assert (r.status, r.rc) == ("failed", 7)  # type: ignore[attr-defined]
    report = r.failure_report()  # type: ignore[attr-defined]
    assert "exit 7" in report and "failing" in report


def test_boot_failure_shows_the_console_tail(fake_vng: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VNG_MODE", "panic")
    r = _boot(fake_vng, tmp_path, "true")
    assert (r.status, r.rc) == ("no-status", RC_NO_STATUS)  # type: ignore[attr-defined]
    report = r.failure_report()  # type: ignore[attr-defined]
    assert "boot failure or kernel panic" in report
    assert "Kernel panic - not syncing: fake" in report
    assert "guest kernel console" in report and "Linux version 9.9.9-fake" in report


def test_boot_timeout_kills_the_whole_group(fake_vng: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VNG_MODE", "hang")
    start = time.monotonic()
    r = _boot(fake_vng, tmp_path, "true", timeout_s=1.5)
    elapsed = time.monotonic() - start
    assert (r.status, r.rc) == ("timeout", RC_TIMEOUT)  # type: ignore[attr-defined]
    assert "timed out" in r.summary()  # type: ignore[attr-defined]
    assert r.leftover_pids == []  # type: ignore[attr-defined]
    pid = int((tmp_path / "vng.pid").read_text())
    assert group_members(pid) == []  # it ignored SIGTERM: SIGKILL it was, children too
    assert elapsed < 1.5 + 0.5 + 10


DRIVER = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from kvmharness.runner.host import Accel
    from kvmharness.runner.boot import BootInterrupted, BootSpec, boot
    try:
        boot(sys.argv[1], BootSpec(Path("/k"), Accel("tcg", "kvm_amd", 1, "t"),
                                   timeout_s=300, kill_grace_s=0.5), name="A", version="v",
             body="true",
             cwd=Path(sys.argv[2]), env={}, modprobe="",
             out=lambda l: None, err=lambda l: None)
    except BootInterrupted as e:
        print("interrupted:", e, flush=True)
        sys.exit(130)
    sys.exit(0)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_kills_qemu_before_exiting(fake_vng: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             sig: signal.Signals, sigint_default: None) -> None:
    # sigint_default: the driver must not inherit an ignored SIGINT (pytest run from a script)
    monkeypatch.setenv("FAKE_VNG_MODE", "hang")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, str(driver), str(fake_vng), str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, env=env)
    pidfile = tmp_path / "vng.pid"
    deadline = time.monotonic() + 30
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pidfile.exists(), "the fake vng never started"
    time.sleep(0.3)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in out
    assert group_members(int(pidfile.read_text())) == []


def test_output_keeps_draining_when_the_sink_fails(tmp_path: Path) -> None:
    # A reader that went away (BrokenPipeError on our stdout) must not stop the pump:
    # vng would block on a full pipe until the boot's timeout.
    import collections
    import io

    from kvmharness.runner.boot import _pump

    calls = []

    def sink(line: str) -> None:
        calls.append(line)
        raise BrokenPipeError

    data = b"".join(f"line {i}\n".encode() for i in range(1000))
    tail: collections.deque[str] = collections.deque(maxlen=5)
    with open(tmp_path / "log", "w") as log:
        _pump(io.BytesIO(data), sink, tail, log)
    assert calls == ["line 0"]
    assert list(tail)[-1] == "line 999"
    assert (tmp_path / "log").read_text().count("\n") == 1000


def test_a_boot_that_cannot_start_leaves_no_temp_folder(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import tempfile

    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(**kw: object) -> str:
        path = real_mkdtemp(prefix="t.", dir=tmp_path)
        made.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(BootError, match="must not contain"):
        boot("vng", BootSpec(Path("/k"), TCG, rwdirs=(Path("/out/a,b"),)), name="A",
             version="v", body="true", cwd=tmp_path, env={}, modprobe="")
    assert made and not any(p.exists() for p in made)


def test_vng_run_rejects_an_unknown_accel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from kvmharness.runner import vng_run as vng_mod

    k = tmp_path / "k"
    (k / "boot").mkdir(parents=True)
    (k / "boot/vmlinuz-6.1.0").write_bytes(b"")
    (k / "lib/modules/6.1.0").mkdir(parents=True)
    monkeypatch.setattr(vng_mod, "find_vng", lambda: "/usr/bin/vng")
    monkeypatch.setattr(vng_mod, "check_prerequisites", lambda vng=None: [])
    monkeypatch.setattr(vng_mod, "boot", lambda *a, **kw: pytest.fail("must not boot"))
    monkeypatch.setenv("VNG_ACCEL", "hardware")
    assert vng_mod.vng_run_main([str(k), "--", "true"]) == vng_mod.RC_OWN_ERROR
    assert "VNG_ACCEL='hardware': expected auto, kvm or tcg" in capsys.readouterr().err
