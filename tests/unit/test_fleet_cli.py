"""`kvmharness fleet` without Ansible: init's skeletons (the plan one is a valid plan),
the summary line of a failed host, and the files `fleet run` collects per host."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmharness import cli
from kvmharness.cli import fleet, planfile


def test_init_writes_a_valid_plan_and_never_overwrites(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fleet", "init", str(tmp_path / "lab")]) == 0
    plan = planfile.load(tmp_path / "lab" / "plan.toml")
    assert plan.scenarios == ("slot-ops", "rom-toggle") and plan.kernels == ()
    assert plan.commands[0] == ("run", "slot-ops", "--quick", "--repeat", "5", "--variant",
                                "zap=all,slot")
    assert "[kvm_hosts]" in (tmp_path / "lab" / "inventory.ini").read_text()
    capsys.readouterr()
    assert cli.main(["fleet", "init", str(tmp_path / "lab")]) == 1
    assert "exists: not overwritten" in capsys.readouterr().err


def test_the_playbook_ships_in_the_package() -> None:
    assert fleet.PLAYBOOK.is_file()
    tasks = fleet.PLAYBOOK.parent / "roles" / "kvmharness" / "tasks" / "main.yml"
    assert "--no-index" in tasks.read_text()


def test_error_summary_names_the_task_and_the_last_line() -> None:
    text = ("host: delta\ntask: The plan\nexit status: 2\nnon-zero return code\n"
            "plan x step 1/1: kvmharness ab ...\nkvmharness ab: kernel k: /x does not exist\n")
    assert fleet.error_summary(text) == (
        "task 'The plan' (exit status 2): kvmharness ab: kernel k: /x does not exist")


def test_host_files_in_inventory_order(tmp_path: Path) -> None:
    (tmp_path / "hosts.txt").write_text("zeta\nalpha\n")
    for host in ("zeta", "alpha"):
        (tmp_path / host / "boot-1").mkdir(parents=True)
        (tmp_path / host / "boot-1" / "slot-ops-x.json").write_text("{}")
        (tmp_path / host / "ab.json").write_text("{}")  # how ab ran, not a result
    (tmp_path / "alpha" / "ERROR.txt").write_text("host: alpha\ntask: Fetch\nexit status: -\nboom\n")
    hosts, files, errors = fleet.host_files(tmp_path)
    assert hosts == ["zeta", "alpha"]
    assert [p.name for p in files["zeta"]] == ["slot-ops-x.json"]
    assert errors == {"alpha": "task 'Fetch' (exit status -): boom"}


def test_a_plan_typo_stops_before_any_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fleet, "ansible_playbook", lambda: "/bin/false")
    (tmp_path / "plan.toml").write_text("[[scenario]]\nname = 'x'\nrepeats = 1\n")
    (tmp_path / "inv").write_text("[kvm_hosts]\n")
    assert cli.main(["fleet", "run", "-i", str(tmp_path / "inv"), "--plan",
                     str(tmp_path / "plan.toml"), "--out", str(tmp_path / "out")]) == 2
    assert "unknown key 'repeats'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
