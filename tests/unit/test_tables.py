"""Comparison building, warnings, and the four output formats (golden files).

Regenerate the golden files after an intended format change with
``KVMHARNESS_UPDATE_GOLDEN=1 python3 -m pytest tests/unit/test_tables.py`` and review the diff.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any, Sequence

import pytest

from kvmharness.compare import tables
from kvmharness.compare.build import CompareError, Report, Settings, build_report
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
    check_golden(name, tables.format_report(label_report(), fmt))


def test_plain_is_ascii_and_fits_75_columns() -> None:
    text = tables.format_report(label_report(), "plain")
    text.encode("ascii")
    assert max(len(line) for line in text.splitlines()) <= 75
    assert "delete [us]" in text and "total [ms]" in text
    # The setup differences come once, before the table; in full with show_setup.
    assert text.index("kernel release") < text.index("metric [unit]")
    assert "kvm.quirks.SLOT_ZAP_ALL: false -> true" in text
    full = tables.format_report(label_report(), "plain", tables.View(show_setup=True))
    assert "kernel.release: 6.1.0 -> 6.12.0" in full


def test_verdicts() -> None:
    report = label_report()
    rows = {r.metric: r for r in report.comparisons[0].rows}
    assert rows["total"].significant and rows["total"].change.ratio == pytest.approx(
        84.75 / 89.15 - 1)
    assert not rows["delete"].significant
    plain = tables.format_report(report, "plain")
    assert re.search(r"^total \[ms\] +89\.15 +84\.75 +-4\.9% +better +<0\.001 +10/10$",
                     plain, re.M)
    assert re.search(r"^delete \[us\] +16\.30 +16\.35 +~ +1\.000 +10/10$", plain, re.M)
    assert "Holm's correction over the report's 3 tests" in " ".join(plain.split())


def test_cover_letter_line_format() -> None:
    text = tables.format_report(label_report(), "cover-letter")
    assert max(len(line) for line in text.splitlines()) <= 72
    assert re.search(r"^  total: +Before: 89\.150 ms  After: 84\.750 ms  \(-4\.9%\)$", text,
                     re.M)
    assert re.search(r"^  delete: +Before: 16\.300 us  After: 16\.350 us  \(no change\)$",
                     text, re.M)
    assert text.startswith("Kernel: 6.1.0, 6.12.0\nHost:   SVM (nested)")
    assert "n = 10/10 runs" in " ".join(text.split())


def test_csv_is_machine_readable() -> None:
    rows = list(csv.DictReader(io.StringIO(tables.format_report(label_report(), "csv"))))
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
    for fmt in tables.FORMATS:
        tables.format_report(report, fmt)
    cover = tables.format_report(report, "cover-letter")
    assert "6.1.0 has no completed runs (skipped: no SLOT_ZAP_ALL quirk)" in " ".join(
        cover.split())
    plain = tables.format_report(report, "plain")
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
    few_a = result_file("6.1.0", runs_from({k: v[:3] for k, v in DATA_A.items()},
                                           {"zap": "all"}), {}, "a.json")
    (c,) = build_report([few_a, b]).comparisons
    assert any("n=3/3: the smallest possible p is 0.1 >= alpha 0.05" in w for w in c.warnings)
    assert "kernel.release: (absent) -> 6.1.0" in c.differences


def test_long_names_wrap_instead_of_widening() -> None:
    lines = tables.grid(["metric", "value"], [["x" * 90, "1"], ["short", "2"]], [False, True])
    assert max(len(line) for line in lines) <= 75
    assert lines[2:4] == ["x" * 75, "x" * 15] and lines[4].endswith("1")


def test_number_formatting() -> None:
    assert tables.num(89.117, 5) == "89.117"
    assert tables.num(0.0123) == "0.01230"
    assert tables.num(123456.7) == "123457"
    assert tables.num(None) == "-"
    assert tables.ascii_text("16 \u00b5s \u00b1 2%") == "16 us +- 2%"


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
    text = tables.format_report(build_report([a, a2, b], settings=Settings(seed=1)), "plain")
    assert max(len(line) for line in text.splitlines()) <= 75
    assert "A: 6.1.0, 20 runs, from:" in text
    assert "\n    r2-6.1/rom-toggle-6.1-20261126T012654Z.json\n" in text
    # Short enough: still one line.
    assert "B: 6.12.0, 10 runs (r1-6.12/rom-toggle-6.12-20261126T012605Z.json)" in text


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
    assert tables._split_path(path, 72) == ["/work/main/results/examples/ab-6.1-vs-6.12/r1-6.1/",
                                            "rom-toggle-6.1-20261126T012522Z.json"]
    assert tables._split_path("a" * 100, 72) == ["a" * 72, "a" * 28]
    assert "".join(tables._split_path("/x/" + "b" * 80 + "/c.json", 72)) == (
        "/x/" + "b" * 80 + "/c.json")
