"""Plan files (TOML): what they become (kvmharness command lines), what they refuse, and
`run --plan` writing the very file `run` with the same options writes (fake scenario, no
/dev/kvm)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmharness import cli
from kvmharness.cli import common as cli_common
from kvmharness.cli import planfile
from kvmharness.results.store import load_result
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import ScenarioSpec

FAKE_ENV = {"kernel": {"release": "6.12.0-test"}, "backend": {"kind": "svm", "nested": False}}

PLAN = """
quick = true
repeat = 2
[[scenario]]
name = "fake-toggle"
variants = { zap = ["all", "slot"] }
params = { pages = 32 }
"""


@pytest.fixture
def register(monkeypatch: pytest.MonkeyPatch,
             fake_spec: Callable[..., ScenarioSpec]) -> ScenarioSpec:
    spec = fake_spec()
    monkeypatch.setattr(cli_common, "collect_fingerprint", lambda: dict(FAKE_ENV))
    monkeypatch.setattr(cli_common, "kvm_access_problem", lambda: None)
    monkeypatch.setattr(registry, "all_scenarios", lambda: {spec.name: spec})
    return spec


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


def test_a_plan_is_the_run_commands_a_user_would_type(tmp_path: Path) -> None:
    plan = planfile.load(write(tmp_path, PLAN + """
[[scenario]]
name = "mmio"
repeat = 5
until_ci = "5%"
label = "mine"
"""))
    assert plan.commands == (
        ("run", "fake-toggle", "--quick", "--repeat", "2", "--param", "pages=32",
         "--variant", "zap=all,slot"),
        ("run", "mmio", "--quick", "--repeat", "5", "--until-ci", "5%", "--label", "mine"),
    )
    assert plan.scenarios == ("fake-toggle", "mmio") and plan.kernels == ()


def test_kernels_make_one_ab_call(tmp_path: Path) -> None:
    plan = planfile.load(write(tmp_path, PLAN + """
[[scenario]]
name = "rom-toggle"
params = { pages = 32 }
[kernels]
old = "/boot/vmlinuz-6.1"
new = "/boot/vmlinuz-6.12"
[ab]
rounds = 3
append = { new = "kvm.tdp_mmu=0" }
"""))
    assert plan.commands == ((
        "ab", "fake-toggle", "rom-toggle", "--quick", "--repeat", "2", "--param", "pages=32",
        "--variant", "zap=all,slot", "--kernel", "old=/boot/vmlinuz-6.1",
        "--kernel", "new=/boot/vmlinuz-6.12", "--append", "new=kvm.tdp_mmu=0",
        "--rounds", "3"),)
    assert plan.kernels == ("old", "new")


@pytest.mark.parametrize(("text", "message"), [
    ("repeat = 2\n", "no [[scenario]] given"),
    ("[[scenario]]\nname = 'x'\nrepeats = 2\n", "scenario 1: unknown key 'repeats'"),
    ("colour = 1\n[[scenario]]\nname = 'x'\n", "top level: unknown key 'colour'"),
    ("[[scenario]]\nrepeat = 2\n", "scenario 1: name = \"SCENARIO\" missing"),
    ("[[scenario]]\nname = 'x'\nrepeat = '2'\n", "x: repeat must be an integer, got '2'"),
    ("[[scenario]]\nname = 'x'\nparams = { p = [1] }\n", "params.p: expected a string"),
    ("[[scenario]]\nname = 'x'\n[ab]\nrounds = 2\n", "[ab] given without [kernels]"),
    ("[[scenario]]\nname = 'x'\nrepeat = 1\n[[scenario]]\nname = 'y'\n[kernels]\na = '/k'\n",
     "run options (quick, repeat, ...) are shared"),
    ("[[scenario]]\nname = 'x'\n[kernels]\na = '/k'\n[ab]\nappend = { b = 'x' }\n",
     "append names no kernel of [kernels]: b"),
    ("[[scenario]\n", "not valid TOML"),
])
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(planfile.PlanError) as e:
        planfile.load(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_run_plan_writes_what_run_writes(register: ScenarioSpec, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    plan = write(tmp_path, PLAN)
    assert cli.main(["run", "--plan", str(plan), "--out", str(tmp_path / "p"),
                     "--host", "lab-17"]) == 0
    assert "step 1/1: kvmharness run fake-toggle --quick" in capsys.readouterr().err
    assert cli.main(["run", "fake-toggle", "--quick", "--repeat", "2", "--param", "pages=32",
                     "--variant", "zap=all,slot", "--out", str(tmp_path / "r"),
                     "--host", "lab-17"]) == 0
    (planned,) = (tmp_path / "p").glob("*.json")
    (direct,) = (tmp_path / "r").glob("*.json")
    a, b = load_result(planned), load_result(direct)
    assert a.environment == {**FAKE_ENV, "fleet": {"host": "lab-17"}} == b.environment
    for field in ("parameters", "quick", "label", "variants", "repeat", "iterations",
                  "warmup", "scenario", "status"):
        assert getattr(a, field) == getattr(b, field), field
    assert [(r.variant, r.status) for r in a.runs] == [(r.variant, r.status) for r in b.runs]
    assert len(a.runs) == 4
    assert json.loads(planned.read_text())["environment"]["fleet"] == {"host": "lab-17"}


def test_run_plan_refuses_options_the_plan_owns(register: ScenarioSpec, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    plan = write(tmp_path, PLAN)
    assert cli.main(["run", "--plan", str(plan), "--repeat", "3", "--out",
                     str(tmp_path)]) == 2
    assert "drop repeat" in capsys.readouterr().err
    assert cli.main(["run", "fake-toggle", "--plan", str(plan)]) == 2
    assert "drop scenario" in capsys.readouterr().err
    assert cli.main(["run", "--plan", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: No such file or directory" in " ".join(
        capsys.readouterr().err.split())
    assert cli.main(["run"]) == 2
    assert "give a SCENARIO or --plan FILE" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_a_failing_step_does_not_stop_the_next(register: ScenarioSpec, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    plan = write(tmp_path, "repeat = 1\n[[scenario]]\nname = 'nope'\n"
                           "[[scenario]]\nname = 'fake-toggle'\n")
    assert cli.main(["run", "--plan", str(plan), "--out", str(tmp_path)]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err
    assert len(list(tmp_path.glob("fake-toggle-*.json"))) == 1
