"""The command line, with a fake scenario registered in place of real ones (no /dev/kvm)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmharness import cli
from kvmharness.cli import common as cli_common
from kvmharness.observe import fingerprint
from kvmharness.results.store import load_result
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import (
    Parameter,
    RunOutcome,
    RunRequest,
    ScenarioSpec,
    VariantUnsupported,
)

FAKE_ENV = {"kernel": {"release": "6.12.0-test"}, "backend": {"kind": "svm", "nested": False}}


SpecFactory = Callable[..., ScenarioSpec]  # the fake_spec fixture (tests/unit/conftest.py)


@pytest.fixture
def register(monkeypatch: pytest.MonkeyPatch) -> Callable[[ScenarioSpec], None]:
    monkeypatch.setattr(cli_common, "collect_fingerprint", lambda: dict(FAKE_ENV))
    monkeypatch.setattr(cli_common, "kvm_access_problem", lambda: None)  # fakes need no KVM

    def do(spec: ScenarioSpec) -> None:
        monkeypatch.setattr(registry, "all_scenarios", lambda: {spec.name: spec})

    return do


def unwrapped(text: str) -> str:
    """Human output with each message's continuation lines (indented) joined back, after
    checking every line fits 75 columns."""
    assert all(len(line) <= 75 for line in text.splitlines()), text
    return re.sub(r"\n    ", " ", text)


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


def test_info_fits_75_columns_and_json_keeps_the_cmdline_whole(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fingerprint, "probe_kvm", lambda: {"status": "unavailable: test"})
    cmdline = "console=ttyS0 " + " ".join(f"opt{i}=value{i}" for i in range(60))
    real = fingerprint._read_or_reason
    monkeypatch.setattr(fingerprint, "_read_or_reason",
                        lambda p: cmdline if str(p).endswith("proc/cmdline") else real(p))
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 75, out
    (line,) = [x for x in out.splitlines() if x.startswith("cmdline:")]
    assert line.endswith("...") and cmdline.startswith(line[len("cmdline:  "):-3])
    assert cli.main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprint"]["kernel"]["cmdline"] == cmdline


def test_list_parses(register: Callable[[ScenarioSpec], None],
                     capsys: pytest.CaptureFixture[str], fake_spec: SpecFactory) -> None:
    register(fake_spec())
    assert cli.main(["list", "--json"]) == 0
    (s,) = json.loads(capsys.readouterr().out)["scenarios"]
    assert s["name"] == "fake-toggle"
    assert s["parameters"][0] == {"name": "pages", "unit": "pages", "default": 2000,
                                  "quick": 16, "type": "int", "help": "pages touched",
                                  "valid_range": "an integer", "minimum": None,
                                  "maximum": None, "multiple_of": None, "choices": None}
    assert s["variant_axes"][0]["values"] == ["all", "slot"]
    assert s["metrics"][0]["direction"] == "lower"
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fake-toggle: toggle a fake slot" in out
    assert "pages = 2000 / 16 pages; an integer: pages touched" in out
    assert "zap = all,slot" in out
    assert "total [ms], lower is better" in out


def test_list_with_the_real_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--json"]) == 0
    scenarios = json.loads(capsys.readouterr().out)["scenarios"]
    assert scenarios and all(p["valid_range"] for s in scenarios for p in s["parameters"])
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 75
    assert "rom_size = 128 / 128; 4..1048576 KiB, a multiple of 4" in out
    assert "seed" not in out and "List" not in out


def test_run_writes_a_file_and_compare_reads_it(register: Callable[[ScenarioSpec], None],
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                fake_spec: SpecFactory) -> None:
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
    assert re.search(r"^total \[ms\] +[\d.]+ +\+-[\d.]+% +[\d.]+ +\+-[\d.]+% +-(9|10)\.\d% "
                     r"+better", out, re.M)
    assert cli.main(["compare", str(path), "--format", "cover-letter", "--min-change",
                     "50%"]) == 0
    assert re.search(r"total: Before: [\d.]+ ms  After: [\d.]+ ms  \(~\)",
                     capsys.readouterr().out)
    assert cli.main(["compare", str(path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("scenario,axis,")


def test_run_selected_variant_and_defaults(register: Callable[[ScenarioSpec], None],
                                           tmp_path: Path, fake_spec: SpecFactory) -> None:
    register(fake_spec())
    assert cli.main(["run", "fake-toggle", "--variant", "zap=slot", "--repeat", "2",
                     "--warmup", "0", "--out", str(tmp_path)]) == 0
    result = load_result(only_file(tmp_path))
    assert result.variants == [{"zap": "slot"}]
    assert (result.iterations, result.warmup, result.parameters) == (3, 0, {"pages": 2000})


def test_interrupted_run_keeps_completed_runs(register: Callable[[ScenarioSpec], None],
                                              tmp_path: Path, fake_spec: SpecFactory) -> None:
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
                                             capsys: pytest.CaptureFixture[str],
                                             fake_spec: SpecFactory) -> None:
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
                                        tmp_path: Path, fake_spec: SpecFactory) -> None:
    calls = 0

    def run(req: RunRequest) -> RunOutcome:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("guest crashed")
        o = RunOutcome()
        o.add("total", 1.0)
        return o

    register(fake_spec(run))
    assert cli.main(["run", "fake-toggle", "--repeat", "2", "--out", str(tmp_path)]) == 1
    result = load_result(only_file(tmp_path))
    assert [r.status for r in result.runs] == ["failed", "ok", "ok", "ok"]
    assert "guest crashed" in (result.runs[0].reason or "")


def test_nothing_is_written_when_no_run_completes(register: Callable[[ScenarioSpec], None],
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 fake_spec: SpecFactory) -> None:
    def run(req: RunRequest) -> RunOutcome:
        raise RuntimeError("KVM_CREATE_VM failed: EACCES")

    register(fake_spec(run))
    assert cli.main(["run", "fake-toggle", "--repeat", "4", "--out", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []
    captured = capsys.readouterr()
    assert "no run completed; no result file written" in captured.out
    assert "dropped after 3 consecutive failures" in captured.out
    assert captured.err.count("failed: RuntimeError: KVM_CREATE_VM failed") == 6


def test_parallel_runs_in_one_second_get_one_file_each(register: Callable[[ScenarioSpec], None],
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        fake_spec: SpecFactory) -> None:
    # In-process: every run in the same second (the clock is stopped), same label.
    import datetime

    from kvmharness.results import store

    frozen = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    real = store.default_result_path
    monkeypatch.setattr("kvmharness.cli.run.default_result_path",
                        lambda d, s, lbl: real(d, s, lbl, when=frozen))
    register(fake_spec())
    for _ in range(3):
        assert cli.main(["run", "fake-toggle", "--repeat", "1", "--label", "L",
                         "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fake-toggle-L-20260102T030405Z-2.json", "fake-toggle-L-20260102T030405Z-3.json",
        "fake-toggle-L-20260102T030405Z.json"]


def ranged_spec(fake_spec: SpecFactory) -> ScenarioSpec:
    """fake_spec with ranged parameters like the real scenarios'; every run fails loudly,
    so a bad value that got through to a run shows in the test."""
    def run(req: RunRequest) -> RunOutcome:
        raise AssertionError(f"ran with {req.params}")

    return dataclasses.replace(fake_spec(run), parameters=(
        Parameter("pages", "pages", 2000, 16, "pages touched", minimum=1, maximum=4096),
        Parameter("toggle_ms", "ms", 10, 2, "interval", minimum=1, maximum=60_000),
        Parameter("thp", "bool", False, False, "huge pages", type=bool),
        Parameter("mode", "", "read", "read", "access", type=str, choices=("read", "write")),
    ))


# Malformed command lines: each is refused when parsed (exit 2) in one line naming what is
# wrong and, for values, the valid range; nothing runs, nothing is written.
MALFORMED = [
    (["run", "nope"], "unknown scenario 'nope'"),
    (["run", "fake-toggle", "--param", "pages=many"], "'pages' expects 1..4096"),
    (["run", "fake-toggle", "--param", "pages=0"], "'pages' must be 1..4096"),
    (["run", "fake-toggle", "--param", "pages=-1"], "'pages' must be 1..4096"),
    (["run", "fake-toggle", "--param", "pages=10^12"], "'pages' expects 1..4096"),
    (["run", "fake-toggle", "--param", "pages=1000000000000"], "'pages' must be 1..4096"),
    (["run", "fake-toggle", "--param", "pages="], "'pages' has an empty value (expects 1..4096"),
    (["run", "fake-toggle", "--param", "toggle_ms=0"], "'toggle_ms' must be 1..60000 ms"),
    (["run", "fake-toggle", "--param", "toggle_ms=-1"], "'toggle_ms' must be 1..60000 ms"),
    (["run", "fake-toggle", "--param", "toggle_ms=1.5"], "'toggle_ms' expects 1..60000"),
    (["run", "fake-toggle", "--param", "thp=maybe"], "'thp' expects true or false"),
    (["run", "fake-toggle", "--param", "mode=exec"], "'mode' must be one of read, write"),
    (["run", "fake-toggle", "--param", "pagez=1"], "no parameter 'pagez'"),
    (["run", "fake-toggle", "--param", "pages"], "expected NAME=VALUE, got 'pages'"),
    (["run", "fake-toggle", "--param", "=5"], "expected NAME=VALUE, got '=5'"),
    (["run", "fake-toggle", "--variant", "zap=some"], "no value 'some'"),
    (["run", "fake-toggle", "--variant", "zap="], "--variant zap=: an empty value "
                                                  "(values: all, slot)"),
    (["run", "fake-toggle", "--variant", "zap=all,"], "--variant zap=all,: an empty value"),
    (["run", "fake-toggle", "--variant", "mem=4k"], "no variant axis 'mem'"),
    (["run", "fake-toggle", "--warmup", "-1"], "expected an integer >= 0, got -1"),
    (["run", "fake-toggle", "--repeat", "0"], "expected an integer >= 1, got 0"),
    (["run", "fake-toggle", "--repeat", "two"], "expected an integer, got 'two'"),
    (["run", "fake-toggle", "--iterations", "0"], "expected an integer >= 1, got 0"),
    (["run", "fake-toggle", "--iterations", "-5"], "expected an integer >= 1, got -5"),
]


@pytest.mark.parametrize("argv,message", MALFORMED)
def test_run_usage_errors(register: Callable[[ScenarioSpec], None], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str], argv: list[str],
                          message: str, fake_spec: SpecFactory) -> None:
    register(ranged_spec(fake_spec))
    out = tmp_path / "out"
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = unwrapped(capsys.readouterr().err)
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one message
    assert not out.exists()


def test_the_same_checks_hold_for_every_real_scenario() -> None:
    # Every real parameter with a numeric type declares a lower bound, so 0 or -1 never
    # reaches a run; list-typed ones (their own parsers) reject garbage when parsed, so no
    # free-form text reaches a run unchecked.
    for spec in registry.all_scenarios().values():
        for p in spec.parameters:
            if p.type in (int, float):
                assert p.minimum is not None, f"{spec.name}.{p.name} has no minimum"
                with pytest.raises(ValueError, match=re.escape(repr(p.name))):
                    p.parse("-1")
            elif p.type is not bool:
                with pytest.raises(ValueError, match=re.escape(repr(p.name))):
                    p.parse("#")


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
    parse = cli_common.percent("--min-change")
    assert parse("1%") == pytest.approx(0.01) == parse("1")
    assert parse("0.5%") == pytest.approx(0.005)
    assert parse("0") == 0


@pytest.mark.parametrize("option", ["--min-change", "--fail-on-regression", "--until-ci"])
def test_every_percentage_option_reads_percent(
        option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'5' and '5%' are five percent in every option; a bare 0.05 is refused with a hint
    (it used to mean 5% in --min-change and 0.05% in --fail-on-regression)."""
    command = ["run", "rom-toggle"] if option == "--until-ci" else ["compare", "x.json"]
    assert cli.main([*command, option, "0.05"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{option} 0.05: percentages are in percent (5 or 5% for 5 percent); write " \
           "0.05% if you mean 0.05 percent" in err
    for text in ("5", "5%"):
        assert cli_common.percent(option)(text) == pytest.approx(0.05)


def test_run_into_an_unwritable_folder_is_a_clear_error(
        register: Callable[[ScenarioSpec], None], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], fake_spec: SpecFactory) -> None:
    register(fake_spec())
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = cli.main(["run", "fake-toggle", "--quick", "--out", str(blocker / "sub")])
    assert rc == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("kvmharness run: ") and "Traceback" not in err
    assert str(blocker / "sub") in err


# --- checks before the first run ---------------------------------------------------------


def test_host_limits_are_checked_before_anything_runs(register: Callable[[ScenarioSpec], None],
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      fake_spec: SpecFactory) -> None:
    def check_host(params: object) -> list[str]:
        return ["fake-toggle: 1 TiB of guest RAM: lower pages", "fake-toggle: second problem"]

    register(dataclasses.replace(ranged_spec(fake_spec), check_host=check_host))
    out = tmp_path / "out"
    assert cli.main(["run", "fake-toggle", "--out", str(out)]) == 2  # ranged_spec never runs
    assert capsys.readouterr().err == ("kvmharness run: fake-toggle: 1 TiB of guest RAM: lower "
                                       "pages\nkvmharness run: fake-toggle: second problem\n")
    assert not out.exists()


@pytest.mark.parametrize("name,params,knob", [
    ("rom-toggle", ["mem_per_vcpu=1048576", "vcpus=1"], "vcpus x mem_per_vcpu"),  # 1 TiB
    ("rom-toggle", ["mem_per_vcpu=131072", "vcpus=8"], "vcpus x mem_per_vcpu"),
    ("slot-ops", ["sizes=4K,1T"], "populated_mib or the largest of sizes"),
    ("teardown", ["populated_sizes=4,1T"], "populated_sizes"),
])
def test_real_scenarios_refuse_what_the_host_cannot_hold(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        name: str, params: list[str], knob: str) -> None:
    spec = registry.all_scenarios()[name]
    assert spec.check_host is not None  # else the run below would really try 1 TiB
    monkeypatch.setattr(cli_common, "collect_fingerprint", lambda: dict(FAKE_ENV))
    monkeypatch.setattr(cli_common, "kvm_access_problem", lambda: None)
    out = tmp_path / "out"
    argv = ["run", name, "--quick", "--out", str(out)]
    for p in params:
        argv += ["--param", p]
    assert cli.main(argv) == 2
    err = unwrapped(capsys.readouterr().err)
    lines = err.splitlines()
    assert lines and all(line.startswith(f"kvmharness run: {name}: ") for line in lines), err
    assert all(f"lower {knob}" in line for line in lines), err
    assert "2 MiB pages" not in err  # no advice that no option can follow
    assert not out.exists()


DEVICE = {"uid": 1000, "gids": {1000}, "user": "ann", "owner": "root", "member_of_group": False}


@pytest.mark.parametrize("uid,gid,mode,group,member,expected", [
    (0, 0, 0o600, "root", False, "/dev/kvm is root:root mode 0600, so only root can use it: "
                                 "run as root, or give a group access (`sudo chgrp kvm"),
    (0, 36, 0o660, "kvm", False, "/dev/kvm is root:kvm mode 0660; user ann is not in group "
                                 "'kvm': `sudo usermod -aG kvm ann`, then log in again"),
    (0, 36, 0o660, "kvm", True, "user ann is in group 'kvm' but this login session is not: "
                                "log in again (or run `newgrp kvm`)"),
    (0, 36, 0o640, "kvm", False, "/dev/kvm is root:kvm mode 0640, so only root can use it"),
    (0, 0, 0o666, "root", False, None),
    (0, 1000, 0o660, "ann", False, None),  # the user's own group
    (1000, 0, 0o600, "root", False, None),  # the user's own device
])
def test_kvm_access_advice_matches_the_device(uid: int, gid: int, mode: int, group: str,
                                              member: bool, expected: str | None) -> None:
    import stat

    advice = cli_common.kvm_access_advice(
        uid, gid, stat.S_IFCHR | mode, **{**DEVICE, "member_of_group": member},  # type: ignore[arg-type]
        group=group)
    if expected is None:
        assert advice is None
    else:
        assert advice is not None and expected in advice


def test_kvm_access_is_checked_before_anything_runs(register: Callable[[ScenarioSpec], None],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    fake_spec: SpecFactory) -> None:
    register(ranged_spec(fake_spec))
    monkeypatch.setattr(cli_common, "kvm_access_problem",
                        lambda: "/dev/kvm is root:root mode 0600, so only root can use it")
    out = tmp_path / "out"
    assert cli.main(["run", "fake-toggle", "--out", str(out)]) == 1
    assert capsys.readouterr().err == ("kvmharness run: /dev/kvm is root:root mode 0600, so "
                                       "only root can use it\n")
    assert not out.exists()


def run_as_nobody(argv: list[str], tmp_path: Path) -> tuple[int, str, str]:
    """``cli.main(argv)`` in a forked child that dropped root for user nobody (the
    interpreter is already loaded: its files may be unreadable to nobody)."""
    import io
    import os
    import pwd

    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            import sys
            out, err = io.StringIO(), io.StringIO()
            sys.stdout, sys.stderr = out, err
            code = cli.main(argv)
            os.write(w, json.dumps([code, out.getvalue(), err.getvalue()]).encode())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, json.dumps([99, "", repr(e)]).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    code, out, err = json.loads(data)
    return code, out, err


def test_a_user_without_access_to_dev_kvm_is_told_what_to_do(
        register: Callable[[ScenarioSpec], None], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, fake_spec: SpecFactory) -> None:
    import os
    import stat

    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to nobody")
    try:
        st = os.stat("/dev/kvm")
    except FileNotFoundError:
        pytest.skip("no /dev/kvm")
    if st.st_mode & 0o006 == 0o006:
        pytest.skip("/dev/kvm is open to everyone here")
    register(ranged_spec(fake_spec))
    monkeypatch.undo()  # the real /dev/kvm check, the fake scenario
    monkeypatch.setattr(registry, "all_scenarios", lambda: {"fake-toggle": ranged_spec(fake_spec)})
    monkeypatch.setattr(cli_common, "collect_fingerprint", lambda: dict(FAKE_ENV))
    out = tmp_path / "out"
    tmp_path.chmod(0o777)
    code, stdout, err = run_as_nobody(["run", "fake-toggle", "--out", str(out)], tmp_path)
    assert code == 1, err
    err = unwrapped(err)
    assert err.startswith("kvmharness run: /dev/kvm is ") and err.count("\n") == 1, err
    group_rw = st.st_mode & 0o060 == 0o060 and st.st_gid != 0
    assert ("usermod -aG" in err) == group_rw and ("run as root" in err) == (not group_rw)
    assert f"mode {stat.S_IMODE(st.st_mode):04o}" in err
    assert not out.exists()
    monkeypatch.undo()  # the real fingerprint
    code, stdout, err = run_as_nobody(["info"], tmp_path)
    assert code == 0, err
    (kvm_line,) = [line for line in stdout.splitlines() if line.startswith("KVM: ")]
    assert kvm_line.startswith("KVM: /dev/kvm is ") and ("run as root" in kvm_line) == (
        not group_rw)


def test_run_output_wraps_at_75_columns_keeping_the_prefix() -> None:
    from kvmharness.cli.run import wrapped
    text = "warning: spread too high: " + " ".join(["total 12.3% (3 runs)"] * 12)
    lines = wrapped(text).splitlines()
    assert len(lines) > 1 and max(map(len, lines)) <= 75
    assert lines[0].startswith("warning: spread") and all(x.startswith("    ") for x in lines[1:])
    assert re.sub(r"\n    ", " ", wrapped(text)) == text + "\n"


def test_version_names_the_git_commit_in_a_checkout(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    identity = {"version": "0.1.0", "git_commit": "abcdef1234567890", "git_dirty": False}
    monkeypatch.setattr(fingerprint, "harness_identity", lambda: dict(identity))
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == "kvmharness 0.1.0 (git abcdef123456)\n"
    identity["git_commit"] = None  # an installed copy: no checkout
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == "kvmharness 0.1.0\n"


def test_ab_dry_run_says_whether_its_rounds_can_reach_significance() -> None:
    from kvmharness.cli.ab import rounds_verdict

    two = " ".join(rounds_verdict(2))
    # 2 boots per kernel: the exact test's floor at 2/2 is 2/C(4,2) = 1/3.
    assert "smallest p 0.333: cannot reach p < 0.05" in two
    assert "4 for 1, 5 for 3, 6 for 10 tests" in two
    assert "can reach p < 0.05 with up to 6 headline tests" in " ".join(rounds_verdict(5))
    assert "no kernel-level claim is possible" in " ".join(rounds_verdict(1))


# Accepted-but-wrong numbers and lists (issue: red team): each refused when parsed.
STRICT = [
    (["--param", "pages=1_0"], "'pages' expects 1..4096"),
    (["--param", "pages=\uff11"], "'pages' expects 1..4096"),  # fullwidth 1
    (["--param", "pages=\u0663"], "'pages' expects 1..4096"),  # Arabic-Indic 3
    (["--param", "pages=2", "--param", "pages=3"], "--param pages given twice"),
    (["--pin", ""], "--pin: empty spec"),
    (["--pin", "0-1000000000"], "CPU 1000000000 is beyond the 8192 CPUs"),
    (["--iterations", "100000000000"], "--iterations 100000000000 is more than the 100000"),
    (["--warmup", "1e11"], "expected an integer, got '1e11'"),
    (["--repeat", "1000001"], "--repeat 1000001 is more than the 100000"),
    (["--iterations", "\uff13"], "expected an integer, got"),
]


@pytest.mark.parametrize(("argv", "message"), STRICT)
def test_run_refuses_loose_numbers(register: Callable[[ScenarioSpec], None], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str], argv: list[str],
                                   message: str, fake_spec: SpecFactory) -> None:
    register(ranged_spec(fake_spec))
    out = tmp_path / "out"
    assert cli.main(["run", "fake-toggle", *argv, "--out", str(out)]) == 2
    assert message in unwrapped(capsys.readouterr().err)
    assert not out.exists()
