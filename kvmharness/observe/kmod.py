"""What a kernel module file is: its hash, ELF build id, modinfo fields and modversions.

Read from the file itself (a ``.ko``, or a ``.ko.xz`` / ``.ko.zst``-free ``.ko.gz`` as
Debian and kbuild ship them), so the same answer comes from the host that built a module,
from the overlay it went into and from the boot that loaded it.  pyelftools parses the ELF.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

# struct modversion_info (include/linux/module.h): unsigned long crc; char name[64 - 8].
_MODVERSION_SIZE = 64
_MODVERSION_NAME = _MODVERSION_SIZE - 8


class ModuleFileError(ValueError):
    """A module file that cannot be read or is not a kernel module ELF."""


def decompressed(path: Path) -> bytes:
    """The ELF bytes of a module file, whatever compression its name says."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModuleFileError(f"{path}: {e.strerror or e}") from e
    try:
        if path.name.endswith(".xz"):
            return lzma.decompress(data, format=lzma.FORMAT_XZ)
        if path.name.endswith(".gz"):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise ModuleFileError(f"{path}: cannot decompress: {e}") from e
    if path.name.endswith(".zst"):
        raise ModuleFileError(f"{path}: zstd-compressed modules are not read here")
    return data


def _elf(data: bytes, where: str) -> ELFFile:
    if data[:4] != b"\x7fELF":
        raise ModuleFileError(f"{where}: not an ELF file")
    try:
        return ELFFile(io.BytesIO(data))
    except ELFError as e:
        raise ModuleFileError(f"{where}: {e}") from e


def build_id(data: bytes, where: str = "module") -> str | None:
    """The hex GNU build id (.note.gnu.build-id), or None when the module has none."""
    elf = _elf(data, where)
    for section in elf.iter_sections():
        if isinstance(section, NoteSection) and section.name == ".note.gnu.build-id":
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return str(note["n_desc"])
    return None


def modinfo(data: bytes, where: str = "module") -> dict[str, str]:
    """The .modinfo key=value strings (the last value of a repeated key wins: only
    single-valued keys such as vermagic, name, intree, srcversion are used here)."""
    section = _elf(data, where).get_section_by_name(".modinfo")
    if section is None:
        return {}
    fields: dict[str, str] = {}
    for raw in section.data().split(b"\0"):
        key, sep, value = raw.decode("utf-8", "replace").partition("=")
        if sep:
            fields[key] = value
    return fields


def index_facts(data: bytes, where: str = "module") -> list[str]:
    """What depmod reads from a module besides its path: its dependencies, aliases and
    soft dependencies (every .modinfo value of those keys) and the symbols it exports
    (__ksymtab_strings).  Two modules with equal facts give depmod equal indexes."""
    elf = _elf(data, where)
    facts: list[str] = []
    section = elf.get_section_by_name(".modinfo")
    if section is not None:
        for raw in section.data().split(b"\0"):
            key, sep, value = raw.decode("utf-8", "replace").partition("=")
            if sep and key in ("depends", "alias", "softdep", "name"):
                facts.append(f"{key}={value}")
    strings = elf.get_section_by_name("__ksymtab_strings")
    if strings is not None:
        facts += [f"export={name.decode('ascii', 'replace')}"
                  for name in strings.data().split(b"\0") if name]
    return sorted(facts)


def modversions(data: bytes, where: str = "module") -> dict[str, int]:
    """The CRC the module expects of each symbol it imports (its __versions section)."""
    elf = _elf(data, where)
    section = elf.get_section_by_name("__versions")
    if section is None:
        return {}
    raw = section.data()
    endian = "<" if elf.little_endian else ">"
    out: dict[str, int] = {}
    for offset in range(0, len(raw) - _MODVERSION_SIZE + 1, _MODVERSION_SIZE):
        (crc,) = struct.unpack_from(endian + "Q", raw, offset)
        name = raw[offset + 8:offset + 8 + _MODVERSION_NAME].split(b"\0", 1)[0]
        out[name.decode("ascii", "replace")] = crc & 0xFFFFFFFF
    return out


def symvers(text: str) -> dict[str, tuple[int, str]]:
    """A Module.symvers: symbol -> (CRC, the module exporting it; vmlinux for the kernel)."""
    out: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0].startswith("0x"):
            try:
                out[parts[1]] = (int(parts[0], 16), parts[2])
            except ValueError:
                continue
    return out


def identity(path: Path) -> dict[str, Any]:
    """sha256 of the file as stored, build id, vermagic, srcversion and whether kbuild
    marked it in-tree and signed: what tells two builds of one module apart."""
    data = decompressed(path)
    info = modinfo(data, str(path))
    raw = path.read_bytes()
    return {
        "file": path.name,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "elf_sha256": hashlib.sha256(data).hexdigest(),
        "build_id": build_id(data, str(path)),
        "vermagic": info.get("vermagic"),
        "srcversion": info.get("srcversion"),
        "intree": info.get("intree") == "Y",
        # A signed module ends with this marker after the ELF (scripts/sign-file).
        "signed": data.endswith(b"~Module signature appended~\n"),
    }


def identity_or_reason(path: Path) -> Mapping[str, Any]:
    try:
        return identity(path)
    except ModuleFileError as e:
        return {"file": path.name, "status": f"unavailable: {e}"}
