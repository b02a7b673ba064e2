"""bench.power's bookkeeping with fake runs: verdicts at each checkpoint, the time to
detection (from when the verdict stayed right), the rates and the tables."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from kvmharness.bench import power
from kvmharness.bench.power import Checkpoint, Settings, Trial


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def noisy(rng: random.Random, centre: float, clock: Clock | None = None):  # type: ignore[no-untyped-def]
    def run() -> float:
        if clock is not None:
            clock.now += 2.0
        return centre * (1 + rng.uniform(-0.005, 0.005))
    return run


def test_a_clear_change_is_detected_from_the_first_separable_n() -> None:
    rng, clock = random.Random(1), Clock()
    s = Settings(runs=6, min_change=0.01)
    trial = power.run_trial(noisy(rng, 100.0, clock), noisy(rng, 105.0, clock), s,
                            direction=1, clock=clock)
    assert [c.n for c in trial.checkpoints] == [3, 4, 5, 6]
    # n=3 per side: the smallest exact two-sided p is 0.1, above alpha; from n=4 (p=0.029)
    # complete separation is significant.
    assert [c.flagged for c in trial.checkpoints] == [False, True, True, True]
    detected = trial.detected_at()
    assert detected is not None and detected.n == 4 and detected.elapsed_s == 16.0
    assert trial.final.change is not None and 0.04 < trial.final.change < 0.06


def test_identical_sides_are_not_flagged_and_the_direction_counts() -> None:
    rng = random.Random(2)
    s = Settings(runs=6)
    same = power.run_trial(noisy(rng, 100.0), noisy(rng, 100.0), s, direction=0)
    assert not any(c.flagged for c in same.checkpoints) and same.detected_at() is None
    # B faster is a real difference, but not the +5% an A/A' trial is looking for.
    faster = power.run_trial(noisy(rng, 100.0), noisy(rng, 95.0), s, direction=1)
    assert not faster.final.flagged
    either = power.run_trial(noisy(rng, 100.0), noisy(rng, 95.0), s, direction=0)
    assert either.final.flagged


def test_a_verdict_that_flips_back_is_not_a_detection_yet() -> None:
    cps = [Checkpoint(n, 10.0 * n, 0.01, 0.05, f)
           for n, f in zip(range(3, 8), (True, False, True, True, True))]
    assert Trial(tuple(cps)).detected_at() == cps[2]
    assert Trial(tuple(cps[:2])).detected_at() is None


def test_alternation_swaps_which_side_goes_first() -> None:
    order: list[str] = []
    values = itertools.count()

    def side(name: str):  # type: ignore[no-untyped-def]
        def run() -> float:
            order.append(name)
            return float(next(values))
        return run

    power.run_trial(side("a"), side("b"), Settings(runs=4), direction=0)
    assert "".join(order) == "abbaabba"


def test_measure_and_report() -> None:
    rng = random.Random(3)
    calls: list[int] = []

    def run(passes: int) -> float:
        calls.append(passes)
        return 10.0 * passes * (1 + rng.uniform(-0.002, 0.002))

    s = Settings(runs=5, trials=2, passes=20)
    assert s.passes_b == 21
    rows = power.measure(run, s)
    assert sorted(set(calls)) == [20, 21] and len(calls) == 2 * 2 * 2 * 5
    aa, ab = rows
    assert aa.name == "A/A" and ab.name == "A/A' (+5%)"
    assert not any(t.final.flagged for t in aa.trials)
    assert all(t.final.flagged for t in ab.trials)
    text = power.report(rows, s, 12.0)
    assert all(line.isascii() for line in text.splitlines())
    (aa_line,) = [line for line in text.splitlines() if "false pos." in line]
    (ab_line,) = [line for line in text.splitlines() if "detections" in line]
    assert aa_line.startswith("A/A ") and "0/2 (0%)" in aa_line
    assert ab_line.startswith("A/A' (+5%)") and "2/2 (100%)" in ab_line
    assert "(n=4)" in ab_line  # separable from 4 runs per side, as above
    assert " 0% " in aa_line  # +-0.2% noise: CoV rounds to 0%
    spread = Trial((Checkpoint(3, 1.0, 0.5, 0.0, False),), (0.1, 0.3))
    row = power.Row("A/A", (spread,), 0)
    assert "20%" in power.summary_table([row], s).splitlines()[-1]
    assert all(len(line) <= 78 for line in text.splitlines())
    assert "flagged at n =" in text and "total time 12 s" in text


def test_small_work_steps_still_differ() -> None:
    assert Settings(passes=5, extra=0.05).passes_b == 6  # never the same work on both sides
    assert Settings(passes=100, extra=0.05).passes_b == 105


def test_bad_options_are_refused(capsys) -> None:  # type: ignore[no-untyped-def]
    import pytest

    for argv in (["--runs", "2"], ["--trials", "0"], ["--extra", "0"], ["--pin", "cpu=0"]):
        with pytest.raises(SystemExit) as exc:
            power.parse_args(argv)
        assert exc.value.code == 2
    assert "unknown role 'cpu'" in capsys.readouterr().err
    args = power.parse_args(["--pin", "auto", "--extra", "10"])
    assert args.pin and args.extra == pytest.approx(0.1)


def test_one_real_run_gives_the_total(kvm: object) -> None:
    from kvmharness.scenarios import registry

    spec = registry.all_scenarios()[power.SCENARIO]
    run = power.scenario_runner(spec, Settings())
    assert run(2) > 0.0


def test_until_ci_stops_when_both_medians_are_precise_or_time_is_up() -> None:
    rng, clock = random.Random(4), Clock()
    # +-0.5% noise: both medians' 95% CI are within 2% as soon as the rule may stop (6).
    s = Settings(runs=40, until_ci=0.02, max_time_s=1000.0)
    tight = power.run_trial(noisy(rng, 100.0, clock), noisy(rng, 105.0, clock), s,
                            direction=1, clock=clock)
    assert tight.stopped == "precise" and tight.final.n == 6 and tight.final.flagged
    # +-50% noise never gets there: the pair that would end after max_time is not started.
    wide = Settings(runs=40, until_ci=0.001, max_time_s=40.0)
    clock.now = 0.0

    def wild() -> float:
        clock.now += 2.0
        return 100.0 * (1 + rng.uniform(-0.5, 0.5))

    slow = power.run_trial(wild, wild, wide, direction=0, clock=clock)
    assert slow.stopped == "time" and slow.final.n == 10  # 10 pairs = 40 s; an 11th ends at 44
    assert slow.final.elapsed_s <= 40.0
    capped = power.run_trial(wild, wild, Settings(runs=7, until_ci=0.001), direction=0)
    assert capped.stopped == "runs" and capped.final.n == 7


def test_a_and_a_prime_trials_counted_apart_and_spread_over_the_measurement() -> None:
    order = [kind for kind, _ in power.schedule(8, 4)]
    assert order.count("A/A") == 8 and order.count("A/A'") == 4
    # Every third trial is an A/A', from the second on: a drift of the host hits both kinds.
    assert [i for i, kind in enumerate(order) if kind == "A/A'"] == [1, 4, 7, 10]
    assert [kind for kind, _ in power.schedule(2, 2)] == ["A/A", "A/A'", "A/A", "A/A'"]
    assert [j for kind, j in power.schedule(3, 1) if kind == "A/A"] == [0, 1, 2]

    rng = random.Random(5)
    calls: list[int] = []

    def run(passes: int) -> float:
        calls.append(passes)
        return 10.0 * passes * (1 + rng.uniform(-0.002, 0.002))

    s = Settings(runs=4, trials=2, aa_trials=5, passes=20)
    messages: list[str] = []
    aa, ab = power.measure(run, s, messages.append)
    assert len(aa.trials) == 5 and len(ab.trials) == 2
    # Each trial is 4 pairs; A/A' trials run 21 passes on one side only.
    assert len(calls) == 2 * 4 * 7 and calls.count(21) == 4 * 2
    assert sum("A/A:" in m for m in messages) == 5 and "trial 5/5 A/A:" in messages[-1]
    assert all("--runs cap" in m for m in messages)
    text = power.report([aa, ab], s, 1.0)
    assert "5 A/A and 2 A/A' trials" in text and "0/5 (0%)" in text and "2/2 (100%)" in text
    assert "2 trials of each" in power.report([aa, ab], Settings(trials=2), 1.0)


def test_aa_trials_option() -> None:
    import pytest

    assert power.parse_args([]).aa_trials is None
    assert power.parse_args(["--trials", "4", "--aa-trials", "8"]).aa_trials == 8
    with pytest.raises(SystemExit):
        power.parse_args(["--aa-trials", "0"])


def test_saved_values_are_each_sides_runs_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from kvmharness.results.store import atomic_write_json

    values = iter(range(100))
    s = Settings(runs=4, trials=1, aa_trials=2, passes=20)
    rows = power.measure(lambda passes: float(next(values)), s)
    path = tmp_path / "power.json"
    atomic_write_json(path, power.saved(rows, s))
    data = json.loads(path.read_text())
    assert data["passes"] == [20, 21] and len(data["trials"]) == 3
    first = data["trials"][0]
    # Pairs alternate who goes first: a b | b a | a b | b a.
    assert first["comparison"] == "A/A" and first["a"] == [0, 3, 4, 7]
    assert first["b"] == [1, 2, 5, 6] and first["n"] == 4 and first["stopped"] == "runs"
    assert [t["comparison"] for t in data["trials"]] == ["A/A", "A/A", "A/A' (+5%)"]
    assert power.parse_args(["--save", str(path)]).save == path


def test_a_trial_out_of_time_says_what_it_would_have_needed() -> None:
    from kvmharness.compare import stats

    rng, clock = random.Random(6), Clock()

    def wild() -> float:
        clock.now += 2.0
        return 100.0 * (1 + rng.uniform(-0.5, 0.5))

    s = Settings(runs=40, until_ci=0.02, max_time_s=40.0)
    slow = power.run_trial(wild, wild, s, direction=0, clock=clock)
    assert slow.stopped == "time" and slow.final.n == 10
    widths = []
    for side in slow.values:
        med, low, high, _ = stats.median_ci(side)
        widths.append(max(med - low, high - med) / med)
    expected = math.ceil(10 * (max(widths) / 0.02) ** 2)  # n x (half-width / target)^2
    need = power.runs_needed(slow, 0.02)
    assert need is not None and need[0] == expected and expected > 100
    assert need[1] == pytest.approx(40.0 * expected / 10)  # at the trial's 4 s a pair
    rows = [power.Row("A/A", (slow, slow), 0)]
    line = power.needed_line(rows, 0.02)
    assert line.startswith(f"out of time: +-2% needed ~{expected} runs per side, ")
    assert line in power.report(rows, s, 80.0).splitlines() and len(line) <= 78
    precise = Trial(slow.checkpoints, slow.cov, "precise", slow.values)
    assert power.needed_line([power.Row("A/A", (precise,), 0)], 0.02) == ""


def test_a_long_trial_keeps_the_checkpoint_table_narrow() -> None:
    assert power.shown_checkpoints([3, 4, 5, 6, 7, 8]) == [3, 4, 5, 6, 7, 8]
    assert power.shown_checkpoints(list(range(3, 118))) == [3, 5, 10, 20, 30, 50, 75, 100, 117]
    assert power.shown_checkpoints(list(range(3, 101)))[-2:] == [75, 100]
    rng = random.Random(7)
    s = Settings(runs=117)
    long = power.run_trial(noisy(rng, 100.0), noisy(rng, 105.0), s, direction=1)
    text = power.checkpoint_table([power.Row("A/A' (+5%)", (long,), 1)])
    assert text.splitlines()[0].split()[-9:] == ["3", "5", "10", "20", "30", "50", "75",
                                                 "100", "117"]
    assert text.splitlines()[-1].split()[-1] == "1/1"  # flagged at the final n
    assert all(len(line) <= 78 for line in text.splitlines())
