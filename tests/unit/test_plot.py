"""`kvmharness plot`: each figure kind rendered as PNG and SVG (matplotlib, Agg backend),
and the one-line answer when matplotlib is missing."""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from kvmharness import cli
from kvmharness.results.model import MetricSamples, ResultFile, RunRecord

SIZES = {"4K": 1.0, "64K": 1.5, "1M": 3.0}


def run(index: int, variant: str, samples: dict[str, tuple[str, list[float]]]) -> RunRecord:
    return RunRecord(index=index, repeat=index, variant={"zap": variant}, status="ok",
                     reason=None, start_time=1000.0 + index, end_time=1001.0 + index,
                     samples={k: MetricSamples(u, "lower", v) for k, (u, v) in samples.items()})


def result(scenario: str, runs: list[RunRecord]) -> ResultFile:
    return ResultFile(scenario={"name": scenario, "summary": "", "parameters": [],
                                "metrics": [], "variant_axes": []},
                      parameters={}, quick=True, label="k", variants=[{"zap": "all"},
                                                                      {"zap": "slot"}],
                      repeat=3, iterations=3, warmup=1, environment={}, status="complete",
                      runs=runs, source="")


def slot_ops() -> ResultFile:
    runs = []
    for i in range(6):
        variant = "all" if i % 2 == 0 else "slot"
        scale = 1.0 if variant == "all" else 0.6
        runs.append(run(i, variant, {f"{op}@{size}": ("us", [x * scale * 100 + i, x * 110])
                                     for op in ("create", "move", "delete")
                                     for size, x in SIZES.items()}))
    return result("slot-ops", runs)


def rom_toggle() -> ResultFile:
    runs = []
    for i in range(4):
        variant = "all" if i % 2 == 0 else "slot"
        passes = [60.0 + (20 if variant == "all" and p % 5 == 0 else 0) + i for p in range(15)]
        runs.append(run(i, variant, {"pass": ("ms", passes), "toggles": ("deletes",
                                                                         [5, 6, 5])}))
    return result("rom-toggle", runs)


def teardown() -> ResultFile:
    runs = [run(i, "all", {f"destroy@{s}": ("ms", [m * 10 + i]) for s, m in
                           (("4M", 1), ("16M", 3), ("256M", 40))} |
                {f"probe_max_delay@{s}": ("us", [m * 50.0]) for s, m in
                 (("4M", 1), ("16M", 2), ("256M", 9))}) for i in range(4)]
    return result("teardown", runs)


def slot_scale() -> ResultFile:
    """Families over memslot counts (``create@<count>``): slot-scale's declared figure."""
    runs = [run(i, "all" if i % 2 == 0 else "slot",
                {f"{op}@{count}": ("us", [count * (1.0 if i % 2 == 0 else 0.5) + i])
                 for op in ("create", "move", "delete") for count in (1, 64, 1024)})
            for i in range(4)]
    return result("slot-scale", runs)


def need_matplotlib() -> None:
    """CI (KVMHARNESS_REQUIRE_KVM=1) installs the [plot] extra: there a missing matplotlib
    fails; elsewhere, and inside a tools/vng-run boot (whose Python has the runtime
    dependencies only), the figure tests skip with the install command as the reason."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if (os.environ.get("KVMHARNESS_REQUIRE_KVM") == "1"
                and not os.environ.get("KVMHARNESS_VNG_KERNEL")):
            raise
        pytest.skip("matplotlib missing: pip install 'kvmharness[plot]'")


def write(tmp_path: Path, f: ResultFile) -> Path:
    path = tmp_path / f"{f.scenario_name}.json"
    path.write_text(json.dumps(f.to_json()))
    return path


def check_figure(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000
    if path.suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        root = ET.fromstring(data)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"


@pytest.mark.parametrize("make", [slot_ops, rom_toggle, teardown, slot_scale],
                         ids=["slot-ops", "rom-toggle", "teardown", "slot-scale"])
@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_each_kind_renders(tmp_path: Path, make: Any, suffix: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
    need_matplotlib()
    src = write(tmp_path, make())
    out = tmp_path / f"figure{suffix}"
    assert cli.main(["plot", str(src), "--out", str(out)]) == 0, capsys.readouterr().err
    check_figure(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rom_toggle_timeline_is_drawn_over_time(tmp_path: Path) -> None:
    need_matplotlib()
    from kvmharness.plot import plot_files

    f = rom_toggle()
    f.runs[0].effective["timeline"] = {"pass_end_s": [0.1, 0.2, 0.3],
                                       "pass_ms": [60.0, 90.0, 61.0], "delete_s": [0.15]}
    check_figure(plot_files([f], tmp_path / "t.svg"))


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path, slot_ops())
    assert cli.main(["plot", str(src), "--out", str(tmp_path / "x.pdf")]) == 1
    assert "must end in .png or .svg" in capsys.readouterr().err
    mmio = write(tmp_path, result("mmio", [run(0, "all", {"pio_cycles": ("cycles", [1.0])})]))
    assert cli.main(["plot", str(mmio), "--out", str(tmp_path / "x.png")]) == 1
    assert "no figure for scenario 'mmio'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    src = write(tmp_path, slot_ops())
    assert cli.main(["plot", str(src), "--out", str(tmp_path / "f.png")]) == 1
    err = capsys.readouterr().err
    assert err == "kvmharness plot needs matplotlib: pip install 'kvmharness[plot]'\n"
    assert not (tmp_path / "f.png").exists()


def test_the_timeline_drawn_is_the_run_closest_to_the_median_and_says_so() -> None:
    from kvmharness.plot.figures import sides, timeline_run

    f = rom_toggle()
    runs = [r for r in f.runs if r.variant == {"zap": "all"}]
    for r, total in zip(runs, (100.0, 300.0)):
        r.samples["total"] = MetricSamples("ms", "lower", [total])
        r.effective["timeline"] = {"pass_end_s": [0.1], "pass_ms": [60.0], "delete_s": []}
    extra = run(9, "all", {"total": ("ms", [170.0])})
    extra.effective["timeline"] = {"pass_end_s": [0.1], "pass_ms": [60.0], "delete_s": []}
    chosen = timeline_run([*runs, extra])
    assert chosen is not None and chosen[0] is extra
    assert chosen[1] == ("run 3 of 3, last iteration; its total 170.0 ms is the median "
                         "over 3 runs")
    del runs[1].samples["total"]  # two runs: the median lies between them
    chosen = timeline_run([*runs, extra])
    assert chosen is not None and chosen[0] is runs[0]  # a tie: the earlier run
    assert chosen[1].endswith("its total 100.0 ms is closest to the median 135.0 ms over "
                              "2 runs")
    assert timeline_run([r for r in f.runs if r.variant == {"zap": "slot"}]) is None
    # The kernel label is part of every side's name, even with one label in the files.
    assert sorted(name for name, _ in sides([f])) == ["k zap=all", "k zap=slot"]


def test_an_unwritable_output_is_named_not_its_temporary(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    need_matplotlib()
    src = write(tmp_path, slot_ops())
    target = tmp_path / "missing" / "p.png"
    assert cli.main(["plot", str(src), "--out", str(target)]) == 1
    assert capsys.readouterr().err == (f"kvmharness plot: cannot write {target}: "
                                       "No such file or directory\n")
