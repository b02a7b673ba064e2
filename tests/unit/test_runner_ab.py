"""`kvmharness ab` without booting: option routing, errors before any boot, the dry run,
and the whole flow with a fake boot that runs a fake scenario in-process (so rounds,
collection, comparison, failure reporting and the manifest are exercised)."""

from __future__ import annotations

import io
import json
import random
import re
import signal
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmharness import cli
from kvmharness.cli import ab as cli_ab
from kvmharness.cli import common as cli_common
from kvmharness.runner import ab, host
from kvmharness.runner.boot import BootResult, BootSpec
from kvmharness.runner.host import Accel
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

FAKE_ENV = {"kernel": {"release": "test"}, "backend": {"kind": "svm", "nested": True},
            "kvm_modules": {"kvm": {"tdp_mmu": "Y", "mmio_caching": "Y"},
                            "kvm_amd": {"npt": "Y"}}}
TCG = Accel("tcg", "kvm_amd", 1, "TCG -cpu max: test host")
RUNNING_IN: dict[str, str] = {"kernel": ""}  # which fake kernel the fake boot "is"


def spec(name: str, param: str) -> ScenarioSpec:
    rng = random.Random(name)

    def run(req: RunRequest) -> RunOutcome:
        if req.variant["zap"] == "slot" and RUNNING_IN["kernel"] == "old":
            raise VariantUnsupported("quirk not supported: fake old kernel")
        o = RunOutcome()
        base = 100.0 if req.variant["zap"] == "all" else 50.0
        for _ in range(req.iterations):
            o.add("total", rng.gauss(base, 1.0))
        return o

    return ScenarioSpec(name=name, summary="fake",
                        parameters=(Parameter(param, "pages", 100, 10, "p"),),
                        metrics=(Metric("total", "ms", "lower", "t"),),
                        variant_axes=(ZAP_AXIS,), run=run, default_iterations=3,
                        default_warmup=0)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, ScenarioSpec]:
    specs = {"one": spec("one", "pages"), "two": spec("two", "slots")}
    monkeypatch.setattr(registry, "all_scenarios", lambda: specs)
    monkeypatch.setattr(cli_common, "collect_fingerprint", lambda: dict(FAKE_ENV))
    return specs


def fake_kernel(root: Path, version: str) -> Path:
    image = root / "boot" / f"vmlinuz-{version}"
    image.parent.mkdir(parents=True)
    data = bytearray(0x5000)
    data[0x202:0x206] = b"HdrS"
    text = version.encode() + b" (x) #1\0"
    data[0x4400:0x4400 + len(text)] = text
    struct.pack_into("<H", data, 0x20E, 0x4200)
    image.write_bytes(bytes(data))
    mods = root / "lib/modules" / version / "kernel/arch/x86/kvm"
    mods.mkdir(parents=True)
    (mods / "kvm-amd.ko").write_bytes(b"")
    (root / "lib/modules" / version / "modules.dep").write_text(
        "kernel/arch/x86/kvm/kvm-amd.ko:\n")
    return root


@pytest.fixture
def kernels(tmp_path: Path) -> list[str]:
    return ["--kernel", f"old={fake_kernel(tmp_path / 'k61', '6.1.0-9-amd64')}",
            "--kernel", f"new={fake_kernel(tmp_path / 'k612', '6.12.1-amd64')}"]


@pytest.fixture
def host_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that has everything, with TCG; the guests are 'built'."""
    monkeypatch.setattr(host, "find_vng", lambda *a, **k: "/usr/bin/vng")
    monkeypatch.setattr(host, "check_prerequisites", lambda **k: [])
    monkeypatch.setattr(host, "decide_accel", lambda request, cpus=None: TCG)
    monkeypatch.setattr(ab, "pick_guest_python",
                        lambda: ab.GuestPython("/usr/bin/python3", (Path("/repo"),)))
    monkeypatch.setattr(ab, "build_guests", lambda err: ({"KVMHARNESS_GUESTS_BUILD_DIR": "/b"},
                                                         []))


def never_boot(*args: Any, **kwargs: Any) -> BootResult:
    raise AssertionError("nothing may boot here")


# --- options ----------------------------------------------------------------------------


def test_params_and_variants_go_to_the_scenarios_that_have_them(fakes: Any) -> None:
    args = cli.build_parser().parse_args(
        ["ab", "one", "two", "--kernel", "A=/x", "--quick", "--param", "pages=20",
         "--param", "slots=3", "--variant", "zap=all", "--rounds", "2", "--warmup", "0"])
    calls = cli_ab.scenario_calls(args, fakes)
    assert [c.scenario for c in calls] == ["one", "two"]
    # --quick's 5 runs per variant, split over 2 rounds: 3 per boot.
    assert calls[0].options == ("--quick", "--param", "pages=20", "--variant", "zap=all",
                                "--repeat", "3", "--warmup", "0")
    assert calls[1].options == ("--quick", "--param", "slots=3", "--variant", "zap=all",
                                "--repeat", "3", "--warmup", "0")


@pytest.mark.parametrize("extra, message", [
    (["--param", "nope=1"], "'nope': not a parameter or variant axis"),
    (["--param", "pages=abc"], ""),
    (["--variant", "zap=sometimes"], "no value 'sometimes'"),
])
def test_bad_scenario_options_fail_before_any_boot(fakes: Any, kernels: list[str],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str],
                                                   extra: list[str], message: str) -> None:
    monkeypatch.setattr(ab, "boot", never_boot)
    assert cli.main(["ab", "one", *kernels, *extra]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_unknown_scenario(fakes: Any, kernels: list[str],
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ab", "three", *kernels]) == cli.EXIT_USAGE
    assert "unknown scenario 'three' (known: one, two)" in capsys.readouterr().err


def test_a_kernel_that_does_not_exist(fakes: Any, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ab, "boot", never_boot)
    rc = cli.main(["ab", "one", "--kernel", f"A={tmp_path / 'vmlinuz-nope'}",
                   "--kernel", f"B={fake_kernel(tmp_path / 'k', '6.12.1')}"])
    assert rc == cli.EXIT_USAGE
    assert f"kernel A: {tmp_path / 'vmlinuz-nope'} does not exist" in capsys.readouterr().err


def test_duplicate_names_and_stray_modules(fakes: Any, kernels: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ab", "one", *kernels[:2], *kernels[:2]]) == cli.EXIT_USAGE
    assert "must differ" in capsys.readouterr().err
    assert cli.main(["ab", "one", *kernels, "--modules", "C=/x"]) == cli.EXIT_USAGE
    assert "--modules for unknown kernel C" in capsys.readouterr().err


def test_missing_prerequisites_are_listed_with_packages(fakes: Any, kernels: list[str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    monkeypatch.setattr(host, "find_vng", lambda *a, **k: None)
    monkeypatch.setattr(host, "check_prerequisites", lambda **k: [
        host.Missing("qemu-system-x86_64 (QEMU)", "apt-get install qemu-system-x86"),
        host.Missing("vng (virtme-ng)", "pip install virtme-ng")])
    monkeypatch.setattr(ab, "boot", never_boot)
    assert cli.main(["ab", "one", *kernels]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "missing prerequisites" in err
    assert "apt-get install qemu-system-x86" in err and "pip install virtme-ng" in err


def test_dry_run_prints_alternating_commands(fakes: Any, kernels: list[str], host_ok: None,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ab, "boot", never_boot)
    rc = cli.main(["ab", "one", *kernels, "--quick", "--dry-run", "--out",
                   str(tmp_path / "out")])
    assert rc == 0
    out = capsys.readouterr()
    rounds = re.findall(r"^# round (\d), (\w+)$", out.out, re.MULTILINE)
    assert rounds == [("1", "old"), ("1", "new"), ("2", "old"), ("2", "new")]
    assert "--disable-kvm" in out.out and "-cpu max" in out.out
    assert "/usr/bin/python3 -m kvmharness run one --quick --repeat 3 --label old --out" in out.out
    assert "not representative" in out.err
    assert not (tmp_path / "out").exists()


# --- the whole flow with a fake boot ------------------------------------------------------


def fake_boot_factory(fail: Callable[[str, int], str | None]) -> Callable[..., BootResult]:
    """A boot that runs the scenarios in-process (as the guest would) unless ``fail``
    names a status for (kernel, n-th boot of it)."""
    count: dict[str, int] = {}

    def fake_boot(vng: str, spec: BootSpec, *, name: str, version: str, body: str,
                  **kw: Any) -> BootResult:
        count[name] = count.get(name, 0) + 1
        status = fail(name, count[name])
        ((guest_out, rwdir),) = spec.rw_mounts  # the guest writes GUEST_OUT, we rwdir
        assert guest_out == ab.GUEST_OUT and not spec.rwdirs
        if status is None:
            for scenario in re.findall(r"-m kvmharness run (\S+) ", body):
                opts = body.split(f"-m kvmharness run {scenario} ", 1)[1].split("\n", 1)[0]
                assert f"--out {guest_out}" in opts
                argv = [a for a in opts.split() if a not in ("--label", name, "--out",
                                                             str(guest_out))]
                RUNNING_IN["kernel"] = name
                rc = cli.main(["run", scenario, *argv, "--label", name, "--out", str(rwdir)])
                with open(rwdir / "status", "a") as f:
                    f.write(f"{scenario} {rc}\n")
            return BootResult(name, version, "ok", 0, 12.0, ["vng"], [], [], None, [])
        rc = {"no-status": 255, "timeout": 124}[status]
        return BootResult(name, version, status, rc, 30.0, ["vng"],  # type: ignore[arg-type]
                          ["[ 0.1] Linux version", "[ 1.2] Kernel panic - not syncing: x"],
                          [], "[ 1.2] Kernel panic - not syncing: x", [])

    return fake_boot


def test_ab_alternates_collects_and_compares(fakes: Any, kernels: list[str],
                                             host_ok: None, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ab, "boot", fake_boot_factory(lambda name, n: None))
    out_dir = tmp_path / "ab"
    rc = cli.main(["ab", "one", *kernels, "--quick", "--repeat", "4", "--out", str(out_dir)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    doc = json.loads((out_dir / "ab.json").read_text())
    assert [(b["round"], b["kernel"], b["status"]) for b in doc["boots"]] == [
        (1, "old", "ok"), (1, "new", "ok"), (2, "old", "ok"), (2, "new", "ok")]
    assert doc["accel"]["mode"] == "tcg" and "not representative" in doc["accel"]["warning"]
    assert all(len(b["files"]) == 1 for b in doc["boots"])
    kernels_txt = (out_dir / "compare-kernels.txt").read_text()
    assert "one (zap=all): A = old, B = new" in kernels_txt
    assert "one (zap=all): A = old, B = new; 8 runs each" in kernels_txt
    assert (out_dir / "compare-kernels.md").read_text().startswith("#")
    variants = (out_dir / "compare-variants-new.txt").read_text()
    assert "one (label new): A = zap=all, B = zap=slot" in variants
    assert not (out_dir / "compare-variants-old.txt").exists()  # zap=slot skipped there
    assert "== Kernels compared" in out.out and "WARNING: TCG" in out.out


def test_a_kernel_that_panics_keeps_the_other_kernels_results(
        fakes: Any, kernels: list[str], host_ok: None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ab, "boot", fake_boot_factory(
        lambda name, n: "no-status" if name == "old" else None))
    out_dir = tmp_path / "ab"
    rc = cli.main(["ab", "one", *kernels, "--quick", "--repeat", "4", "--out", str(out_dir)])
    out = capsys.readouterr()
    assert rc == cli.EXIT_FAILED
    assert "old FAILED" in out.err and "Kernel panic - not syncing: x" in out.err
    assert "guest kernel console" in out.err
    doc = json.loads((out_dir / "ab.json").read_text())
    assert [b["status"] for b in doc["boots"]] == ["no-status", "ok", "skipped", "ok"]
    assert "dropped after round 1" in doc["boots"][2]["reason"]
    assert not (out_dir / "compare-kernels.txt").exists()
    assert "A = zap=all, B = zap=slot" in (out_dir / "compare-variants-new.txt").read_text()
    assert "only new produced results" in out.err


def test_guest_body_records_each_status() -> None:
    from kvmharness.runner.kernels import Kernel

    k = Kernel("B", Path("/k"), "deb", Path("/k/boot/vmlinuz-6.12"), "6.12", None, None)
    opts = ab.AbOptions((k,), (ab.ScenarioCall("rom-toggle", ("--quick",)),
                               ab.ScenarioCall("slot-ops", ("--quick",))), 1, Path("/o"),
                        timeout_s=60)
    plan = ab.AbPlan(opts, TCG, ab.GuestPython("/usr/bin/python3", (Path("/p"), Path("/r"))),
                     {})
    body = ab.guest_body(plan, k, Path("/o/r1-B"))
    assert "[ -c /dev/kvm ] ||" in body
    assert ("/usr/bin/python3 -m kvmharness run rom-toggle --quick --label B --out /o/r1-B"
            in body)
    assert "echo slot-ops $s >> /o/r1-B/status" in body
    assert body.endswith("exit $rc")
    assert ab.guest_env(plan, k)["PYTHONPATH"] == "/p:/r"
    assert ab.boot_order([k, k], 2) == [(1, k), (1, k), (2, k), (2, k)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_a_boot_keeps_what_was_collected(fakes: Any, kernels: list[str],
                                                         host_ok: None, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str],
                                                         signum: int) -> None:
    from kvmharness.runner.boot import BootInterrupted

    ok_boot = fake_boot_factory(lambda name, n: None)

    def boot_then_interrupt(vng: str, spec: BootSpec, *, name: str, **kw: Any) -> BootResult:
        if name == "new":  # boot() has killed QEMU before raising this
            raise BootInterrupted(signal.Signals(signum).name, signum)
        return ok_boot(vng, spec, name=name, **kw)

    monkeypatch.setattr(ab, "boot", boot_then_interrupt)
    out_dir = tmp_path / "ab"
    rc = cli.main(["ab", "one", *kernels, "--quick", "--out", str(out_dir)])
    assert rc == 128 + signum  # the shell's convention, as `run` exits
    assert "completed result files are kept" in capsys.readouterr().err
    doc = json.loads((out_dir / "ab.json").read_text())
    assert doc["interrupted"] is True
    assert [(b["kernel"], b["status"]) for b in doc["boots"]] == [("old", "ok"),
                                                                   ("new", "interrupted")]
    assert len(list((out_dir / "r1-old").glob("one-*.json"))) == 1


def test_dry_run_shows_the_binds_the_real_boot_uses(fakes: Any, kernels: list[str],
                                                    host_ok: None, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # An interpreter under a folder the guest masks needs a --rodir; the dry run used to
    # leave out the binds for it and for --out.
    monkeypatch.setattr(ab, "pick_guest_python", lambda: ab.GuestPython(
        "/var/tmp/venv/bin/python3", (Path("/repo"),)))
    monkeypatch.setattr(ab, "boot", never_boot)
    assert cli.main(["ab", "one", *kernels, "--quick", "--dry-run", "--out",
                     str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count("--rodir=/var/tmp/venv/bin") == 4


def test_a_reused_out_folder_is_refused(fakes: Any, kernels: list[str], host_ok: None,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Boot folders are globbed for *.json and appended to: an earlier run's files in them
    # would silently join this run's comparison.
    out_dir = tmp_path / "ab"
    (out_dir / "r1-old").mkdir(parents=True)
    (out_dir / "r1-old" / "one-old-20240101T000000Z.json").write_text("{}")
    monkeypatch.setattr(ab, "boot", never_boot)
    rc = cli.main(["ab", "one", *kernels, "--quick", "--out", str(out_dir)])
    assert rc == cli.EXIT_FAILED
    assert "already holds boot folders of an earlier run (r1-old)" in capsys.readouterr().err


def test_ab_tables_name_files_relative_to_the_out_folder(fakes: Any, kernels: list[str],
                                                         host_ok: None, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    monkeypatch.setattr(ab, "boot", fake_boot_factory(lambda name, n: None))
    out_dir = tmp_path / ("deep-" * 10) / "ab"
    assert cli.main(["ab", "one", *kernels, "--quick", "--out", str(out_dir)]) == 0
    capsys.readouterr()
    text = (out_dir / "compare-kernels.txt").read_text()
    assert str(tmp_path) not in text and "  old: r1-old/one-old-" in text
    assert max(len(line) for line in text.splitlines()) <= 78


# --- configurations: one image under several names, --append, three or more ---------------


def test_one_image_as_three_configurations_rotates_and_compares_with_the_first(
        fakes: Any, tmp_path: Path, host_ok: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    image = fake_kernel(tmp_path / "k612", "6.12.1-amd64")
    specs: list[tuple[str, str]] = []
    ok_boot = fake_boot_factory(lambda name, n: None)

    def recording_boot(vng: str, spec: BootSpec, *, name: str, **kw: Any) -> BootResult:
        specs.append((name, spec.append))
        return ok_boot(vng, spec, name=name, **kw)

    monkeypatch.setattr(ab, "boot", recording_boot)
    out_dir = tmp_path / "ab"
    rc = cli.main(["ab", "one", "--kernel", f"tdp={image}", "--kernel", f"legacy={image}",
                   "--append", "legacy=kvm.tdp_mmu=0", "--kernel", f"shadow={image}",
                   "--append", "shadow=kvm_amd.npt=0", "--append", "shadow=kvm.tdp_mmu=0",
                   "--quick", "--repeat", "3", "--variant", "zap=all", "--out", str(out_dir)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert specs == [("tdp", ""), ("legacy", "kvm.tdp_mmu=0"),
                     ("shadow", "kvm_amd.npt=0 kvm.tdp_mmu=0")] * 2
    assert "booting legacy (6.12.1-amd64, tcg, + kvm.tdp_mmu=0)" in out.err
    doc = json.loads((out_dir / "ab.json").read_text())
    assert [k["append"] for k in doc["kernels"]] == ["", "kvm.tdp_mmu=0",
                                                     "kvm_amd.npt=0 kvm.tdp_mmu=0"]
    assert [b["kernel"] for b in doc["boots"]] == ["tdp", "legacy", "shadow"] * 2
    # Each boot names the MMU mode its results recorded (all TDP MMU here: a fake boot).
    assert doc["boots"][0]["mmu"].startswith("tdp_mmu (kvm.tdp_mmu=Y, kvm_amd.npt=Y)")
    assert "    MMU: tdp_mmu (" in out.out
    # Every configuration's results carry its own label, and each is compared with A.
    labels = {json.loads(f.read_text())["label"] for f in out_dir.glob("r*-*/one-*.json")}
    assert labels == {"tdp", "legacy", "shadow"}
    text = (out_dir / "compare-kernels.txt").read_text()
    # One report, A the first configuration, B and C compared with it.
    assert "one (zap=all): A = tdp, B = legacy, C = shadow" in text


def test_append_errors_fail_before_any_boot(fakes: Any, kernels: list[str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ab, "boot", never_boot)
    assert cli.main(["ab", "one", *kernels, "--append", "C=kvm.tdp_mmu=0"]) == cli.EXIT_USAGE
    assert "--append for unknown kernel C" in capsys.readouterr().err
    assert cli.main(["ab", "one", *kernels, "--append", "old=a='b c'"]) == cli.EXIT_USAGE
    assert "no quotes" in capsys.readouterr().err
    assert cli.main(["ab", "one", *kernels, "--append", "kvm.tdp_mmu"]) == cli.EXIT_USAGE
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_dry_run_shows_each_configurations_command_line(fakes: Any, tmp_path: Path,
                                                        host_ok: None,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    image = fake_kernel(tmp_path / "k", "6.12.1-amd64")
    monkeypatch.setattr(ab, "boot", never_boot)
    assert cli.main(["ab", "one", "--kernel", f"tdp={image}", "--kernel", f"legacy={image}",
                     "--append", "legacy=kvm.tdp_mmu=0", "--rounds", "1", "--dry-run",
                     "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    tdp, legacy = out.split("# round 1, legacy")
    assert "kvm.tdp_mmu=0" not in tdp and "kvm.tdp_mmu=0" in legacy.split("\n")[1]


# --- the typed outcome: what execute() returns, before the CLI prints anything -------------


def ab_options(tmp_path: Path, **kw: Any) -> ab.AbOptions:
    from kvmharness.runner.kernels import resolve_kernel

    kernels = (resolve_kernel("old", str(fake_kernel(tmp_path / "k61", "6.1.0-9-amd64"))),
               resolve_kernel("new", str(fake_kernel(tmp_path / "k612", "6.12.1-amd64"))))
    calls = (ab.ScenarioCall("one", ("--quick", "--repeat", "3")),)
    return ab.AbOptions(kernels, calls, rounds=2, out_dir=tmp_path / "ab", **kw)


def test_execute_returns_boots_files_and_reports_and_prints_nothing(
        fakes: Any, host_ok: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ab, "boot", fake_boot_factory(
        lambda name, n: "timeout" if (name, n) == ("old", 2) else None))
    notes: list[str] = []
    outcome = ab.execute(ab_options(tmp_path), ["ab"], ab.Progress(
        notes.append, notes.append, notes.append))
    # ab's own lines went to the Progress sinks (the fake guest's `run` prints as usual).
    printed = capsys.readouterr()
    for line in ("booting old", "old FAILED", "== Kernels compared", "boots:", "files:"):
        assert line not in printed.out + printed.err
    assert [(b.round, b.kernel, b.result.status if b.result else None)
            for b in outcome.boots] == [(1, "old", "ok"), (1, "new", "ok"),
                                        (2, "old", "timeout"), (2, "new", "ok")]
    assert [(b.round, b.kernel) for b in outcome.failed_boots] == [(2, "old")]
    assert not outcome.ok and outcome.failure is None and outcome.interrupted is None
    out_dir = (tmp_path / "ab").resolve()
    assert [p.name for p in outcome.written] == [
        "ab.json", "compare-kernels.txt", "compare-kernels.md",
        "compare-variants-new.txt", "compare-variants-new.md"]
    assert all(p.parent == out_dir and p.is_file() for p in outcome.written)
    assert [name for name, _ in outcome.reports] == ["kernels", "variants-new"]
    assert any("old FAILED" in n for n in notes)
    # The CLI's exit status for that outcome: a boot failed.
    assert cli_ab.report_outcome(outcome, "plain", *_streams()) == cli.EXIT_FAILED


def test_sigterm_between_boot_steps_exits_143_not_130(
        fakes: Any, host_ok: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from kvmharness.observe import signals

    def terminated(vng: str, spec: BootSpec, **kw: Any) -> BootResult:
        # Outside boot()'s own handler (as between a boot's steps): the CLI's.
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(ab, "boot", terminated)
    with signals.interrupts_raise():
        outcome = ab.execute(ab_options(tmp_path), ["ab"])
    assert outcome.interrupted == signal.SIGTERM
    assert cli_ab.report_outcome(outcome, "plain", *_streams()) == 143


def test_execute_reports_the_signal_and_a_failure_without_exiting(
        fakes: Any, host_ok: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmharness.runner.boot import BootInterrupted

    def interrupted(vng: str, spec: BootSpec, **kw: Any) -> BootResult:
        kw["output_log"].write_text("[ 0.1] Linux version\n")  # as boot() logs
        raise BootInterrupted("SIGTERM", signal.SIGTERM)

    monkeypatch.setattr(ab, "boot", interrupted)
    opts = ab_options(tmp_path)
    outcome = ab.execute(opts, ["ab"])
    assert outcome.interrupted == signal.SIGTERM and not outcome.reports
    assert [p.name for p in outcome.written] == ["ab.json"]
    assert cli_ab.report_outcome(outcome, "plain", *_streams()) == 128 + signal.SIGTERM
    # The same folder again: refused before any boot, as a failure the CLI prints.
    monkeypatch.setattr(ab, "boot", never_boot)
    again = ab.execute(opts, ["ab"])
    assert again.failure is not None and "already holds boot folders" in again.failure
    assert not again.boots and not again.written
    out, err = _streams()
    assert cli_ab.report_outcome(again, "plain", out, err) == cli.EXIT_FAILED
    assert err.getvalue().startswith("kvmharness ab: ") and out.getvalue() == ""


def _streams() -> tuple[io.StringIO, io.StringIO]:
    return io.StringIO(), io.StringIO()
