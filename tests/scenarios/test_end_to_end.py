"""The whole stack on the real /dev/kvm: `kvmharness run` writes a valid result file that
`kvmharness compare` reads, and the Python API returns the same kind of objects."""

from __future__ import annotations

import pytest

from kvmharness import api, cli
from kvmharness.results.store import load_result
from kvmharness.scenarios.base import RunOutcome


@pytest.mark.usefixtures("kvm", "leaks")
def test_cli_run_then_compare(tmp_path, capsys):
    rc = cli.main(["run", "rom-toggle", "--quick", "--repeat", "2", "--iterations", "1",
                   "--out", str(tmp_path), "--label", "e2e"])
    assert rc == 0, capsys.readouterr().err
    files = list(tmp_path.glob("rom-toggle-e2e-*.json"))
    assert len(files) == 1
    result = load_result(files[0])
    assert result.status == "complete"
    ran = {r.variant["zap"] for r in result.runs if r.status == "ok"}
    skipped = {r.variant["zap"] for r in result.runs if r.status == "skipped"}
    assert "all" in ran and ran | skipped == {"all", "slot"}
    run = next(r for r in result.runs if r.status == "ok")
    assert run.samples["total"].unit == "ms" and len(run.samples["total"].values) == 1
    assert run.kvm_stats and "zap_path" in run.effective
    assert result.environment["kernel"]["release"]
    capsys.readouterr()
    assert cli.main(["compare", str(files[0]), "--format", "markdown"]) == 0
    table = capsys.readouterr().out
    if skipped:
        # Before v6.12 zap=slot cannot run: the report says why instead of a table.
        assert "no completed runs" in table.lower() and "quirk not supported" in table
    else:
        cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()
                 if line.startswith("| ")]
        assert ["total", "ms", "lower"] in [row[:3] for row in cells]


@pytest.mark.usefixtures("kvm")
def test_api_run_once_and_unknown_names():
    outcome = api.run_once("mmio", quick=True, params={"kinds": "pio"}, iterations=1, warmup=0)
    assert isinstance(outcome, RunOutcome) and outcome.samples["pio_cycles"]
    with pytest.raises(KeyError, match="unknown scenario 'rom'.*rom-toggle"):
        api.run_once("rom")
    with pytest.raises(ValueError, match="parameter 'vcpus' expects 1..64"):
        api.run_once("rom-toggle", params={"vcpus": "two"})
