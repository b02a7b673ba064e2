"""The fleet playbook for real: an sshd of the test's own on 127.0.0.1 (loopback_sshd),
four inventory hosts all reached there (distinct names and work folders), the harness
installed on each from a wheelhouse built here, the plan run, the files fetched, one host
made to fail (its plan boots a kernel that does not exist), and `compare --by host` over
the three that worked.  No address outside 127.0.0.0/8 is named anywhere: the inventory
says 127.0.0.1, and the hosts install with pip --no-index.

Skips with the reason unless ansible-core, sshd and /dev/kvm are here; .ci/run installs
them and sets KVMHARNESS_REQUIRE_FLEET=1, which turns the skip into an error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmharness import cli
from kvmharness.cli import fleet
from kvmharness.kvm.access import kvm_access_problem
from kvmharness.results.store import load_result
from tests.fleet.loopback_sshd import LOOPBACK, Sshd, loopback_sshd, unavailable

GOOD = ("alpha", "beta", "gamma")
BROKEN = "delta"

PLAN = """\
quick = true
repeat = 1
[[scenario]]
name = "slot-ops"
variants = { zap = ["all", "slot"] }
"""
BAD_PLAN = PLAN + """\
[kernels]
missing = "/nonexistent/vmlinuz-kvmharness-test"
also-missing = "/nonexistent/vmlinuz-kvmharness-test-2"
"""


def _why_not() -> str | None:
    if fleet.ansible_playbook() is None:
        return "ansible-core not installed (pip install 'kvmharness[fleet]')"
    return unavailable() or kvm_access_problem()


REASON = _why_not()
if REASON and os.environ.get("KVMHARNESS_REQUIRE_FLEET", "") not in ("", "0"):
    # .ci/run installs what this needs: a skip there would hide a broken install.
    raise RuntimeError(f"KVMHARNESS_REQUIRE_FLEET is set but: {REASON}")
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def ansible_env(base: Path) -> dict[str, str]:
    """Ansible's state in the test's folder; a config file of the user's is not read."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(base / "no-ansible.cfg"),
        "ANSIBLE_HOME": str(base / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(base / "ansible-local"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        # One connection per host, reused by every task; closed at the end (close_masters).
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=120s",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(base / "cp"),
    })
    return env


def inventory(base: Path, server: Sshd) -> Path:
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    lines = ["[kvm_hosts]"]
    for name in (*GOOD, BROKEN):
        lines.append(f"{name} ansible_host={LOOPBACK} kvmharness_workdir={base / 'hosts' / name}"
                     + (f" kvmharness_host_plan={base / 'bad-plan.toml'}" if name == BROKEN else ""))
    lines += ["", "[kvm_hosts:vars]", f"ansible_port={server.port}",
              f"ansible_user={server.user}",
              f"ansible_ssh_private_key_file={server.client_key}",
              "ansible_ssh_common_args='-o StrictHostKeyChecking=no "
              "-o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes'",
              f"ansible_python_interpreter={python}",
              f"kvmharness_python={python}",
              f"ansible_remote_tmp={base / 'ansible-remote'}"]
    path = base / "inventory.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def close_masters(base: Path) -> None:
    """End the ssh control masters Ansible left (ControlPersist) before the sshd goes."""
    for socket_path in (base / "cp").glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", LOOPBACK],
                       capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def fleet_run(sshd: Sshd,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """`kvmharness fleet run` once (subprocess, as a user runs it), for every test below."""
    base = tmp_path_factory.mktemp("fleet")
    (base / "plan.toml").write_text(PLAN)
    (base / "bad-plan.toml").write_text(BAD_PLAN)
    inv = inventory(base, sshd)
    out = base / "results"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kvmharness", "fleet", "run", "-i", str(inv), "--plan",
         str(base / "plan.toml"), "--out", str(out), "--forks", "4"],
        env=ansible_env(base), capture_output=True, text=True, timeout=900)
    sys.stdout.write(proc.stdout)  # the recap and the table, for the CI log
    sys.stdout.write(f"fleet run: {time.monotonic() - started:.0f} s\n")
    sys.stderr.write(proc.stderr[-4000:])
    try:
        yield {"proc": proc, "out": out, "inventory": inv, "base": base}
    finally:
        close_masters(base)


def test_every_good_host_brings_its_files_back(fleet_run: dict[str, object]) -> None:
    proc = fleet_run["proc"]
    out = fleet_run["out"]
    assert isinstance(proc, subprocess.CompletedProcess) and isinstance(out, Path)
    assert (out / "hosts.txt").read_text().split() == [*GOOD, BROKEN]
    for host in GOOD:
        (path,) = (out / host).glob("slot-ops-*.json")
        result = load_result(path)
        assert result.environment["fleet"] == {"host": host}
        assert result.status == "complete" and result.quick
        assert [r.variant["zap"] for r in result.ok_runs()] == ["all", "slot"]
        assert "mmu:" in (out / host / "info.txt").read_text()
        assert "step 1/1: kvmharness run slot-ops --quick --repeat 1" in (
            out / host / "run.log").read_text()
        assert not (out / host / "ERROR.txt").exists()
    recap = re.findall(r"^(\w+)\s+: ok=\d+\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)",
                       proc.stdout, re.M)
    assert sorted((h, u, f) for h, u, f in recap) == sorted(
        [(h, "0", "0") for h in GOOD] + [(BROKEN, "0", "1")]), proc.stdout


def test_a_failing_host_is_recorded_and_leaves_the_others_intact(
        fleet_run: dict[str, object]) -> None:
    proc, out = fleet_run["proc"], fleet_run["out"]
    assert isinstance(proc, subprocess.CompletedProcess) and isinstance(out, Path)
    assert proc.returncode == 1
    error = (out / BROKEN / "ERROR.txt").read_text()
    assert "task: The plan" in error and "exit status: 2" in error
    assert "/nonexistent/vmlinuz-kvmharness-test does not exist" in error
    assert not list((out / BROKEN).glob("*.json"))
    assert re.search(rf"^  {BROKEN}: 0 result files; FAILED: task 'The plan' \(exit status "
                     r"2\): kvmharness ab: kernel missing: /nonexistent/\S+ does not exist$",
                     proc.stdout, re.M), proc.stdout[:6000]
    for host in GOOD:
        assert re.search(rf"^  {host}: 1 result files; ok$", proc.stdout, re.M)


def test_compare_by_host_prints_the_hosts_side_by_side(fleet_run: dict[str, object]) -> None:
    proc = fleet_run["proc"]
    assert isinstance(proc, subprocess.CompletedProcess)
    text = proc.stdout
    assert "slot-ops (zap=all): A = alpha, B = beta, C = gamma" in text
    assert "slot-ops (zap=slot): A = alpha, B = beta, C = gamma" in text
    assert re.search(r"^zap path: A all \(\d+/\d+ deletes zapped all\), B all", text, re.M)
    assert re.search(r"^zap path: A slot \(0/\d+ deletes zapped all\), B slot", text, re.M)
    for host in GOOD:
        assert re.search(rf"^{host}: \S+", text, re.M)
    assert "Setup differences, alpha -> beta" in text


def test_the_same_run_id_again_measures_nothing(fleet_run: dict[str, object]) -> None:
    """Idempotent: the playbook again with the same run id installs nothing and runs no
    plan (changed=0 on every good host); the files stay as they were."""
    base, out, inv = fleet_run["base"], fleet_run["out"], fleet_run["inventory"]
    assert isinstance(base, Path) and isinstance(out, Path) and isinstance(inv, Path)
    before = {p: p.read_bytes() for h in GOOD for p in (out / h).glob("*.json")}
    hosts = (out / "hosts.txt").read_text().split()
    started = time.monotonic()
    proc = subprocess.run(
        [str(fleet.ansible_playbook()), str(fleet.PLAYBOOK), "-i", str(inv),
         "--limit", ",".join(GOOD), "--extra-vars", json.dumps(_extra_vars(out, base))],
        env=ansible_env(base), capture_output=True, text=True, timeout=600)
    sys.stdout.write(f"playbook again, same run id: {time.monotonic() - started:.0f} s\n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recap = re.findall(r"^(\w+)\s+: ok=\d+\s+changed=(\d+)", proc.stdout, re.M)
    assert sorted(recap) == [(h, "0") for h in sorted(GOOD)], proc.stdout[-3000:]
    assert {p: p.read_bytes() for p in before} == before
    assert hosts == [*GOOD, BROKEN]


def _extra_vars(out: Path, base: Path) -> dict[str, str]:
    """The variables `fleet run` passed, read back from the hosts' folders."""
    (run_dir,) = (base / "hosts" / GOOD[0] / "results").iterdir()
    return {"kvmharness_wheelhouse": str(out / "wheelhouse"),
            "kvmharness_version": __import__("kvmharness").__version__,
            "kvmharness_plan": str(base / "plan.toml"), "kvmharness_results": str(out),
            "kvmharness_run_id": run_dir.name}


def test_without_ansible_one_line_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(fleet, "ansible_playbook", lambda: None)
    assert cli.main(["fleet", "run", "-i", str(tmp_path / "i"), "--plan",
                     str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err == fleet.EXTRA_HINT + "\n"
