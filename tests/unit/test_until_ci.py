"""--until-ci: the precision rule (order-statistic CI of each headline metric's median) and
the session loop that adds interleaved rounds until it holds or time is up; the spread
line `run` prints; pinning passed down and recorded."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmharness.compare import stats
from kvmharness.results.model import ResultFile, RunRecord
from kvmharness.results.store import load_result
from kvmharness.scenarios.base import (
    ZAP_AXIS,
    Metric,
    RunOutcome,
    RunRequest,
    ScenarioSpec,
    VariantUnsupported,
)
from kvmharness.scenarios.metrics import expand
from kvmharness.session import SessionPlan, run_session, until_ci
from kvmharness.session.until_ci import UntilCi

ENV = {"kernel": {"release": "6.12.0-test"}, "backend": {"kind": "svm", "nested": False}}


class FakeClock:
    """Session time that advances only when a fake run says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(until_ci, "monotonic", c)
    return c


def spec_of(values: Callable[[str, int], float], clock: FakeClock | None = None,
            run_s: float = 1.0, headline: tuple[str, ...] = ("total",),
            requests: list[RunRequest] | None = None) -> ScenarioSpec:
    """A scenario whose n-th run of a variant reports total = values(variant, n)."""
    counts: dict[str, itertools.count[int]] = {}

    def run(req: RunRequest) -> RunOutcome:
        if requests is not None:
            requests.append(req)
        zap = req.variant["zap"]
        n = next(counts.setdefault(zap, itertools.count()))
        if clock is not None:
            clock.now += run_s
        o = RunOutcome()
        o.add("total", values(zap, n))
        o.add("noisy", 1.0 + n % 2)  # not a headline metric: never holds the loop up
        o.end_time = o.start_time
        return o

    return ScenarioSpec(name="fake", summary="", parameters=(),
                        metrics=(Metric("total", "ms", "lower", ""),
                                 Metric("noisy", "ms", "lower", "")),
                        variant_axes=(ZAP_AXIS,), run=run, headline=headline,
                        default_iterations=1, default_warmup=0)


def run(spec: ScenarioSpec, tmp_path: Path, rule: UntilCi, repeat: int | None = None,
        messages: list[str] | None = None) -> ResultFile:
    plan = SessionPlan.resolve(spec, until_ci=rule, repeat=repeat, label="t")
    session = run_session(plan, tmp_path / "r.json", ENV,
                          progress=(messages if messages is not None else []).append)
    assert session.path is not None
    return load_result(session.path)


def per_variant(result: ResultFile) -> dict[str, int]:
    return {v["zap"]: len(result.ok_runs(v)) for v in result.variants}


# --- the interval ----------------------------------------------------------------------


def test_six_runs_are_the_fewest_with_a_95_percent_interval() -> None:
    assert stats.median_ci_ranks(5)[2] == pytest.approx(1 - 2 / 32)  # 93.75%
    assert stats.median_ci_ranks(6) == (1, 6, pytest.approx(1 - 2 / 64))
    assert stats.median_ci_ranks(9)[:2] == (2, 8)
    assert until_ci.MIN_RUNS == 6
    with pytest.raises(ValueError, match="at least 6 runs"):
        UntilCi(0.05, min_runs=5)


def test_rule_parameters_are_checked() -> None:
    assert until_ci.parse_percent("5") == pytest.approx(0.05)
    assert until_ci.parse_percent("2.5%") == pytest.approx(0.025)
    for bad in ("0", "100", "-1", "x"):
        with pytest.raises(ValueError, match="--until-ci"):
            until_ci.parse_percent(bad)
    with pytest.raises(ValueError, match="--max-time must be > 0"):
        UntilCi(0.05, max_time_s=0)


def test_headline_families_match_every_point_present() -> None:
    present = ["create@4K", "delete@4K", "create@1G", "refault", "create@16", "move@16"]
    assert expand(("create@<size>", "refault", "absent"), present) == [
        "create@4K", "create@1G", "refault"]
    assert expand(("create@<count>",), present) == ["create@16"]


def _result(values: dict[str, list[float]]) -> ResultFile:
    spec = spec_of(lambda z, n: 0.0)
    r = ResultFile(scenario={"name": "fake"}, parameters={}, quick=True, label="t",
                   variants=[{"zap": z} for z in values], repeat=1, iterations=1, warmup=0,
                   environment={})
    for zap, vs in values.items():
        for v in vs:
            o = RunOutcome()
            o.add("total", v)
            r.runs.append(RunRecord.from_outcome(o, spec, index=len(r.runs), repeat=0,
                                                 variant={"zap": zap}))
    return r


def test_assess_reports_relative_half_width_of_the_median_ci() -> None:
    r = _result({"all": [100, 100, 100, 104, 97, 100], "slot": [0.0] * 6})
    by = {a.variant: a for a in until_ci.assess(r, ("total",))}
    assert by["zap=all"].median == 100
    assert (by["zap=all"].ci_low, by["zap=all"].ci_high) == (97, 104)
    assert by["zap=all"].half_width == pytest.approx(0.04)
    assert by["zap=all"].precise(0.05, 0.95) and not by["zap=all"].precise(0.03, 0.95)
    assert by["zap=slot"].half_width == 0.0  # a constant zero (no faults) is precise
    five = until_ci.assess(_result({"all": [100.0] * 5}), ("total",))[0]
    assert five.half_width == 0.0 and not five.precise(0.05, 0.95)  # coverage 93.75%
    zero_median = until_ci.assess(_result({"all": [0, 0, 0, 0, 1, 1]}), ("total",))[0]
    assert zero_median.half_width is None and not zero_median.precise(0.5, 0.95)
    assert until_ci.widest([by["zap=slot"], zero_median, by["zap=all"]]) is zero_median


def test_spread_line_names_each_noisy_headline_metric_once() -> None:
    r = _result({"all": [100, 130, 70, 100], "slot": [100, 101, 99, 100]})
    found = until_ci.spread_too_high(r, ("total",))
    assert [(m, v) for m, v, _ in found] == [("total", "zap=all")]
    line = until_ci.spread_line(found)
    assert line is not None and "\n" not in line
    assert "total (zap=all) 24%" in line and "CoV > 10%" in line
    assert "too high to trust one run" in line and "as far as their 95% CI" in line
    assert until_ci.spread_line(until_ci.spread_too_high(r, ("other",))) is None


def test_runs_to_reach_follows_the_square_root_law_on_skewed_values() -> None:
    """The estimate checked against what that many runs then give: draws from a floor
    with an exponential tail (the shape of a run time disturbed by other load), the
    estimate made from the first 100, then the half-width of a fresh sample of the size
    it names, over 40 seeds."""
    import random

    def half_width(values: list[float]) -> float:
        med, low, high, _ = stats.median_ci(values)
        return max(med - low, high - med) / med

    def draw(rng: random.Random, n: int) -> list[float]:
        return [150 * (1 + rng.expovariate(4.0)) for _ in range(n)]

    ratios = []
    for seed in range(40):
        rng = random.Random(seed)
        first = until_ci.MetricPrecision("v", "total", 100, None, None, None, 0.95,
                                         half_width(draw(rng, 100)))
        needed = until_ci.runs_to_reach(first, 0.03)
        assert needed is not None and needed > 100
        ratios.append(half_width(draw(rng, needed)) / 0.03)
    ratios.sort()
    assert 0.8 <= ratios[20] <= 1.2  # unbiased: the target is reached about half the time
    assert ratios[4] >= 0.5 and ratios[-5] <= 1.6  # 80% of estimates within 0.5-1.6x


def test_runs_to_reach_says_nothing_it_cannot_know() -> None:
    def at(n: int, width: float | None) -> until_ci.MetricPrecision:
        return until_ci.MetricPrecision("v", "total", n, 1.0, None, None, 0.95, width)

    assert until_ci.runs_to_reach(at(5, 0.5), 0.05) is None  # no 95% interval yet
    assert until_ci.runs_to_reach(at(20, None), 0.05) is None
    assert until_ci.runs_to_reach(at(20, 0.04), 0.05) is None  # already there
    assert until_ci.runs_to_reach(at(20, 0.10), 0.05) == 80
    assert [until_ci.duration_text(s) for s in (45, 720, 12_600, 400_000)] == [
        "45 s", "12 min", "3.5 h", "5 days"]


# --- the session loop ------------------------------------------------------------------


def test_stops_at_the_run_that_makes_every_median_precise(tmp_path: Path, clock: FakeClock) -> None:
    # One outlier first: up to 8 runs the 95% interval is [x(1), x(n)] and reaches it;
    # from 9 runs on it is [x(2), x(n-1)] = [100, 100].
    spec = spec_of(lambda zap, n: 200.0 if n == 0 else 100.0, clock)
    messages: list[str] = []
    result = run(spec, tmp_path, UntilCi(0.05, max_time_s=1e6), messages=messages)
    assert per_variant(result) == {"all": 9, "slot": 9}
    assert [r.variant["zap"] for r in result.runs[:4]] == ["all", "slot", "all", "slot"]
    last = result.ok_runs()[-1].effective["until_ci"]
    assert last["stop"] == "precise" and last["rounds"] == 9
    assert last["widest"]["half_width_pct"] == 0.0
    assert result.status == "complete" and not result.warnings
    assert any("precise after 9 runs per variant" in m for m in messages)
    assert all("until_ci" not in r.effective for r in result.ok_runs()[:-1])


def test_never_stops_before_the_minimum(tmp_path: Path, clock: FakeClock) -> None:
    spec = spec_of(lambda zap, n: 100.0, clock)
    assert per_variant(run(spec, tmp_path, UntilCi(0.05, max_time_s=1e6))) == {
        "all": 6, "slot": 6}
    assert per_variant(run(spec, tmp_path / "b", UntilCi(0.05, max_time_s=1e6),
                           repeat=9)) == {"all": 9, "slot": 9}


def test_one_imprecise_variant_keeps_both_running(tmp_path: Path, clock: FakeClock) -> None:
    spec = spec_of(lambda zap, n: 100.0 if zap == "all" or n >= 3 else (50, 70, 130)[n],
                   clock)
    # zap=all is precise at 6 runs; zap=slot (50 70 130 100 100 ...) once the interval
    # [x(3), x(n-2)] holds only 100s: n = 12.
    result = run(spec, tmp_path, UntilCi(0.05, max_time_s=1e6))
    assert per_variant(result) == {"all": 12, "slot": 12}


def test_never_precise_stops_when_time_is_up_and_says_so(tmp_path: Path, clock: FakeClock) -> None:
    spec = spec_of(lambda zap, n: 50.0 if n % 2 else 150.0, clock, run_s=10.0)
    messages: list[str] = []
    result = run(spec, tmp_path, UntilCi(0.05, max_time_s=200), messages=messages)
    # Rounds take 20 s; round 10 would end at 200 s + 20 s, past the limit.
    assert per_variant(result) == {"all": 10, "slot": 10}
    last = result.ok_runs()[-1].effective["until_ci"]
    assert last["stop"] == "time up" and last["elapsed_s"] == 200.0
    assert last["widest"]["half_width_pct"] == pytest.approx(50.0)
    assert len(result.warnings) == 1 and "time up (--max-time 200 s)" in result.warnings[0]
    assert any("time up" in m for m in messages)
    # +-50% at n=10 against a 5% target: 10 x (50/5)^2 runs, at 20 s a round.
    assert "at this spread +-5% needs ~1000 runs per variant (~5.6 h)" in result.warnings[0]


def test_time_can_cut_the_minimum_short(tmp_path: Path, clock: FakeClock) -> None:
    spec = spec_of(lambda zap, n: 100.0, clock, run_s=10.0)
    result = run(spec, tmp_path, UntilCi(0.05, max_time_s=50))
    assert per_variant(result) == {"all": 2, "slot": 2}
    assert result.ok_runs()[-1].effective["until_ci"]["stop"] == "time up"


def test_no_variant_left_ends_the_loop(tmp_path: Path, clock: FakeClock) -> None:
    def values(zap: str, n: int) -> float:
        if zap == "slot":
            raise VariantUnsupported("no quirk")
        raise OSError(5, "Input/output error")

    spec = spec_of(values, clock)
    plan = SessionPlan.resolve(spec, until_ci=UntilCi(0.05, max_time_s=1e6), label="t")
    messages: list[str] = []
    session = run_session(plan, tmp_path / "r.json", ENV, progress=messages.append)
    assert session.failed_runs == 3
    assert any("no variant left" in m for m in messages)


def test_pinning_reaches_the_scenario_and_is_recorded(tmp_path: Path) -> None:
    import os

    cpu = min(os.sched_getaffinity(0))
    requests: list[RunRequest] = []
    spec = spec_of(lambda zap, n: 1.0, requests=requests)
    plan = SessionPlan.resolve(spec, repeat=1, label="t", pinning=f"vcpus={cpu},main={cpu}")
    assert plan.pinning == {"vcpus": (cpu,), "main": (cpu,)}
    session = run_session(plan, tmp_path / "r.json", ENV)
    assert [dict(r.pinning) for r in requests] == [{"vcpus": (cpu,), "main": (cpu,)}] * 2
    assert session.path is not None
    for r in load_result(session.path).ok_runs():
        assert r.effective["pinning"] == {"vcpus": [cpu], "main": [cpu]}
    unpinned = SessionPlan.resolve(spec, repeat=1, label="t")
    assert unpinned.pinning == {}
    with pytest.raises(ValueError, match="may not use"):
        SessionPlan.resolve(spec, label="t", pinning={"vcpus": (max(os.sched_getaffinity(0)) + 1,)})


# --- the command line ------------------------------------------------------------------


@pytest.fixture
def cli_with(monkeypatch: pytest.MonkeyPatch) -> Callable[[ScenarioSpec], None]:
    from kvmharness.cli import common
    from kvmharness.scenarios import registry

    monkeypatch.setattr(common, "collect_fingerprint", lambda: dict(ENV))
    monkeypatch.setattr(common, "kvm_access_problem", lambda: None, raising=False)

    def register(spec: ScenarioSpec) -> None:
        monkeypatch.setattr(registry, "all_scenarios", lambda: {spec.name: spec})

    return register


def test_run_until_ci_and_pin_from_the_command_line(
        tmp_path: Path, clock: FakeClock, cli_with: Callable[[ScenarioSpec], None],
        capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from kvmharness import cli

    cpu = min(os.sched_getaffinity(0))
    requests: list[RunRequest] = []
    cli_with(spec_of(lambda zap, n: 200.0 if n == 0 else 100.0, clock, requests=requests))
    assert cli.main(["run", "fake", "--until-ci", "5%", "--max-time", "3600",
                     "--pin", str(cpu), "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "--until-ci 5%: precise after 9 runs per variant" in captured.err
    (path,) = tmp_path.glob("*.json")
    result = load_result(path)
    assert per_variant(result) == {"all": 9, "slot": 9}
    assert {r.pinning["vcpus"] for r in requests} == {(cpu,)}
    assert result.ok_runs()[0].effective["pinning"]["main"] == [cpu]
    # One 200 among eight 100s: a precise median, but a CoV of 30%; the run ends with one
    # line naming both variants, not a line per metric or variant.
    # (One message: run wraps it at 75 columns, continuations indented.)
    out = captured.out.replace("\n    ", " ")
    spread = [line for line in out.splitlines() if "spread too high" in line]
    assert len(spread) == 1
    assert "total (zap=all) 30%, total (zap=slot) 30%" in spread[0]


def test_run_prints_no_spread_line_for_steady_metrics(
        tmp_path: Path, cli_with: Callable[[ScenarioSpec], None],
        capsys: pytest.CaptureFixture[str]) -> None:
    from kvmharness import cli

    cli_with(spec_of(lambda zap, n: 100.0 + n))  # "noisy" varies 1 vs 2, not a headline
    assert cli.main(["run", "fake", "--repeat", "3", "--out", str(tmp_path)]) == 0
    assert "spread too high" not in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-time", "10"], "--max-time applies only with --until-ci"),
    (["--until-ci", "0"], "--until-ci must be in (0, 100) percent"),
    (["--until-ci", "5", "--max-time", "-1"], "expected seconds > 0"),
    (["--pin", "vcpus=4095"], "which this process may not use"),
    (["--pin", "vcpus=99999"], "beyond the 8192 CPUs Linux supports"),
    (["--pin", "cpu=1"], "unknown role 'cpu'"),
])
def test_bad_measure_options_are_usage_errors(
        argv: list[str], message: str, tmp_path: Path, cli_with: Callable[[ScenarioSpec], None],
        capsys: pytest.CaptureFixture[str]) -> None:
    from kvmharness import cli

    cli_with(spec_of(lambda zap, n: 1.0))
    assert cli.main(["run", "fake", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err.replace("\n    ", " ")  # wrapped at 75
    assert not list(tmp_path.glob("*.json"))


def test_ab_passes_pin_and_until_ci_to_the_run_inside_each_boot(
        cli_with: Callable[[ScenarioSpec], None]) -> None:
    from kvmharness import cli
    from kvmharness.cli.ab import scenario_calls

    spec = spec_of(lambda zap, n: 1.0)
    cli_with(spec)

    def calls(*extra: str) -> list[str]:
        args = cli.build_parser().parse_args(["ab", "fake", "--kernel", "A=/nonexistent",
                                              *extra])
        (call,) = scenario_calls(args, {"fake": spec})
        return list(call.options)

    options = calls("--until-ci", "2.5", "--pin", "vcpus=63,main=0")
    assert options[-6:] == ["--pin", "vcpus=63,main=0", "--until-ci", "2.5",
                            "--max-time", "600"]  # the boot's CPUs decide about CPU 63
    assert "--until-ci" not in calls()
    with pytest.raises(ValueError, match="vcpus on CPU 2, .* inside a boot with --cpus 2"):
        calls("--pin", "vcpus=2", "--cpus", "2")
    with pytest.raises(ValueError, match="unknown role"):
        calls("--pin", "vcpu=0")
    with pytest.raises(ValueError, match="does not fit in a boot's --timeout of 900 s"):
        calls("--until-ci", "5", "--max-time", "900", "--timeout", "900")
