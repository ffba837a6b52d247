"""The in-process machine API: build a PC in the test, run it until something happens,
look at and change its registers, memory, ports and disks (the ``emu_pc`` fixture)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from debug_guests import BOOT_SECTOR, PAGED_GUEST

import disks

SERIAL_GUEST = """
    mov dx, 0x3F8
    mov si, text
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    mov al, '!'
    out 0xE9, al
spin:
    jmp spin
text: db "hello from the guest", 10, 0
"""

PORT_GUEST = """
    mov dx, 0x1234
    in al, dx
    out dx, al
    inc al
    out 0xF4, al
    hlt
"""


@pytest.fixture
def boot(nasm, disk_image, emu_pc):
    """A machine booting a boot sector of the given source (raw disk, built-in BIOS)."""
    def make(source: str, **options):
        image = disk_image("raw", "1M", content={0: nasm.boot_sector(source)})
        options.setdefault("timeout", 60)  # a safety net only: every run here ends sooner
        return emu_pc(image, **options)
    return make


def test_break_step_read_and_change_state(boot, nasm) -> None:
    pc = boot(BOOT_SECTOR)
    pause = pc.run_until(breakpoint=0x7C00)
    assert (pause.reason, pause.address) == ("breakpoint", 0x7C00)
    assert pc.read_register("eip") == 0x7C00 and pc.read_register("cs") == 0
    assert pc.read_memory(0x7C00, 512) == nasm.boot_sector(BOOT_SECTOR)
    assert pc.step().reason == "step"
    registers = pc.registers()
    assert registers["eip"] == 0x7C03 and registers["eax"] & 0xFFFF == 0x1234
    pc.write_register("ebx", 0xABCD)
    pc.step()
    assert pc.read_register("ebx") == 0x5678       # the instruction overwrote it
    pc.write_memory(0x600, b"\x42\x00")
    pause = pc.run_until()
    assert pause.exited and pause.result is not None
    assert pause.result.exit_code == 0x42           # the guest read what we wrote


def test_watchpoint_stops_after_the_store(boot) -> None:
    pc = boot(BOOT_SECTOR)
    pc.add_watchpoint(0x500, 2, "w")
    pause = pc.run_until()
    assert (pause.reason, pause.address, pause.watch_kind) == ("watchpoint", 0x500, "w")
    assert pc.read_register("eip") == 0x7C0A        # after mov [0x500], ax
    assert pc.read_memory(0x500, 2) == b"\x34\x12"
    pc.remove_watchpoint(0x500, 2, "w")
    pc.add_watchpoint(0x600, 2, "r")
    pause = pc.run_until()
    assert (pause.reason, pause.address, pause.watch_kind) == ("watchpoint", 0x600, "r")
    assert pc.read_register("eip") == 0x7C0E        # after mov dx, [0x600]


def test_breakpoint_in_paged_protected_mode(boot, nasm) -> None:
    image = nasm.boot_sector(PAGED_GUEST)
    pc = boot(PAGED_GUEST)
    high = 0x80000000 + 0x7C00 + image.index(bytes.fromhex("b811111111")) - 0x7000
    pause = pc.run_until(breakpoint=high)
    assert (pause.reason, pause.address) == ("breakpoint", high)
    assert pc.read_register("cr0") & 0x8000_0001 == 0x8000_0001
    # The same bytes through the high mapping (page walk) and at their physical address.
    assert pc.read_memory(high, 5) == bytes.fromhex("b811111111")
    assert pc.read_memory(high - 0x80000000 + 0x7000, 5, physical=True) == \
        bytes.fromhex("b811111111")
    pc.write_memory(0x600, b"\x01")
    assert pc.run().exit_code == 0x12


def test_run_until_port_serial_instructions_and_time(boot) -> None:
    pc = boot(SERIAL_GUEST)
    pause = pc.run_until(serial="from the guest")
    assert pause.reason == "serial" and b"hello from the guest" in pc.com1.transcript
    pause = pc.run_until(port=0xE9)
    assert pause.reason == "port" and pause.detail == "out 0xe9/1=0x21"
    assert bytes(pc.debugcon.transcript) == b"!"
    start = pc.instructions
    assert pc.run_until(instructions=12_345).reason == "instructions"
    assert pc.instructions == start + 12_345
    target = pc.clock.now_ns() + 5_000_000
    assert pc.run_until(virtual_ns=target).reason == "virtual-time"
    assert pc.clock.now_ns() >= target


def test_hooked_port_answers_and_observes(boot) -> None:
    pc = boot(PORT_GUEST)
    written = []
    pc.hook_port(0x1234, read=lambda port, size: 0x5A,
                 write=lambda port, size, value: written.append(value) or True)
    result = pc.run()
    assert written == [0x5A]
    assert result.exit_code == 0x5B


def test_drives_are_the_images(disk_image, emu_pc, nasm) -> None:
    first = disk_image("vdi", "2M", content={0: nasm.boot_sector(BOOT_SECTOR)})
    second = disk_image("vhdx", "4M", content={512: b"second"})
    pc = emu_pc(first, None, second)
    assert set(pc.drive_images) == {(0, 0), (1, 0)}
    assert pc.drive_image(0, 1) is None
    image = pc.drive_image(1, 0)
    assert isinstance(image, disks.Image) and image.size == 4 << 20
    assert image.read(512, 6) == b"second"


def test_no_debugger_unless_asked(boot) -> None:
    pc = boot(BOOT_SECTOR)
    assert pc.run().exit_code == 0
    assert pc.debugger is None


def test_start_stopped_and_reset(boot) -> None:
    # reboot=True: our BIOS answers a reset that finds its POST marker in RAM (a
    # boot loader's jump to F000:FFF0, or this reset) with a hard reset through 0xCF9.
    pc = boot(BOOT_SECTOR, start_stopped=True, reboot=True)
    pause = pc.run_until()
    assert pause.reason == "start" and pc.read_register("eip") == 0xFFF0
    pc.run_until(breakpoint=0x7C00)
    pc.system_reset()
    assert (pc.read_register("cs"), pc.read_register("eip")) == (0xF000, 0xFFF0)
    assert pc.run_until(breakpoint=0x7C00).reason == "breakpoint"


def test_readme_example_runs(tmp_path: Path) -> None:
    """The README's ``emu_pc`` example, taken from the README and run by plain pytest."""
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(def test_boot_sector_under_the_microscope.*?)```",
                        readme, re.S)
    assert example is not None
    (tmp_path / "test_example.py").write_text(example.group(1))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "test_example.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_run_goes_on_past_a_breakpoint_it_was_paused_at(boot) -> None:
    pc = boot(BOOT_SECTOR)
    pc.add_breakpoint(0x7C03)
    assert pc.run_until().address == 0x7C03
    assert pc.run_until(instructions=1).reason == "instructions"   # stepped off it
    assert pc.read_register("eip") == 0x7C06
    pc.write_register("eip", 0x7C03)                                # back onto it:
    assert pc.run_until().address == 0x7C03                         # hit again
    assert pc.run().exit_code == 0                                  # run() passes it
