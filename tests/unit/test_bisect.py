"""git bisect run's step: the verdict rule (good only on evidence) and the step's exit
statuses for build, boot and baseline failures (builds and boots faked; a real git repo)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvmharness.compare.build import Settings, build_sides_report
from kvmharness.compare.gate import BAD, GOOD, SKIP, bisect_verdict
from kvmharness.results.store import write_result
from kvmharness.runner import bisect, kvmbuild
from tests.unit.test_tables import DATA_B, environment, result_file, runs_from

FAST = DATA_B["total"]  # ten runs around 84.7 ms


def side(label: str, totals: list[float], source: str) -> Any:
    data = {"total": totals, "delete": [16.3] * len(totals),
            "memslot_generation_wraps_per_second": [3.1] * len(totals)}
    return result_file(label, runs_from(data, {"zap": "slot"}), environment("6.12", True),
                       source, variants=[{"zap": "slot"}])


def verdict(a: list[float], b: list[float], threshold: float = 0.10) -> tuple[int, list[str]]:
    report = build_sides_report([side("good", a, "a.json")], [side("step", b, "b.json")],
                                settings=Settings(seed=1))
    return bisect_verdict(report, threshold, ["total"])


def test_a_large_significant_slowdown_is_bad() -> None:
    status, reasons = verdict(FAST, [v * 20 for v in FAST])
    assert status == BAD
    assert "total" in reasons[0] and "+1900.0%" in reasons[0]


def test_good_needs_the_whole_ci_below_the_limit() -> None:
    status, reasons = verdict(FAST, [v * 1.01 for v in reversed(FAST)])
    assert status == GOOD, reasons
    # Noisy enough that the change's CI reaches +10%: not called good.
    noisy = [84.0, 120.0, 70.0, 95.0, 60.0, 110.0, 80.0, 100.0, 65.0, 130.0]
    status, reasons = verdict(FAST, noisy)
    assert status == SKIP and "cannot call it good" in reasons[0]


def test_too_few_runs_to_see_a_regression_is_skip_not_good() -> None:
    # Two runs per side: the smallest two-sided p is 1/3, nothing can be significant.
    status, reasons = verdict(FAST[:2], FAST[2:4])
    assert status == SKIP and "no p can be below 0.05" in reasons[0]
    # ... even when the slowdown is huge: it is not called bad without significance either.
    assert verdict(FAST[:2], [v * 20 for v in FAST[:2]])[0] == SKIP


def test_a_metric_not_in_the_results_cannot_be_judged() -> None:
    report = build_sides_report([side("good", FAST, "a.json")],
                                [side("s", [v * 1.01 for v in FAST], "b.json")],
                                settings=Settings(seed=1))
    status, reasons = bisect_verdict(report, 0.10, ["no_such_metric"])
    assert status == SKIP and "no comparable row" in reasons[0]


# --- the step ---------------------------------------------------------------------------------

@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    if shutil.which("git") is None:
        pytest.skip("no git")
    src = tmp_path / "src"
    (src / "arch/x86/kvm").mkdir(parents=True)
    (src / "virt/kvm").mkdir(parents=True)
    (src / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\n")
    (src / "arch/x86/kvm/x86.c").write_text("int x;\n")
    (src / "virt/kvm/kvm_main.c").write_text("int k;\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), "-c", "user.name=t", "-c",
                               "user.email=t@t", *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "base")
    good = git("rev-parse", "HEAD")
    (src / "arch/x86/kvm/x86.c").write_text("int x; /* changed */\n")
    git("commit", "-qam", "change")
    return src, good, git("rev-parse", "HEAD")


def request(src: Path, good: str, out: Path) -> bisect.StepRequest:
    return bisect.StepRequest(source=src, good=good, target="6.12.117+deb12-amd64", calls=(),
                              out=out, metrics=("total",), settings=Settings(seed=1))


def fake_world(monkeypatch: pytest.MonkeyPatch, out: Path, *, build_fails: set[str],
               boot_fails: set[str], totals: dict[str, list[float]]) -> list[str]:
    """_build and _measure replaced: which overlay is built, which boot fails, and the
    result files each boot writes.  Returns the calls made, in order."""
    calls: list[str] = []

    def fake_build(req: bisect.StepRequest, source: Path, overlay: Path, log: Any) -> float:
        calls.append(f"build {overlay.name}")
        if overlay.name in build_fails:
            raise kvmbuild.BuildError("make exited with 2")
        return 16.0

    def fake_measure(req: bisect.StepRequest, name: str, overlay: Path, out_dir: Path,
                     log: Any) -> tuple[list[Path], str | None, float]:
        calls.append(f"boot {overlay.name}")
        if overlay.name in boot_fails:
            return [], "the boot failed: no exit status from the guest", 90.0
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}.json"
        write_result(path, side(name, totals[overlay.name], str(path)))
        return [path], None, 90.0

    monkeypatch.setattr(bisect, "_build", fake_build)
    monkeypatch.setattr(bisect, "_measure", fake_measure)
    return calls


def test_step_statuses(repo: tuple[Path, str, str], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    src, good, head = repo
    out = tmp_path / "out"
    totals = {"overlay-good": FAST, "overlay-step": [v * 20 for v in FAST]}
    calls = fake_world(monkeypatch, out, build_fails=set(), boot_fails=set(), totals=totals)
    result = bisect.step(request(src, good, out), print)
    assert result.status == BAD and result.commit == head
    assert calls == ["build overlay-good", "boot overlay-good", "build overlay-step",
                     "boot overlay-step"]
    # The baseline is measured once: the next step only builds and boots the commit.
    totals["overlay-step"] = [v * 1.01 for v in reversed(FAST)]
    calls.clear()
    assert bisect.step(request(src, good, out), print).status == GOOD
    assert calls == ["build overlay-step", "boot overlay-step"]
    bisect.record(out, result)
    line = (out / "bisect-steps.log").read_text()
    assert f" {head[:12]} bad (exit 1) build 16 s, boot 90 s: " in line


def test_build_and_boot_failures_skip_and_a_broken_baseline_stops(
        repo: tuple[Path, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, good, _ = repo
    totals = {"overlay-good": FAST, "overlay-step": FAST}
    fake_world(monkeypatch, tmp_path / "a", build_fails={"overlay-step"}, boot_fails=set(),
               totals=totals)
    result = bisect.step(request(src, good, tmp_path / "a"), print)
    assert result.status == SKIP == 125 and "build failed" in result.reasons[0]
    fake_world(monkeypatch, tmp_path / "b", build_fails=set(), boot_fails={"overlay-step"},
               totals=totals)
    result = bisect.step(request(src, good, tmp_path / "b"), print)
    assert result.status == SKIP and "no exit status" in result.reasons[0]
    fake_world(monkeypatch, tmp_path / "c", build_fails=set(), boot_fails={"overlay-good"},
               totals=totals)
    result = bisect.step(request(src, good, tmp_path / "c"), print)
    assert result.status == bisect.ABORT == 128
    assert "cannot measure the good side" in result.reasons[0]
    result = bisect.step(request(src, "no-such-rev", tmp_path / "d"), print)
    assert result.status == bisect.ABORT


def test_the_good_commit_is_exported_with_git_archive(repo: tuple[Path, str, str],
                                                     tmp_path: Path) -> None:
    src, good, _ = repo
    bisect.export_commit(src, good, tmp_path / "exp")
    assert (tmp_path / "exp/arch/x86/kvm/x86.c").read_text() == "int x;\n"
    assert (tmp_path / "exp/Makefile").is_file() and (tmp_path / "exp/virt/kvm").is_dir()


def test_two_boots_per_side_are_too_few_at_the_boot_level() -> None:
    """With two boots per side the test runs on per-boot medians (n = 2/2): even a
    20-fold slowdown cannot be called, so the step skips (bisect-step --boots 4 can)."""
    def booted(label: str, totals: list[float], boot: str) -> Any:
        f = side(label, totals, f"{label}-{boot}.json")
        f.environment["kernel"]["boot_id"] = boot
        return f

    a = [booted("good", FAST[:5], "g1"), booted("good", FAST[5:], "g2")]
    b = [booted("step", [v * 20 for v in FAST[:5]], "s1"),
         booted("step", [v * 20 for v in FAST[5:]], "s2")]
    report = build_sides_report(a, b, settings=Settings(seed=1))
    status, reasons = bisect_verdict(report, 0.10, ["total"])
    assert status == SKIP and "n=2/2" in reasons[0], reasons
