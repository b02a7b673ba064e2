"""An sshd of the test's own on 127.0.0.1: its host key, client key, sshd_config and pid
file in a temporary folder; the system's sshd and its configuration are not touched.  It
accepts only the key made here, only from the loopback, only as the user running the test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
LOOPBACK = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    client_key: Path
    log: Path


def unavailable() -> str | None:
    """Why this machine cannot run the loopback sshd (None: it can)."""
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} missing (apt-get install openssh-server)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt-get install openssh-client)"
    return None


def free_port() -> int:
    """A port nothing listens on now, from the kernel's ephemeral range (high)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kvmharness-test",
                    "-f", str(path)], check=True)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"sshd not listening on {LOOPBACK}:{port} after 20 s: {log.read_text()}")


@contextlib.contextmanager
def loopback_sshd(folder: Path) -> Iterator[Sshd]:
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    authorized = folder / "authorized_keys"
    authorized.write_text(
        f'from="{LOOPBACK}" ' + (folder / "client_ed25519.pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress {LOOPBACK}:{port}",
        f"HostKey {host_key}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        f"AllowUsers {getpass.getuser()}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",  # the temporary folder's modes are the test's
        "MaxStartups 100:30:200",  # several hosts' connections open at once
        "MaxSessions 50",
        f"Subsystem sftp {SFTP_SERVER}",
        "LogLevel INFO",
    ]) + "\n")
    if os.geteuid() == 0:
        # sshd refuses to start as root without its privilege-separation folder, which a
        # machine that never ran sshd lacks (a tmpfs folder; nothing else is changed).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = folder / "sshd.log"
    subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, proc, log)
        yield Sshd(port, getpass.getuser(), client_key, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
