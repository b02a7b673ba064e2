"""The regression gate: did B get significantly worse than A on a headline metric?

For ``kvmharness compare --fail-on-regression PCT``, and so for ``git bisect run``: exit 1
on a regression, 0 when every gated comparison could have found one and did not, 125
(cannot judge) when a comparison's runs per side could not have reached significance.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvmharness.compare import stats
from kvmharness.compare.build import Report


def regressions(report: Report, threshold: float) -> list[str]:
    """One line per headline row where B is significantly worse than A (after the
    report's multiple-comparison correction) by more than ``threshold`` (0.05 = 5%)."""
    out: list[str] = []
    for c in report.comparisons:
        headline = set(c.headline)
        for r in c.rows:
            if (headline and r.metric not in headline) or not r.significant:
                continue
            ratio = r.change.ratio
            if ratio is None:
                continue
            worse = ratio > threshold if r.direction == "lower" else ratio < -threshold
            if worse:
                out.append(f"{c.scenario} ({c.context}) {r.metric}: {c.b.name} is "
                           f"{ratio * 100:+.1f}% vs {c.a.name} ({r.direction} is better; "
                           f"limit {threshold * 100:g}%, p={r.p_adj:.3g} adjusted)")
    return out


def untestable(report: Report) -> list[str]:
    """One line per comparison whose headline family cannot reach significance at its
    runs per side: passing it would call a regression nobody could test "no regression"."""
    out: list[str] = []
    for c, needed in report.untestable():
        na, nb, unit = c.tested_n
        runs = f">= {needed} {unit} per side" if needed else f"more {unit} per side"
        out.append(f"{c.scenario} ({c.context}) {c.a.name} vs {c.b.name}: n = "
                   f"{na}/{nb} {unit} cannot reach p < "
                   f"{report.settings.alpha:g} over its {c.family} headline test"
                   f"{'s' if c.family != 1 else ''}; need {runs}")
    return out


# --- git bisect run: good, bad, or cannot tell ----------------------------------------------

GOOD, BAD, SKIP = 0, 1, 125  # git bisect run's exit statuses (125: skip this commit)


def bisect_verdict(report: Report, threshold: float,
                   metrics: Sequence[str] = ()) -> tuple[int, list[str]]:
    """GOOD, BAD or SKIP for a commit B against the known-good A, with the reasons.

    BAD: a headline row (or one of ``metrics``) is significantly worse than ``threshold``
    (the same rule as ``regressions``).  GOOD only on evidence: every such row could
    have reached significance with these runs (the smallest possible p after the row's
    correction is below alpha) and the whole bootstrap CI of its change stays on the
    good side of ``threshold``.  Anything else is SKIP: a commit is never called good
    because the comparison could not see a regression."""
    reasons: list[str] = []
    bad = regressions(report, threshold)
    if metrics:
        wanted = set(metrics)
        bad = [line for line in bad if line.split(": ", 1)[0].rsplit(" ", 1)[-1] in wanted]
    if bad:
        return BAD, bad
    judged = 0
    alpha = report.settings.alpha
    for c in report.comparisons:
        chosen = [r for r in c.rows if (r.metric in metrics if metrics
                                        else r.metric in c.headline and not r.exploratory)]
        for r in chosen:
            where = f"{c.scenario} ({c.context}) {r.metric}"
            n_a, n_b = r.tested_n  # boots when the test ran on per-boot medians
            floor = stats.smallest_p(n_a, n_b) * max(c.family, 1)
            lo, hi = r.change.ci_low, r.change.ci_high
            if r.test is None or lo is None or hi is None:
                reasons.append(f"{where}: no test (n={n_a}/{n_b}): cannot judge")
                continue
            if floor >= alpha or r.untestable:
                reasons.append(f"{where}: with n={n_a}/{n_b} and {c.family} test(s) no p can "
                               f"be below {alpha:g} (smallest {floor:.3g}): cannot judge")
                continue
            edge = hi if r.direction == "lower" else -lo
            if edge >= threshold:
                ratio = r.change.ratio if r.change.ratio is not None else 0.0
                reasons.append(f"{where}: change {ratio * 100:+.1f}%, its CI "
                               f"[{lo * 100:+.1f}%, {hi * 100:+.1f}%] reaches the "
                               f"{threshold * 100:g}% limit ({r.direction} is better): "
                               "cannot call it good")
                continue
            judged += 1
    if reasons:
        return SKIP, reasons
    if not judged:
        return SKIP, ["no comparable row (no runs, or the metric is not in the results)"]
    return GOOD, [f"{judged} row(s) within {threshold * 100:g}% with their whole CI"]
