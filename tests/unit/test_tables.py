"""Comparison building, warnings, and the four output formats (golden files).

Regenerate the golden files after an intended format change with
``KVMHARNESS_UPDATE_GOLDEN=1 python3 -m pytest tests/unit/test_tables.py`` and review the diff.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kvmharness.compare.build import CompareError, Report, Settings, build_report
from kvmharness.compare.render import FORMATS, View, format_report
from kvmharness.compare.render.summary import format_run_summary
from kvmharness.compare.render.text import ascii_text, change_cell, grid, num, split_path
from kvmharness.results.model import MetricSamples, ResultFile, RunRecord

GOLDEN = Path(__file__).parent / "golden"

METRICS = [
    {"name": "total", "unit": "ms", "direction": "lower", "help": ""},
    {"name": "delete", "unit": "\u00b5s", "direction": "lower", "help": ""},
    {"name": "memslot_generation_wraps_per_second", "unit": "1/s", "direction": "higher",
     "help": ""},
]

# Per metric, one value per run (one measured iteration per run, so value = sample).
DATA_A = {
    "total": [89.1, 88.7, 89.5, 90.2, 88.9, 89.3, 89.0, 89.8, 88.5, 89.2],
    "delete": [16.2, 16.5, 16.1, 16.4, 16.3, 16.6, 16.2, 16.0, 16.5, 16.3],
    "memslot_generation_wraps_per_second": [3.1, 3.0, 3.2, 3.1, 3.3, 3.0, 3.1, 3.2, 3.1, 3.0],
}
DATA_B = {
    "total": [84.8, 84.5, 85.1, 84.2, 84.9, 85.3, 84.7, 84.6, 85.0, 84.4],
    "delete": [16.4, 16.2, 16.5, 16.1, 16.3, 16.6, 16.4, 16.2, 16.3, 16.5],
    "memslot_generation_wraps_per_second": [3.1, 3.2, 3.0, 3.1, 3.2, 3.1, 3.0, 3.3, 3.2, 3.1],
}


def environment(release: str, zap_quirk: bool) -> dict[str, Any]:
    return {"kernel": {"release": release, "cmdline": "quiet"},
            "kvm": {"status": "ok", "quirks": {"SLOT_ZAP_ALL": zap_quirk}},
            "backend": {"kind": "svm", "nested": True}}


def runs_from(data: dict[str, list[float]], variant: dict[str, str],
              noise: dict[str, Any] | None = None, start: int = 0) -> list[RunRecord]:
    declared = {m["name"]: m for m in METRICS}

    def samples(metric: str, value: float) -> MetricSamples:
        m = declared[metric]
        return MetricSamples(m["unit"], "higher" if m["direction"] == "higher" else "lower",
                             [value])

    n = len(next(iter(data.values())))
    return [
        RunRecord(index=start + i, repeat=i, variant=dict(variant), status="ok", reason=None,
                  start_time=1000.0 + i, end_time=1000.5 + i,
                  samples={k: samples(k, vs[i]) for k, vs in data.items()},
                  noise=dict(noise or {}))
        for i in range(n)
    ]


def result_file(label: str, runs: Sequence[RunRecord], env: dict[str, Any],
                source: str, variants: list[dict[str, str]] | None = None) -> ResultFile:
    return ResultFile(
        scenario={"name": "rom-toggle", "summary": "", "parameters": [], "metrics": METRICS,
                  "variant_axes": [{"name": "zap", "values": ["all", "slot"], "help": ""}],
                  "headline": [m["name"] for m in METRICS]},
        parameters={"pages": 2000}, quick=False, label=label,
        variants=variants or [{"zap": "all"}], repeat=len(runs), iterations=1, warmup=1,
        environment=env, status="complete", created="2024-06-01T00:00:00+00:00",
        runs=list(runs), source=source)


def label_report() -> Report:
    a = result_file("6.1.0", runs_from(DATA_A, {"zap": "all"}), environment("6.1.0", False),
                     "a.json")
    b = result_file("6.12.0", runs_from(DATA_B, {"zap": "all"}), environment("6.12.0", True),
                    "b.json")
    return build_report([a, b], settings=Settings(seed=1))


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("KVMHARNESS_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; see the module docstring"


@pytest.mark.parametrize("fmt,name", [("plain", "compare_plain.txt"),
                                      ("markdown", "compare_markdown.md"),
                                      ("csv", "compare.csv"),
                                      ("cover-letter", "compare_cover_letter.txt")])
def test_golden(fmt: str, name: str) -> None:
    check_golden(name, format_report(label_report(), fmt))


def test_plain_is_ascii_and_fits_75_columns() -> None:
    text = format_report(label_report(), "plain")
    text.encode("ascii")
    assert max(len(line) for line in text.splitlines()) <= 75
    assert "delete [us]" in text and "total [ms]" in text
    # The setup differences come once, before the table; in full with show_setup.
    assert text.index("kernel release") < text.index("metric [unit]")
    assert "kvm.quirks.SLOT_ZAP_ALL: false -> true" in text
    full = format_report(label_report(), "plain", View(show_setup=True))
    assert "kernel.release: 6.1.0 -> 6.12.0" in full


def test_verdicts() -> None:
    report = label_report()
    rows = {r.metric: r for r in report.comparisons[0].rows}
    assert rows["total"].significant and rows["total"].change.ratio == pytest.approx(
        84.75 / 89.15 - 1)
    assert not rows["delete"].significant
    plain = format_report(report, "plain")
    assert re.search(r"^total \[ms\] +89\.15 +\+-0\.7% +84\.75 +\+-0\.4% +-4\.9% +better "
                     r"+<0\.001 +10/10$",
                     plain, re.M)
    assert re.search(r"^delete \[us\] +16\.30 +\+-1% +16\.35 +\+-0\.9% +~ +1\.000 +10/10$", plain, re.M)
    assert ("(p: adjusted, Holm's correction within a family of 3 tests: the headline "
            "metrics") in " ".join(plain.split())


def test_cover_letter_line_format() -> None:
    text = format_report(label_report(), "cover-letter")
    assert max(len(line) for line in text.splitlines()) <= 72
    # Too wide for "Before: ... After: ...": two value columns, the long name on its own.
    assert re.search(r"^  total +89\.150 ms +84\.750 ms  \(-4\.9%\)$", text, re.M)
    assert re.search(r"^  memslot_generation_wraps_per_second\n +3\.1000 1/s +3\.1000 1/s  "
                     r"\(~\)$", text, re.M)
    a, b = (result_file(lb, runs_from(data, {"zap": "all"}), environment(lb, q), f"{lb}.json")
            for lb, data, q in (("6.1.0", DATA_A, False), ("6.12.0", DATA_B, True)))
    for f in (a, b):
        f.scenario["headline"] = ["total", "delete"]
    short = format_report(build_report([a, b], settings=Settings(seed=1)),
                                 "cover-letter")
    assert re.search(r"^  total: +Before: 89\.150 ms  After: 84\.750 ms  \(-4\.9%\)$", short,
                     re.M)
    assert re.search(r"^  delete: +Before: 16\.300 us  After: 16\.350 us  \(~\)$", short, re.M)
    assert text.startswith("Kernel: 6.1.0, 6.12.0\nHost:   SVM (nested)")
    assert "n = 10/10 runs" in " ".join(text.split())


def test_csv_is_machine_readable() -> None:
    rows = list(csv.DictReader(io.StringIO(format_report(label_report(), "csv"))))
    assert [r["metric"] for r in rows] == [m["name"] for m in METRICS]
    total = rows[0]
    assert total["a"] == "6.1.0" and total["b"] == "6.12.0" and total["significant"] == "1"
    assert float(total["a_median"]) == pytest.approx(89.15)
    assert total["test"] == "exact"


def test_variant_comparison_within_one_file_and_skips() -> None:
    runs = runs_from(DATA_A, {"zap": "all"}) + runs_from(DATA_B, {"zap": "slot"}, start=10)
    skipped = RunRecord(index=20, repeat=0, variant={"zap": "slot"}, status="skipped",
                        reason="no SLOT_ZAP_ALL quirk", start_time=0.0, end_time=0.0)
    f = result_file("6.12.0", [*runs, skipped], environment("6.12.0", True), "ab.json",
                    variants=[{"zap": "all"}, {"zap": "slot"}])
    report = build_report([f], settings=Settings(seed=1))
    (c,) = report.comparisons
    assert (c.axis, c.a.name, c.b.name, c.context) == ("variant", "zap=all", "zap=slot",
                                                        "label 6.12.0")
    assert c.differences == ()  # one file, one environment
    assert any("run skipped: no SLOT_ZAP_ALL quirk" in w for w in c.warnings)


def test_a_side_without_runs_is_not_compared() -> None:
    a = result_file("6.12.0", runs_from(DATA_A, {"zap": "slot"}), environment("6.12.0", True),
                    "a.json", variants=[{"zap": "slot"}])
    skipped = RunRecord(index=0, repeat=0, variant={"zap": "slot"}, status="skipped",
                        reason="no SLOT_ZAP_ALL quirk", start_time=0.0, end_time=0.0)
    b = result_file("6.1.0", [skipped], environment("6.1.0", False), "b.json",
                    variants=[{"zap": "slot"}])
    report = build_report([a, b])
    assert report.tests == 0
    assert "B (6.1.0): no completed runs" in report.comparisons[0].warnings
    for fmt in FORMATS:
        format_report(report, fmt)
    cover = format_report(report, "cover-letter")
    assert "6.1.0 has no completed runs (skipped: no SLOT_ZAP_ALL quirk)" in " ".join(
        cover.split())
    plain = format_report(report, "plain")
    assert "B has no completed runs (skipped: no SLOT_ZAP_ALL quirk): not compared" in plain
    assert "metric [unit]" not in plain  # n=0: no table, no row of dashes


def test_nothing_to_compare() -> None:
    f = result_file("x", runs_from(DATA_A, {"zap": "all"}), {}, "a.json")
    with pytest.raises(CompareError, match="nothing to compare"):
        build_report([f])
    # Two files of one setup are compared file against file.
    g = result_file("x", runs_from(DATA_B, {"zap": "all"}), {}, "b.json")
    (c,) = build_report([f, g]).comparisons
    assert (c.axis, c.a.name, c.b.name) == ("file", "a.json", "b.json")


def test_noise_warnings() -> None:
    noisy = dict(DATA_A, total=[89.0, 120.0, 70.0, 89.5, 95.0, 60.0, 89.1, 110.0, 88.0,
                                300.0])
    hot = {"cpu_mhz_before": 3000.0, "cpu_mhz_after": 2500.0, "steal_pct": 4.0,
           "others_busy_cpus": 1.5}
    a = result_file("6.1.0", runs_from(noisy, {"zap": "all"}, hot), environment("6.1.0", False),
                    "a.json")
    few = {k: v[:3] for k, v in DATA_B.items()}
    b = result_file("6.12.0", runs_from(few, {"zap": "all"}), environment("6.1.0", False),
                    "b.json")
    (c,) = build_report([a, b]).comparisons
    text = "\n".join(c.warnings)
    assert "A: total: CoV" in text
    assert "A: total: 1 outlier run(s) (300)" in text
    assert "A: CPU frequency drifted >= 5% during 10 of 10 runs" in text
    assert "A: steal time >= 2% during 10 of 10 runs" in text
    assert "A: other processes used >= 0.5 CPUs during 10 of 10 runs" in text
    assert "n=10/3" not in text  # 10 vs 3 can reach p < 0.05 (2/286)
    few_a = result_file("6.1.0", runs_from({k: v[:2] for k, v in DATA_A.items()},
                                           {"zap": "all"}), {}, "a.json")
    few_b = result_file("6.12.0", runs_from({k: v[:2] for k, v in DATA_B.items()},
                                            {"zap": "all"}), environment("6.1.0", False),
                        "b.json")
    (c,) = build_report([few_a, few_b]).comparisons
    # The exact test (ties included) cannot go below 2 / C(4, 2) at 2/2.
    assert any("n=2/2: the smallest possible p is 0.333 >= alpha 0.05" in w
               for w in c.warnings)
    assert "kernel.release: (absent) -> 6.1.0" in c.differences


def test_long_names_wrap_instead_of_widening() -> None:
    lines = grid(["metric", "value"], [["x" * 90, "1"], ["short", "2"]], [False, True])
    assert max(len(line) for line in lines) <= 75
    assert lines[2:4] == ["x" * 75, "x" * 15] and lines[4].endswith("1")


def test_number_formatting() -> None:
    assert num(89.117, 5) == "89.117"
    assert num(0.0123) == "0.01230"
    assert num(123456.7) == "123457"
    assert num(None) == "-"
    assert ascii_text("16 \u00b5s \u00b1 2%") == "16 us +- 2%"


def test_long_file_names_keep_plain_within_78_columns() -> None:
    # `ab` and `compare DIR/*.json` name files by long paths; the side lines once ran to
    # ~200 columns.
    long_dir = "/work/main/results/examples/ab-6.1-vs-6.12/r1-6.1/" + "x" * 40
    a = result_file("6.1.0", runs_from(DATA_A, {"zap": "all"}), environment("6.1.0", False),
                    f"{long_dir}/rom-toggle-6.1-20261126T012522Z.json")
    a2 = result_file("6.1.0", runs_from(DATA_A, {"zap": "all"}, start=100),
                     environment("6.1.0", False),
                     "r2-6.1/rom-toggle-6.1-20261126T012654Z.json")
    b = result_file("6.12.0", runs_from(DATA_B, {"zap": "all"}), environment("6.12.0", True),
                    "r1-6.12/rom-toggle-6.12-20261126T012605Z.json")
    text = format_report(build_report([a, a2, b], settings=Settings(seed=1)), "plain")
    assert max(len(line) for line in text.splitlines()) <= 75
    assert "Files: 3 (named with --detail)" in text  # a list longer than the tables
    text = format_report(build_report([a, a2, b], settings=Settings(seed=1)), "plain",
                                View(detail=True))
    assert max(len(line) for line in text.splitlines()) <= 75
    # The files once, in the header, each cut after a '/' when too long for a line.
    assert "rom-toggle (zap=all): A = 6.1.0, B = 6.12.0; runs A 20, B 10" in text
    assert "\n    r2-6.1/rom-toggle-6.1-20261126T012654Z.json\n" in text
    assert "\n  6.12.0: r1-6.12/rom-toggle-6.12-20261126T012605Z.json\n" in text
    assert text.count("rom-toggle-6.1-20261126T012522Z.json") == 1


def test_long_setup_differences_show_where_they_differ() -> None:
    from kvmharness.compare.warnings import differences

    prefix = "virtme_hostname=virtme-ng nr_open=1048576 virtme_link_mods=/var/cache/k/"
    (line,) = differences({"cmdline": prefix + "6.1.0-56-amd64/lib"},
                          {"cmdline": prefix + "6.12.117+deb12-amd64/lib"})
    before, after = line.split(": ", 1)[1].split(" -> ")
    assert before != after
    assert "6.1.0-56" in before and "6.12.117" in after
    assert len(before) <= 40 and len(after) <= 40
    assert differences({"x": "abc"}, {"x": "abd"}) == ["x: abc -> abd"]
    assert differences({"x": "short"}, {}) == ["x: short -> (absent)"]


def test_long_paths_split_after_a_slash() -> None:
    path = "/work/main/results/examples/ab-6.1-vs-6.12/r1-6.1/rom-toggle-6.1-20261126T012522Z.json"
    assert split_path(path, 72) == ["/work/main/results/examples/ab-6.1-vs-6.12/r1-6.1/",
                                            "rom-toggle-6.1-20261126T012522Z.json"]
    assert split_path("a" * 100, 72) == ["a" * 72, "a" * 28]
    assert "".join(split_path("/x/" + "b" * 80 + "/c.json", 72)) == (
        "/x/" + "b" * 80 + "/c.json")


# --- pairing, pooling, identity, correction, gate -------------------------------------------


def test_the_same_file_twice_counts_once() -> None:
    a = result_file("6.1.0", runs_from({k: v[:4] for k, v in DATA_A.items()}, {"zap": "all"}),
                    environment("6.1.0", False), "a.json")
    b = result_file("6.12.0", runs_from({k: v[:4] for k, v in DATA_B.items()}, {"zap": "all"}),
                    environment("6.12.0", True), "b.json")
    once = build_report([a, b], settings=Settings(seed=1))
    import copy
    twice = build_report([a, copy.deepcopy(a), b, b], settings=Settings(seed=1))
    row_once, row_twice = once.comparisons[0].rows[0], twice.comparisons[0].rows[0]
    assert (row_twice.a.n, row_twice.b.n) == (4, 4)
    assert row_twice.p == row_once.p  # n did not double, so neither did the evidence
    assert any("a.json: the same runs as a.json" in n and "counted once" in n
               for n in twice.notes)
    assert sum("counted once" in n for n in twice.notes) == 2


def test_pooling_different_kernels_is_refused_unless_asked() -> None:
    patched = environment("6.12.0", True)
    patched["kernel"]["version"] = "#2 SMP patched"
    a1 = result_file("6.12.0", runs_from(DATA_A, {"zap": "all"}), environment("6.12.0", True),
                     "a1.json")
    a2 = result_file("6.12.0", runs_from(DATA_A, {"zap": "all"}, start=50), patched, "a2.json")
    b = result_file("6.1.0", runs_from(DATA_B, {"zap": "all"}), environment("6.1.0", False),
                    "b.json")
    with pytest.raises(CompareError, match=r"kernel\.version: a1\.json has .*a2\.json has "
                                           r".*patched.*--pool"):
        build_report([a1, a2, b])
    report = build_report([a1, a2, b], settings=Settings(pool=True, seed=1))
    assert report.comparisons[0].a.name == "6.12.0" and len(report.comparisons[0].a.ok_runs) == 20
    assert any("pools files that differ" in n for n in report.notes)
    params = result_file("6.12.0", runs_from(DATA_A, {"zap": "all"}, start=70),
                         environment("6.12.0", True), "p.json")
    params.parameters = {"pages": 4000}
    with pytest.raises(CompareError, match=r"parameters\.pages"):
        build_report([a1, params, b])


def test_explicit_sides_pair_different_variants() -> None:
    from kvmharness.compare.build import build_sides_report

    old = result_file("6.1.0", runs_from(DATA_A, {"zap": "all"}), environment("6.1.0", False),
                      "old.json")
    new = result_file("6.12.0", runs_from(DATA_B, {"zap": "slot"}), environment("6.12.0", True),
                      "new.json", variants=[{"zap": "slot"}])
    (c,) = build_sides_report([old], [new], settings=Settings(seed=1)).comparisons
    assert (c.a.name, c.b.name, c.context) == ("6.1.0", "6.12.0", "zap=all vs zap=slot")
    assert len(c.a.ok_runs) == len(c.b.ok_runs) == 10
    (c,) = build_report([old, new], by="label+variant", settings=Settings(seed=1)).comparisons
    assert (c.a.name, c.b.name) == ("6.1.0 zap=all", "6.12.0 zap=slot")


def test_several_scenarios_get_one_section_each() -> None:
    a = result_file("6.1.0", runs_from(DATA_A, {"zap": "all"}), environment("6.1.0", False),
                    "a.json")
    b = result_file("6.12.0", runs_from(DATA_B, {"zap": "all"}), environment("6.12.0", True),
                    "b.json")
    c, d = (result_file(f.label, runs_from(data, {"zap": "all"}, start=30), f.environment,
                        f"other-{f.source}") for f, data in ((a, DATA_A), (b, DATA_B)))
    for f in (c, d):
        f.scenario = dict(f.scenario, name="other")
    text = format_report(build_report([a, b, c, d], settings=Settings(seed=1)))
    assert "== rom-toggle ==" in text and "== other ==" in text
    assert text.count("Setups compared:") == 1  # one header per report


def test_holm_adjusts_the_p_the_marks_use() -> None:
    report = label_report()
    rows = {r.metric: r for r in report.comparisons[0].rows}
    from kvmharness.compare.stats import holm
    raw = [r.p for r in report.comparisons[0].rows if r.p is not None]
    assert len(raw) == len(report.comparisons[0].rows)
    assert [r.p_adj for r in report.comparisons[0].rows] == pytest.approx(holm(raw))
    total_p = rows["total"].p
    assert total_p is not None and rows["total"].p_adj == pytest.approx(3 * total_p)
    # p = 0.02 raw is significant alone but not after x3 for three tests.
    assert holm([0.02, 0.5, 0.9])[0] == pytest.approx(0.06)
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_regression_gate_both_ways() -> None:
    from kvmharness.compare.gate import regressions

    # B (DATA_A, the slower one) against A (DATA_B): total got 5.2% worse.
    slower = build_report([result_file("new", runs_from(DATA_B, {"zap": "all"}),
                                       environment("6.1.0", False), "a.json"),
                           result_file("old", runs_from(DATA_A, {"zap": "all"}),
                                       environment("6.12.0", True), "b.json")],
                          settings=Settings(seed=1))
    assert len(regressions(slower, 0.02)) == 1 and "total" in regressions(slower, 0.02)[0]
    assert regressions(slower, 0.10) == []  # worse, but by less than the limit
    assert regressions(label_report(), 0.0) == []  # faster: no regression


def test_rows_without_runs_and_uncounted_counters() -> None:
    pvm = {"kernel": {"release": "6.18"}, "backend": {"kind": "pvm", "nested": True}}
    wraps = "memslot_generation_wraps_per_second"
    # A counter (1/s) all zero on PVM is not counted there; a time (delete, us) all zero
    # is data from a broken clock or file, never "not counted".
    data_a = dict(DATA_A, delete=[0.0] * 10, **{wraps: [0.0] * 10})
    data_b = dict(DATA_B, delete=[0.0] * 10, **{wraps: [0.0] * 10})
    f = result_file("6.18", [*runs_from(data_a, {"zap": "all"}),
                             *runs_from(data_b, {"zap": "slot"}, start=10)], pvm, "f.json",
                    variants=[{"zap": "all"}, {"zap": "slot"}])
    report = build_report([f], settings=Settings(seed=1))
    (c,) = report.comparisons
    assert [r.metric for r in c.rows] == ["total", "delete"]
    assert c.uncounted == (wraps,)
    text = format_report(report)
    assert f"Not counted here (PVM counts none, all zero): {wraps}" in " ".join(text.split())
    assert "PVM (nested), shadow MMU" in text


def test_zap_path_row() -> None:
    def with_zap(runs: list[RunRecord], path: str, fast: int) -> list[RunRecord]:
        for r in runs:
            r.effective = {"zap_path": path, "zap_evidence":
                           f"{fast} kvm_mmu_zap_all_fast events over 5 memslot deletes/moves"}
        return runs

    f = result_file("6.12", [*with_zap(runs_from(DATA_A, {"zap": "all"}), "all", 5),
                             *with_zap(runs_from(DATA_B, {"zap": "slot"}, start=10), "slot", 0)],
                    environment("6.12", True), "f.json",
                    variants=[{"zap": "all"}, {"zap": "slot"}])
    report = build_report([f], settings=Settings(seed=1))
    text = format_report(report)
    assert "zap path: A all (50/50 deletes zapped all), B slot (0/50)" in text
    cover = format_report(report, "cover-letter")
    assert "Before: all (50/50 deletes zapped all)" in cover


def test_huge_values_do_not_raise() -> None:
    huge = {"total": [1.7e308] * 5, "delete": [1e-300] * 5,
            "memslot_generation_wraps_per_second": [1e308, 1.5e308, 1.7e308, 1e308, 1.2e308]}
    tiny = {"total": [1e-308] * 5, "delete": [1e300] * 5,
            "memslot_generation_wraps_per_second": [5e-324] * 5}
    report = build_report([result_file("a", runs_from(huge, {"zap": "all"}), {}, "a.json"),
                           result_file("b", runs_from(tiny, {"zap": "all"}), {}, "b.json")])
    for fmt in FORMATS:
        format_report(report, fmt)


def test_three_sides_baseline_and_change_columns() -> None:
    files = [result_file(lb, runs_from(data, {"zap": "all"}, start=i * 20),
                         environment(lb, True), f"{lb}.json")
             for i, (lb, data) in enumerate((("k1", DATA_A), ("k2", DATA_B), ("k3", DATA_A)))]
    text = format_report(build_report(files, settings=Settings(seed=1)))
    assert "rom-toggle (zap=all): A = k1, B = k2, C = k3" in text
    assert re.search(r"^metric \[unit\] +A +B +change +C +change$", text, re.M)
    # Every non-baseline cell is its change against A; only a significant one is marked.
    assert re.search(r"^total \[ms\] +89\.15 +84\.75 +-4\.9%\* +89\.15 +\+0\.0%$", text, re.M)
    assert re.search(r"^delete \[us\] +16\.30 +16\.35 +\+0\.3% +16\.30 +\+0\.0%$", text, re.M)
    assert "no mark: not significant" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 75
    # The files once per report, not per table.
    assert text.count("k2.json") == 1 and "Files: k1: k1.json; k2: k2.json" in text


def test_a_side_without_a_metric_shows_dashes_not_another_sides_numbers() -> None:
    no_delete = {m: v for m, v in DATA_A.items() if m != "delete"}
    files = [result_file(lb, runs_from(data, {"zap": "all"}, start=i * 20),
                         environment(lb, True), f"{lb}.json")
             for i, (lb, data) in enumerate((("k1", DATA_A), ("k2", DATA_B),
                                             ("k3", no_delete)))]
    report = build_report(files, settings=Settings(seed=1))
    text = format_report(report, "plain", View(detail=True))
    assert re.search(r"^delete \[us\] +16\.30 +16\.35 +\+0\.3% +- +-$", text, re.M)
    # Per side: A and B have delete's statistics, C none (not B's in its place).
    detail = text.split("per side", 1)[1]
    delete = detail.split("\ndelete", 1)[1].split("\nmemslot", 1)[0].splitlines()
    assert [line.split()[0] for line in delete] == ["A", "B", "C"]
    assert delete[2].split()[1:] == ["-", "-", "-", "-", "-", "0"]
    assert max(len(line) for line in text.splitlines()) <= 75


def _write(tmp_path: Path, f: ResultFile, name: str) -> Path:
    import json

    path = tmp_path / name
    path.write_text(json.dumps(f.to_json()))
    return path


def test_cli_sides_gate_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvmharness import cli

    fast = _write(tmp_path, result_file("old", runs_from(DATA_B, {"zap": "all"}),
                                        environment("6.1.0", False), ""), "fast.json")
    slow = _write(tmp_path, result_file("new", runs_from(DATA_A, {"zap": "all"}),
                                        environment("6.12.0", True), ""), "slow.json")
    # B is 5.2% slower in total: fails a 2% gate, passes a 10% one.
    assert cli.main(["compare", "--a", str(fast), "--b", str(slow),
                     "--fail-on-regression", "2%"]) == 1
    out = capsys.readouterr()
    assert "regression: rom-toggle (zap=all) total: new is +5.2% vs old" in out.err
    assert cli.main(["compare", "--a", str(fast), "--b", str(slow),
                     "--fail-on-regression", "10%"]) == 0
    assert cli.main(["compare", "--a", str(slow), "--b", str(fast),
                     "--fail-on-regression", "0"]) == 0
    # Nothing to measure (git bisect run: skip), not "good" and not "bad".
    assert cli.main(["compare", "--a", str(fast), "--b", str(tmp_path / "missing.json"),
                     "--fail-on-regression", "5%"]) == 125
    capsys.readouterr()
    # The same file on both sides counts once, and then one side is empty.
    assert cli.main(["compare", str(fast), str(fast), str(slow)]) == 0
    assert "counted once" in capsys.readouterr().err
    assert cli.main(["compare", "--a", str(fast)]) == 2
    bad = tmp_path / "bad.json"
    doc = result_file("x", runs_from(DATA_A, {"zap": "all"}), {}, "").to_json()
    doc["runs"][2]["samples"]["total"]["values"] = [-1.0]
    bad.write_text(__import__("json").dumps(doc))
    assert cli.main(["compare", str(bad), str(fast)]) == 1
    assert "runs[2] (run 3, zap=all): metric 'total': negative value" in capsys.readouterr().err


def test_show_one_file_and_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvmharness import __version__, cli

    runs = runs_from(DATA_A, {"zap": "all"})
    for r in runs:
        r.effective = {"zap_path": "all",
                       "zap_evidence": "4 kvm_mmu_zap_all_fast events over 4 memslot deletes"}
    skipped = RunRecord(index=20, repeat=0, variant={"zap": "slot"}, status="skipped",
                        reason="quirk not supported", start_time=0.0, end_time=0.0)
    path = _write(tmp_path, result_file("6.1.0", [*runs, skipped], environment("6.1.0", False),
                                        "", variants=[{"zap": "all"}, {"zap": "slot"}]),
                  "r.json")
    assert cli.main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Scenario: rom-toggle, label '6.1.0', complete" in out
    assert "zap=all: 10 ok; zap path all (40/40 deletes zapped all)" in out
    assert "zap=slot: 1 skipped\n  skipped: quirk not supported" in out
    assert "KVM_X86_QUIRK_SLOT_ZAP_ALL absent" in out
    assert re.search(r"^zap=all +total \[ms\] +89\.15", out, re.M)
    assert max(len(line) for line in out.splitlines()) <= 75
    assert cli.main(["show", str(tmp_path / "missing.json")]) == 1
    assert "kvmharness show:" in capsys.readouterr().err
    assert cli.main(["--version"]) == 0
    assert re.fullmatch(rf"kvmharness {re.escape(__version__)}( \(git [0-9a-f]{{12}}"
                        r"(, modified)?\))?\n", capsys.readouterr().out)


def test_op_by_size_metrics_pivot_into_a_grid() -> None:
    sizes = ["4K", "64K", "1M", "16M", "256M", "1G", "4G"]

    def data(scale: float) -> dict[str, list[float]]:
        return {f"{op}@{s}": [scale * (10 + i) + 0.01 * k for k in range(8)]
                for op in ("create", "delete") for i, s in enumerate(sizes)}

    def runs(d: dict[str, list[float]], variant: str, start: int) -> list[RunRecord]:
        return [RunRecord(index=start + k, repeat=k, variant={"zap": variant}, status="ok",
                          reason=None, start_time=float(start + k), end_time=None,
                          samples={m: MetricSamples("us", "lower", [v[k]])
                                   for m, v in d.items()}) for k in range(8)]

    f = result_file("k", [*runs(data(1.0), "all", 0), *runs(data(0.5), "slot", 8)],
                    environment("k", True), "f.json", variants=[{"zap": "all"}, {"zap": "slot"}])
    f.scenario = dict(f.scenario, name="slot-ops", headline=["create@<size>", "delete@<size>"])
    text = format_report(build_report([f], settings=Settings(seed=1)))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 75
    heads = [lines[i].split() for i in range(len(lines) - 1)
             if lines[i + 1] and set(lines[i + 1]) == {"-"}]
    assert [c for h in heads for c in h] == sizes  # every size once, split, never wrapped
    assert re.search(r"^create \[us\] +A +10\.04 ", text, re.M)
    assert re.search(r"^ +B +5\.035 -49\.8%\* ", text, re.M)
    # Variants of one file: the file named once, in the header.
    assert text.count("f.json") == 1 and "Files: f.json" in text
    assert text.count("delete [us]") == len(heads)


# --- detectability: benchstat's "need >= N samples" -------------------------------------------


def _grid_report(n: int, ops: int = 2) -> Report:
    """slot-ops-like: ``ops`` x 7 sizes, a 2x change everywhere, ``n`` runs per variant."""
    sizes = ["4K", "64K", "1M", "16M", "256M", "1G", "4G"]
    names = [f"op{o}@{s}" for o in range(ops) for s in sizes]

    def runs(scale: float, variant: str, start: int) -> list[RunRecord]:
        return [RunRecord(index=start + k, repeat=k, variant={"zap": variant}, status="ok",
                          reason=None, start_time=float(start + k), end_time=None,
                          samples={m: MetricSamples("us", "lower", [scale * (10 + i) + 0.01 * k])
                                   for i, m in enumerate(names)}) for k in range(n)]

    f = result_file("k", [*runs(1.0, "all", 0), *runs(0.5, "slot", n)],
                    environment("k", True), "f.json", variants=[{"zap": "all"}, {"zap": "slot"}])
    f.scenario = dict(f.scenario, name="slot-ops",
                      headline=[f"op{o}@<size>" for o in range(ops)])
    return build_report([f], settings=Settings(seed=1))


def test_detectability_note_exactly_when_nothing_can_be_significant() -> None:
    # 4/4 over 14 tests: smallest p 0.0131 (ties) x 14 > 0.05: nothing can be marked.
    small = _grid_report(4)
    text = format_report(small)
    flat = " ".join(text.split())
    assert small.tests == 14 and not any(r.significant for c in small.comparisons
                                         for r in c.rows)
    assert flat.count("no change can reach p < 0.05") == 1
    assert ("n = 4/4 runs, 14 tests: no change can reach p < 0.05 after Holm's correction; "
            "need >= 6 runs per side or <= 1 test.") in flat
    # The changes are still printed, marked untested ('?'), never as no change.
    assert re.search(r"^ +B +5\.015 -49\.9%\? ", text, re.M)
    assert all(r.untestable for c in small.comparisons for r in c.rows)
    assert max(len(line) for line in text.splitlines()) <= 75
    assert "no change can reach" in " ".join(format_report(small, "cover-letter").split())
    # 8/8 over the same 14 tests can: no note, and the 2x changes are marked.
    big = _grid_report(8)
    text = format_report(big)
    assert "no change can reach" not in text and "need >=" not in text
    assert re.search(r"^ +B +5\.035 -49\.8%\* ", text, re.M)
    # 2/2: not even one test could be significant.
    tiny = " ".join(format_report(_grid_report(2, ops=1)).split())
    assert "n = 2/2 runs: no change can reach p < 0.05 even without correction" in tiny
    assert "need >= 4 runs per side." in tiny


def test_detectability_counts_the_reports_tests() -> None:
    from kvmharness.compare.warnings import detectability

    # The example of ab-mmu-modes: 6/6 runs, 108 tests.
    (note,) = detectability([(6, 6), (6, 6)], 108, 0.05)
    assert note == ("n = 6/6 runs, 108 tests: no change can reach p < 0.05 after Holm's "
                    "correction; need >= 8 runs per side or <= 23 tests.")
    # 6/6 and 20 tests: 2/924 x 20 = 0.043 < 0.05, reachable.
    assert detectability([(6, 6)], 20, 0.05) == []
    assert detectability([(6, 6)], 0, 0.05) == []  # nothing tested, nothing to say
    assert detectability([(0, 6)], 5, 0.05) == []  # a side without runs: no test at all
    # Only the sizes that cannot reach alpha are named.
    (note,) = detectability([(20, 20), (4, 4)], 10, 0.05)
    assert note.startswith("n = 4/4 runs, 10 tests:")


def test_multi_side_cells_show_the_change_and_mark_only_significant_ones() -> None:
    from kvmharness.compare.build import MetricRow
    from kvmharness.compare.stats import Change, mann_whitney, summarize

    def row(a: list[float], b: list[float], change: Change, significant: bool,
            direction: str = "lower") -> MetricRow:
        return MetricRow("m", "us", direction, summarize(a), summarize(b),  # type: ignore[arg-type]
                         mann_whitney(a, b), change, significant)

    worse = row([1.0, 2.0], [3.0, 4.0], Change(1.0, 0.5, 1.5), True)
    better = row([3.0, 4.0], [1.0, 2.0], Change(-0.5, -0.6, -0.4), True)
    quiet = row([3.0, 4.0], [1.0, 2.0], Change(-0.5, -0.6, -0.4), False)
    assert change_cell(worse) == "+100.0%!" and change_cell(better) == "-50.0%*"
    assert change_cell(dataclasses.replace(worse, direction="higher")) == "+100.0%*"
    assert change_cell(quiet) == "-50.0%"  # printed, unmarked
    # A's median 0: no ratio; 0 against 0 is no change, 0 against 5 has no percentage.
    zero = row([0.0, 0.0], [0.0, 0.0], Change(None, None, None), False)
    assert change_cell(zero) == "+0.0%"
    assert change_cell(row([0.0, 0.0], [5.0, 5.0], Change(None, None, None), False)) == "-"
    assert change_cell(None) == "-"


def _small_report(n: int, noisy: bool = False) -> Report:
    data_a = {k: v[:n] for k, v in DATA_A.items()}
    if noisy:
        data_a["total"] = [89.0, 300.0, 20.0, 95.0, 88.0][:n]
    a = result_file("6.1.0", runs_from(data_a, {"zap": "all"}),
                    environment("6.1.0", False), "a.json")
    b = result_file("6.12.0", runs_from({k: v[:n] for k, v in DATA_B.items()},
                                        {"zap": "all"}), environment("6.12.0", True), "b.json")
    return build_report([a, b], settings=Settings(seed=1))


@pytest.mark.parametrize("n,level", [(2, "50%"), (3, "75%"), (5, "93.75%")])
def test_small_n_shows_the_ci_level_it_achieves(n: int, level: str) -> None:
    report = _small_report(n)
    note = f"CI level: {level} at n={n} (the most n allows; 95% needs n >= 6)"
    detail = format_report(report, "plain", View(detail=True))
    assert "95% CI of median" not in detail
    assert re.search(r"^per side +median +CI of median", detail, re.M)
    assert note in detail
    md = format_report(report, "markdown")
    header = next(line for line in md.splitlines() if line.startswith("| metric"))
    assert [c.strip() for c in header.split("|")][4:6] == ["A median [CI]", "B median [CI]"]
    assert note + "." in md
    f = report.comparisons[0].a.files[0]
    summary = format_run_summary(f)
    assert "95% CI" not in summary and note in summary
    assert max(len(line) for line in (detail + summary).splitlines()) <= 75
    # Enough runs: the interval reaches 95%, the header says so, and no note.
    full = format_report(_small_report(10), "plain", View(detail=True))
    assert "95% CI of median" in full and "CI level:" not in full


def test_cover_letter_names_the_noise_behind_a_tilde() -> None:
    text = format_report(_small_report(5, noisy=True), "cover-letter")
    assert "(~)" in text
    assert "Caveats: noisy, CoV >= 10%: total 90%; outlier runs: total." in text
    assert max(len(line) for line in text.splitlines()) <= 72
    # Too few runs for any significance: the cover letter says so too.
    few = " ".join(format_report(_small_report(3, noisy=True), "cover-letter").split())
    assert "Caveats: noisy, CoV >= 10%: total 107%." in few
    assert "n = 3/3 runs: no change can reach p < 0.05 even without correction" in few
    quiet = format_report(_small_report(10), "cover-letter")
    assert "Caveats" not in quiet


def test_detail_drops_the_hint_to_use_detail() -> None:
    report = _small_report(5, noisy=True)
    plain = format_report(report, "plain")
    assert "outlier runs (--detail shows the spread): A total" in plain
    detail = format_report(report, "plain", View(detail=True))
    assert "outlier runs: A total" in detail and "--detail" not in detail


def test_multi_side_footer_names_each_side() -> None:
    files = [result_file(lb, runs_from(data, {"zap": "all"}, start=i * 20),
                         environment(lb, True), f"{lb}.json")
             for i, (lb, data) in enumerate((("k1", DATA_A), ("k2", DATA_B), ("k3", DATA_A)))]
    text = " ".join(format_report(build_report(files, settings=Settings(seed=1)))
                    .split())
    assert "change = X/A - 1 for each side X" in text and "B/A" not in text
    two = " ".join(format_report(label_report()).split())
    assert "change = B/A - 1" in two


def test_cli_same_runs_on_both_sides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvmharness import cli

    f = result_file("old", runs_from(DATA_A, {"zap": "all"}), environment("6.1.0", False), "")
    x, copy = _write(tmp_path, f, "x.json"), _write(tmp_path, f, "copy.json")
    assert cli.main(["compare", "--a", str(x), "--b", str(x)]) == 1
    err = capsys.readouterr().err
    assert f"--a and --b name the same runs ({x}): nothing to compare" in err
    assert cli.main(["compare", "--a", str(x), "--b", str(copy),
                     "--fail-on-regression", "5%"]) == 125
    err = capsys.readouterr().err
    assert f"--a and --b name the same runs (A: {x}; B: {copy}): nothing to compare" in err
    assert "no scenario has files on both sides" not in err


def test_show_marks_counters_pvm_does_not_count(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from kvmharness import cli

    pvm = {"kernel": {"release": "6.18"}, "backend": {"kind": "pvm", "nested": True}}
    wraps = "memslot_generation_wraps_per_second"
    data = dict(DATA_A, delete=[0.0] * 10, **{wraps: [0.0] * 10})
    f = result_file("6.18", runs_from(data, {"zap": "all"}), pvm, "")
    assert wraps in f.scenario["headline"]
    assert cli.main(["show", str(_write(tmp_path, f, "pvm.json"))]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"Not counted here (PVM counts none, all zero): {wraps}" in out
    # A time all zero is data (a broken clock or file), never "not counted".
    assert "delete [us] 0 " in out and "zero): delete" not in out
    assert f"all zero): {wraps}" in " ".join(format_run_summary(f).split())
    # Elsewhere a 0 is data (zap=slot refaults nothing): shown as a value.
    f_svm = result_file("6.18", runs_from(data, {"zap": "all"}), environment("6.18", True), "")
    assert cli.main(["show", str(_write(tmp_path, f_svm, "svm.json"))]) == 0
    out = capsys.readouterr().out
    assert "Not counted" not in out and re.search(r"^ +delete \[us\] +0 ", out, re.M)


def _family_files(*, slot_variant: bool, other_scenario: bool) -> list[ResultFile]:
    """6 runs per side of rom-toggle (headline: total, delete) for two kernels; optionally
    a second variant in the same files and a second scenario's files next to them."""
    def side(label: str, data: dict[str, list[float]], scale: float) -> list[RunRecord]:
        runs = runs_from({k: v[:6] for k, v in data.items()}, {"zap": "all"})
        if slot_variant:
            slot = {k: [x * scale for x in v[:6]] for k, v in data.items()}
            runs += runs_from(slot, {"zap": "slot"}, start=6)
        return runs

    variants = [{"zap": "all"}, {"zap": "slot"}] if slot_variant else [{"zap": "all"}]
    files = []
    for label, data, scale, env in (("6.1.0", DATA_A, 1.0, environment("6.1.0", False)),
                                    ("6.12.0", DATA_B, 0.5, environment("6.12.0", True))):
        f = result_file(label, side(label, data, scale), env, f"{label}.json", variants)
        f.scenario = dict(f.scenario, headline=["total", "delete"])
        files.append(f)
        if other_scenario:
            g = result_file(label, runs_from({k: [x * scale for x in v[:6]]
                                              for k, v in data.items()}, {"zap": "all"}),
                            env, f"other-{label}.json")
            g.scenario = dict(g.scenario, name="slot-ops")
            files.append(g)
    return files


def _rows(report: Report, scenario: str, context: str) -> dict[str, tuple[Any, ...]]:
    (c,) = [c for c in report.comparisons if c.scenario == scenario and c.context == context]
    return {r.metric: (r.p, r.p_adj, r.significant, r.exploratory) for r in c.rows}


def test_a_rows_verdict_does_not_depend_on_what_else_is_compared() -> None:
    alone = build_report(_family_files(slot_variant=False, other_scenario=False),
                         settings=Settings(seed=1))
    rows = _rows(alone, "rom-toggle", "zap=all")
    assert set(rows) == {"total", "delete"}
    assert rows["total"][2]  # -5%, significant at 6/6 in a family of 2
    crowded = build_report(_family_files(slot_variant=True, other_scenario=True),
                           settings=Settings(seed=1, all_metrics=True))
    assert len(crowded.comparisons) == 3 and crowded.tests == 9
    everything = _rows(crowded, "rom-toggle", "zap=all")
    # The extra metric is a row of its own family, marked exploratory; the headline rows
    # keep their p, adjusted p and mark.
    assert everything.pop("memslot_generation_wraps_per_second")[3] is True
    assert everything == rows
    text = format_report(crowded)
    assert "memslot_generation_wraps_per_second? [1/s]" in text
    flat = " ".join(text.split())
    assert ("Holm's correction within a family of 2-3 tests: the headline metrics of one "
            "scenario's comparison of two sides; other metrics ('?' after the name) are "
            "exploratory, corrected as a family of their own") in flat


def test_gate_cannot_judge_what_it_could_not_test(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """rom-toggle passes=5 vs passes=40 shape: total 102 -> 628 ms (+516%).  At 4/4 runs
    and 3 headline tests the smallest adjusted p is 3 x 2/70 = 0.086: nothing can be
    significant, so the gate must not pass it (125, runs needed named) and the table shows
    the change as untested, not '~'.  At 8/8 the same change is a regression (1)."""
    from kvmharness import cli

    def data(total: float, n: int) -> dict[str, list[float]]:
        return {"total": [total + 0.3 * i for i in range(n)],
                "delete": [16.0 + 0.1 * i for i in range(n)],
                "memslot_generation_wraps_per_second": [3.0 + 0.01 * i for i in range(n)]}

    for n, expected in ((4, 125), (8, 1)):
        five = _write(tmp_path, result_file("passes5", runs_from(data(102.0, n), {"zap": "all"}),
                                            environment("6.12.0", True), ""), f"p5-{n}.json")
        forty = _write(tmp_path, result_file("passes40", runs_from(data(628.4, n),
                                                                    {"zap": "all"}),
                                             environment("6.12.0", True), ""), f"p40-{n}.json")
        assert cli.main(["compare", str(five), str(forty), "--fail-on-regression", "5"]) == expected
        out, err = capsys.readouterr()
        row = next(line for line in out.splitlines() if line.startswith("total [ms]"))
        if n == 4:
            assert "+513.8%  untested" in row and "~" not in row
            assert ("cannot judge: rom-toggle (zap=all) passes5 vs passes40: n = 4/4 runs "
                    "cannot reach p < 0.05 over its 3 headline tests; need >= 5 runs per "
                    "side") in err
        else:
            assert "worse" in row and "regression: rom-toggle (zap=all) total" in err


def _boot_files(boots: int, runs: int) -> list[ResultFile]:
    """Two kernels, ``boots`` boots each (one file per boot, as ab writes), ``runs`` runs
    per boot; each boot shifted a little (boot-to-boot variance)."""
    files = []
    for label, data in (("6.1.0", DATA_A), ("6.12.0", DATA_B)):
        for boot in range(boots):
            shifted = {k: [x * (1 + 0.01 * boot) for x in v[:runs]] for k, v in data.items()}
            env = environment(label, label == "6.12.0")
            env["kernel"]["boot_id"] = f"{label}-boot-{boot}"
            files.append(result_file(label, runs_from(shifted, {"zap": "all"}, start=boot * 100),
                                     env, f"r{boot + 1}-{label}.json"))
    return files


def test_a_kernel_comparison_tests_boots_not_runs() -> None:
    from kvmharness.compare.build import boot_of
    from kvmharness.compare.stats import mann_whitney, safe_median

    files = _boot_files(boots=5, runs=3)
    (c,) = build_report(files, settings=Settings(seed=1)).comparisons
    total = next(r for r in c.rows if r.metric == "total")
    assert total.boots == (5, 5) and (total.a.n, total.b.n) == (15, 15)
    medians = {lb: [safe_median([r.value("total") for r in f.runs])  # type: ignore[misc]
                    for f in files if f.label == lb] for lb in ("6.1.0", "6.12.0")}
    assert total.p == mann_whitney(medians["6.1.0"], medians["6.12.0"]).p == 2 / 252
    assert total.significant  # 3 tests x 2/252 = 0.024
    assert total.spread is not None and total.spread[0].boots == 5
    a_between = total.spread[0].between
    assert a_between is not None and 0.01 < a_between < 0.03  # boots 1% apart
    text = format_report(build_report(files, settings=Settings(seed=1)))
    assert re.search(r"^total \[ms\] .* 15/5 15/5$", text, re.M)
    assert "Tested on per-boot medians; spread (CoV) between boots / within a boot:" in text
    # Two boots per side: at the boot level nothing can be significant, and it says so.
    two = build_report(_boot_files(boots=2, runs=6), settings=Settings(seed=1))
    assert all(r.untestable and r.boots == (2, 2) for r in two.comparisons[0].rows)
    assert "n = 2/2 boots: no change can reach p < 0.05 even without correction; need >= " \
           "4 boots per side." in " ".join(format_report(two).split())
    md = format_report(two, "markdown")
    assert "untested |" in md and "runs/boots |" in md and "12/2 12/2 |" in md
    # One boot per side: the runs are tested, with the warning that no kernel-level claim
    # is possible.
    (one,) = build_report(_boot_files(boots=1, runs=6), settings=Settings(seed=1)).comparisons
    assert all(r.boots is None for r in one.rows)
    assert any("no kernel-level claim is possible" in w for w in one.warnings)
    assert boot_of(files[0]) == "6.1.0-boot-0"


def test_cover_letter_carries_the_commands_within_72_columns_at_any_path_length(
        tmp_path: Path) -> None:
    import shlex
    import subprocess

    folder = "/srv/" + "kernel-bisect-results/" * 3
    path = folder + "rom-toggle-6.12.json"
    path = folder + "x" * (100 - len(path)) + "rom-toggle-6.12.json"
    assert len(path) == 100
    a = result_file("6.1.0", runs_from(DATA_A, {"zap": "all"}), environment("6.1.0", False),
                    path.replace("6.12", "6.1"))
    b = result_file("6.12.0", runs_from(DATA_B, {"zap": "all"}), environment("6.12.0", True),
                    path)
    for f, label in ((a, "6.1.0"), (b, "6.12.0")):
        f.command = shlex.join(["kvmharness", "run", "rom-toggle", "--label", label,
                                "--out", folder + "x" * 30])
    command = shlex.join(["kvmharness", "compare", a.source, b.source,
                          "--format", "cover-letter"])
    text = format_report(build_report([a, b], settings=Settings(seed=1), command=command),
                         "cover-letter")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 72
    produced = lines.index("Produced by:")
    compared = lines.index("Compared by:")
    assert produced < compared
    # Pasted into a shell, the lines are the same commands, word for word.
    for start, end, original in ((compared + 1, len(lines), command),
                                 (produced + 1, produced + 1 + (compared - produced - 1) // 2,
                                  a.command)):
        pasted = "\n".join(lines[start:end]).replace("  $ kvmharness", "printf '%s\\n'", 1)
        words = subprocess.run(["bash", "-c", pasted], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        assert words == shlex.split(original)[1:]


def test_baseline_parameters_and_timing_caveat() -> None:
    a = result_file("6.1.0", runs_from(DATA_A, {"zap": "all"}), environment("6.1.0", False),
                    "a.json")
    b = result_file("6.12.0", runs_from(DATA_B, {"zap": "all"}), environment("6.12.0", True),
                    "b.json")
    b.parameters = {"pages": 4000}
    (c,) = build_report([a, b], settings=Settings(seed=1), baseline="6.12.0",
                        ).comparisons
    assert (c.a.name, c.b.name) == ("6.12.0", "6.1.0")
    with pytest.raises(CompareError, match="--baseline 6.2: no label, variant or file"):
        build_report([a, b], baseline="6.2")
    text = " ".join(format_report(build_report([a, b])).split())
    assert "Parameters (rom-toggle): (none) differ: pages=2000/4000" in text
    assert "Timings not representative" not in text
    b.environment["backend"] = {"kind": "pvm", "emulated": True}
    for fmt in ("plain", "cover-letter"):
        text = " ".join(format_report(build_report([a, b]), fmt).split())
        assert ("Timings not representative: measured on PVM (instruction emulation)"
                in text)
