"""``python -m kvmharness.bench.ioctl --peer`` end to end with tiny counts: the C peer
builds, both tables get a row per operation.  No timing is asserted."""

from __future__ import annotations

import math
import shutil

import pytest

from kvmharness.bench import ioctl


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the C peer needs gcc")
def test_peer_prints_a_row_per_operation(kvm, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a fresh build, never the repo
    with kvm.create_vm() as probe:
        have_quirk = probe.slot_zap_all_supported
    assert ioctl.main(["--peer", "-n", "3", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    in_process, _, peer = out.partition("Harness vs C")
    assert peer, out
    expected = [label for op, label in ioctl.LABELS.items() if op != "move-slot" or have_quirk]
    for table in (in_process, peer):
        for label in expected:
            rows = [line for line in table.splitlines() if line.startswith(label + " ")]
            assert len(rows) == 1, f"no single row for {label!r}:\n{table}"
            cells = rows[0][len(label):].split()
            assert cells and all(c == "-" or math.isfinite(float(c)) for c in cells), rows[0]
    assert max(len(line) for line in out.splitlines()) <= 75
    assert list(tmp_path.glob("kvmharness/bench/*/kvmharness-ioctl-peer"))
