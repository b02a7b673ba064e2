"""``kvmharness fleet``: one plan on many KVM hosts through Ansible, then the hosts side by
side (``compare --by host``).  Thin on purpose: Ansible reaches the hosts, runs them in
parallel (forks) or a few at a time (serial), and fetches their files; the playbook and
its role ship inside the package (kvmharness/ansible/); this command builds the wheelhouse
every host installs from, calls ``ansible-playbook`` and compares what came back.

    kvmharness fleet init DIR        an inventory and a plan to edit
    kvmharness fleet run -i INVENTORY --plan FILE [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

import kvmharness
from kvmharness.cli import common, planfile
from kvmharness.results.store import DEFAULT_DIR

PLAYBOOK = Path(__file__).resolve().parent.parent / "ansible" / "site.yml"
EXTRA_HINT = "kvmharness fleet: needs ansible-core: pip install 'kvmharness[fleet]'"

INVENTORY_SKELETON = """\
# The KVM hosts `kvmharness fleet run` drives (Ansible INI inventory).  Each host's files
# come back under <out>/<name>/, and `compare --by host` names its side <name>; the first
# host is the baseline.  Per host: ansible_host, ansible_user, ansible_port, and the
# kvmharness_* variables of kvmharness/ansible/roles/kvmharness/defaults/main.yml (e.g.
# kvmharness_python=/usr/bin/python3.11, kvmharness_workdir=/scratch/kvmharness).
[kvm_hosts]
amd-milan    ansible_host=milan.lab.example
intel-spr    ansible_host=spr.lab.example
nested-l1    ansible_host=l1-guest.lab.example

[kvm_hosts:vars]
ansible_user=kvmtest
"""

PLAN_SKELETON = """\
# A kvmharness plan: `kvmharness run --plan plan.toml` on one host, or
# `kvmharness fleet run -i inventory.ini --plan plan.toml` on every host.
quick = true     # CI-sized parameters; drop for full-size runs
repeat = 5       # runs per variant (or until_ci = "5%" with max_time = 300)

[[scenario]]
name = "slot-ops"
variants = { zap = ["all", "slot"] }

[[scenario]]
name = "rom-toggle"
# params = { vcpus = 4 }

# Boot kernels that exist on every host and run the scenarios inside each
# (kvmharness ab; needs virtme-ng and QEMU on the hosts):
# [kernels]
# base = "/boot/vmlinuz-6.1.0-56-amd64"
# new = "/boot/vmlinuz-6.12.117+deb12-amd64"
# [ab]
# rounds = 2
"""


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("fleet", help="run one plan on many KVM hosts with Ansible and "
                       "compare the hosts (needs 'kvmharness[fleet]')")
    fsub = p.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    init = fsub.add_parser("init", help="write an inventory and a plan to edit")
    init.add_argument("folder", type=Path, metavar="DIR")
    init.set_defaults(handler=lambda args, argv, out, err: cmd_init(args, out, err))
    run = fsub.add_parser("run", help="install the harness on every host, run the plan, "
                          "fetch the files, compare the hosts")
    run.add_argument("-i", "--inventory", type=Path, required=True, metavar="INVENTORY",
                     help="Ansible inventory; the hosts are its group kvm_hosts")
    run.add_argument("--plan", type=Path, required=True, metavar="FILE")
    run.add_argument("--out", type=Path, metavar="DIR", help=f"where each host's files land, "
                     f"one folder per host (default {DEFAULT_DIR}/fleet-<UTC time>/)")
    run.add_argument("--forks", type=common.positive, default=20, metavar="N",
                     help="hosts worked on at once (Ansible forks; default 20)")
    run.add_argument("--serial", metavar="N",
                     help="hosts per batch, one batch after the other (a number or a "
                     "percentage; default: every host in one batch)")
    run.add_argument("--wheelhouse", type=Path, metavar="DIR",
                     help="the wheels the hosts install from (kvmharness and its "
                     "dependencies; default: built here from this checkout with pip wheel)")
    run.add_argument("--by", choices=("host", "host+variant"), default="host",
                     help="the comparison printed at the end (default host)")
    run.add_argument("--baseline", metavar="HOST",
                     help="the host compared against (default: the inventory's first)")
    run.add_argument("--ansible-arg", action="append", default=[], metavar="ARG",
                     help="passed on to ansible-playbook (repeatable), e.g. --limit=amd-*")
    run.set_defaults(handler=lambda args, argv, out, err: cmd_run(args, out, err))


def cmd_init(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    targets = {args.folder / "inventory.ini": INVENTORY_SKELETON,
               args.folder / "plan.toml": PLAN_SKELETON}
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        err.write(f"kvmharness fleet init: {', '.join(existing)} exists: not overwritten\n")
        return common.EXIT_FAILED
    args.folder.mkdir(parents=True, exist_ok=True)
    for path, text in targets.items():
        path.write_text(text)
        out.write(f"wrote {path}\n")
    out.write(f"edit them, then: kvmharness fleet run -i {args.folder / 'inventory.ini'} "
              f"--plan {args.folder / 'plan.toml'}\n")
    return 0


def ansible_playbook() -> str | None:
    """The ansible-playbook of this Python's ansible-core (beside sys.executable), else the
    one on PATH; None when ansible-core is not installed."""
    if importlib.util.find_spec("ansible") is None:
        return None
    beside = Path(sys.executable).parent / "ansible-playbook"
    return str(beside) if beside.exists() else shutil.which("ansible-playbook")


def source_root() -> Path | None:
    """The checkout this package runs from (None when installed from a wheel)."""
    root = Path(kvmharness.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def build_wheelhouse(folder: Path, err: TextIO) -> None:
    """kvmharness's wheel and its dependencies' into ``folder`` (pip's own index
    settings on this controller; the hosts then install with --no-index)."""
    root = source_root()
    if root is None:
        raise FileNotFoundError("not running from a checkout: give --wheelhouse DIR "
                                "(pip wheel kvmharness -w DIR)")
    err.write(f"kvmharness fleet: building the wheelhouse from {root} in {folder}\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(folder), str(root)],
                   check=True, stdout=err, stderr=err)


def run_playbook(playbook_cmd: str, args: argparse.Namespace, extra: dict[str, str],
                 err: TextIO) -> int:
    command = [playbook_cmd, str(PLAYBOOK), "-i", str(args.inventory),
               "--forks", str(args.forks), "--extra-vars", json.dumps(extra),
               *args.ansible_arg]
    err.write(f"kvmharness fleet: {' '.join(command[:4])} ...\n")
    err.flush()
    return subprocess.run(command, check=False).returncode


def host_files(results: Path) -> tuple[list[str], dict[str, list[Path]], dict[str, str]]:
    """(hosts in inventory order, result files per host, first error line per failed
    host) from the folder the playbook filled."""
    listed = results / "hosts.txt"
    hosts = listed.read_text().split() if listed.exists() else sorted(
        p.name for p in results.iterdir() if p.is_dir())
    files = {h: sorted((results / h).rglob("*.json")) for h in hosts}
    files = {h: [p for p in fs if p.name != "ab.json"] for h, fs in files.items()}
    errors = {}
    for h in hosts:
        error = results / h / "ERROR.txt"
        if error.exists():
            errors[h] = error_summary(error.read_text())
    return hosts, files, errors


def error_summary(text: str) -> str:
    """'task NAME (exit status N): the last line of its output' from an ERROR.txt."""
    fields = dict(line.split(": ", 1) for line in text.splitlines()[:3] if ": " in line)
    lines = [x.strip() for x in text.splitlines()[3:] if x.strip()]
    last = lines[-1] if lines else "no output"
    return f"task {fields.get('task', '?')!r} (exit status {fields.get('exit status', '-')}): {last}"


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    playbook_cmd = ansible_playbook()
    if playbook_cmd is None:
        err.write(EXTRA_HINT + "\n")
        return common.EXIT_USAGE
    try:
        planfile.load(args.plan)  # a typo fails here, before any host is contacted
    except planfile.PlanError as e:
        err.write(f"kvmharness fleet: --plan {e}\n")
        return common.EXIT_USAGE
    if not args.inventory.is_file():
        err.write(f"kvmharness fleet: {args.inventory}: no such inventory file\n")
        return common.EXIT_USAGE
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results = (args.out or DEFAULT_DIR / f"fleet-{stamp}").resolve()
    results.mkdir(parents=True, exist_ok=True)
    wheelhouse = args.wheelhouse
    if wheelhouse is None:
        wheelhouse = results / "wheelhouse"
        try:
            build_wheelhouse(wheelhouse, err)
        except (OSError, subprocess.CalledProcessError) as e:
            err.write(f"kvmharness fleet: {e}\n")
            return common.EXIT_FAILED
    extra = {"kvmharness_wheelhouse": str(wheelhouse.resolve()),
             "kvmharness_version": kvmharness.__version__,
             "kvmharness_plan": str(args.plan.resolve()),
             "kvmharness_results": str(results), "kvmharness_run_id": stamp}
    if args.serial:
        extra["kvmharness_serial"] = args.serial
    status = run_playbook(playbook_cmd, args, extra, err)
    hosts, files, errors = host_files(results)
    out.write(f"fleet: {len(hosts)} hosts, results in {results}\n")
    for h in hosts:
        state = f"FAILED: {errors[h]}" if h in errors else "ok"
        out.write(f"  {h}: {len(files[h])} result files; {state}\n")
    with_files = [p for h in hosts for p in files[h]]
    if len({h for h in hosts if files[h]}) < 2:
        out.write("fleet: fewer than two hosts have result files: nothing to compare\n")
        return common.EXIT_FAILED
    from kvmharness.cli import main  # the package imports this module

    baseline = ["--baseline", args.baseline] if args.baseline else []
    compared = main(["compare", "--by", args.by, *baseline, *map(str, with_files)])
    return common.EXIT_FAILED if status != 0 or errors else compared
