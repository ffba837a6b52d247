"""The serial console: pasted input, Ctrl-A escapes and the monitor (QEMU's as oracle)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, need_tool
from debug_guests import BOOT_SECTOR
from guests import qemu_pc_argv

from devices.uart import Uart16550

BIOS = ROOT / "firmware" / "bios.bin"
TIMEOUT = 60

# Polls the UART; once the first byte came, counts the polls that found nothing until
# Enter, and exits with that count (at most 255): 0 when pasted text flows at once.
COUNTING_ECHO = """
    xor bx, bx
    xor cx, cx
.poll:
    mov dx, 0x3FD
    in al, dx
    test al, 1
    jnz .byte
    jcxz .poll
    cmp bx, 255
    je .poll
    inc bx
    jmp .poll
.byte:
    mov cx, 1
    mov dx, 0x3F8
    in al, dx
    out dx, al
    cmp al, 13
    jne .poll
    mov al, bl
    out 0xF4, al
    hlt
"""

ECHO_LOOP = """
    mov si, ready
    mov dx, 0x3F8
.prompt:
    lodsb
    out dx, al
    cmp si, ready + 6
    jb .prompt
.poll:
    mov dx, 0x3FD
    in al, dx
    test al, 1
    jz .poll
    mov dx, 0x3F8
    in al, dx
    out dx, al
    jmp .poll
ready: db "ready>"
"""


def test_queued_input_reaches_a_polling_guest_without_gaps(nasm, disk_image, emu_pc) -> None:
    image = disk_image("raw", "1M", content={0: nasm.boot_sector(COUNTING_ECHO)})
    pc = emu_pc(image, serial_input=b"hello world\r", timeout=TIMEOUT)
    result = pc.run()
    assert result.serial == b"hello world\r"
    assert result.exit_code == 0   # every byte was there when the guest looked


def test_uart_refills_its_receiver_when_the_guest_reads() -> None:
    queued = bytearray(b"abc")

    def refill(space: int) -> bytes:
        taken = bytes(queued[:space])
        del queued[:space]
        return taken

    uart = Uart16550(refill=refill)
    assert uart.feed(bytes(queued)) == 1     # 16450 mode: one byte of receiver
    del queued[:1]
    received = [uart.read(0x3F8, 1) for _ in range(3)]
    assert bytes(received) == b"abc" and not uart.read(0x3FD, 1) & 1
    uart.write(0x3FC, 1, 0x10)               # loopback: the host is disconnected
    queued += b"z"
    uart.write(0x3F8, 1, ord("L"))
    assert uart.read(0x3F8, 1) == ord("L") and queued == b"z"


# --- the monitor against QEMU's ------------------------------------------------

EXAMINE = ["xp /8xb 0xffff0", "x /3xw 0xffff0", "xp /2xh 0xffff0", "x /4ub 0xffff0",
           "x /2dw 0xfffe0", "x /3ob 0xffff0", "x /8cb 0xffff5", "x /2xg 0xffff0",
           "x /10xb 0xffff0"]
ADDRESS_LINE = re.compile(r"^[0-9a-f]{8,16}: ")


def qemu_monitor(commands: list[str]) -> list[str]:
    argv = qemu_pc_argv(BIOS, "-S", "-monitor", "stdio", debug_exit=False)
    done = subprocess.run(argv, input="\n".join([*commands, "quit"]) + "\n",
                          capture_output=True, text=True, timeout=TIMEOUT)
    lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).strip("\r")
             for line in done.stdout.split("\n")]
    return [line for line in lines if ADDRESS_LINE.match(line)]


def test_examine_prints_what_qemu_prints(emu_pc) -> None:
    pc = emu_pc(start_stopped=True)
    assert pc.run_until().reason == "start"
    ours = [line for command in EXAMINE for line in pc.monitor().execute(command).splitlines()]
    assert ours == qemu_monitor(EXAMINE)


def test_monitor_commands(nasm, disk_image, emu_pc) -> None:
    image = disk_image("raw", "1M", content={0: nasm.boot_sector(BOOT_SECTOR)})
    pc = emu_pc(image, reboot=True, timeout=TIMEOUT)
    pc.run_until(breakpoint=0x7C00)
    monitor = pc.monitor()
    registers = monitor.execute("info registers")
    assert "EIP=00007c00" in registers and "CS =0000 00000000" in registers
    assert "CR0=60000010" in registers
    assert monitor.execute("x /2xb $pc") == "00007c00: 0xb8 0x34\n"
    assert monitor.execute("info block") == f"ide0-hd0: {image.path} (raw)\n"
    copy = disk_image("raw", "1M", content={0: nasm.boot_sector(BOOT_SECTOR)}, name="copy")
    other = emu_pc(None, copy, snapshot=True)   # (the image itself is locked by pc)
    assert other.monitor().execute("info block") == f"ide0-hd1: {copy.path} (raw, snapshot)\n"
    assert "not found" in monitor.execute("eject ide1-cd0")
    assert "unknown command" in monitor.execute("frobnicate")
    assert "invalid char" in monitor.execute("x /4zb 0")
    monitor.execute("system_reset")
    assert (pc.read_register("cs"), pc.read_register("eip")) == (0xF000, 0xFFF0)
    monitor.execute("quit")
    assert pc.run().exit_code == 123


def test_eject_and_change_reach_the_cd_drive(emu_pc, tmp_path: Path) -> None:
    first, second = tmp_path / "first.iso", tmp_path / "second.iso"
    first.write_bytes(b"\x01" * 2048 * 16)
    second.write_bytes(b"\x02" * 2048 * 32)
    pc = emu_pc(cdrom=str(first))
    monitor = pc.monitor()
    assert f"ide1-cd0: {first} (cdrom)" in monitor.execute("info block")
    assert monitor.execute("eject -f ide1-cd0") == ""
    assert "ide1-cd0: [not inserted] (cdrom)" in monitor.execute("info block")
    assert monitor.execute(f"change ide1-cd0 '{second}'") == ""
    assert f"ide1-cd0: {second} (cdrom)" in monitor.execute("info block")
    assert pc.cdrom_drive().blocks == 32
    assert "not found" in monitor.execute("eject ide0-cd1")


# --- end to end on a terminal (tmux) --------------------------------------------

class Tmux:
    def __init__(self, tmp_path: Path, command: str) -> None:
        self.tmux = need_tool("tmux")
        self.socket = str(tmp_path / "tmux.sock")
        self.status = tmp_path / "status"
        self.call("new-session", "-d", "-x", "120", "-y", "50",
                  f"{command}; echo $? > {self.status}; sleep 60")

    def call(self, *arguments: str) -> str:
        return subprocess.run([self.tmux, "-S", self.socket, *arguments], capture_output=True,
                              text=True, timeout=TIMEOUT, check=True).stdout

    def keys(self, *keys: str) -> None:
        self.call("send-keys", *keys)

    def screen(self) -> str:
        return self.call("capture-pane", "-p")

    def wait_for(self, text: str) -> str:
        """The screen once it shows ``text`` (fails after TIMEOUT seconds)."""
        for _ in range(TIMEOUT * 20):
            screen = self.screen()
            if text in screen:
                return screen
            subprocess.run(["sleep", "0.05"])
        raise AssertionError(f"{text!r} never appeared:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([self.tmux, "-S", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path: Path):
    sessions: list[Tmux] = []

    def start(command: str) -> Tmux:
        session = Tmux(tmp_path, command)
        sessions.append(session)
        return session
    yield start
    for session in sessions:
        session.close()


def test_terminal_paste_monitor_and_quit(nasm, tmp_path: Path, terminal) -> None:
    disk = tmp_path / "echo.img"
    disk.write_bytes(nasm.boot_sector(ECHO_LOOP).ljust(1 << 20, b"\0"))
    term = terminal(f"cd {ROOT} && {sys.executable} -m emu run --disk {disk},format=raw")
    term.wait_for("ready>")                      # the terminal is in raw mode now
    term.keys("hello world", "Enter")
    term.wait_for("ready>hello world")           # all of it, without another key
    term.keys("C-a", "h")
    term.wait_for("C-a c    switch between console and monitor")
    term.keys("C-a", "c")
    term.wait_for("(emu)")
    term.keys("x /4xb 0x7c00", "Enter")
    term.wait_for("00007c00: 0xbe 0x")
    term.keys("stop", "Enter")
    term.wait_for("emu: stopped (interrupt)")
    term.keys("info status", "Enter")
    term.wait_for("VM status: paused")
    term.keys("cont", "Enter", "C-a", "c", "again", "Enter")
    term.wait_for("again")
    term.keys("C-a", "x")
    screen = term.wait_for("emu: terminated (C-a x)")
    assert "Traceback" not in screen
    for _ in range(TIMEOUT * 20):
        if term.status.exists() and term.status.read_text():
            break
        subprocess.run(["sleep", "0.05"])
    assert term.status.read_text().strip() == "123"


IDLE_FOREVER = """
    mov si, ready
    mov dx, 0x3F8
.prompt:
    lodsb
    out dx, al
    cmp si, ready + 6
    jb .prompt
    mov al, 0xFF                ; every IRQ masked: nothing will wake the CPU
    out 0x21, al
    out 0xA1, al
    sti
idle:
    hlt
    jmp idle
ready: db "ready>"
"""


def test_gdb_interrupts_a_guest_idle_at_the_terminal(nasm, tmp_path: Path, terminal) -> None:
    """A CPU halted with nothing to wake it, waiting in wall time at a terminal, still
    answers gdb's Ctrl-C (0x03 on the wire)."""
    from test_gdbstub import Wire
    boot = nasm.boot_sector(IDLE_FOREVER)
    disk = tmp_path / "idle.img"
    disk.write_bytes(boot.ljust(1 << 20, b"\0"))
    term = terminal(f"cd {ROOT} && {sys.executable} -m emu run --disk {disk},format=raw "
                    "--gdb tcp::0")
    screen = term.wait_for("ready>")
    port = re.search(r"listening on [\d.]+:(\d+)", screen)
    assert port, screen
    wire = Wire(int(port.group(1)))
    try:
        assert wire.ask("?").startswith("T05")      # attaching stopped the guest
        wire.send(b"vCont;c")
        wire.socket.sendall(b"\x03")
        assert wire.reply() == "T02thread:01;"
        after_hlt = 0x7C00 + boot.index(b"\xf4\xeb") + 1
        assert wire.ask("p8") == after_hlt.to_bytes(4, "little").hex()
        wire.send(b"k")
    finally:
        wire.socket.close()
    for _ in range(TIMEOUT * 20):
        if term.status.exists() and term.status.read_text():
            break
        subprocess.run(["sleep", "0.05"])
    assert term.status.read_text().strip() == "123"
