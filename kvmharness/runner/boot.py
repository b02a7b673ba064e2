"""Booting a kernel with virtme-ng and running a shell script inside it.

The recipe (tools/README.md): vng shares the host's root file system read-only over 9p,
overlays make /tmp, /etc, /usr, ... writable (and discarded), ``--rwdir`` folders come
back to the host, and the guest command's exit status becomes vng's.  What this module
adds around it:

* ``vng_command`` and ``guest_script`` are pure functions (unit-tested without booting);
* the kernel console goes to a virtio console (hvc0) logged to a file, because vng sends
  ttyS0 to /dev/null unless --verbose; its tail is shown when a boot fails;
* vng/QEMU run in a process group of their own with a timeout, and nothing of it outlives
  a boot (``procgroup``);
* QEMU opens /proc/self/fd/1 and 2 with O_TRUNC, so vng gets pipes, never files: a log the
  caller redirects into is not truncated.

Used by ``kvmharness ab`` and by ``tools/vng-run`` (``vng_run``).  Standard library only,
so that a bare /usr/bin/python3 can run it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

from kvmharness.runner.host import Accel
from kvmharness.runner.kernels import Kernel, KernelPathError, ensure_modules_dep, kernel_problems, stage
from kvmharness.runner.procgroup import (
    BootInterrupted as BootInterrupted,
)
from kvmharness.runner.procgroup import (
    deferred_interrupts,
    kill_group,
    reap_group,
    signals_as_interrupt,
)

# Modules whose probing under TCG costs 3-10 s of boot; no spaces allowed.
BLACKLIST = ("modprobe.blacklist=ahci,libahci,libata,sr_mod,cdrom,sg,iTCO_wdt,"
             "iTCO_vendor_support,intel_pmc_bxt,psmouse,evdev,i6300esb,i2c_i801,i2c_smbus,"
             "serio_raw,lpc_ich,pcspkr,crc32_pclmul,crct10dif_pclmul,ghash_clmulni_intel,"
             "sha512_ssse3,sha256_ssse3,sha1_ssse3,aesni_intel,crc32c_intel,qemu_fw_cfg")
CONSOLE_OPTS = ("-device virtio-serial-pci,id=khcon -chardev file,id=khlog,path={log} "
                "-device virtconsole,bus=khcon.0,chardev=khlog")
# virtme-ng-init mounts empty tmpfs over these inside the guest; host folders under them
# are invisible there unless bound back in with --rodir.  (/lib/modules is vng's own.)
MASKED = ("/var/cache", "/var/log", "/var/tmp", "/var/lib/apt", "/var/lib/private", "/run")
VNG_OWN = ("/lib/modules", "/usr/lib/modules")
GUEST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin"
DEFAULT_CACHE = Path("/var/cache/kvmharness")

# Exit statuses shared with tools/vng-run.
RC_TIMEOUT = 124
RC_OWN_ERROR = 125
RC_NO_STATUS = 255  # the guest never reported one: boot failure, panic

BootStatus = Literal["ok", "failed", "timeout", "no-status"]


class BootError(RuntimeError):
    """The boot could not even be attempted (bad folder name, vng missing, ...)."""


@dataclasses.dataclass(frozen=True)
class BootSpec:
    target: Path                         # what vng --run gets: image or build dir
    accel: Accel
    memory: str = "4G"
    rodirs: tuple[Path, ...] = ()
    rwdirs: tuple[Path, ...] = ()
    # (guest path, host folder): writable, mounted at a guest path of our choosing.  The
    # guest path, not the host one, is what lands on the kernel command line.
    rw_mounts: tuple[tuple[Path, Path], ...] = ()
    append: str = ""                     # extra kernel command line
    qemu_opts: str = ""                  # extra QEMU options
    timeout_s: float = 600.0
    kill_grace_s: float = 5.0            # SIGTERM -> SIGKILL (vng removes its temp files)
    # vng runs the command as the host user; modprobe and /dev/kvm need root inside.
    user: str | None = dataclasses.field(default_factory=lambda: guest_user())


def guest_user() -> str | None:
    """``root`` when this host user is not (vng would otherwise run the command as them)."""
    return None if os.geteuid() == 0 else "root"


@dataclasses.dataclass
class BootResult:
    name: str
    version: str
    status: BootStatus
    rc: int
    elapsed_s: float
    command: list[str]
    console_tail: list[str]
    output_tail: list[str]
    panic: str | None
    leftover_pids: list[int]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> str:
        what = {
            "ok": "exit 0",
            "failed": f"exit {self.rc}",
            "timeout": f"timed out (QEMU killed, exit {self.rc})",
            "no-status": f"no exit status from the guest (exit {self.rc}: boot failure or "
                         "kernel panic)",
        }[self.status]
        who = self.version if self.name == self.version else f"{self.name} ({self.version})"
        text = f"{who}: {what} after {self.elapsed_s:.1f} s"
        if self.panic:
            text += f"; console: {self.panic}"
        if self.leftover_pids:
            text += f"; WARNING: processes {self.leftover_pids} survived SIGKILL"
        return text

    def failure_report(self) -> str:
        """Summary plus the console tail (and the last output lines when the kernel
        booted but the command failed)."""
        lines = [self.summary()]
        if self.status != "failed" or not self.output_tail:
            lines.append(f"---- guest kernel console, last {len(self.console_tail)} lines ----")
            lines += self.console_tail or ["(empty: the kernel printed nothing to hvc0)"]
            lines.append("---- end of console ----")
        if self.output_tail:
            lines.append(f"---- output, last {len(self.output_tail)} lines ----")
            lines += self.output_tail
            lines.append("---- end of output ----")
        return "\n".join(lines)


# --- pure parts ---------------------------------------------------------------------------


def _under(path: Path, prefix: str) -> bool:
    text = str(path)
    return text == prefix or text.startswith(prefix.rstrip("/") + "/")


def binds_for(paths: Sequence[Path]) -> list[Path]:
    """The --rodir binds that make ``paths`` visible in the guest: those under a folder
    the guest masks, minus any under another bind or under vng's own /lib/modules."""
    out: list[Path] = []
    for p in paths:
        p = Path(os.path.abspath(p))
        if not any(_under(p, m) for m in MASKED) or any(_under(p, m) for m in VNG_OWN):
            continue
        if any(_under(p, str(b)) for b in out):
            continue
        out = [b for b in out if not _under(b, str(p))] + [p]
    return out


def check_dir_arg(path: Path) -> Path:
    # vng parses --rodir/--rwdir as [GUEST=]HOST and virtme joins them with commas and
    # spaces on the kernel command line.
    if any(c in str(path) for c in "=, "):
        raise BootError(f"{path}: a folder given to the guest must not contain '=', ',' "
                        "or spaces")
    return path


def vng_command(vng: str, spec: BootSpec, script: Path, console_log: Path) -> list[str]:
    """The full vng argv (the recipe plus the console log, the binds and, for more than one
    vCPU under TCG, single-threaded TCG)."""
    qemu = [f"-cpu {spec.accel.qemu_cpu}", CONSOLE_OPTS.format(log=console_log)]
    if spec.accel.qemu_accel:
        qemu.append(spec.accel.qemu_accel)
    if spec.qemu_opts:
        qemu.append(spec.qemu_opts)
    append = " ".join(x for x in (BLACKLIST, "console=hvc0 loglevel=7", spec.append) if x)
    cmd = [vng, "--run", str(spec.target)]
    if spec.accel.mode == "tcg":
        # Without --disable-kvm vng would pick /dev/kvm (PVM here) and -cpu host.
        cmd.append("--disable-kvm")
    cmd += ["--force-9p", "--cpus", str(spec.accel.cpus), "--memory", spec.memory,
            f"--qemu-opts={' '.join(qemu)}", "--append", append]
    cmd += [f"--rodir={check_dir_arg(d)}" for d in spec.rodirs]
    cmd += [f"--rwdir={check_dir_arg(d)}" for d in spec.rwdirs]
    cmd += [f"--rwdir={check_dir_arg(g)}={check_dir_arg(h)}" for g, h in spec.rw_mounts]
    if spec.user:
        cmd += ["--user", spec.user]
    cmd += ["--exec", f"sh {script}"]
    return cmd


def shq(text: str) -> str:
    """POSIX single quoting (the guest script runs under dash)."""
    return shlex.quote(text)


def guest_script(*, cwd: Path, env: Mapping[str, str], modprobe: str, body: str) -> str:
    """The script vng runs inside; lives in a host /tmp folder that the guest's /tmp
    overlay shows (the kernel command line, which carries --exec, holds only 2 KiB)."""
    lines = [f"export PATH={GUEST_PATH}", "export PYTHONDONTWRITEBYTECODE=1"]
    lines += [f"export {k}={shq(v)}" for k, v in env.items()]
    lines.append(f"cd {shq(str(cwd))} || exit {RC_OWN_ERROR}")
    if modprobe:
        # udev coldplug usually loads it already; the explicit one also applies options
        # (VNG_MODPROBE="kvm_amd npt=0") and says so when it fails.
        lines.append(f"modprobe {modprobe} || echo {shq(f'modprobe {modprobe} failed')} >&2")
    lines.append(body)
    return "\n".join(lines) + "\n"


def exec_body(argv: Sequence[str]) -> str:
    return "exec " + " ".join(shq(a) for a in argv)


def passthrough_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Host variables that travel into the guest: KVMHARNESS_* and CI."""
    return {k: v for k, v in sorted(environ.items())
            if re.fullmatch(r"KVMHARNESS_[A-Za-z0-9_]+|CI", k)}


def find_panic(lines: Sequence[str]) -> str | None:
    for line in lines:
        for marker in ("Kernel panic", "BUG:", "Oops:", "general protection fault"):
            if marker in line:
                return line.strip()
    return None



def _pump(stream: IO[bytes], sink: Callable[[str], None], tail: collections.deque[str],
          log: IO[str] | None) -> None:
    """Drain ``stream`` to its end whatever happens to the sink or the log: a pump that
    stopped reading (the terminal's reader gone: BrokenPipeError; a full disk) would
    leave vng blocked on a full pipe until the boot's timeout."""
    live_sink: Callable[[str], None] | None = sink
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        tail.append(line)
        if log is not None:
            try:
                log.write(line + "\n")
                log.flush()
            except (OSError, ValueError):
                log = None
        if live_sink is not None:
            try:
                live_sink(line)
            except Exception:  # noqa: BLE001 - keep draining; the tail still has the line
                live_sink = None
    stream.close()


def _tail(path: Path, n: int) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError:
        return []
    return data.decode("utf-8", "replace").replace("\r", "").splitlines()[-n:]


def vng_environment(vng: str, tmp: Path) -> dict[str, str]:
    """vng runs its helpers (virtme-run, ...) from PATH: when vng lives in a venv that is
    not on PATH (pip install into an unactivated venv, /opt/virtme-ng), put its bin/ first.
    TMPDIR: vng's own temporary files go into the boot's folder, removed afterwards."""
    env = {**os.environ, "TMPDIR": str(tmp)}
    bindir = str(Path(os.path.realpath(vng)).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def boot(vng: str, spec: BootSpec, *, name: str, version: str, body: str, cwd: Path,
         env: Mapping[str, str], modprobe: str,
         out: Callable[[str], None] = lambda line: print(line, flush=True),
         err: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
         output_log: Path | None = None, console_log: Path | None = None,
         tail_lines: int = 60, script_dir: Path | None = None) -> BootResult:
    """Boot, run ``body`` in the guest, return how it went.  Never leaves a process of the
    boot behind; raises BootInterrupted (after the cleanup) on Ctrl-C/SIGTERM/SIGHUP.

    ``script_dir``: where the guest script goes (default: this boot's temporary folder).
    Its path and ``cwd`` end up on the guest kernel command line, which the result files
    record: repeated boots of one kernel that share both have identical command lines, so
    `compare` does not flag them as differing setups."""
    # The host /tmp is the lower layer of the guest's /tmp overlay: script and console
    # log must live there (or in another folder the guest sees), whatever TMPDIR says.
    tmp = Path(tempfile.mkdtemp(prefix="kvmharness-vng.", dir="/tmp"))
    script = (script_dir / f"guest-{name}.sh") if script_dir else tmp / "guest.sh"
    console = tmp / "console.log"
    try:
        cmd = vng_command(vng, spec, script, console)
        log = open(output_log, "a", encoding="utf-8") if output_log else None  # noqa: SIM115
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing started yet: no folder left behind
        raise
    proc: subprocess.Popen[bytes] | None = None
    threads: list[threading.Thread] = []
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    timed_out = False
    leftover: list[int] = []
    start = time.monotonic()
    try:
        script.write_text(guest_script(cwd=cwd, env=env, modprobe=modprobe, body=body))
        with signals_as_interrupt():
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, cwd=cwd,
                                        env=vng_environment(vng, tmp),
                                        start_new_session=True)
            except OSError as e:
                raise BootError(f"cannot start {cmd[0]}: {e}") from e
            for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
                t = threading.Thread(target=_pump, args=(stream, sink, tail, log), daemon=True)
                t.start()
                threads.append(t)
            try:
                rc = proc.wait(timeout=spec.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                leftover = kill_group(proc, grace_s=spec.kill_grace_s)
                rc = RC_TIMEOUT
            else:
                leftover = reap_group(proc)  # whatever vng left in its group
    except BaseException as e:
        if proc is not None:
            with deferred_interrupts():
                leftover = kill_group(proc, grace_s=min(2.0, spec.kill_grace_s))
            if leftover:
                err(f"kvmharness: processes {leftover} of the boot survived SIGKILL")
        if isinstance(e, KeyboardInterrupt) and not isinstance(e, BootInterrupted):
            # Ctrl-C, or SIGTERM/SIGHUP raised by another handler that names its signal.
            signum = getattr(e, "signum", signal.SIGINT)
            raise BootInterrupted(signal.Signals(signum).name, signum) from e
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
        if log is not None:
            log.close()
        if console_log is not None:
            with contextlib.suppress(OSError):
                shutil.copyfile(console, console_log)
        console_tail = _tail(console, tail_lines)
        panic = find_panic(_tail(console, 100000))
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - start
    status: BootStatus
    if timed_out:
        status = "timeout"
    elif rc == 0:
        status = "ok"
    elif rc == RC_NO_STATUS:
        status = "no-status"
    else:
        status = "failed"
    return BootResult(name, version, status, rc, elapsed, cmd, console_tail, list(tail),
                      panic, leftover)


# --- what a boot needs from the host ------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("KVMHARNESS_CACHE") or DEFAULT_CACHE)


def package_root() -> Path:
    """The folder holding the kvmharness package (the checkout, or site-packages)."""
    return Path(__file__).resolve().parent.parent.parent


def kernel_binds(kernel: Kernel) -> list[Path]:
    """What of the kernel the guest must see: its modules tree (vng symlinks
    /lib/modules/VER to it) -- hidden when it lives under /var/cache and the like."""
    if kernel.modules is None:
        return []
    return [kernel.modules.resolve()]


def prepare_kernel(kernel: Kernel, module: str, staging: Path) -> Path:
    """Check the kernel can load ``module``, run depmod if needed; returns vng's target."""
    problems = kernel_problems(kernel, module)
    if problems:
        raise KernelPathError("; ".join(problems))
    ensure_modules_dep(kernel)
    return stage(kernel, staging)


