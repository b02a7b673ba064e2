"""``kvmharness build-kvm``: kvm.ko and the vendor module(s) rebuilt from source, patched,
for a kernel that is already built, as a modules overlay that ``ab --kvm`` boots.

The steps (each a function below; the pure rules are in ``kvmsource``):

1. the target: an unpacked linux-image package (or a release under the cache's kernels/);
   its release, Debian package version and stock ``lib/modules/RELEASE``;
2. its headers: ``apt-get download`` of linux-headers-RELEASE, its -common and
   linux-kbuild-SERIES packages, unpacked with ``dpkg -x`` into the cache (installing them
   would pull in linux-image and write the host's /boot);
3. the sources: a kernel tree (or git checkout) or a source tarball, whose top Makefile
   must give the target's version; arch/x86/kvm and virt/kvm copied, patches applied;
4. the build: one work tree per target and vendor set, synced file by file so that make
   only rebuilds what changed; ``make -C HEADERS M=...``; the result cached by a hash of
   the sources as built (a second run with the same inputs builds nothing);
5. checks: vermagic equal to the stock module's, every symbol imported from the kernel
   with the CRC of the target's Module.symvers;
6. ``strip --strip-debug`` and xz with CRC32 checks, as Debian ships modules;
7. the overlay: OUT/lib/modules/RELEASE, the stock tree (hard links where possible) with
   the modules replaced and ``depmod -b``; OUT/boot/vmlinuz-RELEASE links the stock image,
   so OUT is also an unpacked package; OUT/kvm-manifest.json (and a copy in the modules
   tree, which a boot's fingerprint reads) says what went in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kvmharness.observe import fingerprint, kmod
from kvmharness.runner import kvmsource
from kvmharness.runner.boot import cache_dir
from kvmharness.runner.kernels import KernelPathError, resolve_kernel

MANIFEST = "kvm-manifest.json"
# The copy inside lib/modules/RELEASE: inside a boot that folder is /lib/modules/$(uname -r).
MODULES_MANIFEST = "kvmharness-kvm.json"
_DONE = ".complete"
Log = Callable[[str], None]


class BuildError(RuntimeError):
    """A step of build-kvm failed; the message names the step and what to look at."""


@dataclasses.dataclass(frozen=True)
class Target:
    release: str
    debian_version: str | None
    image: Path
    modules: Path          # the stock lib/modules/RELEASE
    root: Path             # what was given (an unpacked package)


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    source: Path
    target: str
    patches: tuple[Path, ...]
    out: Path
    vendors: tuple[str, ...] = ("amd",)
    jobs: int | None = None
    cache: Path | None = None


@dataclasses.dataclass(frozen=True)
class BuildOutcome:
    manifest: dict[str, Any]
    overlay: Path
    seconds: float
    cached: bool


def writable_cache(preferred: Path | None = None) -> Path:
    """The harness cache when this user can write it, else ~/.cache/kvmharness."""
    base = preferred or cache_dir()
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvmharness"
    home.mkdir(parents=True, exist_ok=True)
    return home


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One build-kvm at a time per folder (a second waits for the first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None,
         timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise BuildError(f"{what}: {cmd[0]} is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"{what}: {' '.join(cmd)} took more than {timeout:.0f} s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BuildError(f"{what}: {' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    return proc


# --- 1. the target -------------------------------------------------------------------

def debian_version_of(image: Path) -> str | None:
    """The package version a Debian kernel names in its version string ("... Debian
    6.12.117-1~deb12u1 (2025-...)"), read from the bzImage setup header."""
    try:
        head = image.read_bytes()[:0x10000]
    except OSError:
        return None
    m = re.search(rb"\d+\.\d+[^\0 ]* \([^\0]*?\) #[^\0]*? Debian ([0-9][^\0 ]*)", head)
    return m.group(1).decode() if m else None


def resolve_target(spec: str, cache: Path) -> Target:
    """An unpacked linux-image package folder, a folder made by build-kvm, or a release
    under CACHE/kernels/."""
    path = Path(spec).expanduser()
    if not path.exists() and "/" not in spec:
        path = cache / "kernels" / spec
    try:
        kernel = resolve_kernel("target", path)
    except KernelPathError as e:
        raise BuildError(f"--for {spec}: {e}") from e
    if kernel.kind == "build":
        raise BuildError(f"--for {spec}: a kernel build directory builds its own modules "
                         f"(make -C {path} M=arch/x86/kvm); give ab that directory instead")
    if kernel.modules is None:
        raise BuildError(f"--for {spec}: no lib/modules/{kernel.version} beside the image")
    return Target(kernel.version, debian_version_of(kernel.image), kernel.image,
                  kernel.modules.resolve(), path)


# --- 2. headers ----------------------------------------------------------------------

def _deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), field], f"reading {deb.name}").stdout.strip()


def _download(package: str, version: str, debs: Path, log: Log) -> Path:
    quoted = version.replace(":", "%3a")
    found = sorted(debs.glob(f"{package}_{quoted}_*.deb"))
    if found:
        return found[0]
    log(f"apt-get download {package}={version}")
    _run(["apt-get", "download", f"{package}={version}"], f"downloading {package}", cwd=debs,
         timeout=1800)
    found = sorted(debs.glob(f"{package}_{quoted}_*.deb"))
    if not found:
        raise BuildError(f"apt-get download {package}={version} left no .deb in {debs}")
    return found[0]


def headers_for(target: Target, cache: Path, log: Log) -> Path:
    """CACHE/headers/RELEASE/usr/src/linux-headers-RELEASE, unpacked once."""
    if not target.debian_version:
        raise BuildError(f"kernel {target.release}: not a Debian kernel (no package version "
                         "in its version string), so its headers package is unknown")
    root = cache / "headers" / target.release
    headers = root / "usr/src" / f"linux-headers-{target.release}"
    if (root / _DONE).is_file():
        return headers
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with locked(cache / "headers" / f".{target.release}.lock"):
        if (root / _DONE).is_file():
            return headers
        main = _download(f"linux-headers-{target.release}", target.debian_version, debs, log)
        depends = _deb_field(main, "Depends")
        names = re.findall(r"(linux-headers-[^\s,(]+-common|linux-kbuild-[^\s,(]+)", depends)
        if len(set(names)) < 2:
            raise BuildError(f"{main.name}: Depends names no -common and linux-kbuild package "
                             f"({depends})")
        packages = [main] + [_download(n, target.debian_version, debs, log)
                             for n in dict.fromkeys(names)]
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for deb in packages:
            _run(["dpkg", "-x", str(deb), str(root)], f"unpacking {deb.name}")
        # The Makefile includes the -common one by its absolute installed path.
        makefile = headers / "Makefile"
        text = makefile.read_text()
        makefile.write_text(re.sub(r"(?m)^include /usr/src/", f"include {root}/usr/src/", text))
        (root / _DONE).write_text(json.dumps([p.name for p in packages]) + "\n")
    return headers


# --- 3. sources ----------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tarball_top(tarball: Path) -> str:
    import tarfile

    try:
        with tarfile.open(tarball, "r|*") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError) as e:
        raise BuildError(f"--source {tarball}: not a readable tarball: {e}") from e
    if first is None:
        raise BuildError(f"--source {tarball}: empty tarball")
    return first.name.split("/", 1)[0]


def unpacked_tarball(tarball: Path, cache: Path, log: Log) -> tuple[Path, dict[str, Any]]:
    digest = _sha256_file(tarball)
    dest = cache / "kvm-src" / digest[:16]
    identity = {"kind": "tarball", "path": str(tarball), "sha256": digest}
    if (dest / _DONE).is_file():
        return dest, identity
    with locked(cache / "kvm-src" / f".{digest[:16]}.lock"):
        if (dest / _DONE).is_file():
            return dest, identity
        top = _tarball_top(tarball)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        log(f"unpacking {', '.join(kvmsource.SOURCE_PARTS)} of {tarball.name}")
        _run(["tar", "-xf", str(tarball), "-C", str(dest), "--strip-components=1",
              *(f"{top}/{part}" for part in kvmsource.SOURCE_PARTS)],
             f"unpacking {tarball.name}")
        (dest / _DONE).write_text(digest + "\n")
    return dest, identity


def git_identity(tree: Path) -> dict[str, Any] | None:
    try:
        top = subprocess.run(["git", "-C", str(tree), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
        lines = top.stdout.split()
        status = subprocess.run(["git", "-C", str(tree), "status", "--porcelain",
                                 "--untracked-files=no", "--", *kvmsource.SOURCE_PARTS],
                                capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"kind": "git", "path": str(tree), "git_commit": lines[1],
            "git_dirty": bool(status.stdout.strip())}


def read_sources(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of the top Makefile and every file under arch/x86/kvm and
    virt/kvm (build products of an in-tree build left out)."""
    files: dict[str, bytes] = {}
    for part in kvmsource.SOURCE_PARTS:
        base = root / part
        if base.is_file():
            files[part] = base.read_bytes()
            continue
        if not base.is_dir():
            raise BuildError(f"--source {root}: no {part} (a kernel source tree holds "
                             f"{', '.join(kvmsource.SOURCE_PARTS)})")
        for path in sorted(base.rglob("*")):
            if path.is_file() and not _is_build_product(path.name):
                files[str(path.relative_to(root))] = path.read_bytes()
    return files


def _is_build_product(name: str) -> bool:
    return (name.startswith(".") or name.endswith((".o", ".ko", ".mod", ".mod.c", ".cmd",
                                                   ".order", ".symvers", ".orig", ".rej")))


def apply_patches(files: dict[str, bytes], patches: Sequence[Path]) -> dict[str, bytes]:
    """The files after ``patch -p1`` of each patch in turn (in a scratch copy)."""
    if not patches:
        return files
    with tempfile.TemporaryDirectory(prefix="kvmharness-patch.") as tmp:
        scratch = Path(tmp)
        _write_tree(scratch, files)
        for p in patches:
            _run(["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-d",
                  str(scratch), "-i", str(p.resolve())], f"applying {p}")
        return read_sources(scratch)


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def sync_tree(root: Path, files: dict[str, bytes]) -> int:
    """Make ROOT hold exactly FILES (as far as sources go), rewriting only what differs so
    that make's timestamps rebuild only that.  Returns how many files were written."""
    record = root / ".kvmharness-sources.json"
    try:
        before = set(json.loads(record.read_text()))
    except (OSError, ValueError):
        before = set()
    written = 0
    for rel, data in files.items():
        path = root / rel
        try:
            if path.read_bytes() == data:
                continue
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += 1
    for rel in before - set(files):
        with contextlib.suppress(OSError):
            (root / rel).unlink()
    record.write_text(json.dumps(sorted(files)))
    return written


# --- 4-6. build, check, compress ------------------------------------------------------

def compress_like(stock: Path, data: bytes) -> tuple[str, bytes]:
    """The suffix and bytes of a module file compressed as the stock one is."""
    if stock.name.endswith(".ko.xz"):
        # kbuild: xz --check=crc32 --lzma2=dict=1MiB (the kernel's decompressor and kmod
        # both accept CRC32; the in-kernel one does not do CRC64/SHA-256).
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20}]
        return ".ko.xz", lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                       filters=filters)
    if stock.name.endswith(".ko"):
        return ".ko", data
    raise BuildError(f"{stock}: only .ko and .ko.xz stock modules are matched here")


def stock_module(target: Target, name: str) -> Path:
    found = sorted((target.modules / "kernel/arch/x86/kvm").glob(f"{name}.ko*"))
    if not found:
        raise BuildError(f"{target.modules}: no kernel/arch/x86/kvm/{name}.ko* to replace")
    return found[0]


def check_module(data: bytes, stock: Path, name: str, symvers: dict[str, tuple[int, str]],
                 rebuilt: Sequence[str]) -> list[str]:
    """Problems that would keep the module from loading in the target kernel."""
    problems = []
    mine = kmod.modinfo(data, name).get("vermagic")
    theirs = kmod.modinfo(kmod.decompressed(stock), str(stock)).get("vermagic")
    if mine != theirs:
        problems.append(f"{name}: vermagic {mine!r}, the kernel's modules have {theirs!r}")
    bad = kvmsource.symbol_mismatches(kmod.modversions(data, name), symvers, rebuilt)
    if bad:
        problems.append(f"{name}: {len(bad)} symbol CRC(s) differ from the target's "
                        f"Module.symvers: {', '.join(bad[:5])}")
    return problems


def _compiler_fact(headers: Path) -> str:
    try:
        text = (headers / "include/generated/compile.h").read_text()
    except OSError:
        text = ""
    m = re.search(r'LINUX_COMPILER\s+"([^"]+)"', text)
    return m.group(1) if m else "compiler unknown"


def build(req: BuildRequest, log: Log) -> BuildOutcome:
    started = time.monotonic()
    cache = writable_cache(req.cache)
    modules = kvmsource.module_names(req.vendors)
    target = resolve_target(req.target, cache)
    for p in req.patches:
        if not p.is_file():
            raise BuildError(f"--patch {p}: no such file")
    source = req.source.expanduser().resolve()
    if source.is_file():
        tree, identity = unpacked_tarball(source, cache, log)
    elif source.is_dir():
        tree = source
        identity = git_identity(source) or {"kind": "dir", "path": str(source)}
    else:
        raise BuildError(f"--source {req.source}: no such file or folder")
    files = read_sources(tree)
    version = kvmsource.makefile_version(files["Makefile"].decode("utf-8", "replace"))
    kvmsource.check_version(version, target.release, target.debian_version)
    identity["version"] = version
    identity["content_sha256"] = kvmsource.content_key(files, ())
    files = apply_patches(files, req.patches)
    headers = headers_for(target, cache, log)
    key = kvmsource.content_key(files, [target.release, target.debian_version or "",
                                        ",".join(req.vendors), _compiler_fact(headers)])
    done = cache / "kvm-out" / key[:24]
    cached = (done / MANIFEST).is_file()
    build_info: dict[str, Any]
    if cached:
        log(f"same sources as {done} built before: reusing it")
        built = json.loads((done / MANIFEST).read_text())
        build_info = built["build"]
    else:
        build_info = _build_into(done, files, headers, target, modules, req, cache, log)
    manifest = _manifest(req, target, identity, modules, done, build_info, key)
    (done / MANIFEST).write_text(json.dumps({"build": build_info}, indent=1) + "\n")
    overlay = write_overlay(req.out, target, done, modules, manifest, log)
    return BuildOutcome(manifest, overlay, time.monotonic() - started, cached)


def _build_into(done: Path, files: dict[str, bytes], headers: Path, target: Target,
                modules: Sequence[str], req: BuildRequest, cache: Path,
                log: Log) -> dict[str, Any]:
    work = cache / "kvm-build" / f"{target.release}-{'-'.join(req.vendors)}"
    with locked(work.parent / f".{work.name}.lock"):
        work.mkdir(parents=True, exist_ok=True)
        edited = {**files, **kvmsource.out_of_tree_edits(files, work)}
        written = sync_tree(work, edited)
        kvm_dir = work / kvmsource.KVM_DIR
        first = not (kvm_dir / "kvm.ko").is_file()
        jobs = req.jobs or os.cpu_count() or 1
        # BTF for modules needs pahole (Debian: dwarves); a module without .BTF loads the
        # same, only BPF programs cannot see its types.
        btf = shutil.which("pahole") is not None
        cmd = ["make", "-C", str(headers), f"M={kvm_dir}", f"-j{jobs}",
               *kvmsource.make_variables(req.vendors),
               *([] if btf else ["CONFIG_DEBUG_INFO_BTF_MODULES="]), "modules"]
        log(("building" if first else f"rebuilding ({written} file(s) changed)")
            + f": {' '.join(cmd)}")
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - t0
        (work / "build.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
            raise BuildError(f"make exited with {proc.returncode} (log: {work / 'build.log'}):"
                             f"\n{tail}")
        symvers = kmod.symvers((headers / "Module.symvers").read_text())
        built_symvers = kmod.symvers((kvm_dir / "Module.symvers").read_text())
        problems: list[str] = []
        outputs: dict[str, bytes] = {}
        tmp = done.with_name(done.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in modules:
            ko = kvm_dir / f"{name}.ko"
            stripped = tmp / f"{name}.ko"
            _run(["strip", "--strip-debug", "-o", str(stripped), str(ko)], f"stripping {name}")
            data = stripped.read_bytes()
            stripped.unlink()
            stock = stock_module(target, name)
            problems += check_module(data, stock, name, symvers, modules)
            suffix, packed = compress_like(stock, data)
            outputs[name + suffix] = packed
        if problems:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BuildError("the built modules would not load in " + target.release + ":\n  "
                             + "\n  ".join(problems))
        for fname, packed in outputs.items():
            (tmp / fname).write_bytes(packed)
        info: dict[str, Any] = {
            "seconds": round(seconds, 1),
            "incremental": not first,
            "files_changed": written,
            "make": cmd,
            "work_tree": str(work),
            "kvm_exports_changed": kvmsource.changed_exports(built_symvers, symvers, "kvm"),
            "modversions_checked": True,
            "btf": btf,
        }
        (tmp / MANIFEST).write_text(json.dumps({"build": info}, indent=1) + "\n")
        shutil.rmtree(done, ignore_errors=True)
        tmp.rename(done)
        log(f"built in {seconds:.1f} s")
        return info


def _manifest(req: BuildRequest, target: Target, identity: dict[str, Any],
              modules: Sequence[str], done: Path, build_info: dict[str, Any],
              key: str) -> dict[str, Any]:
    mods: dict[str, Any] = {}
    for name in modules:
        path = next(done.glob(f"{name}.ko*"))
        stock = stock_module(target, name)
        mods[name] = {**kmod.identity(path),
                      "stock_sha256": _sha256_file(stock)}
    warnings = []
    if build_info.get("kvm_exports_changed") and "kvm-intel" not in modules:
        warnings.append("kvm's exported symbols changed "
                        f"({', '.join(build_info['kvm_exports_changed'][:3])}...): the stock "
                        "kvm-intel will not load beside this kvm (build it too: --vendor intel)")
    return {
        "kind": "kvmharness build-kvm",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "harness": fingerprint.harness_identity(),
        "target": {"release": target.release, "debian_version": target.debian_version,
                   "image": str(target.image), "stock_modules": str(target.modules)},
        "source": identity,
        "patches": [{"file": str(p), "name": p.name, "sha256": _sha256_file(p)}
                    for p in req.patches],
        "vendors": list(req.vendors),
        "content_key": key,
        "build": build_info,
        "modules": mods,
        "warnings": warnings,
    }


# --- 7. the overlay ------------------------------------------------------------------

def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def depmod_reason(target: Target, done: Path, modules: Sequence[str]) -> str | None:
    """Why the overlay's module indexes must be rebuilt, or None when depmod would write
    the stock ones again (same dependencies, aliases and exported symbols)."""
    for name in modules:
        built = next(done.glob(f"{name}.ko*"))
        stock = stock_module(target, name)
        mine = kmod.index_facts(kmod.decompressed(built), str(built))
        theirs = kmod.index_facts(kmod.decompressed(stock), str(stock))
        if mine != theirs:
            changed = sorted(set(mine) ^ set(theirs))
            return f"{name}: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}"
    return None


def write_overlay(out: Path, target: Target, done: Path, modules: Sequence[str],
                  manifest: dict[str, Any], log: Log) -> Path:
    """OUT as described in the module docstring; replaced whole when it was one of ours."""
    out = out.expanduser().resolve()
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise BuildError(f"--out {out}: exists and is not a build-kvm overlay (no {MANIFEST}); "
                         "give a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        mods = tmp / "lib/modules" / target.release
        replaced = {stock_module(target, name).relative_to(target.modules) for name in modules}
        for src in target.modules.rglob("*"):
            rel = src.relative_to(target.modules)
            dst = mods / rel
            if src.is_dir() and not src.is_symlink():
                dst.mkdir(parents=True, exist_ok=True)
            elif src.is_symlink():
                continue  # build/ and source/ point at headers this overlay does not carry
            elif rel in replaced:
                continue
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.name.startswith("modules."):
                    shutil.copy2(src, dst)  # depmod rewrites these: never touch the stock ones
                else:
                    _link_or_copy(src, dst)
        kvm_dir = mods / "kernel/arch/x86/kvm"
        for name in modules:
            built = next(done.glob(f"{name}.ko*"))
            shutil.copy2(built, kvm_dir / built.name)
        reason = depmod_reason(target, done, modules)
        if reason is None:
            # The indexes depmod would write are the stock ones: copied above (~35 s saved).
            manifest = {**manifest, "depmod": "not needed: same dependencies, aliases and "
                        "exports as the stock modules (stock indexes kept)"}
        else:
            _run(["depmod", "-a", "-b", str(tmp), target.release], "depmod of the overlay")
            manifest = {**manifest, "depmod": f"run: {reason}"}
        (tmp / "boot").mkdir()
        (tmp / "boot" / target.image.name).symlink_to(target.image)
        config = target.image.with_name(target.image.name.replace("vmlinuz-", "config-"))
        if config.is_file():
            (tmp / "boot" / config.name).symlink_to(config)
        text = json.dumps(manifest, indent=1) + "\n"
        (tmp / MANIFEST).write_text(text)
        (mods / MODULES_MANIFEST).write_text(text)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"overlay: {out} (boot it with ab --kernel NAME={target.root} --kvm NAME={out})")
    return out
