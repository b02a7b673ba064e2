"""ucall decoding (guests/ABI.md): structs packed by hand, decoded from a fake guest memory,
and the messages of the errors they turn into."""

from __future__ import annotations

import pickle
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kvmharness.guest import ucall
from kvmharness.guest.errors import (
    GuestAssertionError,
    GuestCrash,
    GuestError,
    GuestExceptionError,
    GuestTimeout,
    UcallError,
)
from kvmharness.guest.ucall import (
    KH_UCALL_PORT,
    KH_UCALL_SIZE,
    Assert,
    Done,
    GuestException,
    Print,
    Sync,
    decode_ucall,
    encode_ucall,
)

UC_GPA = 0x1FF000
STR_GPA = 0x403000
GUESTS = Path(__file__).resolve().parents[2] / "guests"


class FakeMemory:
    """A flat guest RAM; reads outside it raise like a real memory object would."""

    def __init__(self, size: int = 8 << 20) -> None:
        self.buf = bytearray(size)
        self.reads: list[tuple[int, int]] = []

    def write(self, gpa: int, data: bytes) -> None:
        self.buf[gpa:gpa + len(data)] = data

    def read(self, gpa: int, size: int) -> bytes:
        self.reads.append((gpa, size))
        if gpa < 0 or gpa + size > len(self.buf):
            raise ValueError(f"[{gpa:#x}, +{size:#x}) outside RAM")
        return bytes(self.buf[gpa:gpa + size])


def pack(cmd: int, args: list[int], line: int = 0, file: int = 0, expr: int = 0,
         msg: bytes = b"", nargs: int | None = None) -> bytes:
    """struct kh_ucall, written field by field from the ABI.md table."""
    out = struct.pack("<IIQQII", cmd, line, file, expr, len(args) if nargs is None else nargs, 0)
    out += struct.pack("<24Q", *(args + [0] * (24 - len(args))))
    out += msg.ljust(256, b"\0")
    assert len(out) == 480
    return out


def decode(mem: FakeMemory, raw: bytes) -> ucall.Ucall:
    mem.write(UC_GPA, raw)
    return decode_ucall(mem.read, UC_GPA)


@pytest.fixture
def mem() -> FakeMemory:
    return FakeMemory()


def test_constants() -> None:
    assert KH_UCALL_PORT == 0x6000
    assert KH_UCALL_SIZE == 480
    assert [c.value for c in ucall.UcallCmd] == [1, 2, 3, 4, 5]


def test_sync_values(mem: FakeMemory) -> None:
    assert decode(mem, pack(1, [1, 3, 2**64 - 1])) == Sync((1, 3, 2**64 - 1))
    assert decode(mem, pack(1, [])) == Sync(())
    assert decode(mem, pack(1, list(range(24)))) == Sync(tuple(range(24)))


def test_print_stops_at_nul(mem: FakeMemory) -> None:
    assert decode(mem, pack(2, [], msg=b"hello 42\n\0garbage")) == Print("hello 42\n")
    assert decode(mem, pack(2, [], msg=b"x" * 256)) == Print("x" * 256)  # no NUL: all of it
    assert decode(mem, pack(2, [], msg=b"\xff\xfe ok")) == Print("\ufffd\ufffd ok")


def test_done(mem: FakeMemory) -> None:
    assert decode(mem, pack(4, [])) == Done()


def put_assert(mem: FakeMemory, file: bytes, expr: bytes, values: list[int], line: int = 57,
               msg: bytes = b"") -> Assert:
    mem.write(STR_GPA, file + b"\0")
    mem.write(STR_GPA + 0x100, expr + b"\0")
    result = decode(mem, pack(3, values, line=line, file=STR_GPA, expr=STR_GPA + 0x100, msg=msg))
    assert isinstance(result, Assert)
    return result


def test_assert_two_values(mem: FakeMemory) -> None:
    a = put_assert(mem, b"hammer.c", b"pass < npasses", [7, 5])
    assert a == Assert("hammer.c", 57, "pass < npasses", (7, 5), "")
    err = a.error(vcpu=3)
    assert isinstance(err, GuestAssertionError) and isinstance(err, GuestError)
    assert str(err) == "hammer.c:57: pass < npasses (7 vs 5)"
    assert (err.file, err.line, err.expr, err.values, err.vcpu) == \
        ("hammer.c", 57, "pass < npasses", (7, 5), 3)


def test_assert_without_values_and_with_message(mem: FakeMemory) -> None:
    a = put_assert(mem, b"hello.c", b"sum == 5050", [], line=12)
    assert str(a.error()) == "hello.c:12: sum == 5050"
    a = put_assert(mem, b"hello.c", b"0", [], line=99, msg=b"unknown hello_mode 9")
    assert str(a.error()) == "hello.c:99: 0: unknown hello_mode 9"
    a = put_assert(mem, b"hello.c", b"a == b", [1, 2], line=5, msg=b"why")
    assert str(a.error()) == "hello.c:5: a == b (1 vs 2): why"


def test_assert_values_shown_only_for_two(mem: FakeMemory) -> None:
    a = put_assert(mem, b"x.c", b"cond", [1, 2, 3], line=1)
    assert str(a.error()) == "x.c:1: cond"


def test_assert_value_formatting(mem: FakeMemory) -> None:
    a = put_assert(mem, b"x.c", b"r == 0", [2**64 - 1, 0x7FFF_0000_1000], line=1)
    assert str(a.error()) == "x.c:1: r == 0 (-1 vs 0x7fff00001000)"
    a = put_assert(mem, b"x.c", b"n == m", [4294967295, 2**63], line=1)
    assert str(a.error()) == "x.c:1: n == m (4294967295 vs 0x8000000000000000)"


def test_assert_file_is_basename(mem: FakeMemory) -> None:
    assert put_assert(mem, b"/src/guests/hello.c", b"x", []).file == "hello.c"


def test_assert_string_crossing_page_boundary(mem: FakeMemory) -> None:
    gpa = 0x200000 - 5
    mem.write(gpa, b"long_expression_text\0")
    mem.write(STR_GPA, b"f.c\0")
    result = decode(mem, pack(3, [], line=1, file=STR_GPA, expr=gpa))
    assert isinstance(result, Assert) and result.expr == "long_expression_text"
    # Strings are read in page-bounded chunks: no read crosses into the next page.
    assert all(g // 4096 == (g + n - 1) // 4096 for g, n in mem.reads if n < 480)


def test_assert_bad_pointers(mem: FakeMemory) -> None:
    with pytest.raises(UcallError, match="ASSERT file pointer is NULL"):
        decode(mem, pack(3, [], line=1, file=0, expr=STR_GPA))
    with pytest.raises(UcallError, match="ASSERT expr at GPA 0x7fffffff is not readable"):
        mem.write(STR_GPA, b"f.c\0")
        decode(mem, pack(3, [], line=1, file=STR_GPA, expr=0x7FFFFFFF))
    mem.write(STR_GPA, b"A" * 5000)
    with pytest.raises(UcallError, match="not NUL-terminated within 4096 bytes"):
        decode(mem, pack(3, [], line=1, file=STR_GPA, expr=STR_GPA))


def exception_args(vector: int, error_code: int, rip: int, cr2: int) -> list[int]:
    regs = [0x1000 + i for i in range(15)]  # rax, rbx, ... r15
    return [vector, error_code, rip, 0x8, 0x10046, 0x1FFF90, 0x10, cr2] + regs


def test_exception_decode_and_message(mem: FakeMemory) -> None:
    exc = decode(mem, pack(5, exception_args(14, 2, 0x401234, 0xDEAD000)))
    assert isinstance(exc, GuestException)
    assert (exc.vector, exc.error_code, exc.rip, exc.cs, exc.rflags, exc.rsp, exc.ss, exc.cr2) == \
        (14, 2, 0x401234, 8, 0x10046, 0x1FFF90, 0x10, 0xDEAD000)
    assert list(exc.regs) == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
                              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]
    assert exc.regs["rax"] == 0x1000 and exc.regs["r15"] == 0x100E
    assert exc.name == "#PF page fault"

    err = exc.error(vcpu=1)
    assert isinstance(err, GuestExceptionError) and err.vector == 14 and err.rip == 0x401234
    text = str(err)
    first = text.splitlines()[0]
    assert first == ("guest exception #PF page fault on vCPU 1 at RIP 0x401234: error code 0x2 "
                     "(not-present write, supervisor), CR2 0xdead000")
    assert "rax=0x0000000000001000" in text and "r15=0x000000000000100e" in text
    assert "rflags=0x0000000000010046" in text and "rsp=0x00000000001fff90" in text


def test_exception_names(mem: FakeMemory) -> None:
    de = decode(mem, pack(5, exception_args(0, 0, 0x400100, 0)))
    assert isinstance(de, GuestException)
    assert str(de.error()).splitlines()[0] == "guest exception #DE divide error at RIP 0x400100"
    other = decode(mem, pack(5, exception_args(200, 0, 0x400100, 0)))
    assert isinstance(other, GuestException) and other.name == "vector 200"
    assert ucall.vector_name(13) == "#GP general protection"
    assert ucall.describe_pf_error_code(0x15) == "protection-violation instruction fetch, user"


def test_cr2_is_reported_only_for_page_faults(mem: FakeMemory) -> None:
    """CR2 holds the last #PF address: for any other vector it is stale and misleading."""
    gp = decode(mem, pack(5, exception_args(13, 0x18, 0x400100, 0xDEAD000)))
    assert isinstance(gp, GuestException)
    text = str(gp.error(vcpu=0))
    assert text.splitlines()[0] == ("guest exception #GP general protection on vCPU 0 at RIP "
                                    "0x400100: error code 0x18")
    assert "CR2" not in text and "cr2" not in text and "dead000" not in text
    pf = decode(mem, pack(5, exception_args(14, 0, 0x400100, 0xDEAD000)))
    assert isinstance(pf, GuestException)
    text = str(pf.error())
    assert "CR2 0xdead000" in text.splitlines()[0] and "cr2=0x000000000dead000" in text


def test_exception_wrong_nargs(mem: FakeMemory) -> None:
    with pytest.raises(UcallError, match="nargs 8, expected 23"):
        decode(mem, pack(5, exception_args(14, 0, 0, 0)[:8]))


def test_malformed(mem: FakeMemory) -> None:
    with pytest.raises(UcallError, match="unknown cmd 9"):
        decode(mem, pack(9, []))
    with pytest.raises(UcallError, match="nargs 25 > 24"):
        decode(mem, pack(1, [], nargs=25))
    with pytest.raises(UcallError, match="struct at GPA 0x7fffff is not readable"):
        decode_ucall(mem.read, (8 << 20) - 1)
    with pytest.raises(UcallError, match="read 3 of 480 bytes"):
        decode_ucall(lambda gpa, size: b"abc", 0)


def test_encode_ucall_roundtrip(mem: FakeMemory) -> None:
    assert encode_ucall(1, (5, 6)) == pack(1, [5, 6])
    assert encode_ucall(2, msg=b"hi") == pack(2, [], msg=b"hi")
    with pytest.raises(ValueError):
        encode_ucall(1, tuple(range(25)))


def test_timeout_and_crash_messages() -> None:
    t = GuestTimeout(vcpu=2, rip=0x400abc, deadline=5.0)
    assert str(t) == "vCPU 2 did not finish within 5 s (RIP 0x400abc)"
    assert (t.vcpu, t.rip, t.deadline) == (2, 0x400abc, 5.0)
    assert str(GuestTimeout(0, None, 0.5)) == "vCPU 0 did not finish within 0.5 s"
    c = GuestCrash(vcpu=0, reason="shutdown", regs={"rip": 0x4002D0, "rsp": 0x1FFF00},
                   detail="triple fault")
    assert str(c).splitlines()[0] == "vCPU 0 crashed: shutdown: triple fault"
    assert "rip=0x00000000004002d0" in str(c)
    assert (c.vcpu, c.reason, c.detail, c.regs["rsp"]) == (0, "shutdown", "triple fault", 0x1FFF00)
    assert str(GuestCrash(1, "fail entry")) == "vCPU 1 crashed: fail entry"
    assert isinstance(t, GuestError) and isinstance(c, GuestError)


def test_errors_pickle(mem: FakeMemory) -> None:
    exc = decode(mem, pack(5, exception_args(13, 0, 0x400000, 0)))
    assert isinstance(exc, GuestException)
    for err in [GuestAssertionError("a.c", 1, "x", (1, 2), "m", 0), exc.error(1),
                GuestTimeout(1, 2, 3.0), GuestCrash(1, "shutdown", {"rip": 1}, "d")]:
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err) and str(again) == str(err)


def test_peer_failures_are_named_in_the_message_and_survive_pickling(mem: FakeMemory) -> None:
    exc = decode(mem, pack(5, exception_args(14, 0, 0x400000, 0x5000)))
    assert isinstance(exc, GuestException)
    crash = GuestCrash(2, "triple fault (KVM_EXIT_SHUTDOWN)", {"rip": 1}, "",
                       {"cr0": 0x80000011, "cr2": 0xBAD000})
    for first in [GuestAssertionError("a.c", 1, "x", (1, 2), "m", 0), exc.error(0)]:
        first.add_peer_failure(1, exc.error(1))
        first.add_peer_failure(2, crash)
        lines = str(first).splitlines()
        assert sum(line.startswith("also vCPU ") for line in lines) == 2
        assert "also vCPU 1: guest exception #PF page fault on vCPU 1" in str(first)
        assert "also vCPU 2: vCPU 2 crashed: triple fault" in str(first)
        again = pickle.loads(pickle.dumps(first))
        assert str(again) == str(first) and [v for v, _ in again.peers] == [1, 2]
    assert crash.cr2 == 0xBAD000 and "cr2=0x0000000000bad000" in str(crash)
    assert GuestCrash(0, "x").cr2 is None


def test_c_header_matches(tmp_path: Path) -> None:
    """guests/runtime/kh.h and this module agree on the layout and the command numbers."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    src = tmp_path / "layout.c"
    src.write_text("""
#include <stdio.h>
#include "kh.h"
#define F(f) printf(#f " %zu %zu\\n", offsetof(struct kh_ucall, f), sizeof(((struct kh_ucall *)0)->f));
int main(void) {
    F(cmd) F(line) F(file) F(expr) F(nargs) F(args) F(msg)
    printf("size %zu\\nport %d\\nmax_vcpus %d\\n", sizeof(struct kh_ucall), KH_UCALL_PORT, KH_MAX_VCPUS);
    printf("cmds %d %d %d %d %d\\n", KH_UCALL_SYNC, KH_UCALL_PRINT, KH_UCALL_ASSERT,
           KH_UCALL_DONE, KH_UCALL_EXCEPTION);
    return 0;
}
""")
    exe = tmp_path / "layout"
    proc = subprocess.run(["gcc", "-I", str(GUESTS / "runtime"), "-o", str(exe), str(src)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a hosted program: {proc.stderr[:200]}")
    out = dict(line.split(" ", 1) for line in
               subprocess.run([str(exe)], capture_output=True, text=True,
                              check=True).stdout.splitlines())
    assert out["cmd"] == "0 4" and out["line"] == "4 4" and out["file"] == "8 8"
    assert out["expr"] == "16 8" and out["nargs"] == "24 4"
    assert out["args"] == f"32 {8 * ucall.KH_UCALL_MAX_ARGS}"
    assert out["msg"] == f"224 {ucall.KH_UCALL_MSG_SIZE}"
    assert out["size"] == str(KH_UCALL_SIZE) and out["port"] == str(KH_UCALL_PORT)
    assert out["max_vcpus"] == str(ucall.KH_MAX_VCPUS)
    assert out["cmds"] == " ".join(str(c.value) for c in ucall.UcallCmd)


PRINTF_CASES = [
    ('"%d|%i|%u", -42, 7, 4000000000u', "-42|7|4000000000"),
    (('"%x|%X|%lx|%lu|%ld", 0xbeefu, 0xbeefu, 0xdeadbeefcafeUL, 18446744073709551615UL, '
      '-9223372036854775807L - 1'),
     "beef|BEEF|deadbeefcafe|18446744073709551615|-9223372036854775808"),
    ('"[%5d][%-5d][%05d][%05d][%08lx]", 42, 42, 42, -42, 0xabcUL',
     "[   42][42   ][00042][-0042][00000abc]"),
    ('"%s|%6s|%-6s|%c|%%|%p", "ab", "ab", "ab", 65, (void *)0x1234', "ab|    ab|ab    |A|%|0x1234"),
    ('"%s", (char *)0', "(null)"),
    ('"%*d|%zu", 4, 7, (size_t)9', "   7|9"),
    ('"%q|%d", 5', "%q|5"),
]


def test_guest_printf(tmp_path: Path) -> None:
    """The guest's kh_vsnprintf (guests/runtime/runtime.c), compiled for the host."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    calls = "\n".join(f'    kh_snprintf(buf, sizeof(buf), {args}); puts(buf);'
                      for args, _ in PRINTF_CASES)
    src = tmp_path / "printf_test.c"
    src.write_text(f"""
#include <stdio.h>
#include "kh.h"
int main(void) {{
    char buf[256], small[6];
    int n;
{calls}
    n = kh_snprintf(small, sizeof(small), "%s", "truncated text");
    printf("%s|%d\\n", small, n);
    return 0;
}}
""")
    exe = tmp_path / "printf_test"
    # Rename the runtime's libc functions so they do not clash with the host's.
    rename = [f"-D{f}=kh_test_{f}" for f in ("memset", "memcpy", "memmove", "memcmp", "strlen")]
    proc = subprocess.run(["gcc", "-O2", "-Wall", "-Wno-format", "-I", str(GUESTS / "runtime"),
                           *rename, "-o", str(exe), str(src), str(GUESTS / "runtime" / "runtime.c")],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(proc.stderr)
    lines = subprocess.run([str(exe)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert lines == [want for _, want in PRINTF_CASES] + ["trunc|14"]
