"""guest_path(): builds on demand, caches, rebuilds on source changes, is safe to run from
several processes at once, and explains a missing toolchain."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmharness.guest import build
from kvmharness.guest.build import (
    available_guests,
    default_build_dir,
    guest_path,
    guests_source_dir,
)
from kvmharness.guest.elf import GuestImage
from kvmharness.guest.errors import GuestBuildError

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="gcc/make not installed")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A private copy of guests/ so the tests never race the real guests/build."""
    dst = tmp_path / "guests"
    shutil.copytree(REPO / "guests", dst, ignore=shutil.ignore_patterns("build"))
    return dst


def bump(path: Path, seconds: float = 10) -> None:
    # Move the mtime clearly into the future: same-tick touches are ambiguous to make.
    t = time.time() + seconds
    os.utime(path, (t, t))


def no_make(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("make was run although the ELF is up to date")


def test_source_dir_of_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVMHARNESS_GUESTS_BUILD_DIR", raising=False)
    assert guests_source_dir() == (REPO / "guests").resolve()
    checkout_build = (REPO / "guests" / "build").resolve()
    assert build.build_dir_candidates(guests_source_dir())[0] == checkout_build
    if os.access(REPO / "guests", os.W_OK):  # not in a read-only checkout (a vng boot)
        assert default_build_dir(guests_source_dir()) == checkout_build
    assert {"hello", "hammer"} <= set(available_guests())


def test_read_only_checkout_builds_in_the_user_cache(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("KVMHARNESS_GUESTS_BUILD_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_access = os.access

    def access(path: str | Path, mode: int) -> bool:
        inside = Path(path).resolve().is_relative_to(REPO.resolve())
        return False if inside and mode == os.W_OK else real_access(path, mode)

    monkeypatch.setattr(build.os, "access", access)
    chosen = default_build_dir(guests_source_dir())
    assert chosen.is_relative_to(tmp_path / "cache" / "kvmharness" / "guests")


def test_source_dir_override(monkeypatch: pytest.MonkeyPatch, src: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("KVMHARNESS_GUESTS_DIR", str(src))
    assert guests_source_dir() == src.resolve()
    monkeypatch.setenv("KVMHARNESS_GUESTS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(GuestBuildError, match="KVMHARNESS_GUESTS_DIR"):
        guests_source_dir()


def test_build_then_cache(monkeypatch: pytest.MonkeyPatch, src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    elf = guest_path("hello", source_dir=src, build_dir=out)
    assert elf == out / "hello.elf" and elf.is_file()
    GuestImage.load(elf)
    mtime = elf.stat().st_mtime_ns

    monkeypatch.setattr(build, "_run_make", no_make)
    assert guest_path("hello", source_dir=src, build_dir=out) == elf
    assert elf.stat().st_mtime_ns == mtime


def test_touching_a_source_rebuilds(monkeypatch: pytest.MonkeyPatch, src: Path,
                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    elf = guest_path("hello", source_dir=src, build_dir=out)
    mtime = elf.stat().st_mtime_ns
    bump(src / "hello.c")
    assert guest_path("hello", source_dir=src, build_dir=out) == elf
    assert elf.stat().st_mtime_ns > mtime

    mtime = elf.stat().st_mtime_ns
    bump(src / "runtime" / "kh.h", 20)
    guest_path("hello", source_dir=src, build_dir=out)
    assert elf.stat().st_mtime_ns > mtime


def test_other_guests_source_does_not_relink(monkeypatch: pytest.MonkeyPatch, src: Path,
                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    elf = guest_path("hello", source_dir=src, build_dir=out)
    mtime = elf.stat().st_mtime_ns
    bump(src / "hammer.c")
    guest_path("hello", source_dir=src, build_dir=out)  # runs make, which leaves hello alone
    assert elf.stat().st_mtime_ns == mtime
    monkeypatch.setattr(build, "_run_make", no_make)  # ...and is not asked again
    guest_path("hello", source_dir=src, build_dir=out)


def test_missing_toolchain_names_packages(monkeypatch: pytest.MonkeyPatch, src: Path,
                                          tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(GuestBuildError) as info:
        guest_path("hello", source_dir=src, build_dir=tmp_path / "out")
    message = str(info.value)
    for word in ("gcc", "make", "binutils", "apt-get install"):
        assert word in message, message


def test_unknown_guest(src: Path, tmp_path: Path) -> None:
    with pytest.raises(GuestBuildError, match=r"unknown guest 'nope'; available: .*hammer, hello"):
        guest_path("nope", source_dir=src, build_dir=tmp_path / "out")


def test_compile_error_shows_compiler_output(src: Path, tmp_path: Path) -> None:
    (src / "broken.c").write_text('#include "kh.h"\nvoid guest_main(uint32_t v, void *a) '
                                  '{ undeclared_thing(); }\n')
    with pytest.raises(GuestBuildError, match=r"(?s)exited with 2.*broken\.c.*undeclared_thing"):
        guest_path("broken", source_dir=src, build_dir=tmp_path / "out")


def test_concurrent_builds(src: Path, tmp_path: Path) -> None:
    """Several processes asking for the same fresh guest: all get a complete, loadable ELF."""
    out = tmp_path / "out"
    code = ("import sys; from pathlib import Path; from kvmharness.guest.build import guest_path;"
            "from kvmharness.guest.elf import GuestImage;"
            "p = guest_path(sys.argv[1], source_dir=Path(sys.argv[2]), build_dir=Path(sys.argv[3]));"
            "GuestImage.load(p); print(p)")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", code, name, str(src), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for name in ["hello", "hammer"] * 3]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    for _stdout, stderr, rc in results:
        assert rc == 0, stderr
    assert {Path(r[0].strip()).name for r in results} == {"hello.elf", "hammer.elf"}
    assert not list(out.glob("*.tmp"))


def test_installed_copy_builds_into_user_cache(monkeypatch: pytest.MonkeyPatch, src: Path,
                                               tmp_path: Path) -> None:
    """Sources without the project's pyproject.toml beside them (a wheel install) build into
    $XDG_CACHE_HOME/kvmharness/guests/<hash of the sources>."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = default_build_dir(src)
    assert first.parent == tmp_path / "cache" / "kvmharness" / "guests"
    assert default_build_dir(src) == first
    elf = guest_path("hello", source_dir=src)
    assert elf.parent == first
    (src / "hello.c").write_text((src / "hello.c").read_text() + "\n/* changed */\n")
    assert default_build_dir(src) != first


def test_build_dir_override(monkeypatch: pytest.MonkeyPatch, src: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("KVMHARNESS_GUESTS_BUILD_DIR", str(tmp_path / "rw"))
    assert guest_path("hello", source_dir=src) == (tmp_path / "rw" / "hello.elf").resolve()


def test_plain_make_output_is_used(monkeypatch: pytest.MonkeyPatch, src: Path,
                                   tmp_path: Path) -> None:
    """Guests built beforehand with ``make -C guests`` (no stamp) count as up to date, so a
    read-only checkout (e.g. inside vng) needs no compiler."""
    (tmp_path / "pyproject.toml").write_text("")  # makes src look like a checkout
    subprocess.run(["make", "-s", "-C", str(src)], check=True, capture_output=True)
    monkeypatch.setattr(build, "_run_make", no_make)
    assert guest_path("hammer", source_dir=src) == (src / "build" / "hammer.elf").resolve()
