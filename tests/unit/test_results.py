"""Result files: building from RunOutcome, atomic writes, validation, sessions, fingerprint."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmharness.observe import fingerprint, noise
from kvmharness.results import model
from kvmharness.results.store import (
    atomic_write_json,
    default_result_path,
    load_result,
)
from kvmharness.results.validate import ResultFormatError, parse_result
from kvmharness.scenarios.base import (
    ZAP_AXIS,
    RunOutcome,
    RunRequest,
    ScenarioSpec,
    VariantAxis,
    VariantUnsupported,
)
from kvmharness.session import SessionPlan, expand_variants, run_session

ENV = {"kernel": {"release": "6.12.0-test"}, "backend": {"kind": "svm", "nested": False}}


SpecFactory = Callable[..., ScenarioSpec]  # the fake_spec fixture (tests/unit/conftest.py)
Document = Callable[[Path], tuple[Path, dict[str, Any]]]


def steady_run(req: RunRequest) -> RunOutcome:
    o = RunOutcome()
    o.add("total", 10.0, warmup=True)
    for i in range(req.iterations):
        o.add("total", 1.0 + i)
    o.kvm_stats["vm"] = {"remote_tlb_flush": 2}
    o.tracepoints["kvmmmu"] = {"kvm_mmu_zap_all_fast": 1}
    o.end_time = o.start_time + 0.1
    return o


def plan(spec: ScenarioSpec, repeat: int = 2) -> SessionPlan:
    return SessionPlan(spec=spec, params={"pages": 10}, variants=expand_variants(spec),
                       repeat=repeat, iterations=3, warmup=1, label="test", quick=True)


@pytest.fixture
def sample_document(fake_spec: SpecFactory) -> Document:
    def make(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
        path = tmp_path / "r.json"
        session = run_session(plan(fake_spec(steady_run)), path, ENV)
        assert not session.interrupted
        return path, json.loads(path.read_text())

    return make


# --- model -----------------------------------------------------------------------------


def test_run_record_from_outcome_keeps_raw_samples_units_and_directions(
        fake_spec: SpecFactory) -> None:
    o = RunOutcome()
    o.add("total", 5.0, warmup=True)
    for v in (3.0, 1.0, 2.0):
        o.add("total", v)
    o.add("mystery", 1.0)
    o.add("total", float("nan"))
    o.noise["scenario_note"] = 1
    r = model.RunRecord.from_outcome(o, fake_spec(steady_run), index=0, repeat=0,
                                     variant={"zap": "all"}, host_noise={"wall_s": 0.5})
    assert r.samples["total"].values == [3.0, 1.0, 2.0]
    assert (r.samples["total"].unit, r.samples["total"].direction) == ("ms", "lower")
    assert r.warmups == {"total": [5.0]}
    assert r.value("total") == 2.0  # median of measured iterations, warmup excluded
    assert r.noise == {"scenario_note": 1, "wall_s": 0.5}
    assert any("mystery" in w for w in r.warnings)
    assert any("non-finite" in w for w in r.warnings)


def test_round_trip(sample_document: Document, tmp_path: Path) -> None:
    path, doc = sample_document(tmp_path)
    result = load_result(path)
    assert result.status == "complete"
    assert result.to_json() == doc
    assert result.source == str(path)
    assert [r.variant["zap"] for r in result.runs] == ["all", "slot", "all", "slot"]
    assert doc["format"] == model.FORMAT and doc["schema_version"] == model.SCHEMA_VERSION
    run = doc["runs"][0]
    assert run["samples"]["total"] == {"unit": "ms", "direction": "lower",
                                       "values": [1.0, 2.0, 3.0]}
    assert run["warmups"] == {"total": [10.0]}
    assert run["kvm_stats"] == {"vm": {"remote_tlb_flush": 2}}
    assert run["tracepoints"] == {"kvmmmu": {"kvm_mmu_zap_all_fast": 1}}
    for key in ("wall_s", "steal_pct", "others_busy_cpus", "cpu_mhz_before", "cpu_mhz_after",
                "loadavg_1m_before"):
        assert key in run["noise"]
    assert doc["scenario"]["metrics"][0]["direction"] == "lower"
    assert doc["environment"] == ENV


# --- atomic writes ---------------------------------------------------------------------


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.json"
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(ValueError):
        atomic_write_json(path, {"a": float("nan")})  # NaN is not JSON
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["x.json"]
    assert (path.stat().st_mode & 0o777) == 0o644


def test_default_result_path_never_reuses_a_name(tmp_path: Path) -> None:
    first = default_result_path(tmp_path, "rom toggle", "6.1/x")
    assert first.name.startswith("rom_toggle-6.1_x-") and first.suffix == ".json"
    first.write_text("{}")
    second = default_result_path(tmp_path, "rom toggle", "6.1/x", when=None)
    assert second != first


# --- validation ------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(text)
    return p


def test_truncated_file_is_rejected(sample_document: Document, tmp_path: Path) -> None:
    path, _ = sample_document(tmp_path)
    text = path.read_text()
    bad = _write(tmp_path, text[: len(text) // 2])
    with pytest.raises(ResultFormatError, match=r"bad\.json: not valid JSON \(truncated\?\)"):
        load_result(bad)


@pytest.mark.parametrize("text,message", [
    ("", "empty file"),
    ("[1, 2]", r"\$: expected an object, got list"),
    ('{"format": "pyperf"}', "not a kvmharness result file"),
    ("{not json", "not valid JSON"),
])
def test_malformed_files_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ResultFormatError, match=message):
        load_result(_write(tmp_path, text))


def test_future_version_is_rejected_with_a_clear_message(sample_document: Document,
                                                         tmp_path: Path) -> None:
    _, doc = sample_document(tmp_path)
    doc["schema_version"] = model.SCHEMA_VERSION + 1
    with pytest.raises(ResultFormatError, match="newer kvmharness.*upgrade"):
        load_result(_write(tmp_path, json.dumps(doc)))


@pytest.mark.parametrize("mutate,where", [
    (lambda d: d.pop("runs"), "missing required field 'runs'"),
    (lambda d: d.update(schema_version="1"), "schema_version: expected an integer"),
    (lambda d: d.update(status="done"), "status: expected one of"),
    (lambda d: d["runs"][1]["samples"]["total"]["values"].append("x"),
     r"runs\[1\]\.samples\.total\.values\[3\]: expected a number, got str"),
    (lambda d: d["runs"][0]["samples"]["total"].update(direction="up"),
     r"runs\[0\]\.samples\.total\.direction"),
    (lambda d: d["runs"][0]["kvm_stats"]["vm"].update(x=1.5),
     r"runs\[0\]\.kvm_stats\.vm\.x: expected an integer"),
    (lambda d: d["runs"][0].pop("start_time"), r"runs\[0\]: missing required field"),
    (lambda d: d["scenario"]["metrics"][0].pop("unit"), r"scenario\.metrics\[0\]"),
    (lambda d: d["variants"][0].update(zap=1), r"variants\[0\]\.zap: expected a string"),
])
def test_invalid_fields_are_named(sample_document: Document, tmp_path: Path, mutate: Any,
                                  where: str) -> None:
    _, doc = sample_document(tmp_path)
    mutate(doc)
    with pytest.raises(ResultFormatError, match=where):
        parse_result(doc, "x.json")


def test_nan_in_a_file_is_rejected(sample_document: Document, tmp_path: Path) -> None:
    _, doc = sample_document(tmp_path)
    doc["runs"][0]["samples"]["total"]["values"][0] = float("nan")
    bad = _write(tmp_path, json.dumps(doc))  # Python writes the non-JSON token NaN
    with pytest.raises(ResultFormatError, match=r"values\[0\]: expected a finite number"):
        load_result(bad)


# --- sessions --------------------------------------------------------------------------


def test_session_interleaves_variants_and_writes_after_each_run(fake_spec: SpecFactory,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    seen: list[tuple[str, int]] = []

    def run(req: RunRequest) -> RunOutcome:
        if seen:  # the previous run is already on disk
            assert len(load_result(path).runs) == len(seen)
        seen.append((req.variant["zap"], req.iterations))
        o = RunOutcome()
        o.add("total", 1.0)
        return o

    messages: list[str] = []
    session = run_session(plan(fake_spec(run), repeat=3), path, ENV, progress=messages.append)
    assert [v for v, _ in seen] == ["all", "slot"] * 3
    assert len(session.result.runs) == 6
    assert load_result(path).status == "complete"
    assert any("[6/6]" in m for m in messages)


def test_unsupported_variant_is_skipped_once_with_its_reason(fake_spec: SpecFactory,
                                                             tmp_path: Path) -> None:
    calls: list[str] = []

    def run(req: RunRequest) -> RunOutcome:
        calls.append(req.variant["zap"])
        if req.variant["zap"] == "slot":
            raise VariantUnsupported("KVM_CAP_DISABLE_QUIRKS2 lacks SLOT_ZAP_ALL")
        o = RunOutcome()
        o.add("total", 1.0)
        return o

    session = run_session(plan(fake_spec(run), repeat=3), tmp_path / "r.json", ENV)
    assert calls == ["all", "slot", "all", "all"]
    result = load_result(tmp_path / "r.json")
    skipped = [r for r in result.runs if r.status == "skipped"]
    assert len(skipped) == 1 and "SLOT_ZAP_ALL" in (skipped[0].reason or "")
    assert len(result.ok_runs()) == 3
    assert any("skipped" in w for w in result.warnings)
    assert session.failed_runs == 0


def test_failing_runs_are_recorded_and_a_hopeless_variant_dropped(fake_spec: SpecFactory,
                                                                  tmp_path: Path) -> None:
    def run(req: RunRequest) -> RunOutcome:
        if req.variant["zap"] == "slot":
            raise OSError(5, "Input/output error")
        o = RunOutcome()
        o.add("total", 1.0)
        return o

    session = run_session(plan(fake_spec(run), repeat=5), tmp_path / "r.json", ENV)
    result = load_result(tmp_path / "r.json")
    failed = [r for r in result.runs if r.status == "failed"]
    assert len(failed) == 3 and "Input/output error" in (failed[0].reason or "")
    assert len(result.ok_runs()) == 5
    assert session.failed_runs == 3


def test_interrupt_keeps_completed_runs(fake_spec: SpecFactory, tmp_path: Path) -> None:
    count = 0

    def run(req: RunRequest) -> RunOutcome:
        nonlocal count
        count += 1
        if count == 3:
            raise KeyboardInterrupt
        o = RunOutcome()
        o.add("total", float(count))
        return o

    session = run_session(plan(fake_spec(run), repeat=4), tmp_path / "r.json", ENV)
    assert session.interrupted
    result = load_result(tmp_path / "r.json")
    assert result.status == "interrupted" and len(result.runs) == 2


def test_expand_variants(fake_spec: SpecFactory) -> None:
    spec = fake_spec(steady_run)
    assert expand_variants(spec) == [{"zap": "all"}, {"zap": "slot"}]
    assert expand_variants(spec, {"zap": ["slot"]}) == [{"zap": "slot"}]
    two = ScenarioSpec("x", "", (), (), (ZAP_AXIS, VariantAxis("mem", ("4k", "2m"), "")),
                       spec.run)
    assert len(expand_variants(two)) == 4
    with pytest.raises(ValueError, match="no value 'some'"):
        expand_variants(spec, {"zap": ["some"]})
    with pytest.raises(ValueError, match="no variant axis 'tlb'"):
        expand_variants(spec, {"tlb": ["x"]})


# --- fingerprint and noise -------------------------------------------------------------


def fake_root(tmp_path: Path, *, flags: str, modules: dict[str, dict[str, str]],
              tracing: bool = False) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/cpuinfo").write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\n"
        f"microcode\t: 0x2b\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n")
    (root / "proc/cmdline").write_text("quiet\n")
    thp = root / "sys/kernel/mm/transparent_hugepage"
    thp.mkdir(parents=True)
    (thp / "enabled").write_text("always [madvise] never\n")
    for name, params in modules.items():
        d = root / "sys/module" / name / "parameters"
        d.mkdir(parents=True)
        for k, v in params.items():
            (d / k).write_text(v + "\n")
    if tracing:
        (root / "sys/kernel/tracing/events/kvmmmu").mkdir(parents=True)
        (root / "sys/kernel/tracing/events/enable").write_text("0\n")
        (root / "sys/kernel/tracing/trace").write_text("")
    return root


def test_fingerprint_pvm_host(tmp_path: Path) -> None:
    root = fake_root(tmp_path, flags="hypervisor",
                     modules={"kvm": {"tdp_mmu": "N", "mmio_caching": "Y"}, "kvm_pvm": {}})
    fp = fingerprint.collect({"status": "unavailable: test"}, root=root)
    json.dumps(fp)  # JSON-ready
    assert fp["backend"] == {"kind": "pvm", "emulated": True, "nested": True, "dev_kvm": False}
    assert fp["cpu"]["microcode"] == "0x2b" and fp["cpu"]["model"] == "Test CPU"
    assert fp["thp"]["enabled"] == "madvise"
    assert fp["kvm_modules"]["kvm"] == {"tdp_mmu": "N", "mmio_caching": "Y"}
    assert fp["tracefs"]["status"] == "not mounted"
    assert fp["cpufreq"]["governor"].startswith("unavailable")
    text = "\n".join(fingerprint.statements(fp))
    assert "PVM: guest code is emulated; zap costs are not those of VT-x/AMD-V" in text
    assert "SLOT_ZAP_ALL quirk: unknown" in text
    assert "tracefs: not mounted" in text
    assert "TDP MMU (kvm.tdp_mmu): off" in text


def test_fingerprint_vmx_host_with_quirk(tmp_path: Path) -> None:
    root = fake_root(tmp_path, flags="vmx", tracing=True,
                     modules={"kvm": {"tdp_mmu": "Y"}, "kvm_intel": {"ept": "Y"}})
    probe = {"status": "ok", "capabilities": {"KVM_CAP_BINARY_STATS_FD": 1},
             "disable_quirks2_mask": 0xFF, "quirks": {"SLOT_ZAP_ALL": True}}
    fp = fingerprint.collect(lambda: probe, root=root)
    assert fp["backend"]["kind"] == "vmx" and not fp["backend"]["nested"]
    assert fp["tracefs"]["kvmmmu_events"] is True
    text = "\n".join(fingerprint.statements(fp))
    assert "VMX (Intel VT-x): EPT=Y" in text
    assert "SLOT_ZAP_ALL quirk: supported" in text
    probe["quirks"] = {"SLOT_ZAP_ALL": False}
    assert "SLOT_ZAP_ALL quirk: not supported" in "\n".join(
        fingerprint.statements(fingerprint.collect(probe, root=root)))


def test_fingerprint_survives_a_failing_probe(tmp_path: Path) -> None:
    def broken() -> dict[str, Any]:
        raise PermissionError(13, "Permission denied", "/dev/kvm")

    fp = fingerprint.collect(broken, root=fake_root(tmp_path, flags="svm", modules={}))
    assert fp["kvm"]["status"].startswith("unavailable: PermissionError")
    assert fp["backend"]["kind"] == "svm"


def test_harness_identity_reports_git_commit_of_a_checkout(tmp_path: Path) -> None:
    ident = fingerprint.harness_identity(tmp_path)  # not a checkout
    assert ident["git_commit"] is None and ident["version"]


def test_noise_delta_has_the_documented_keys() -> None:
    before = noise.snapshot()
    after = noise.NoiseSnapshot(before.monotonic + 1.0, before.loadavg_1m,
                                before.cpu_total_s + 2.0, before.cpu_idle_s + 1.0,
                                before.cpu_steal_s + 0.1, before.self_cpu_s + 0.4, 2000.0)
    d = noise.delta(before, after)
    assert d["wall_s"] == pytest.approx(1.0)
    assert d["steal_pct"] == pytest.approx(5.0)
    assert d["others_busy_cpus"] == pytest.approx(0.5)  # busy 0.9 minus our 0.4
    assert d["cpu_mhz_after"] == 2000.0
    short = noise.delta(before, noise.snapshot())
    assert short["others_busy_cpus"] is None  # too short a window to mean anything


@pytest.mark.parametrize("value,message", [
    ("1" + "0" * 400, "expected a finite number"),  # an int no float can hold
    ("1" * 5000, "not a usable JSON document"),     # past Python's int-parsing limit
])
def test_huge_numbers_are_rejected_not_a_traceback(sample_document: Document, tmp_path: Path,
                                                   value: str, message: str) -> None:
    _, doc = sample_document(tmp_path)
    doc["runs"][0]["samples"]["total"]["values"][0] = 0.123456789
    text = json.dumps(doc).replace("0.123456789", value, 1)
    with pytest.raises(ResultFormatError, match=message):
        load_result(_write(tmp_path, text))


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["runs"][0]["samples"]["total"].update(unit="s"),
     r"x\.json: runs\[0\] \(run 1, zap=all\): metric 'total' is in 's' but the scenario "
     r"declares 'ms'"),
    (lambda d: d["runs"][1]["samples"]["total"]["values"].__setitem__(0, -2.5),
     r"x\.json: runs\[1\] \(run 2, .*\): metric 'total': negative value -2\.5 ms \(a time"),
    (lambda d: d["runs"][0]["samples"]["total"]["values"].__setitem__(0, 1e300),
     r"metric 'total': absurd value 1e\+300 ms \(longer than a year"),
])
def test_values_a_run_cannot_have_are_named(sample_document: Document, tmp_path: Path,
                                            mutate: Any, message: str) -> None:
    _, doc = sample_document(tmp_path)
    mutate(doc)
    with pytest.raises(ResultFormatError, match=message):
        parse_result(doc, "x.json")


def test_files_declare_their_headline(sample_document: Document, tmp_path: Path) -> None:
    _, doc = sample_document(tmp_path)
    assert doc["scenario"]["headline"] == [m["name"] for m in doc["scenario"]["metrics"]]


def test_schema_1_files_still_load_and_new_files_carry_stat_types() -> None:
    from kvmharness.results.store import load_result

    old = Path(__file__).parents[2] / "results/examples/ab-6.1-vs-6.12/r1-6.12"
    (path,) = old.glob("slot-ops-*.json")
    f = load_result(path)
    assert f.schema_version == 1 and f.runs[0].kvm_stat_types == {}
    doc = f.to_json()
    doc["schema_version"] = model.SCHEMA_VERSION
    doc["runs"][0]["kvm_stat_types"] = {"vm.pages_4k": "instant"}
    assert parse_result(doc, "x.json").runs[0].kvm_stat_types == {"vm.pages_4k": "instant"}
    doc["runs"][0]["kvm_stat_types"] = {"vm.pages_4k": "gauge"}
    with pytest.raises(ResultFormatError, match="kvm_stat_types"):
        parse_result(doc, "x.json")
