"""Metric families (``create@<size>``, ``create@<count>``): one declaration type, read back
from result files by the until-ci rule, compare and validation alike.  slot-scale (whose
families are counts) compares and stops on its headline metrics, with its declaration and
a fake run in place of the guest."""

from __future__ import annotations

import csv
import dataclasses
import io
import random
from pathlib import Path

import pytest

from kvmharness.compare.build import build_report
from kvmharness.compare.render import format_report
from kvmharness.results.store import load_result
from kvmharness.results.validate import declared_unit
from kvmharness.scenarios import slot_scale
from kvmharness.scenarios.base import RunOutcome, RunRequest, ScenarioSpec
from kvmharness.scenarios.metrics import (
    COUNT,
    SIZE,
    MetricFamily,
    expand,
    keys_present,
    point_of,
)
from kvmharness.session import SessionPlan, run_session
from kvmharness.session.until_ci import UntilCi

ENV = {"kernel": {"release": "6.12.0-test"}, "backend": {"kind": "svm", "nested": False}}


def test_a_label_belongs_to_one_key_kind() -> None:
    sized = MetricFamily.of("create", SIZE, "us", "lower", "")
    counted = MetricFamily.of("create", COUNT, "us", "lower", "")
    assert sized.name == "create@<size>" and counted.name == "create@<count>"
    assert sized.label_of("create@4K") == "4K" and counted.label_of("create@4K") is None
    assert counted.label_of("create@4096") == "4096" and sized.label_of("create@4096") is None
    for not_a_point in ("create@3K", "create@04", "create@", "delete@4K", "create"):
        assert sized.label_of(not_a_point) is None
        assert counted.label_of(not_a_point) is None
    assert point_of("move@16", ["move@<count>", "move@<size>"]) == ("move@<count>", COUNT, "16")
    assert point_of("move@1M", ["move@<count>", "move@<size>"]) == ("move@<size>", SIZE, "1M")


def test_expansion_keeps_declared_order_and_orders_keys_by_value() -> None:
    present = ["delete@64", "create@1024", "create@64", "create@1G", "steady_pass"]
    assert expand(["create@<count>", "steady_pass", "delete@<count>"], present) == [
        "create@1024", "create@64", "steady_pass", "delete@64"]
    assert keys_present("create@<count>", present) == [(64, "64"), (1024, "1024")]
    assert keys_present("create@<size>", present) == [(1 << 30, "1G")]


def fake_slot_scale(seed: int = 0) -> ScenarioSpec:
    """slot-scale's declaration with a run that reports every declared metric at each
    count: zap=slot's deletes 30% faster than zap=all's, 1% noise."""
    rng = random.Random(seed)

    def run(req: RunRequest) -> RunOutcome:
        o = RunOutcome()
        counts = slot_scale.CountList(req.params["counts"]).counts
        factor = 1.0 if req.variant["zap"] == "all" else 0.7
        for name in slot_scale.SPEC.metric_names([str(c) for c in counts]):
            stem, _, count = name.partition("@")
            scale = factor if stem.startswith("delete") else 1.0
            base = 10.0 * (1 + int(count or "1") / 64) * scale
            for _ in range(req.iterations):
                o.add(name, rng.gauss(base, base * 0.01))
        o.effective["zap_requested"] = req.variant["zap"]
        o.effective["zap_path"] = req.variant["zap"]
        o.effective["zap_evidence"] = "fake"
        o.end_time = o.start_time
        return o

    return dataclasses.replace(slot_scale.SPEC, run=run)


def test_slot_scale_compares_its_count_families(tmp_path: Path) -> None:
    plan = SessionPlan.resolve(fake_slot_scale(), quick=True, repeat=6, label="t")
    session = run_session(plan, tmp_path / "r.json", ENV)
    assert session.path is not None
    result = load_result(session.path)
    assert declared_unit(result.scenario, "create@16") == "us"
    assert declared_unit(result.scenario, "delete_pf_fixed@64") == "faults"
    report = build_report([result])
    rows = {r.metric: r for c in report.comparisons for r in c.rows}
    counts = slot_scale.CountList(plan.params["counts"]).counts
    headline = [f"{op}@{c}" for op in ("create", "move", "delete", "delete_pf_fixed")
                for c in counts]
    assert sorted(rows) == sorted(headline)
    assert report.tests == len(headline)
    assert all(rows[f"delete@{c}"].change.ratio == pytest.approx(-0.3, abs=0.03)
               for c in counts)
    plain = format_report(report, "plain")
    assert "no metric has values on both sides" not in plain
    csv_rows = list(csv.DictReader(io.StringIO(format_report(report, "csv"))))
    assert {r["metric"] for r in csv_rows} == set(headline)
    for fmt in ("markdown", "cover-letter"):
        assert "delete" in format_report(report, fmt)


def test_until_ci_names_slot_scale_metrics(tmp_path: Path) -> None:
    plan = SessionPlan.resolve(fake_slot_scale(), quick=True, repeat=6, label="t",
                               until_ci=UntilCi(0.05))
    messages: list[str] = []
    session = run_session(plan, tmp_path / "r.json", ENV, progress=messages.append)
    assert session.path is not None
    result = load_result(session.path)
    state = result.ok_runs()[-1].effective["until_ci"]
    assert state["stop"] == "precise" and state["rounds"] == 6
    assert point_of(state["widest"]["metric"], slot_scale.SPEC.precision_metrics())
    assert any("precise after 6 runs per variant" in m and "widest: " in m
               for m in messages), messages
