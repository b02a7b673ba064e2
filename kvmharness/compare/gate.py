"""The regression gate: did B get significantly worse than A on a headline metric?

For ``kvmharness compare --fail-on-regression PCT``, and so for ``git bisect run``: exit 1
on a regression, 0 when every gated comparison could have found one and did not, 125
(cannot judge) when a comparison's runs per side could not have reached significance.
"""

from __future__ import annotations

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
        runs = f">= {needed} runs per side" if needed else "more runs per side"
        out.append(f"{c.scenario} ({c.context}) {c.a.name} vs {c.b.name}: n = "
                   f"{len(c.a.ok_runs)}/{len(c.b.ok_runs)} runs cannot reach p < "
                   f"{report.settings.alpha:g} over its {c.family} headline test"
                   f"{'s' if c.family != 1 else ''}; need {runs}")
    return out
