"""A scenario is one declaration: this module alone defines ``throwaway-spin`` (a metric
family over counts, a pivot of its own, a figure), registers it for the test only, and
takes it through the command line: run, compare in every format, show, plot, and
``--until-ci``.  No other file in the repository knows its name, so this passing means
compare/, plot/ and session/ take everything they need from the declaration."""

from __future__ import annotations

import csv
import io
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmharness import cli
from kvmharness.cli import common as cli_common
from kvmharness.results.store import load_result
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import (
    ZAP_AXIS,
    Metric,
    Parameter,
    RunOutcome,
    RunRequest,
    ScenarioSpec,
)
from kvmharness.scenarios.metrics import COUNT, MetricFamily
from kvmharness.scenarios.presentation import Curves, Pivot

NAME = "throwaway-spin"
ENV = {"kernel": {"release": "6.12.0-test"}, "backend": {"kind": "svm", "nested": False}}
COUNTS = (1, 4, 16)
SPEEDUP = 0.6  # zap=slot spins take 60% of zap=all's


RNG = random.Random(0)


def run_spin(req: RunRequest) -> RunOutcome:
    """Spin time grows with the spinners; zap=slot is faster; pokes are 20/200 ns."""
    rng = RNG
    o = RunOutcome()
    factor = 1.0 if req.variant["zap"] == "all" else SPEEDUP
    for _ in range(req.iterations):
        for count in map(int, str(req.params["spinners"]).split(",")):
            o.add(f"spin@{count}", rng.gauss(100.0 * count * factor, 0.5))
        o.add("poke_fast", rng.gauss(20.0, 0.1))
        o.add("poke_slow", rng.gauss(200.0, 0.5))
    o.effective["zap_requested"] = o.effective["zap_path"] = req.variant["zap"]
    o.effective["zap_evidence"] = "declared by the throwaway scenario"
    o.end_time = o.start_time
    return o


SPEC = ScenarioSpec(
    name=NAME,
    summary="spinners that contend (a scenario that exists only in this test)",
    parameters=(Parameter("spinners", "count: comma list", "1,4,16", "1,4,16",
                          "spinner counts", type=str),),
    metrics=(MetricFamily.of("spin", COUNT, "us", "lower", "one spin round"),
             Metric("poke_fast", "ns", "lower", "a poke on the fast path"),
             Metric("poke_slow", "ns", "lower", "a poke on the slow path")),
    variant_axes=(ZAP_AXIS,),
    run=run_spin,
    headline=(f"spin@{COUNT.slot}", "poke_fast", "poke_slow"),
    default_iterations=3,
    default_warmup=0,
    pivot=Pivot(suffixes=("fast", "slow")),
    figure=Curves("throwaway-spin: spin round vs spinners", xlabel="spinners",
                  families=(f"spin@{COUNT.slot}",)),
)


@pytest.fixture
def kh(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
       ) -> Callable[..., str]:
    """``kh(*argv)``: the command line with SPEC registered beside the real scenarios;
    returns stdout, asserting exit 0."""
    real = registry.all_scenarios
    monkeypatch.setattr(registry, "all_scenarios", lambda: {**real(), NAME: SPEC})
    monkeypatch.setattr(cli_common, "collect_fingerprint", lambda: dict(ENV))
    monkeypatch.setattr(cli_common, "kvm_access_problem", lambda: None)

    def do(*argv: str) -> str:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    return do


def run_once(kh: Callable[..., str], out: Path, *extra: str) -> Path:
    kh("run", NAME, "--quick", "--variant", "zap=all,slot", "--out", str(out), *extra)
    (path,) = out.glob("*.json")
    return path


def test_run_compare_show(kh: Callable[..., str], tmp_path: Path) -> None:
    path = run_once(kh, tmp_path, "--repeat", "6")
    assert load_result(path).scenario["name"] == NAME

    # The declared pivot: one grid, rows spin (the family) and poke (the suffixes), columns
    # the counts, then fast and slow; spin's changes significant, marked '*' (better).
    plain = kh("compare", str(path))
    lines = plain.splitlines()
    assert "family of 5 tests" in " ".join(plain.split()), plain  # 3 spin + 2 poke
    for fmt_text in (plain, kh("compare", str(path), "--format", "markdown")):
        header = next(line.split() for line in fmt_text.splitlines()
                      if line.split()[:3] == ["1", "4", "16"])
        assert header[3:5] == ["fast"] + (["slow"] if len(header) > 4 else []), header
        spin = next(line for line in fmt_text.splitlines() if "spin [us]" in line)
        assert spin.split()[-1] == "-"  # no spin@fast or spin@slow
        b_spin = fmt_text.splitlines()[fmt_text.splitlines().index(spin) + 1]
        assert b_spin.count("*") == len(COUNTS), b_spin
    assert any(line.startswith("poke [ns]") for line in lines), plain

    rows = list(csv.DictReader(io.StringIO(kh("compare", str(path), "--format", "csv"))))
    by_metric = {r["metric"]: r for r in rows}
    assert set(by_metric) == {f"spin@{c}" for c in COUNTS} | {"poke_fast", "poke_slow"}
    for c in COUNTS:
        assert float(by_metric[f"spin@{c}"]["change"]) == pytest.approx(SPEEDUP - 1, abs=0.02)

    cover = kh("compare", str(path), "--format", "cover-letter")
    for c in COUNTS:
        assert re.search(rf"spin@{c}: +Before: .* \(-[34]\d\.\d%\)", cover), cover
    assert re.search(r"poke_fast: +Before: .* \(~\)", cover), cover
    shown = kh("show", str(path)).splitlines()
    header = next(line.split() for line in shown if line.startswith("median"))
    assert header == ["median", "variant", "1", "4", "16", "fast", "slow"]


def test_plot_draws_the_declared_figure(kh: Callable[..., str], tmp_path: Path) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if (os.environ.get("KVMHARNESS_REQUIRE_KVM") == "1"
                and not os.environ.get("KVMHARNESS_VNG_KERNEL")):
            raise
        pytest.skip("matplotlib missing: pip install 'kvmharness[plot]'")
    path = run_once(kh, tmp_path / "runs", "--repeat", "3")
    figure = tmp_path / "spin.svg"
    assert kh("plot", str(path), "--out", str(figure)).strip() == str(figure)
    svg = figure.read_text()
    # matplotlib writes text as paths, with the string in a comment beside each.
    assert "<!-- throwaway-spin: spin round vs spinners" in svg, svg[:2000]
    assert "<!-- spinners -->" in svg


def test_until_ci_stops_on_the_declared_headline(kh: Callable[..., str],
                                                 tmp_path: Path) -> None:
    path = run_once(kh, tmp_path, "--until-ci", "5")
    result = load_result(path)
    state = result.ok_runs()[-1].effective["until_ci"]
    assert state["stop"] == "precise" and state["rounds"] == 6
    assert state["widest"]["metric"] in {f"spin@{c}" for c in COUNTS} | {"poke_fast",
                                                                        "poke_slow"}
