"""``python -m kvmharness.bench.selftests`` end to end: the kernel's memslot_perf_test is
built from the kernel source, its memslot ioctls come back through the shim classified
as the selftest makes them, and one tiny alternated round prints a ratio row per op.
Skips where the kernel source tarball is absent or no cache folder is writable (the first
build takes minutes; later runs reuse the cache), and inside a boot unless the host built
it already."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from kvmharness.bench import selftests
from kvmharness.bench.selftest_shim import build_shim


def _build_dir() -> Path:
    for folder in (os.environ.get("KVMHARNESS_SELFTEST_BUILD_DIR"), selftests.cache_root()):
        if folder is None:
            continue
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                return path
        except OSError:
            continue
    pytest.skip("no writable folder to build the kernel selftest in")


@pytest.fixture(scope="module")
def built(kvm_session: object) -> tuple[Path, Path]:
    source = selftests.default_source(lambda _: None)
    if not source.is_file():
        pytest.skip(f"{source} is absent (Debian's linux-source package)")
    work = _build_dir()
    if os.environ.get("KVMHARNESS_VNG_KERNEL"):
        # Inside a tools/vng-run boot (emulated CPUs) an extraction and build would take
        # far too long: use what the host built (its cache is visible here), or skip.
        built = next(work.glob(f"*/{selftests.SELFTEST_DIR}/{selftests.SELFTEST}"), None)
        if built is None:
            pytest.skip("inside a boot: the selftest was not built on the host")
        return built, build_shim(Path(tempfile.mkdtemp(prefix="kvmharness-shim-")))
    tree = selftests.source_tree(source, work, lambda _: None)
    return selftests.build_selftest(tree, lambda _: None), build_shim(work)


def test_shim_sees_the_selftests_memslot_ops(built, tmp_path):
    exe, shim = built
    ops = selftests.run_selftest(exe, shim, 5, 1, "all", tmp_path)
    kinds = [op.kind for op in ops]
    # prepare_vm creates slot 0 and test slots 1..4 one by one; the move test moves the
    # last one back and forth beside the other 4; kvm_vm_free deletes all 5.
    creates = [op.others for op in ops if op.kind == "create"]
    assert creates == [0, 1, 2, 3, 4]
    assert kinds.count("move") >= 2 and {op.others for op in ops if op.kind == "move"} == {4}
    assert sorted(op.others for op in ops if op.kind == "delete") == [0, 1, 2, 3, 4]
    assert all(op.ns > 0 for op in ops) and "failed" not in kinds
    # The shim knew the vCPU thread from its KVM_RUN: no CPU clock before it ran (creates),
    # a reading for every move beside it.  (kvm_vm_free's deletes follow pthread_join, but
    # the exiting thread's clock can still be read until the kernel reaps it.)
    assert {(op.vcpu_on, op.vcpu_ns) for op in ops if op.kind == "create"} == {(-1, -1)}
    assert all(op.vcpu_on in (0, 1) and op.vcpu_ns >= 0 for op in ops if op.kind == "move")
    assert not list(tmp_path.iterdir())  # the shim's log is removed


def test_one_tiny_round_prints_a_ratio_per_op(built, capsys, monkeypatch):
    exe, _ = built
    monkeypatch.setattr(selftests, "default_source", lambda progress: exe.parents[4])
    assert selftests.main(["--build-dir", str(_build_dir()), "--counts", "1", "--rounds",
                           "1", "--cycles", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in
            (["create"], ["move"], ["delete"])]
    # Each row names the slot-scale op_state it compares (not-in-guest: back_to_back, the
    # selftest's way, and outside; in-guest: parked).
    assert [r[:3] for r in rows] == [["create", "not-in-guest", "back_to_back"],
                                     ["create", "not-in-guest", "outside"],
                                     ["move", "not-in-guest", "back_to_back"],
                                     ["move", "not-in-guest", "outside"],
                                     ["move", "in-guest", "parked"],
                                     ["delete", "not-in-guest", "back_to_back"],
                                     ["delete", "not-in-guest", "outside"]]
    for row in rows:
        others, n_harness, n_selftest = int(row[3]), int(row[4]), int(row[5])
        assert others >= 2 and n_harness == 2
        if n_selftest == 0:  # e.g. no move of the selftest's found its vCPU on a CPU
            assert row[6:] == ["-"] * 6
            continue
        # harness median, (IQR), selftest median, (IQR), ratio: the ratio is theirs (to
        # the printed precision: medians to 0.1 us, the ratio to 0.01).
        harness_us, selftest_us, ratio = float(row[6]), float(row[8]), float(row[10])
        assert ratio == pytest.approx(harness_us / selftest_us, rel=0.05, abs=0.006)
    assert "after 3\nuntimed round trips" in out
