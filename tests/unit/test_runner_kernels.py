"""Kernel PATH resolution for `kvmharness ab` (fake trees; nothing boots)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmharness.runner.kernels import (
    KernelPathError,
    depmod_command,
    ensure_modules_dep,
    find_module,
    image_version,
    kernel_problems,
    resolve_kernel,
    stage,
    vng_rootfs,
)


def fake_bzimage(path: Path, version: str | None) -> Path:
    """Enough of the x86 boot protocol header for image_version: 'HdrS' at 0x202 and the
    version string pointer at 0x20E (relative to 0x200)."""
    data = bytearray(0x5000)
    data[0x202:0x206] = b"HdrS"
    if version is not None:
        text = f"{version} (builder@host) #1 SMP".encode() + b"\0"
        data[0x4400:0x4400 + len(text)] = text
        struct.pack_into("<H", data, 0x20E, 0x4400 - 0x200)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def fake_modules(mods: Path, *, kvm: tuple[str, ...] = ("kvm-amd", "kvm-intel"),
                 dep: bool = True) -> Path:
    kvm_dir = mods / "kernel/arch/x86/kvm"
    kvm_dir.mkdir(parents=True)
    for m in ("kvm", *kvm):
        (kvm_dir / f"{m}.ko.xz").write_bytes(b"")
    if dep:
        (mods / "modules.dep").write_text(
            "".join(f"kernel/arch/x86/kvm/{m}.ko.xz: kernel/arch/x86/kvm/kvm.ko.xz\n"
                    for m in kvm) + "kernel/arch/x86/kvm/kvm.ko.xz:\n")
    return mods


def fake_deb(root: Path, version: str = "6.12.117+deb12-amd64", dep: bool = True) -> Path:
    fake_bzimage(root / "boot" / f"vmlinuz-{version}", version)
    (root / "boot" / f"config-{version}").write_text("CONFIG_KVM=m\nCONFIG_KVM_AMD=m\n")
    fake_modules(root / "lib/modules" / version, dep=dep)
    return root


def test_image_version_reads_the_setup_header(tmp_path: Path) -> None:
    assert image_version(fake_bzimage(tmp_path / "bz", "6.1.0-56-amd64")) == "6.1.0-56-amd64"
    assert image_version(fake_bzimage(tmp_path / "nover", None)) is None
    (tmp_path / "junk").write_bytes(b"\0" * 100)
    assert image_version(tmp_path / "junk") is None
    assert image_version(tmp_path / "missing") is None


def test_unpacked_debian_package(tmp_path: Path) -> None:
    root = fake_deb(tmp_path / "k612")
    k = resolve_kernel("B", root)
    assert k.kind == "deb" and k.version == "6.12.117+deb12-amd64"
    assert k.image == root / "boot/vmlinuz-6.12.117+deb12-amd64"
    assert k.modules == root / "lib/modules/6.12.117+deb12-amd64"
    assert k.vng_target == k.image and not k.staged
    assert kernel_problems(k, "kvm_amd") == []


def test_debian_package_without_modules(tmp_path: Path) -> None:
    root = tmp_path / "k"
    fake_bzimage(root / "boot/vmlinuz-6.1.0-1-amd64", "6.1.0-1-amd64")
    with pytest.raises(KernelPathError, match=r"no lib/modules/6\.1\.0-1-amd64"):
        resolve_kernel("A", root)


def test_build_directory(tmp_path: Path) -> None:
    root = tmp_path / "linux"
    fake_bzimage(root / "arch/x86/boot/bzImage", "6.13.0-rc1+")
    (root / "Makefile").write_text("")
    (root / ".config").write_text("CONFIG_KVM=m\nCONFIG_KVM_AMD=m\n")
    (root / "include/config").mkdir(parents=True)
    (root / "include/config/kernel.release").write_text("6.13.0-rc1+\n")
    k = resolve_kernel("B", root)
    assert (k.kind, k.version, k.vng_target, k.modules) == ("build", "6.13.0-rc1+", root, None)
    assert "make modules" in kernel_problems(k, "kvm_amd")[0]
    (root / "modules.order").write_text("arch/x86/kvm/kvm-amd.o\n")
    assert kernel_problems(k, "kvm_amd") == []
    (root / ".config").write_text("CONFIG_KVM=y\nCONFIG_KVM_AMD=y\n")
    (root / "modules.order").unlink()
    assert kernel_problems(k, "kvm_amd") == []  # built in: nothing to load
    (root / ".config").write_text("CONFIG_KVM=m\n")
    assert "does not enable CONFIG_KVM_AMD" in kernel_problems(k, "kvm_amd")[0]


def test_image_with_modules_beside_it_like_vng_finds_them(tmp_path: Path) -> None:
    root = fake_deb(tmp_path / "root", "6.1.0-9-amd64")
    image = root / "boot/vmlinuz-6.1.0-9-amd64"
    assert vng_rootfs(image) == root
    k = resolve_kernel("A", image)
    assert (k.kind, k.modules, k.staged) == ("image", root / "lib/modules/6.1.0-9-amd64", False)


def test_image_version_from_the_file_name(tmp_path: Path) -> None:
    image = tmp_path / "boot/vmlinuz-6.2.0-test"
    image.parent.mkdir()
    image.write_bytes(b"\0" * 1024)  # not a bzImage: the name has to do
    k = resolve_kernel("A", image)
    assert k.version == "6.2.0-test" and k.modules is None
    assert "--modules A=DIR" in kernel_problems(k, "kvm_amd")[0]


def test_image_with_explicit_modules_is_staged(tmp_path: Path) -> None:
    image = fake_bzimage(tmp_path / "out/bzImage", "6.14.0")
    mods = fake_modules(tmp_path / "mods/lib/modules/6.14.0")
    # Given the lib/modules folder rather than lib/modules/VER: accepted.
    k = resolve_kernel("B", image, tmp_path / "mods/lib/modules")
    assert k.modules == mods and k.staged
    target = stage(k, tmp_path / "stage")
    assert target == tmp_path / "stage/boot/vmlinuz-6.14.0"
    assert target.resolve() == image.resolve()
    assert (tmp_path / "stage/lib/modules/6.14.0").resolve() == mods.resolve()
    assert vng_rootfs(target) == tmp_path / "stage"
    stage(k, tmp_path / "stage")  # idempotent: a second boot re-stages
    assert kernel_problems(k, "kvm_amd") == []


def test_modules_without_the_kvm_module(tmp_path: Path) -> None:
    image = fake_bzimage(tmp_path / "bzImage", "6.14.0")
    fake_modules(tmp_path / "m/6.14.0", kvm=("kvm-intel",))
    k = resolve_kernel("A", image, tmp_path / "m/6.14.0")
    assert k.modules is not None
    assert find_module(k.modules, "kvm_intel") and not find_module(k.modules, "kvm_amd")
    assert "kvm_amd is not in" in kernel_problems(k, "kvm_amd")[0]


@pytest.mark.parametrize("bad, message", [
    ("missing", "does not exist"),
    ("pkg.deb", "is a .deb: unpack it first"),
    ("emptydir", "neither an unpacked linux-image package"),
])
def test_paths_that_cannot_be_booted(tmp_path: Path, bad: str, message: str) -> None:
    (tmp_path / "pkg.deb").write_bytes(b"!<arch>\n")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(KernelPathError, match=message):
        resolve_kernel("A", tmp_path / bad)


@pytest.mark.parametrize("name", ["a=b", "with space", "x,y", "", "-opt"])
def test_kernel_names_that_cannot_be_labels(tmp_path: Path, name: str) -> None:
    with pytest.raises(KernelPathError, match="kernel name"):
        resolve_kernel(name, fake_deb(tmp_path / "k"))


def test_depmod_for_an_unpacked_package_without_modules_dep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_deb(tmp_path / "k", "6.1.0-9-amd64", dep=False)
    k = resolve_kernel("A", root)
    cmd = depmod_command(k)
    assert cmd == ["depmod", "-a", "-b", str(root), "6.1.0-9-amd64"]
    ran: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> object:
        ran.append(argv)
        (k.modules / "modules.dep").write_text("")  # type: ignore[operator]

        class P:
            returncode = 0
            stderr = ""
        return P()

    monkeypatch.setattr("kvmharness.runner.kernels.subprocess.run", fake_run)
    ensure_modules_dep(k)
    assert ran == [cmd]
    assert depmod_command(k) is None
    ensure_modules_dep(k)  # nothing left to do
    assert len(ran) == 1
