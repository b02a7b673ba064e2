"""build-kvm's rules without a build: versions, the out-of-tree edits, the cache key, the
work-tree sync, patches, the module checks; and what a result file records of the KVM
modules that ran (a real ELF from gcc, read back by readelf as the independent source)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvmharness.observe import fingerprint, kmod
from kvmharness.runner import kvmbuild, kvmsource
from kvmharness.runner.kernels import KernelPathError, resolve_kernel, with_kvm_overlay
from tests.unit.test_runner_kernels import fake_bzimage, fake_deb

TOP_MAKEFILE = "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = x\n"
KVM_MAKEFILE = ("ccflags-y += -I $(srctree)/arch/x86/kvm\n"
                "ccflags-$(CONFIG_KVM_WERROR) += -Werror\n\n"
                "include $(srctree)/virt/kvm/Makefile.kvm\n\nkvm-y += x86.o\n")
TRACE_H = ("#undef TRACE_INCLUDE_PATH\n#define TRACE_INCLUDE_PATH ../../arch/x86/kvm\n"
           "#undef TRACE_INCLUDE_FILE\n#define TRACE_INCLUDE_FILE trace\n")


# --- versions --------------------------------------------------------------------------

def test_makefile_version() -> None:
    assert kvmsource.makefile_version(TOP_MAKEFILE) == "6.12.117"
    assert kvmsource.makefile_version(
        "VERSION = 6\nPATCHLEVEL = 13\nSUBLEVEL = 0\nEXTRAVERSION = -rc3\n") == "6.13.0-rc3"
    with pytest.raises(kvmsource.SourceError, match="VERSION/PATCHLEVEL"):
        kvmsource.makefile_version("all:\n\ttrue\n")


def test_version_check_names_the_matching_source_package() -> None:
    assert kvmsource.check_version("6.12.117", "6.12.117+deb12-amd64",
                                   "6.12.117-1~deb12u1") == "6.12.117"
    with pytest.raises(kvmsource.SourceError) as e:
        kvmsource.check_version("6.12.118", "6.12.117+deb12-amd64", "6.12.117-1~deb12u1")
    assert "version 6.12.118 but kernel 6.12.117+deb12-amd64 is 6.12.117" in str(e.value)
    assert "apt-get download linux-source-6.12=6.12.117-1~deb12u1" in str(e.value)


def test_version_check_of_an_abi_named_release_uses_the_package_version() -> None:
    # 6.1.0-56-amd64 is Debian's ABI name; the package version says 6.1.192.
    assert kvmsource.check_version("6.1.192", "6.1.0-56-amd64", "6.1.192-2") == "6.1.192"
    with pytest.raises(kvmsource.SourceError, match="linux-source-6.1=6.1.192-2"):
        kvmsource.check_version("6.1.0", "6.1.0-56-amd64", "6.1.192-2")
    # Without a package version the release is all there is, and the hint is a git tag.
    with pytest.raises(kvmsource.SourceError, match="git checkout v6.12.5"):
        kvmsource.check_version("6.12.4", "6.12.5", None)


def test_debian_version_from_the_image_version_string(tmp_path: Path) -> None:
    image = fake_bzimage(tmp_path / "vmlinuz-6.12.117+deb12-amd64", None)
    data = bytearray(image.read_bytes())
    text = (b"6.12.117+deb12-amd64 (debian-kernel@lists.debian.org) (x86_64-linux-gnu-gcc-12 "
            b"(Debian 12.2.0-14+deb12u1) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian "
            b"6.12.117-1~deb12u1 (2025-11-10)\0")
    data[0x4400:0x4400 + len(text)] = text
    struct.pack_into("<H", data, 0x20E, 0x4400 - 0x200)
    image.write_bytes(bytes(data))
    assert kvmbuild.debian_version_of(image) == "6.12.117-1~deb12u1"
    assert kvmbuild.debian_version_of(fake_bzimage(tmp_path / "plain", "6.12.5")) is None


# --- the out-of-tree edits -----------------------------------------------------------------

def test_makefile_edit_points_both_references_at_the_copy() -> None:
    root = Path("/cache/kvm-build/6.12.117+deb12-amd64-amd")
    text = kvmsource.edit_kvm_makefile(KVM_MAKEFILE, root)
    assert "$(srctree)" not in text
    assert f"ccflags-y += -I {root}/arch/x86/kvm\n" in text
    assert f"include {root}/virt/kvm/Makefile.kvm\n" in text
    assert "kvm-y += x86.o" in text
    with pytest.raises(kvmsource.SourceError, match="include"):
        kvmsource.edit_kvm_makefile("ccflags-y += -I $(srctree)/arch/x86/kvm\n", root)


def test_trace_h_edit_and_paths_the_preprocessor_would_rewrite() -> None:
    root = Path("/cache/kvm-build/x")
    text = kvmsource.edit_trace_h(TRACE_H, root)
    assert f"#define TRACE_INCLUDE_PATH {root}/arch/x86/kvm\n" in text
    assert "#define TRACE_INCLUDE_FILE trace" in text
    # `linux` is predefined to 1 in GNU C: the path would become /home/1/... in the #include.
    with pytest.raises(kvmsource.SourceError, match="linux"):
        kvmsource.edit_trace_h(TRACE_H, Path("/home/me/linux/cache"))
    with pytest.raises(kvmsource.SourceError, match="TRACE_INCLUDE_PATH"):
        kvmsource.edit_trace_h("/* nothing */\n", root)


def test_out_of_tree_edits_need_both_files() -> None:
    files = {"arch/x86/kvm/Makefile": KVM_MAKEFILE.encode(),
             "arch/x86/kvm/trace.h": TRACE_H.encode()}
    edits = kvmsource.out_of_tree_edits(files, Path("/b"))
    assert set(edits) == set(files)
    with pytest.raises(kvmsource.SourceError, match="trace.h"):
        kvmsource.out_of_tree_edits({"arch/x86/kvm/Makefile": KVM_MAKEFILE.encode()}, Path("/b"))


# --- what is built and the key of the cache -------------------------------------------------

def test_content_key_follows_content_and_facts_only() -> None:
    files = {"a/x.c": b"int x;\n", "b/y.c": b"int y;\n"}
    key = kvmsource.content_key(files, ["6.12.117+deb12-amd64", "amd"])
    assert key == kvmsource.content_key(dict(reversed(list(files.items()))),
                                        ["6.12.117+deb12-amd64", "amd"])
    assert key != kvmsource.content_key({**files, "a/x.c": b"int x; \n"},
                                        ["6.12.117+deb12-amd64", "amd"])
    assert key != kvmsource.content_key(files, ["6.12.117+deb12-amd64", "amd,intel"])
    # A file renamed is another tree, even with the same bytes.
    assert key != kvmsource.content_key({"a/z.c": b"int x;\n", "b/y.c": b"int y;\n"},
                                        ["6.12.117+deb12-amd64", "amd"])


def test_vendor_modules_and_make_variables() -> None:
    assert kvmsource.module_names(["amd"]) == ["kvm", "kvm-amd"]
    assert kvmsource.make_variables(["amd"]) == ["CONFIG_KVM_INTEL=n"]
    assert kvmsource.make_variables(["amd", "intel"]) == []
    with pytest.raises(kvmsource.SourceError, match="arm"):
        kvmsource.module_names(["arm"])


def test_symbol_checks() -> None:
    target = {"kmalloc": (0x1111, "vmlinux"), "kvm_x": (0x2222, "arch/x86/kvm/kvm"),
              "other": (0x3333, "drivers/foo")}
    # Imports from the kernel must match; imports from a module rebuilt alongside may not.
    assert kvmsource.symbol_mismatches({"kmalloc": 0x1111, "kvm_x": 0x9999},
                                       target, ["kvm", "kvm-amd"]) == []
    bad = kvmsource.symbol_mismatches({"kmalloc": 0x1112}, target, ["kvm"])
    assert bad == ["kmalloc (module 0x00001112, vmlinux 0x00001111)"]
    built = {"kvm_x": (0x2223, "arch/x86/kvm/kvm"), "kvm_new": (1, "arch/x86/kvm/kvm")}
    assert kvmsource.changed_exports(built, target, "kvm") == ["kvm_new", "kvm_x"]
    assert kvmsource.changed_exports(
        {"kvm_x": (0x2222, "/abs/arch/x86/kvm/kvm")}, target, "kvm") == []


def test_symvers_parsing() -> None:
    text = "0x12345678\tkmalloc\tvmlinux\tEXPORT_SYMBOL\t\n0xdeadbeef\tkvm_y\tarch/x86/kvm/kvm\t" \
           "EXPORT_SYMBOL_GPL\t\nnot a line\n"
    assert kmod.symvers(text) == {"kmalloc": (0x12345678, "vmlinux"),
                                  "kvm_y": (0xDEADBEEF, "arch/x86/kvm/kvm")}


# --- the work tree and patches -----------------------------------------------------------------

def test_sync_rewrites_only_what_changed(tmp_path: Path) -> None:
    files = {"arch/x86/kvm/x86.c": b"one\n", "virt/kvm/kvm_main.c": b"two\n"}
    assert kvmbuild.sync_tree(tmp_path, files) == 2
    kept = tmp_path / "virt/kvm/kvm_main.c"
    os.utime(kept, (1_000_000, 1_000_000))
    (tmp_path / "arch/x86/kvm/x86.o").write_bytes(b"object")  # a build product stays
    changed = {"arch/x86/kvm/x86.c": b"one!\n", "virt/kvm/kvm_main.c": b"two\n"}
    assert kvmbuild.sync_tree(tmp_path, changed) == 1
    assert kept.stat().st_mtime == 1_000_000  # make will not rebuild it
    assert (tmp_path / "arch/x86/kvm/x86.c").read_bytes() == b"one!\n"
    assert kvmbuild.sync_tree(tmp_path, {"arch/x86/kvm/x86.c": b"one!\n"}) == 0
    assert not kept.exists()  # gone from the sources, gone from the tree
    assert (tmp_path / "arch/x86/kvm/x86.o").exists()


@pytest.mark.skipif(shutil.which("patch") is None, reason="no patch(1)")
def test_patches_apply_in_order_and_a_bad_one_is_named(tmp_path: Path) -> None:
    files = {"Makefile": TOP_MAKEFILE.encode(), "arch/x86/kvm/mmu/mmu.c": b"a\nb\nc\n",
             "virt/kvm/kvm_main.c": b"k\n"}
    p1 = tmp_path / "1.patch"
    p1.write_text("--- a/arch/x86/kvm/mmu/mmu.c\n+++ b/arch/x86/kvm/mmu/mmu.c\n"
                  "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n")
    p2 = tmp_path / "2.patch"
    p2.write_text("--- a/arch/x86/kvm/mmu/mmu.c\n+++ b/arch/x86/kvm/mmu/mmu.c\n"
                  "@@ -1,3 +1,3 @@\n a\n-B\n+BB\n c\n")
    out = kvmbuild.apply_patches(files, [p1, p2])
    assert out["arch/x86/kvm/mmu/mmu.c"] == b"a\nBB\nc\n"
    assert out["Makefile"] == files["Makefile"]
    with pytest.raises(kvmbuild.BuildError, match="applying .*2.patch"):
        kvmbuild.apply_patches(files, [p2])


def test_read_sources_leaves_build_products_out(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text(TOP_MAKEFILE)
    (tmp_path / "arch/x86/kvm").mkdir(parents=True)
    (tmp_path / "virt/kvm").mkdir(parents=True)
    (tmp_path / "arch/x86/kvm/x86.c").write_text("x")
    for junk in ("x86.o", ".x86.o.cmd", "kvm.ko", "kvm.mod.c", "Module.symvers"):
        (tmp_path / "arch/x86/kvm" / junk).write_text("junk")
    assert sorted(kvmbuild.read_sources(tmp_path)) == ["Makefile", "arch/x86/kvm/x86.c"]
    shutil.rmtree(tmp_path / "virt")
    with pytest.raises(kvmbuild.BuildError, match="no virt/kvm"):
        kvmbuild.read_sources(tmp_path)


def test_compression_matches_the_stock_suffix(tmp_path: Path) -> None:
    import lzma

    suffix, data = kvmbuild.compress_like(tmp_path / "kvm.ko.xz", b"\x7fELF" + b"x" * 1000)
    assert suffix == ".ko.xz"
    # The kernel's and kmod's xz readers take CRC32 checks (xz -lvv: "CRC32").
    assert data[6:8] == b"\x00\x01"  # stream flags: check type 1 = CRC32
    assert lzma.decompress(data) == b"\x7fELF" + b"x" * 1000
    assert kvmbuild.compress_like(tmp_path / "kvm.ko", b"e")[0] == ".ko"
    with pytest.raises(kvmbuild.BuildError, match="zst"):
        kvmbuild.compress_like(tmp_path / "kvm.ko.zst", b"e")


# --- a module ELF, read back -------------------------------------------------------------------

MODULE_C = r"""
static const char info[] __attribute__((section(".modinfo"), used)) =
    "vermagic=6.12.117+deb12-amd64 SMP preempt mod_unload modversions \0srcversion=ABC\0";
struct modversion_info { unsigned long crc; char name[56]; };
static const struct modversion_info versions[] __attribute__((section("__versions"), used)) = {
    { 0x12345678, "kmalloc" }, { 0xcafef00d, "kvm_vcpu_kick" },
};
int kvm_init(void) { return 0; }
"""


@pytest.fixture
def module_elf(tmp_path: Path) -> Path:
    if shutil.which("gcc") is None or shutil.which("readelf") is None:
        pytest.skip("no gcc/readelf to make a module-shaped ELF")
    (tmp_path / "m.c").write_text(MODULE_C)
    out = tmp_path / "kvm.ko"
    subprocess.run(["gcc", "-shared", "-fPIC", "-nostdlib", "-Wl,--build-id=sha1", "-o",
                    str(out), str(tmp_path / "m.c")], check=True)
    return out


def test_module_identity_agrees_with_readelf(module_elf: Path) -> None:
    notes = subprocess.run(["readelf", "-n", str(module_elf)], capture_output=True, text=True,
                           check=True).stdout
    expected = notes.split("Build ID:")[1].split()[0]
    data = module_elf.read_bytes()
    assert kmod.build_id(data) == expected
    assert kmod.modinfo(data)["vermagic"].startswith("6.12.117+deb12-amd64 SMP")
    assert kmod.modversions(data) == {"kmalloc": 0x12345678, "kvm_vcpu_kick": 0xCAFEF00D}
    import lzma

    xz = module_elf.with_name("kvm.ko.xz")
    xz.write_bytes(lzma.compress(data, check=lzma.CHECK_CRC32))
    ident = kmod.identity(xz)
    assert ident["build_id"] == expected and not ident["signed"] and not ident["intree"]
    assert kmod.identity_or_reason(module_elf.with_name("m.c"))["status"].startswith(
        "unavailable")


def _note(build_id: bytes) -> bytes:
    return struct.pack("<III", 4, len(build_id), 3) + b"GNU\0" + build_id


def fake_booted_root(root: Path, module_elf: Path, release: str, *, taint: str,
                     tainted: str, manifest: dict[str, object] | None) -> Path:
    data = module_elf.read_bytes()
    sysdir = root / "sys/module/kvm"
    (sysdir / "notes").mkdir(parents=True)
    (sysdir / "initstate").write_text("live\n")
    (sysdir / "taint").write_text(taint + "\n")
    (sysdir / "notes/.note.gnu.build-id").write_bytes(
        _note(bytes.fromhex(kmod.build_id(data) or "")))
    (root / "sys/module/kvm_pvm").mkdir(parents=True)  # built in: no initstate
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/tainted").write_text(tainted + "\n")
    kvm_dir = root / "lib/modules" / release / "kernel/arch/x86/kvm"
    kvm_dir.mkdir(parents=True)
    shutil.copy(module_elf, kvm_dir / "kvm.ko")
    if manifest is not None:
        (root / "lib/modules" / release / fingerprint.OVERLAY_MANIFEST).write_text(
            json.dumps(manifest))
    return root


def test_fingerprint_names_a_rebuilt_kvm(tmp_path: Path, module_elf: Path) -> None:
    manifest = {"source": {"version": "6.12.117", "kind": "git", "git_commit": "a" * 40,
                           "git_dirty": False},
                "patches": [{"name": "zap-all.patch", "sha256": "b" * 64}],
                "content_key": "c" * 64, "created": "2026-12-07T19:00:00+00:00"}
    root = fake_booted_root(tmp_path, module_elf, "6.12.117+deb12-amd64", taint="OE",
                            tainted="12288", manifest=manifest)
    build = fingerprint.kvm_build(root, "6.12.117+deb12-amd64")
    kvm = build["modules"]["kvm"]
    assert kvm["build_id"] == kmod.build_id(module_elf.read_bytes())
    assert kvm["taint"] == "OE" and kvm["intree"] is False and kvm["signed"] is False
    assert "file_differs" not in kvm
    assert build["modules"]["kvm_pvm"] == {"built_in": True, "build_id": None}
    assert build["build_kvm"]["patches"] == manifest["patches"]
    assert build["summary"].startswith(
        f"build-kvm of 6.12.117 (git {'a' * 12}) + zap-all.patch: kvm {kvm['build_id'][:12]}")
    assert build["summary"].endswith("kernel tainted 12288 (OE)")


def test_fingerprint_notices_a_file_that_is_not_the_loaded_module(
        tmp_path: Path, module_elf: Path) -> None:
    root = fake_booted_root(tmp_path, module_elf, "r", taint="", tainted="0", manifest=None)
    (root / "sys/module/kvm/notes/.note.gnu.build-id").write_bytes(_note(b"\x01" * 20))
    kvm = fingerprint.kvm_build(root, "r")["modules"]["kvm"]
    assert kvm["build_id"] == "01" * 20
    assert "is not the loaded module's" in kvm["file_differs"]


def test_pooling_refuses_files_from_different_kvm_builds() -> None:
    from kvmharness.compare.build import pool_conflicts
    from kvmharness.results.model import ResultFile

    def result(build_id: str) -> ResultFile:
        env = {"kvm_build": {"modules": {"kvm": {"build_id": build_id}}}}
        return ResultFile(scenario={"name": "s"}, parameters={}, quick=True, label="x",
                          variants=[], repeat=1, iterations=1, warmup=0, environment=env,
                          source=f"{build_id}.json")

    conflicts = pool_conflicts([result("aaaa"), result("bbbb")])
    assert conflicts == ["kvm_build.kvm.build_id: aaaa.json has aaaa, bbbb.json has bbbb"]
    assert pool_conflicts([result("aaaa"), result("aaaa")]) == []


# --- ab --kvm ----------------------------------------------------------------------------------

def test_kvm_overlay_replaces_the_modules_of_any_kernel_path(tmp_path: Path) -> None:
    deb = fake_deb(tmp_path / "deb")
    overlay = tmp_path / "overlay"
    (overlay / "lib/modules/6.12.117+deb12-amd64/kernel/arch/x86/kvm").mkdir(parents=True)
    kernel = with_kvm_overlay(resolve_kernel("patched", deb), overlay)
    assert kernel.kind == "image" and kernel.staged
    assert kernel.image == deb / "boot/vmlinuz-6.12.117+deb12-amd64"
    assert kernel.modules == overlay / "lib/modules/6.12.117+deb12-amd64"
    image = with_kvm_overlay(resolve_kernel("p", deb / "boot/vmlinuz-6.12.117+deb12-amd64"),
                             overlay)
    assert image.modules == kernel.modules and image.staged
    other = fake_deb(tmp_path / "old", version="6.1.0-56-amd64")
    with pytest.raises(KernelPathError, match="is 6.1.0-56-amd64 but it is for "
                                              "6.12.117"):
        with_kvm_overlay(resolve_kernel("old", other), overlay)
    with pytest.raises(KernelPathError, match="no lib/modules"):
        with_kvm_overlay(resolve_kernel("x", deb), tmp_path / "nothing")


def test_ab_kvm_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvmharness import cli

    deb = fake_deb(tmp_path / "deb")
    base = ["ab", "rom-toggle", "--quick", "--kernel", f"A={deb}", "--kernel", f"B={deb}"]
    assert cli.main([*base, "--kvm", f"C={tmp_path}"]) == cli.EXIT_USAGE
    assert "--kvm for unknown kernel C" in capsys.readouterr().err
    assert cli.main([*base, "--kvm", f"B={tmp_path / 'none'}"]) == cli.EXIT_USAGE
    assert "no lib/modules (not a build-kvm --out folder?)" in capsys.readouterr().err
    assert cli.main([*base, "--kvm", f"B={tmp_path}", "--modules", f"B={tmp_path}"]) \
        == cli.EXIT_USAGE
    assert "--modules and --kvm both given for B" in capsys.readouterr().err


def test_build_kvm_refuses_sources_of_another_version(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The version check comes before any download or build."""
    from kvmharness import cli

    deb = tmp_path / "deb"
    fake_deb(deb)
    image = deb / "boot/vmlinuz-6.12.117+deb12-amd64"
    data = bytearray(image.read_bytes())
    text = b"6.12.117+deb12-amd64 (d@l) (gcc) #1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1~deb12u1 (x)\0"
    data[0x4400:0x4400 + len(text)] = text
    image.write_bytes(bytes(data))
    src = tmp_path / "src"
    (src / "arch/x86/kvm").mkdir(parents=True)
    (src / "virt/kvm").mkdir(parents=True)
    (src / "Makefile").write_text(TOP_MAKEFILE.replace("117", "118"))
    monkeypatch.setenv("KVMHARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kvmbuild, "headers_for", lambda *a: pytest.fail("fetched headers"))
    rc = cli.main(["build-kvm", "--source", str(src), "--for", str(deb), "--out",
                   str(tmp_path / "out")])
    assert rc == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "the sources are version 6.12.118 but kernel 6.12.117+deb12-amd64 is 6.12.117" in err
    assert "apt-get download linux-source-6.12=6.12.117-1~deb12u1" in err
    assert not (tmp_path / "out").exists()


def test_index_facts_decide_whether_depmod_must_run(module_elf: Path, tmp_path: Path) -> None:
    """depmod reads dependencies, aliases and exports: equal facts, equal indexes."""
    source = (tmp_path / "m.c").read_text()
    with_alias = source.replace('srcversion=ABC\\0"', 'srcversion=ABC\\0alias=cpu:type:x86\\0"')
    assert with_alias != source
    (tmp_path / "a.c").write_text(with_alias)
    other = tmp_path / "a.ko"
    subprocess.run(["gcc", "-shared", "-fPIC", "-nostdlib", "-o", str(other),
                    str(tmp_path / "a.c")], check=True)
    base = kmod.index_facts(module_elf.read_bytes())
    assert kmod.index_facts(other.read_bytes()) == sorted([*base, "alias=cpu:type:x86"])
    # The build id differs between the two, the facts depmod reads do not (same sources).
    subprocess.run(["gcc", "-shared", "-fPIC", "-nostdlib", "-Wl,--build-id=md5", "-o",
                    str(tmp_path / "b.ko"), str(tmp_path / "m.c")], check=True)
    assert kmod.index_facts((tmp_path / "b.ko").read_bytes()) == base


def test_show_and_setup_differences_name_the_kvm_build() -> None:
    from kvmharness.compare.render.show import fingerprint_lines
    from kvmharness.compare.warnings import setup_differences
    from kvmharness.results.model import ResultFile

    def env(summary: str, build_id: str) -> dict[str, Any]:
        return {"kvm_build": {"summary": summary,
                              "modules": {"kvm": {"build_id": build_id}}}}

    stock = env("stock (in-tree, signed): kvm 8498c5cf3501", "8498c5cf3501")
    patched = env("build-kvm of 6.12.117 + zap.patch: kvm 45e849764abf", "45e849764abf")
    assert "Modules:  build-kvm of 6.12.117 + zap.patch: kvm 45e849764abf" in \
        fingerprint_lines(patched)
    assert "Modules:  not recorded" in fingerprint_lines({})

    def result(e: dict[str, Any]) -> ResultFile:
        return ResultFile(scenario={"name": "s"}, parameters={}, quick=True, label="x",
                          variants=[], repeat=1, iterations=1, warmup=0, environment=e)

    diffs = setup_differences(result(stock), result(patched))
    assert "kvm_build.modules.kvm.build_id: 8498c5cf3501 -> 45e849764abf" in diffs
    assert any(d.startswith("kvm_build.summary: stock") for d in diffs)
