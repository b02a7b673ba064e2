"""The command line, with a fake scenario registered in place of real ones (no /dev/kvm)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Callable

import pytest

from kvmharness import cli
from kvmharness.cli import common as cli_common
from kvmharness.observe import fingerprint
from kvmharness.results.store import load_result
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import (
    ZAP_AXIS,
    Metric,
    Parameter,
    RunOutcome,
    RunRequest,
    ScenarioSpec,
    VariantUnsupported,
)

FAKE_ENV = {"kernel": {"release": "6.12.0-test"}, "backend": {"kind": "svm", "nested": False}}


def fake_spec(run: Callable[[RunRequest], RunOutcome] | None = None) -> ScenarioSpec:
    rng = random.Random(0)

    def default_run(req: RunRequest) -> RunOutcome:
        o = RunOutcome()
        base = 100.0 if req.variant["zap"] == "all" else 90.0
        for _ in range(req.warmup):
            o.add("total", base * 2, warmup=True)
        for _ in range(req.iterations):
            o.add("total", rng.gauss(base, 1.0))
        req.progress("measured")
        return o

    return ScenarioSpec(
        name="fake-toggle",
        summary="toggle a fake slot",
        parameters=(Parameter("pages", "pages", 2000, 16, "pages touched"),),
        metrics=(Metric("total", "ms", "lower", "time per pass"),),
        variant_axes=(ZAP_AXIS,),
        run=run or default_run,
        default_iterations=3,
        default_warmup=1,
    )


@pytest.fixture
def register(monkeypatch: pytest.MonkeyPatch) -> Callable[[ScenarioSpec], None]:
    monkeypatch.setattr(cli_common, "collect_fingerprint", lambda: dict(FAKE_ENV))

    def do(spec: ScenarioSpec) -> None:
        monkeypatch.setattr(registry, "all_scenarios", lambda: {spec.name: spec})

    return do


def only_file(directory: Path) -> Path:
    (path,) = directory.glob("*.json")
    return path


def test_info_json_parses(monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    # The real host readers, with the /dev/kvm probe replaced: works on any machine.
    monkeypatch.setattr(fingerprint, "probe_kvm", lambda: {"status": "unavailable: test"})
    assert cli.main(["info", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    fp = doc["fingerprint"]
    for key in ("kernel", "cpu", "memory", "thp", "cpufreq", "kvm_modules", "kvm", "backend",
                "tracefs", "harness"):
        assert key in fp
    assert fp["kvm"]["status"] == "unavailable: test"
    assert any(s.startswith("tracefs: ") for s in doc["statements"])
    assert any(s.startswith("SLOT_ZAP_ALL quirk: ") for s in doc["statements"])


def test_info_plain(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fingerprint, "probe_kvm", lambda: {"status": "unavailable: test"})
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "What this host can measure:" in out and "kernel:" in out


def test_list_parses(register: Callable[[ScenarioSpec], None],
                     capsys: pytest.CaptureFixture[str]) -> None:
    register(fake_spec())
    assert cli.main(["list", "--json"]) == 0
    (s,) = json.loads(capsys.readouterr().out)["scenarios"]
    assert s["name"] == "fake-toggle"
    assert s["parameters"][0] == {"name": "pages", "unit": "pages", "default": 2000,
                                  "quick": 16, "type": "int", "help": "pages touched"}
    assert s["variant_axes"][0]["values"] == ["all", "slot"]
    assert s["metrics"][0]["direction"] == "lower"
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fake-toggle: toggle a fake slot" in out
    assert "pages = 2000 / 16 pages" in out
    assert "zap = all,slot" in out
    assert "total [ms], lower is better" in out


def test_list_with_the_real_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["scenarios"], list)


def test_run_writes_a_file_and_compare_reads_it(register: Callable[[ScenarioSpec], None],
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    register(fake_spec())
    rc = cli.main(["run", "fake-toggle", "--quick", "--repeat", "6", "--param", "pages=32",
                   "--label", "L1", "--out", str(tmp_path)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "[12/12] fake-toggle zap=slot run 6/6" in captured.err  # progress on stderr
    assert "measured" in captured.err
    path = only_file(tmp_path)
    assert str(path) in captured.out
    result = load_result(path)
    assert result.status == "complete" and result.label == "L1"
    assert result.parameters == {"pages": 32} and result.quick
    assert [r.variant["zap"] for r in result.runs[:4]] == ["all", "slot", "all", "slot"]
    assert result.runs[0].warmups == {"total": [200.0]}
    assert result.environment == FAKE_ENV

    assert cli.main(["compare", str(path)]) == 0
    out = capsys.readouterr().out
    assert "A = zap=all, B = zap=slot" in out
    assert re.search(r"^total \[ms\] +lower .* -(9|10)\.\d%", out, re.M)
    assert cli.main(["compare", str(path), "--format", "cover-letter", "--min-change",
                     "50%"]) == 0
    assert "(~, p=" in capsys.readouterr().out
    assert cli.main(["compare", str(path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("scenario,axis,")


def test_run_selected_variant_and_defaults(register: Callable[[ScenarioSpec], None],
                                           tmp_path: Path) -> None:
    register(fake_spec())
    assert cli.main(["run", "fake-toggle", "--variant", "zap=slot", "--repeat", "2",
                     "--warmup", "0", "--out", str(tmp_path)]) == 0
    result = load_result(only_file(tmp_path))
    assert result.variants == [{"zap": "slot"}]
    assert (result.iterations, result.warmup, result.parameters) == (3, 0, {"pages": 2000})


def test_interrupted_run_keeps_completed_runs(register: Callable[[ScenarioSpec], None],
                                              tmp_path: Path) -> None:
    calls = 0

    def run(req: RunRequest) -> RunOutcome:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        o = RunOutcome()
        o.add("total", 1.0)
        return o

    register(fake_spec(run))
    rc = cli.main(["run", "fake-toggle", "--repeat", "5", "--out", str(tmp_path)])
    assert rc == 130
    result = load_result(only_file(tmp_path))
    assert result.status == "interrupted"
    assert len(result.runs) == 2 and all(r.status == "ok" for r in result.runs)


def test_unsupported_variant_is_not_an_error(register: Callable[[ScenarioSpec], None],
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def run(req: RunRequest) -> RunOutcome:
        if req.variant["zap"] == "slot":
            raise VariantUnsupported("SLOT_ZAP_ALL quirk not supported by this kernel")
        o = RunOutcome()
        o.add("total", 1.0)
        return o

    register(fake_spec(run))
    assert cli.main(["run", "fake-toggle", "--repeat", "3", "--out", str(tmp_path)]) == 0
    assert "skipped: SLOT_ZAP_ALL quirk not supported" in capsys.readouterr().out


def test_failed_runs_give_exit_status_1(register: Callable[[ScenarioSpec], None],
                                        tmp_path: Path) -> None:
    def run(req: RunRequest) -> RunOutcome:
        raise RuntimeError("guest crashed")

    register(fake_spec(run))
    assert cli.main(["run", "fake-toggle", "--repeat", "2", "--out", str(tmp_path)]) == 1
    assert all(r.status == "failed" for r in load_result(only_file(tmp_path)).runs)


@pytest.mark.parametrize("argv,message", [
    (["run", "nope"], "unknown scenario 'nope'"),
    (["run", "fake-toggle", "--param", "pages=many"], "expects an integer"),
    (["run", "fake-toggle", "--param", "pagez=1"], "no parameter 'pagez'"),
    (["run", "fake-toggle", "--variant", "zap=some"], "no value 'some'"),
])
def test_run_usage_errors(register: Callable[[ScenarioSpec], None], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str], argv: list[str],
                          message: str) -> None:
    register(fake_spec())
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_compare_rejects_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "kvmharness-result", "schema_version": 99}')
    assert cli.main(["compare", str(bad)]) == 1
    assert "newer kvmharness" in capsys.readouterr().err
    assert cli.main(["compare", str(tmp_path / "missing.json")]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["compare", "x.json", "--alpha", "0"],
                                  ["compare", "x.json", "--min-change", "150%"],
                                  ["run", "x", "--repeat", "0"],
                                  []])
def test_argument_errors_return_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2


def test_min_change_parsing() -> None:
    assert cli_common.fraction("1%") == pytest.approx(0.01)
    assert cli_common.fraction("0.02") == pytest.approx(0.02)


def test_run_into_an_unwritable_folder_is_a_clear_error(
        register: Callable[[ScenarioSpec], None], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    register(fake_spec())
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = cli.main(["run", "fake-toggle", "--quick", "--out", str(blocker / "sub")])
    assert rc == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("kvmharness run: ") and "Traceback" not in err
    assert str(blocker / "sub") in err
