"""Tuning advice (`kvmharness info`): each check over fake fingerprints and host readings,
the host readers over a fake sysfs tree, and the printed section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvmharness.observe import tuning
from kvmharness.observe.tuning import Advice, HostReadings

QUIET = HostReadings(usable_cpus=(0, 1, 2, 3), siblings=((0,), (1,), (2,), (3,)),
                     smt_control="notsupported", irqbalance=False,
                     busy_pct={0: 1.0, 1: 0.0, 2: 3.0, 3: 0.0},
                     steal_pct={0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0})


def tuned_fp(**over: Any) -> dict[str, Any]:
    fp: dict[str, Any] = {
        "kernel": {"cmdline": "root=/dev/sda1 isolcpus=2,3 nohz_full=2,3"},
        "backend": {"kind": "vmx", "nested": False},
        "cpufreq": {"governor": "performance", "driver": "intel_pstate", "turbo": "off"},
        "thp": {"enabled": "madvise", "defrag": "madvise"},
    }
    fp.update(over)
    return fp


def by_topic(items: list[Advice]) -> dict[str, Advice]:
    return {a.topic: a for a in items}


def test_a_tuned_bare_metal_host_needs_nothing() -> None:
    items = tuning.advise(tuned_fp(), QUIET)
    assert [a for a in items if a.status != "ok"] == []
    assert by_topic(items)["isolated CPUs"].text.startswith("isolcpus=2,3; pin the vCPUs there")


def test_frequency_advice_names_the_knob_for_the_driver() -> None:
    fp = tuned_fp(cpufreq={"governor": "powersave", "driver": "intel_pstate", "turbo": "on"})
    t = by_topic(tuning.advise(fp, QUIET))
    assert t["CPU governor"].status == "advice"
    assert "cpupower frequency-set -g performance" in t["CPU governor"].text
    assert "intel_pstate/no_turbo" in t["turbo/boost"].text
    fp = tuned_fp(cpufreq={"governor": "schedutil", "driver": "acpi-cpufreq", "turbo": "on"})
    assert "cpufreq/boost" in by_topic(tuning.advise(fp, QUIET))["turbo/boost"].text
    fp = tuned_fp(cpufreq={"governor": "unavailable: not present", "driver": "x",
                           "turbo": "unavailable: no intel_pstate/no_turbo or cpufreq/boost"})
    t = by_topic(tuning.advise(fp, QUIET))
    assert (t["CPU governor"].status, t["turbo/boost"].status) == ("unknown", "unknown")


def test_thp_always_and_defrag_always() -> None:
    t = by_topic(tuning.advise(tuned_fp(thp={"enabled": "always", "defrag": "always"}), QUIET))
    assert t["THP"].status == "advice" and "enabled=always" in t["THP"].text
    assert "echo madvise" in t["THP"].text
    assert t["THP defrag"].status == "advice"
    assert "THP defrag" not in by_topic(tuning.advise(tuned_fp(), QUIET))


def test_emulated_and_nested_backends() -> None:
    t = by_topic(tuning.advise(tuned_fp(backend={"kind": "pvm", "nested": True}), QUIET))
    assert t["backend"].status == "advice" and "tools/vng-run" in t["backend"].text
    # Honest about what PVM gives: semantics yes, timings and counters no.
    assert "timings and fault counters (pf_fixed) are not" in t["backend"].text
    assert "for timings use a VT-x/AMD-V host" in t["backend"].text
    assert t["nested"].status == "advice" and "bare-metal" in t["nested"].text


def test_other_load_names_busy_usable_cpus_and_the_busiest_processes() -> None:
    host = HostReadings(usable_cpus=(0, 1), busy_pct={0: 5.0, 1: 80.0, 2: 100.0},
                        steal_pct={0: 0.0, 1: 7.0},
                        top_processes=(("qemu-system-x86", 4242, 79.5),), sample_s=0.5)
    t = by_topic(tuning.advise(tuned_fp(), host))
    load = t["other load"]
    assert load.status == "advice"
    assert "CPU 1 80%" in load.text and "CPU 0" not in load.text
    assert "CPU 2" not in load.text  # not usable by this process: not our problem
    assert "qemu-system-x86 (pid 4242) 80%" in load.text
    assert t["steal time"].status == "advice" and "CPU 1 (7%)" in t["steal time"].text
    unknown = HostReadings(usable_cpus=(0,), busy_pct=None)
    assert by_topic(tuning.advise(tuned_fp(), unknown))["other load"].status == "unknown"


def test_smt_siblings_among_usable_cpus() -> None:
    host = HostReadings(usable_cpus=(0, 1, 2, 3), siblings=((0, 2), (1, 3)),
                        smt_control="on", busy_pct={})
    smt = by_topic(tuning.advise(tuned_fp(), host))["SMT"]
    assert smt.status == "advice" and "0,2; 1,3" in smt.text and "--pin auto" in smt.text
    # Siblings exist, but this process may use only one CPU of each core.
    host = HostReadings(usable_cpus=(0, 1), siblings=((0, 2), (1, 3)), busy_pct={})
    assert by_topic(tuning.advise(tuned_fp(), host))["SMT"].status == "ok"
    host = HostReadings(usable_cpus=(0, 1), busy_pct={})
    assert by_topic(tuning.advise(tuned_fp(), host))["SMT"].status == "unknown"


def test_irqbalance_and_isolation() -> None:
    host = HostReadings(usable_cpus=(0, 1), irqbalance=True, busy_pct={})
    fp = tuned_fp(kernel={"cmdline": "root=/dev/sda1 quiet"})
    t = by_topic(tuning.advise(fp, host))
    assert t["irqbalance"].status == "advice"
    assert "systemctl stop irqbalance" in t["irqbalance"].text
    assert t["isolated CPUs"].status == "advice" and "isolcpus=N" in t["isolated CPUs"].text
    unknown = HostReadings(usable_cpus=(0,), irqbalance=None, busy_pct={})
    t = by_topic(tuning.advise(fp, unknown))
    assert "irqbalance" not in t and "isolated CPUs" not in t  # one CPU: nothing to isolate


def test_lines_put_advice_first_and_wrap() -> None:
    items = [Advice("a", "ok", "fine"), Advice("b", "advice", "word " * 40),
             Advice("c", "unknown", "?")]
    lines = tuning.advice_lines(items, width=60)
    assert lines[0].startswith("[advice] b: ")
    assert all(len(line) <= 60 for line in lines)
    assert [line for line in lines if not line.startswith("    ")] == [
        lines[0], "[unknown] c: ?", "[ok] a: fine"]


def test_read_host_from_a_fake_sysfs(tmp_path: Path) -> None:
    for cpu, sib in ((0, "0-1"), (1, "0-1")):
        d = tmp_path / f"sys/devices/system/cpu/cpu{cpu}/topology"
        d.mkdir(parents=True)
        (d / "thread_siblings_list").write_text(sib)
    (tmp_path / "sys/devices/system/cpu/smt").mkdir()
    (tmp_path / "sys/devices/system/cpu/smt/control").write_text("on\n")
    host = tuning.read_host(tmp_path, sample_s=0)
    assert host.siblings == ((0, 1),) and host.smt_control == "on"
    assert host.busy_pct is None and host.irqbalance is None  # not the live host


def test_read_host_samples_the_live_cpus() -> None:
    host = tuning.read_host(sample_s=0.1)
    assert host.busy_pct is not None and set(host.usable_cpus) <= set(host.busy_pct)
    assert all(0.0 <= p <= 100.0 for p in host.busy_pct.values())
    assert all(pid > 0 for _, pid, _ in host.top_processes)


def test_info_prints_the_tuning_section(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from kvmharness import cli
    from kvmharness.observe import fingerprint

    monkeypatch.setattr(fingerprint, "probe_kvm", lambda: {"status": "unavailable: test"})
    monkeypatch.setattr(tuning, "read_host", lambda: HostReadings(
        usable_cpus=(0, 1), irqbalance=True, busy_pct={0: 0.0, 1: 0.0}))
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("Tuning for stable timings:"):]
    assert "  [advice] irqbalance: running" in section
    assert all(len(line) <= 78 for line in section.splitlines())
    assert cli.main(["info", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"topic": "irqbalance", "status": "advice"}.items() <= next(
        a for a in doc["tuning"] if a["topic"] == "irqbalance").items()
