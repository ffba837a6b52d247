"""The gdb remote stub, driven by Debian's gdb in batch mode, against QEMU's own stub.

Each scenario runs one gdb script twice: against ``emu run --gdb tcp::0 -S`` and
against ``qemu-system-i386 -gdb tcp::PORT -S`` with the same BIOS ROM and the same
disk.  gdb's answers (registers, memory, where breakpoints and watchpoints stop)
must be identical.  Lines that legitimately differ are dropped before comparing:
gdb's start-up warnings, disassembly (QEMU's stub always says i386, so gdb decodes
real-mode code as 32-bit there; emu says i8086 in real mode) and the final line
(QEMU's isa-debug-exit kills the process, emu reports the exit status with ``W``).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, need_tool
from debug_guests import BOOT_SECTOR, PAGED_GUEST
from guests import qemu_pc_argv

BIOS = ROOT / "firmware" / "bios.bin"
TIMEOUT = 60

REAL_MODE_SCRIPT = """
set architecture i8086
break *0x7c00
continue
info registers
p/x $eip
p/x $cs
p/x $sp
stepi
p/x $eip
p/x $ax
p/x $eflags
set $ebx = 0xabcd
p/x $ebx
stepi
p/x $ebx
x/4xb 0x7c00
set {short}0x600 = 0x42
x/2xb 0x600
watch *(short*)0x500
continue
p/x $eip
p/x $ax
delete
rwatch *(short*)0x600
continue
p/x $eip
p/x $dx
delete
continue
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_gdb(port: int, script: str, tmp_path: Path, name: str) -> str:
    gdb = need_tool("gdb")
    commands = tmp_path / f"{name}.gdb"
    commands.write_text(f"set pagination off\nset confirm off\ntarget remote 127.0.0.1:{port}\n"
                        + script)
    done = subprocess.run([gdb, "-batch", "-nx", "-x", str(commands)], capture_output=True,
                          text=True, timeout=TIMEOUT)
    return done.stdout + done.stderr


def start_emu(disk: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "emu", "run", "--disk", f"{disk},format=raw", "--serial", "null",
         "--gdb", "tcp::0", *extra], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    line = server.stderr.readline()
    match = re.search(r"listening on [\d.]+:(\d+)", line)
    assert match, line
    return server, int(match.group(1))


def emu_session(disk: Path, script: str, tmp_path: Path) -> tuple[str, int]:
    server, port = start_emu(disk, "-S")
    try:
        output = run_gdb(port, script, tmp_path, "emu")
        return output, server.wait(timeout=TIMEOUT)
    finally:
        server.kill()
        server.wait()


def qemu_session(disk: Path, script: str, tmp_path: Path) -> tuple[str, int]:
    port = free_port()
    argv = qemu_pc_argv(BIOS, "-drive", f"file={disk},format=raw,if=ide",
                        "-gdb", f"tcp:127.0.0.1:{port}", "-S")
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):  # QEMU opens its socket a moment after starting
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                server.wait(timeout=0.05) if server.poll() is not None else None
                subprocess.run(["sleep", "0.05"])
        output = run_gdb(port, script, tmp_path, "qemu")
        return output, server.wait(timeout=TIMEOUT)
    finally:
        server.kill()
        server.wait()


NOISE = re.compile(r"warning:|No executable has been|determining executable|Try using the "
                   r"\"file\"|^=> |^   0x|OS ABI|default i8086 settings|^$")
# How the session ends: emu sends W (the exit status), QEMU's debug-exit closes the socket.
ENDING = re.compile(r"^\[Inferior 1 \(Remote target\) exited|Error in sourced command file|"
                    r"^Remote connection closed")


def answers(output: str) -> list[str]:
    """gdb's answers without start-up noise, disassembly and the way the session ended."""
    return [line for line in output.splitlines()
            if not NOISE.search(line) and not ENDING.search(line)]


def make_disk(tmp_path: Path, boot: bytes) -> Path:
    disk = tmp_path / "disk.img"
    disk.write_bytes(boot.ljust(1 << 20, b"\0"))
    return disk


def test_real_mode_session_matches_qemu(nasm, tmp_path: Path) -> None:
    disk = make_disk(tmp_path, nasm.boot_sector(BOOT_SECTOR))
    ours, our_status = emu_session(disk, REAL_MODE_SCRIPT, tmp_path)
    theirs, their_status = qemu_session(disk, REAL_MODE_SCRIPT, tmp_path)
    assert answers(ours) == answers(theirs), ours + "\n----- qemu -----\n" + theirs
    # The answers themselves: stopped at the boot sector, stepped, watch after the store.
    assert "Breakpoint 1, 0x00007c00 in ?? ()" in ours
    assert "$5 = 0x1234" in ours and "$7 = 0xabcd" in ours and "$8 = 0x5678" in ours
    assert "New value = 4660" in ours and "$9 = 0x7c0a" in ours
    assert "Value = 66" in ours and "$11 = 0x7c0e" in ours and "$12 = 0x42" in ours
    # The guest read the 0x42 gdb stored at 0x600 and wrote it to the debug-exit port.
    assert our_status == 0x42 and their_status == (0x42 << 1) | 1
    assert "exited with code 0102" in ours


def test_real_mode_code_disassembles_as_16_bit(nasm, tmp_path: Path) -> None:
    disk = make_disk(tmp_path, nasm.boot_sector(BOOT_SECTOR))
    output, _ = emu_session(disk, "break *0x7c00\ncontinue\nx/2i $pc\n"
                                  "monitor x /2xb 0x7c00\nkill\n", tmp_path)
    assert "mov    $0x1234,%ax" in output and "mov    $0x5678,%bx" in output
    assert "00007c00: 0xb8 0x34" in output      # gdb's monitor command reaches emu's monitor


def paged_script(boot: bytes) -> str:
    high = 0x80000000 + 0x7C00 + boot.index(bytes.fromhex("b811111111")) - 0x7000
    data = 0x7C00 + boot.index(b"\x00" * 8 + bytes.fromhex("ffff0000009acf00")) - 4
    return f"""
break *0x7c00
continue
hbreak *{high:#x}
continue
info registers
p/x $eip
p/x $cs
p/x $cr0
p/x $cr3
x/2xw {high:#x}
set {{int}}0x600 = 0x21
watch *(int*){data - 0x7000 + 0x80000000:#x}
continue
p/x $eip
x/xw {data:#x}
stepi
p/x $ebx
p/x $eip
delete
continue
"""


def test_paged_protected_mode_session_matches_qemu(nasm, tmp_path: Path) -> None:
    boot = nasm.boot_sector(PAGED_GUEST)
    disk = make_disk(tmp_path, boot)
    script = paged_script(boot)
    ours, our_status = emu_session(disk, script, tmp_path)
    theirs, their_status = qemu_session(disk, script, tmp_path)
    # CR2 is set by a page-walk probe Unicorn makes at the end of a slice with an "until"
    # address under paging (the machine's run loop, not the stub; branch cpu runs slices
    # on an exits list instead): CR2 is left out here until that lands.
    assert without_cr2(answers(ours)) == without_cr2(answers(theirs)), \
        ours + "\n----- qemu -----\n" + theirs
    assert "Breakpoint 2, 0x8000" in ours          # hbreak (Z1) on a paged linear address
    assert "$3 = 0xe0000011" in ours               # PG CD NW ET PE
    assert "New value = 286331153" in ours         # 0x11111111 through the high mapping
    assert "$6 = 0x11111111" in ours               # read back through the identity map
    assert our_status == 0x32 and their_status == (0x32 << 1) | 1


def without_cr2(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith("cr2 ")]


def test_interrupt_and_kill(nasm, tmp_path: Path) -> None:
    """Ctrl-C in gdb (0x03 on the wire) stops a running guest; kill ends the run (123)."""
    disk = make_disk(tmp_path, nasm.boot_sector(
        "mov dx, 0x3F8\nmov al, 'R'\nout dx, al\nspin: jmp spin"))
    serial = tmp_path / "com1.txt"
    server, port = start_emu(disk, "-S", "--serial", f"file:{serial}")
    script = tmp_path / "interrupt.gdb"
    script.write_text(f"set pagination off\ntarget remote 127.0.0.1:{port}\ncontinue\n"
                      "p/x $eip\nkill\n")
    gdb = subprocess.Popen([need_tool("gdb"), "-batch", "-nx", "-x", str(script)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not (serial.exists() and serial.read_bytes() == b"R"):  # the guest is running
            assert gdb.poll() is None and server.poll() is None
            subprocess.run(["sleep", "0.05"])
        gdb.send_signal(signal.SIGINT)
        output, _ = gdb.communicate(timeout=TIMEOUT)
        status = server.wait(timeout=TIMEOUT)
    finally:
        for process in (gdb, server):
            process.kill()
            process.wait()
    assert "Program received signal SIGINT" in output, output
    assert "$1 = 0x7c06" in output, output
    assert status == 123


def test_detach_lets_the_guest_finish(nasm, tmp_path: Path) -> None:
    disk = make_disk(tmp_path, nasm.boot_sector(BOOT_SECTOR))
    server, port = start_emu(disk, "-S")
    try:
        output = run_gdb(port, "break *0x7c00\ncontinue\nset {short}0x600 = 7\ndetach\n",
                         tmp_path, "detach")
        status = server.wait(timeout=TIMEOUT)
    finally:
        server.kill()
        server.wait()
    assert "Breakpoint 1, 0x00007c00" in output, output
    assert status == 7


@pytest.mark.parametrize("value", ["tcp:1234", "udp::1234", "tcp::99999", "tcp::x"])
def test_bad_gdb_endpoint_is_one_line(value: str) -> None:
    done = subprocess.run([sys.executable, "-m", "emu", "run", "--gdb", value],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "--gdb" in done.stderr


class Wire:
    """A hand-written gdb client: raw remote-protocol packets over the socket."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, payload: bytes) -> None:
        self.socket.sendall(b"$" + payload + b"#%02x" % (sum(payload) & 0xFF))

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = self.socket.recv(65536)
            assert data, "connection closed"
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def reply(self) -> str:
        self.read_until(b"$")
        payload = self.read_until(b"#")
        self.read_until(self.buffer[:2]) if len(self.buffer) >= 2 else None
        self.buffer = self.buffer[2:] if len(self.buffer) >= 2 else self.buffer
        return payload.decode("latin-1")

    def ask(self, payload: str) -> str:
        self.send(payload.encode("latin-1"))
        return self.reply()


def test_protocol_edges(boot_machine) -> None:
    from emu.gdbstub import REGISTERS
    pc = boot_machine(gdb="tcp::0", start_stopped=True)
    runner = threading.Thread(target=pc.run)
    runner.start()
    wire = Wire(pc.gdb_stub.port)
    try:
        assert "qXfer:features:read+" in wire.ask("qSupported:multiprocess+;xmlRegisters=i386")
        wire.socket.sendall(b"$g#00")                       # bad checksum: NAK, no reply
        assert wire.read_until(b"-").strip(b"+") == b""
        assert wire.ask("?") == "T05thread:01;"
        description = wire.ask("qXfer:features:read:target.xml:0,40")
        assert description.startswith("m<?xml")
        total = sum(register.bits for register in REGISTERS) // 4
        assert len(wire.ask("g")) == total
        assert wire.ask("P0=78563412") == "OK" and wire.ask("p0") == "78563412"
        assert wire.ask(f"p{len(REGISTERS):x}") == "E00"
        assert wire.ask("M500,2:abcd") == "OK" and wire.ask("m500,2") == "abcd"
        assert wire.ask("X502,2:" + "}\x03}\x5d") == "OK"     # escaped binary: 0x23 0x7d
        assert wire.ask("m502,2") == "237d"
        assert wire.ask("m40000000,4") == "E14"             # nothing mapped there
        assert wire.ask("mzz,4") == "E01"
        assert wire.ask("vFrobnicate") == "" and wire.ask("Z9,0,1") == ""
        wire.send(b"k")
    finally:
        wire.socket.close()
        runner.join(timeout=TIMEOUT)   # killed (or, on a failure above, gdb gone: it ends)
    assert pc.result is not None and pc.result.exit_code == 123


@pytest.fixture
def boot_machine(nasm, disk_image, emu_pc):
    def make(**options):
        image = disk_image("raw", "1M", content={0: nasm.boot_sector(BOOT_SECTOR)})
        options.setdefault("timeout", TIMEOUT)
        return emu_pc(image, **options)
    return make
