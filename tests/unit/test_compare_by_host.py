"""`compare --by host` and `--by host+variant`: each fleet host (the name `run --host`
recorded) a side, the first the baseline; its CPU model and backend in the setup lines;
the zap path per host; files without a host name refused by name."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kvmharness.compare.build import CompareError, Settings, build_report
from kvmharness.compare.render import View, format_report
from kvmharness.results.model import ResultFile, RunRecord
from tests.unit.test_tables import DATA_A, DATA_B, environment, result_file, runs_from

CPUS = {"amd1": ("AMD EPYC 7B13 64-Core Processor", "svm"),
        "intel1": ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "vmx"),
        "amd2": ("AMD EPYC 9654 96-Core Processor", "svm")}


def host_env(host: str) -> dict[str, Any]:
    env = environment("6.12.0", True)
    model, kind = CPUS[host]
    env["cpu"] = {"model": model}
    env["backend"] = {"kind": kind, "nested": False}
    env["fleet"] = {"host": host}
    return env


def zap_runs(data: dict[str, list[float]], variant: str, start: int) -> list[RunRecord]:
    runs = runs_from(data, {"zap": variant}, start=start)
    for r in runs:
        fast = 4 if variant == "all" else 0
        r.effective = {"zap_path": variant, "zap_evidence":
                       f"{fast} kvm_mmu_zap_all_fast events over 4 memslot deletes"}
    return runs


def host_file(host: str, data: dict[str, list[float]], start: int = 0) -> ResultFile:
    # Distinct run indexes per host: the same record twice would be counted once.
    runs = zap_runs(data, "all", start) + zap_runs(data, "slot", start + 100)
    return result_file("6.12.0", runs, host_env(host), f"{host}/rom-toggle.json",
                       variants=[{"zap": "all"}, {"zap": "slot"}])


def fleet_files() -> list[ResultFile]:
    return [host_file("amd1", DATA_A), host_file("intel1", DATA_B),
            host_file("amd2", DATA_A, start=1000)]


def test_hosts_are_the_sides_first_is_baseline() -> None:
    report = build_report(fleet_files(), by="host", settings=Settings(seed=1))
    pairs = [(c.context, c.a.name, c.b.name) for c in report.comparisons]
    assert pairs == [("zap=all", "amd1", "intel1"), ("zap=all", "amd1", "amd2"),
                     ("zap=slot", "amd1", "intel1"), ("zap=slot", "amd1", "amd2")]
    c = report.comparisons[0]
    assert {r.variant["zap"] for r in c.a.runs} == {"all"} and len(c.b.ok_runs) == 10
    total = next(r for r in c.rows if r.metric == "total")
    assert total.significant and total.change.ratio < 0  # DATA_B is ~5% faster
    assert report.comparisons[1].rows[0].change.ratio == 0  # the same values
    assert [d.split(":")[0] for d in c.differences] == [
        "backend.kind", "cpu.model", "fleet.host"]
    assert c.differences[0] == "backend.kind: svm -> vmx"
    text = format_report(report, "plain", View())
    for host, (model, kind) in CPUS.items():
        line = next(i for i, x in enumerate(text.splitlines()) if x.startswith(f"{host}: "))
        assert kind.upper() in text.splitlines()[line + 1]
        assert model[:20] in " ".join(text.splitlines()[line + 1:line + 3])
    assert "zap path: A all (40/40 deletes zapped all), B all (40/40), C all (40/40)" in text
    assert "zap path: A slot (0/40 deletes zapped all), B slot (0/40), C slot (0/40)" in text


def test_host_and_variant_pairs() -> None:
    report = build_report(fleet_files()[:2], by="host+variant", settings=Settings(seed=1))
    assert [c.b.name for c in report.comparisons] == [
        "amd1 zap=slot", "intel1 zap=all", "intel1 zap=slot"]
    assert {c.a.name for c in report.comparisons} == {"amd1 zap=all"}


def test_files_without_a_host_name_are_refused_by_name() -> None:
    files = fleet_files()
    bare = copy.deepcopy(files[1])
    del bare.environment["fleet"]
    with pytest.raises(CompareError, match=r"intel1/rom-toggle.json: no host name recorded"):
        build_report([files[0], bare], by="host")
    with pytest.raises(CompareError, match="every file comes from host 'amd1'"):
        build_report(files[:1], by="host")


def test_one_host_two_kernels_is_not_pooled_silently() -> None:
    files = fleet_files()
    other = copy.deepcopy(files[0])
    other.environment["kernel"]["release"] = "6.1.0"
    other.runs = zap_runs(DATA_B, "all", 2000)
    other.source = "amd1/other.json"
    with pytest.raises(CompareError, match=r"side host \(amd1\) pools files that differ in kernel.release"):
        build_report([*files, other], by="host")


def test_baseline_names_a_host() -> None:
    report = build_report(fleet_files(), by="host", settings=Settings(seed=1),
                          baseline="intel1")
    assert [(c.a.name, c.b.name) for c in report.comparisons][:2] == [
        ("intel1", "amd1"), ("intel1", "amd2")]
