"""The engine of ``tools/vng-run``: boot one kernel, run one command inside, from a checkout.

    python3 -m kvmharness.runner.vng_run --chdir REPO KERNEL [--cpus N] [--append ARGS]...
        [--rwdir DIR]... [--rodir DIR]... -- COMMAND [ARG...]

Options, environment and exit statuses: tools/README.md.  Standard library only: Debian's
/usr/bin/python3 runs it before any venv exists.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kvmharness.runner.boot import (
    RC_OWN_ERROR,
    BootError,
    BootSpec,
    binds_for,
    boot,
    cache_dir,
    check_dir_arg,
    exec_body,
    kernel_binds,
    package_root,
    passthrough_env,
    prepare_kernel,
)
from kvmharness.runner.host import AccelError, check_prerequisites, decide_accel, find_vng
from kvmharness.runner.kernels import KernelPathError, resolve_kernel

VNG_RUN_USAGE = ("usage: tools/vng-run KERNEL [--cpus N] [--append ARGS]... [--rwdir DIR]... "
                 "[--rodir DIR]... -- COMMAND [ARG...]")
_VALUE_OPTIONS = ("--rwdir", "--rodir", "--cpus", "--append")


@dataclasses.dataclass(frozen=True)
class VngRunArgs:
    chdir: Path
    kernel: str
    command: tuple[str, ...]
    rwdirs: tuple[Path, ...] = ()
    rodirs: tuple[Path, ...] = ()
    cpus: int | None = None         # None: VNG_CPUS, else the acceleration's default
    append: str = ""                # kernel command line, on top of VNG_APPEND


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        raise BootError(f"{name}={os.environ[name]!r} is not a number") from None


def _cpus(text: str, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise BootError(f"{what}={text!r}: expected a number of vCPUs >= 1")
    return n


def parse_vng_run(argv: Sequence[str]) -> VngRunArgs:
    """Parsed by hand: argparse mangles a COMMAND that has options of its own."""
    args = list(argv)
    chdir = Path.cwd()
    if args[:1] == ["--chdir"] and len(args) >= 2:
        chdir, args = Path(args[1]), args[2:]
    if not args or args[0].startswith("-"):
        raise BootError(VNG_RUN_USAGE)
    kernel, args = args[0], args[1:]
    values: dict[str, list[str]] = {o: [] for o in _VALUE_OPTIONS}
    while args and args[0] != "--":
        opt = args.pop(0)
        if "=" in opt and opt.split("=", 1)[0] in _VALUE_OPTIONS:
            opt, value = opt.split("=", 1)
            args.insert(0, value)
        if opt not in _VALUE_OPTIONS or not args:
            raise BootError(VNG_RUN_USAGE)
        values[opt].append(args.pop(0))
    if len(args) < 2:
        raise BootError(VNG_RUN_USAGE)
    if len(values["--cpus"]) > 1:
        raise BootError("--cpus given twice")
    cpus = _cpus(values["--cpus"][0], "--cpus") if values["--cpus"] else None
    return VngRunArgs(chdir, kernel, tuple(args[1:]),
                      tuple(Path(d) for d in values["--rwdir"]),
                      tuple(Path(d) for d in values["--rodir"]),
                      cpus, " ".join(values["--append"]))


def vng_run_main(argv: Sequence[str] | None = None) -> int:
    """tools/vng-run (see tools/README.md)."""
    prog = "vng-run"

    def say(text: str) -> None:
        print(f"{prog}: {text}", file=sys.stderr, flush=True)

    cache = cache_dir()
    try:
        a = parse_vng_run(sys.argv[1:] if argv is None else argv)
        path = Path(a.kernel)
        if not path.exists() and (cache / "kernels" / a.kernel).is_dir():
            path = cache / "kernels" / a.kernel
        if not path.exists():
            raise KernelPathError(f"no kernel folder {a.kernel} (nor "
                                  f"{cache / 'kernels' / a.kernel}); try: tools/vng-run "
                                  f"--setup {a.kernel}")
        kernel = resolve_kernel("guest", path)
        vng = find_vng()
        missing = check_prerequisites(vng=vng)
        if missing or vng is None:
            for m in missing:
                say(f"missing {m}")
            say("or run: tools/vng-run --setup")
            return RC_OWN_ERROR
        accel_request = os.environ.get("VNG_ACCEL") or "auto"
        if accel_request not in ("auto", "kvm", "tcg"):
            raise BootError(f"VNG_ACCEL={accel_request!r}: expected auto, kvm or tcg")
        cpus = a.cpus
        if cpus is None and os.environ.get("VNG_CPUS"):
            cpus = _cpus(os.environ["VNG_CPUS"], "VNG_CPUS")
        accel = decide_accel(accel_request, cpus)  # type: ignore[arg-type]
        modprobe = os.environ.get("VNG_MODPROBE") or accel.module
        rwdirs = []
        for d in a.rwdirs:
            check_dir_arg(d)
            d.mkdir(parents=True, exist_ok=True)
            rwdirs.append(d.resolve())
        rodirs = [check_dir_arg(d).resolve() for d in a.rodirs]
        pydeps = cache / "pydeps"
        if not pydeps.is_dir():
            say(f"warning: {pydeps} missing: run tools/vng-run --setup")
        cwd = a.chdir.resolve()
        with tempfile.TemporaryDirectory(prefix="kvmharness-stage.", dir="/tmp") as staging:
            target = prepare_kernel(kernel, modprobe.split()[0], Path(staging))
            binds = binds_for([*([cache] if cache.is_dir() else []), *kernel_binds(kernel),
                               cwd, package_root()])
            binds += [d for d in rodirs if d not in binds]
            append = " ".join(x for x in (os.environ.get("VNG_APPEND", ""), a.append) if x)
            spec = BootSpec(target=target, accel=accel,
                            memory=os.environ.get("VNG_MEMORY") or "4G",
                            rodirs=tuple(binds), rwdirs=tuple(rwdirs), append=append,
                            qemu_opts=os.environ.get("VNG_QEMU_OPTS", ""),
                            timeout_s=_env_float("VNG_TIMEOUT", 600))
            env = {"PYTHONPATH": f"{pydeps}:{package_root()}",
                   "KVMHARNESS_VNG_KERNEL": kernel.version, **passthrough_env()}
            if accel.warning:
                say(f"{kernel.version}: {accel.warning}")
            result = boot(vng, spec, name=kernel.version, version=kernel.version,
                          body=exec_body(a.command), cwd=cwd, env=env, modprobe=modprobe,
                          out=lambda line: print(line, flush=True),
                          err=lambda line: print(line, file=sys.stderr, flush=True),
                          console_log=Path(os.environ["VNG_CONSOLE_LOG"])
                          if os.environ.get("VNG_CONSOLE_LOG") else None,
                          tail_lines=int(_env_float("VNG_CONSOLE_TAIL", 60)))
    except (KernelPathError, AccelError, BootError) as e:
        say(str(e))
        return RC_OWN_ERROR
    except KeyboardInterrupt:
        say("interrupted: QEMU stopped")
        return 130
    # The output was streamed already: only the summary and, on failure, the console.
    say(result.summary())
    if not result.ok:
        say(f"---- guest kernel console, last {len(result.console_tail)} lines ----")
        for line in result.console_tail:
            print(line, file=sys.stderr)
        say("---- end of console ----")
    return result.rc


if __name__ == "__main__":
    raise SystemExit(vng_run_main())
