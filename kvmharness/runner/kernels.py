"""Turning what the user calls "a kernel" into what virtme-ng boots.

Three kinds of PATH are accepted (``kvmharness ab --kernel NAME=PATH``):

* an unpacked Debian ``linux-image-*`` package (``dpkg-deb -x PKG.deb DIR``): a folder with
  ``boot/vmlinuz-VER`` and ``lib/modules/VER`` (or ``usr/lib/modules/VER``);
* a kernel build directory (``.config`` and ``arch/x86/boot/bzImage``), given to vng as
  ``--run DIR`` so that vng's own ``virtme-prep-kdir-mods`` links the built modules in;
* a kernel image file (bzImage / vmlinuz).  Its modules tree is found the way vng finds it
  (the first ancestor folder holding ``lib/modules``, then ``lib/modules/VER`` there), or
  given explicitly (``--modules NAME=DIR``); in that case a small folder of symlinks
  (``boot/vmlinuz-VER``, ``lib/modules/VER``) is made for vng, because vng only looks
  beside the image.

Everything here only reads the file system, so it is unit-tested with fake trees; the one
action, ``depmod`` for an unpacked package that lacks ``modules.dep``, is separate
(``ensure_modules_dep``).  Standard library only: tools/vng-run runs this under a bare
``/usr/bin/python3``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import subprocess
from pathlib import Path
from typing import Literal

KernelKind = Literal["deb", "build", "image"]

# x86 boot protocol (Documentation/arch/x86/boot.rst): "HdrS" at 0x202; the u16 at 0x20E
# points (relative to 0x200) at a NUL-terminated "VERSION (builder) #1 ..." string.
_HDRS_OFFSET = 0x202
_KERNEL_VERSION_PTR = 0x20E
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class KernelPathError(ValueError):
    """The PATH given for a kernel cannot be booted (the message says why and what to do)."""


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A bootable kernel: what vng gets and what the guest will need."""

    name: str                 # the label its results carry (NAME of --kernel NAME=PATH)
    source: Path              # the PATH the user gave
    kind: KernelKind
    image: Path               # bzImage / vmlinuz
    version: str              # `uname -r` inside (0.0.0 for a build dir's modules: vng's)
    modules: Path | None      # lib/modules/VER; None: built in, or vng prepares it (build dir)
    config: Path | None       # the kernel .config, when one is known
    staged: bool = False      # needs a symlink folder so vng finds `modules` (see module doc)
    # Extra kernel command line of this configuration (`ab --append NAME=ARGS`): module
    # parameters such as kvm.tdp_mmu=0 take effect when udev/modprobe loads the module.
    # One image may be booted under several names with different command lines.
    append: str = ""

    @property
    def vng_target(self) -> Path:
        """What to pass to ``vng --run`` (a staged kernel's target is made at boot time)."""
        return self.source if self.kind == "build" else self.image

    def describe(self) -> str:
        mods = str(self.modules) if self.modules else "built in / prepared by vng"
        text = f"{self.name}: {self.version} ({self.kind}) image {self.image}, modules {mods}"
        return text + (f", command line + {self.append}" if self.append else "")


def check_name(name: str) -> str:
    # The name becomes a result label, part of file names and of vng's --rwdir argument,
    # which cannot hold '=', ',' or spaces.
    if not _NAME_RE.match(name):
        raise KernelPathError(f"kernel name {name!r}: use letters, digits and . _ + - only "
                              "(it becomes the result label and part of file names)")
    return name


def image_version(image: Path) -> str | None:
    """The release string a bzImage carries in its setup header, or None if it has none."""
    try:
        with open(image, "rb") as f:
            head = f.read(0x10000)
    except OSError:
        return None
    if head[_HDRS_OFFSET:_HDRS_OFFSET + 4] != b"HdrS" or len(head) < _KERNEL_VERSION_PTR + 2:
        return None
    (ptr,) = struct.unpack_from("<H", head, _KERNEL_VERSION_PTR)
    start = ptr + 0x200
    if ptr == 0 or start >= len(head):
        return None
    text = head[start:start + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    version = text.split(" ", 1)[0]
    return version or None


def _version_from_name(image: Path) -> str | None:
    for prefix in ("vmlinuz-", "bzImage-", "vmlinux-"):
        if image.name.startswith(prefix) and len(image.name) > len(prefix):
            return image.name[len(prefix):]
    return None


def vng_rootfs(image: Path) -> Path:
    """Where vng looks for ``lib/modules`` next to an image (mirrors virtme's
    ``get_rootfs_from_kernel_path``: the first ancestor holding lib/modules or
    usr/lib/modules)."""
    path = Path(os.path.abspath(image)).parent
    while path != path.parent:
        if (path / "lib/modules").exists():
            return path
        if (path / "usr/lib/modules").exists():
            return path / "usr"
        path = path.parent
    return path


def _config_value(config: Path | None, option: str) -> str | None:
    if config is None:
        return None
    try:
        text = config.read_text(errors="replace")
    except OSError:
        return None
    m = re.search(rf"^{re.escape(option)}=(\S+)$", text, re.MULTILINE)
    return m.group(1) if m else None


def kvm_config(kernel: Kernel, module: str) -> str | None:
    """'y', 'm' or None (unknown / not set) for CONFIG_KVM_AMD / CONFIG_KVM_INTEL."""
    return _config_value(kernel.config, "CONFIG_" + module.upper())


def find_module(modules: Path, module: str) -> bool:
    """Whether a modules tree has ``module`` (kvm_amd ~ kvm-amd.ko*), loadable or built in."""
    stem = module.replace("_", "-")
    for index in ("modules.dep", "modules.builtin"):
        try:
            text = (modules / index).read_text(errors="replace")
        except OSError:
            continue
        if re.search(rf"(^|/){re.escape(stem)}\.ko(\.[a-z]+)?:?", text, re.MULTILINE) or \
                re.search(rf"(^|/){re.escape(module)}\.ko(\.[a-z]+)?:?", text, re.MULTILINE):
            return True
    # No index yet (a freshly unpacked .deb): look for the file itself.
    kvm_dir = modules / "kernel/arch/x86/kvm"
    try:
        return any(p.name.split(".ko")[0] in (stem, module) for p in kvm_dir.iterdir())
    except OSError:
        return False


def _deb_kernel(name: str, root: Path) -> Kernel:
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise KernelPathError(f"{root}: no boot/vmlinuz-* (not an unpacked linux-image package)")
    if len(images) > 1:
        raise KernelPathError(f"{root}: several kernels in boot/ "
                              f"({', '.join(p.name for p in images)}); give the image file")
    image = images[0]
    version = image.name[len("vmlinuz-"):]
    for mods in (root / "lib/modules" / version, root / "usr/lib/modules" / version):
        if mods.is_dir():
            break
    else:
        raise KernelPathError(f"{root}: no lib/modules/{version} beside boot/{image.name}")
    config = root / "boot" / f"config-{version}"
    return Kernel(name, root, "deb", image, version, mods,
                  config if config.is_file() else None)


def _build_kernel(name: str, root: Path) -> Kernel:
    image = root / "arch/x86/boot/bzImage"
    if not image.is_file():
        raise KernelPathError(f"{root}: a kernel build directory without arch/x86/boot/bzImage "
                              "(run make there first)")
    release = root / "include/config/kernel.release"
    version = None
    if release.is_file():
        version = release.read_text().strip() or None
    version = version or image_version(image)
    if not version:
        raise KernelPathError(f"{image}: cannot read the kernel release")
    # vng links the built modules into .virtme_mods itself when modules.order exists.
    return Kernel(name, root, "build", image, version, None, root / ".config")


def _image_kernel(name: str, image: Path, modules: Path | None) -> Kernel:
    version = image_version(image) or _version_from_name(image)
    if not version:
        raise KernelPathError(f"{image}: not a bzImage (no 'HdrS' setup header) and no "
                              "version in its name (vmlinuz-VERSION)")
    config = None
    for candidate in (image.parent / f"config-{version}", image.parent / ".config",
                      image.parent.parent.parent.parent / ".config"):
        if candidate.is_file():
            config = candidate
            break
    rootfs = vng_rootfs(image)
    found = rootfs / "lib/modules" / version
    if modules is None:
        return Kernel(name, image, "image", image, version,
                      found if found.is_dir() else None, config)
    modules = Path(os.path.abspath(modules))
    if not modules.is_dir():
        raise KernelPathError(f"modules tree {modules} does not exist")
    if modules.name != version and (modules / version).is_dir():
        modules = modules / version  # a lib/modules folder was given
    staged = found.resolve() != modules.resolve() if found.exists() else True
    return Kernel(name, image, "image", image, version, modules, config, staged=staged)


def resolve_kernel(name: str, path: str | Path, modules: str | Path | None = None) -> Kernel:
    """Classify PATH (see the module docstring); raises KernelPathError with the fix."""
    check_name(name)
    p = Path(os.path.abspath(Path(path).expanduser()))
    if not p.exists():
        raise KernelPathError(f"kernel {name}: {p} does not exist")
    if p.is_file() and p.suffix == ".deb":
        raise KernelPathError(f"kernel {name}: {p} is a .deb: unpack it first "
                              f"(dpkg-deb -x {p} DIR) and give DIR")
    if p.is_dir():
        if modules is not None:
            raise KernelPathError(f"kernel {name}: --modules goes with an image file, "
                                  f"not a folder ({p})")
        if (p / ".config").is_file() and (p / "Makefile").is_file():
            return _build_kernel(name, p)
        if (p / "boot").is_dir():
            return _deb_kernel(name, p)
        raise KernelPathError(f"kernel {name}: {p} is neither an unpacked linux-image package "
                              "(boot/vmlinuz-VER + lib/modules/VER) nor a kernel build "
                              "directory (.config + arch/x86/boot/bzImage)")
    return _image_kernel(name, p, Path(modules).expanduser() if modules else None)


def with_kvm_overlay(kernel: Kernel, overlay: str | Path) -> Kernel:
    """KERNEL booted with the modules tree of a ``kvmharness build-kvm`` overlay
    (OVERLAY/lib/modules/VER: the stock tree with kvm*.ko rebuilt), whatever KERNEL's PATH
    was: an unpacked package, an image or a build directory (its bzImage)."""
    root = Path(os.path.abspath(Path(overlay).expanduser()))
    mods = root / "lib/modules" / kernel.version
    if not mods.is_dir():
        found = sorted(p.name for p in (root / "lib/modules").glob("*")) \
            if (root / "lib/modules").is_dir() else []
        what = (f"it is for {', '.join(found)}" if found
                else "it has no lib/modules (not a build-kvm --out folder?)")
        raise KernelPathError(f"--kvm {kernel.name}={root}: kernel {kernel.name} is "
                              f"{kernel.version} but {what}")
    beside = vng_rootfs(kernel.image) / "lib/modules" / kernel.version
    staged = not beside.exists() or beside.resolve() != mods.resolve()
    return dataclasses.replace(kernel, kind="image", modules=mods, staged=staged)


def kernel_problems(kernel: Kernel, module: str) -> list[str]:
    """What keeps ``module`` (kvm_amd / kvm_intel) from loading in this kernel, if anything."""
    built_in = kvm_config(kernel, module) == "y"
    if kernel.kind == "build":
        if built_in:
            return []
        if kvm_config(kernel, module) != "m":
            return [f"kernel {kernel.name}: {kernel.config} does not enable "
                    f"CONFIG_{module.upper()} (=y or =m)"]
        if not (kernel.source / "modules.order").is_file():
            return [f"kernel {kernel.name}: CONFIG_{module.upper()}=m but the modules are not "
                    f"built: run make modules in {kernel.source}"]
        return []
    if kernel.modules is None:
        if built_in:
            return []
        return [f"kernel {kernel.name}: no modules tree for {kernel.version} (looked for "
                f"{vng_rootfs(kernel.image) / 'lib/modules' / kernel.version}); give "
                f"--modules {kernel.name}=DIR (its lib/modules/{kernel.version} folder, e.g. "
                "from make modules_install INSTALL_MOD_PATH=...)"]
    if not find_module(kernel.modules, module) and not built_in:
        return [f"kernel {kernel.name}: {module} is not in {kernel.modules} (kernel "
                f"built without CONFIG_{module.upper()}?)"]
    return []


def depmod_command(kernel: Kernel) -> list[str] | None:
    """The depmod that creates modules.dep, when the tree lacks it (unpacked .debs do:
    the package's postinst makes it).  None when nothing needs doing."""
    if kernel.modules is None or (kernel.modules / "modules.dep").is_file():
        return None
    mods = kernel.modules
    if (mods.name != kernel.version or mods.parent.name != "modules"
            or mods.parent.parent.name != "lib"):
        return None  # depmod -b needs DIR/lib/modules/VER; the caller reports it
    base = mods.parent.parent.parent
    if base.name == "usr":  # DIR/usr/lib/modules/VER: depmod -b DIR finds it too
        base = base.parent
    return ["depmod", "-a", "-b", str(base), kernel.version]


def ensure_modules_dep(kernel: Kernel, timeout_s: float = 120) -> None:
    """Run depmod if modules.dep is missing (inside the guest modprobe needs it)."""
    cmd = depmod_command(kernel)
    mods = kernel.modules
    if mods is None:
        return
    if cmd is None:
        if not (mods / "modules.dep").is_file():
            raise KernelPathError(f"kernel {kernel.name}: {mods} has no modules.dep "
                                  "and is not laid out as DIR/lib/modules/VER for depmod -b")
        return
    if not os.access(mods, os.W_OK):
        raise KernelPathError(f"kernel {kernel.name}: {mods} has no modules.dep and "
                              f"is not writable: run {' '.join(cmd)} as its owner")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelPathError(f"{' '.join(cmd)} failed: {e} (depmod is in Debian's kmod)") from e
    if proc.returncode != 0 or not (mods / "modules.dep").is_file():
        raise KernelPathError(f"{' '.join(cmd)} exited with {proc.returncode}: "
                              f"{proc.stderr.strip()[-500:]}")


def stage(kernel: Kernel, folder: Path) -> Path:
    """For an image whose modules live elsewhere: FOLDER/boot/vmlinuz-VER and
    FOLDER/lib/modules/VER as symlinks, so vng (which looks beside the image) finds both.
    Returns the image path to give vng."""
    if not kernel.staged or kernel.modules is None:
        return kernel.vng_target
    (folder / "boot").mkdir(parents=True, exist_ok=True)
    (folder / "lib/modules").mkdir(parents=True, exist_ok=True)
    image = folder / "boot" / f"vmlinuz-{kernel.version}"
    mods = folder / "lib/modules" / kernel.version
    for link, target in ((image, kernel.image), (mods, kernel.modules)):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return image
