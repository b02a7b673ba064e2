"""CSV: one line per comparison and metric, every statistic unrounded.  Written by the
csv module, not tabulate: a CSV reader needs RFC 4180 quoting, not aligned columns."""

from __future__ import annotations

import csv
import io

from kvmharness.compare.build import Report
from kvmharness.compare.render.model import DEFAULT_VIEW, View
from kvmharness.compare.stats import Summary

CSV_FIELDS = (
    "scenario", "axis", "context", "a", "b", "metric", "unit", "direction",
    "a_n", "a_median", "a_ci_low", "a_ci_high", "a_mean", "a_stdev", "a_cov",
    "b_n", "b_median", "b_ci_low", "b_ci_high", "b_mean", "b_stdev", "b_cov",
    "change", "change_ci_low", "change_ci_high", "u", "p", "p_adjusted", "test",
    "significant",
)


def _csv_num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _csv_side(s: Summary) -> list[object]:
    return [s.n, _csv_num(s.median), _csv_num(s.ci_low), _csv_num(s.ci_high),
            _csv_num(s.mean), _csv_num(s.stdev), _csv_num(s.cov)]


def format_csv(report: Report, view: View = DEFAULT_VIEW) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for c in report.comparisons:
        for r in c.rows:
            w.writerow([c.scenario, c.axis, c.context, c.a.name, c.b.name, r.metric, r.unit,
                        r.direction, *_csv_side(r.a), *_csv_side(r.b), _csv_num(r.change.ratio),
                        _csv_num(r.change.ci_low), _csv_num(r.change.ci_high),
                        _csv_num(r.test.u if r.test else None), _csv_num(r.p),
                        _csv_num(r.p_adj), r.test.method if r.test else "",
                        int(r.significant)])
    return buf.getvalue()
