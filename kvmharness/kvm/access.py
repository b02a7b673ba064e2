"""Why this user cannot open /dev/kvm, said from the device's actual owner, group and mode
(root:root 0600 needs root or a group; root:kvm 0660 needs membership of 'kvm')."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import Any

__all__ = ["KVM_DEVICE", "kvm_access_advice", "kvm_access_problem"]

KVM_DEVICE = "/dev/kvm"


def _name(lookup: Any, ident: int) -> str:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)


def kvm_access_advice(st_uid: int, st_gid: int, mode: int, *, uid: int, gids: set[int],
                      user: str, owner: str, group: str, member_of_group: bool,
                      device: str = KVM_DEVICE) -> str | None:
    """Why this user cannot open ``device`` read-write, and what to do, from the device's
    actual owner, group and mode; None if the mode bits let the user in."""
    need = stat.S_IRUSR | stat.S_IWUSR
    if uid == 0 or (uid == st_uid and mode & need == need):
        return None
    group_rw = mode & (stat.S_IRGRP | stat.S_IWGRP) == stat.S_IRGRP | stat.S_IWGRP
    if st_gid in gids and group_rw:
        return None
    if mode & (stat.S_IROTH | stat.S_IWOTH) == stat.S_IROTH | stat.S_IWOTH:
        return None
    where = f"{device} is {owner}:{group} mode {stat.S_IMODE(mode):04o}"
    if group_rw and st_gid != 0:
        if member_of_group:
            return (f"{where}; user {user} is in group {group!r} but this login session is "
                    f"not: log in again (or run `newgrp {group}`)")
        return (f"{where}; user {user} is not in group {group!r}: "
                f"`sudo usermod -aG {group} {user}`, then log in again")
    return (f"{where}, so only {owner} can use it: run as root, or give a group access "
            f"(`sudo chgrp kvm {device} && sudo chmod 0660 {device}`, then join that group; "
            "a udev rule keeps it across reboots)")


def kvm_access_problem(device: str = KVM_DEVICE) -> str | None:
    """None if ``device`` can be opened read-write; else one line saying why not and what to
    do, matching the device's actual owner, group and mode."""
    try:
        st = os.stat(device)
    except FileNotFoundError:
        return (f"{device} does not exist: load the KVM module (`modprobe kvm_intel` or "
                "`modprobe kvm_amd`) and enable VT-x/AMD-V in the firmware, or nested "
                "virtualization for a cloud VM")
    except OSError as e:
        return f"{device}: {e.strerror or e}"
    if not stat.S_ISCHR(st.st_mode):
        return f"{device} is not a character device"
    uid = os.geteuid()
    user = _name(pwd.getpwuid, uid)
    group = _name(grp.getgrgid, st.st_gid)
    try:
        member = user in grp.getgrgid(st.st_gid).gr_mem or pwd.getpwuid(uid).pw_gid == st.st_gid
    except KeyError:
        member = False
    advice = kvm_access_advice(st.st_uid, st.st_gid, st.st_mode, uid=uid,
                               gids={os.getegid(), *os.getgroups()}, user=user,
                               owner=_name(pwd.getpwuid, st.st_uid), group=group,
                               member_of_group=member, device=device)
    if advice is None and not os.access(device, os.R_OK | os.W_OK, effective_ids=True):
        return (f"{device}: permission denied although its mode allows this user "
                "(a security module or a container's device rules deny it)")
    return advice
