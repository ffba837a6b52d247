"""Guest test programs (firmware/tests/*.asm) run through the emu pytest plugin.

Each program boots from a disk of every format, checks BIOS disk services or drives
the ATA controller itself, prints "G: ..." lines on the debug console and exits
through port 0xF4 with 0 on success or the number of the failed check.  Every program
runs in emu under our BIOS and under SeaBIOS, and in QEMU for comparison: the exit
code and the program's lines must match, and the disk must hold what the guest wrote.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from emu.pytest_plugin import DiskImage, GuestRun

PROGRAMS = sorted(p for p in (Path(__file__).resolve().parent.parent / "firmware" / "tests")
                  .glob("*.asm") if not p.name.startswith("_"))
SECTOR = 512
DISK_SIZE = 16 << 20
PARAMETER_LBA = 199
PATTERN_LBA, PATTERN_SECTORS = 200, 64
# What each program leaves on its disks: disk index -> (first LBA, sectors, pattern XOR).
GUEST_WRITES = {
    "int13": {0: [(300, 3, 0xFF), (310, 1, 0xFF)]},
    "ata": {0: [(400, 4, 0xFF), (410, 2, 0xFF), (420, 8, 0xFF)]},
    "twodisks": {1: [(500, 2, 0xAA)]},
    "fourdisks": {n: [(500, 1, 0xA0 + n)] for n in (1, 2, 3)},
}
# Programs that want more disks: extra disks' (size, pattern XOR), attached in order
# (primary slave, secondary master, secondary slave).
EXTRA_DISKS = {"twodisks": [(8 << 20, 0x55)],
               "fourdisks": [(size << 20, n * 0x11) for n, size in ((1, 8), (2, 12), (3, 6))]}


def pattern(lba: int, count: int, xor: int = 0) -> bytes:
    return b"".join(bytes(((sector * 31 + i) & 0xFF) ^ xor for i in range(SECTOR))
                    for sector in range(lba, lba + count))


def disk_content(program: bytes, size: int = DISK_SIZE, xor: int = 0) -> dict[int, bytes]:
    content = {
        PARAMETER_LBA * SECTOR: struct.pack("<I", size // SECTOR).ljust(SECTOR, b"\0"),
        PATTERN_LBA * SECTOR: pattern(PATTERN_LBA, PATTERN_SECTORS, xor),
    }
    if program:
        content[0] = program
    return content


def make_disks(disk_image, variant: str, name: str, code: bytes) -> list[DiskImage]:
    disks = [disk_image(variant, DISK_SIZE, content=disk_content(code))]
    for index, (size, xor) in enumerate(EXTRA_DISKS.get(name, []), start=1):
        disks.append(disk_image(variant, size, content=disk_content(b"", size, xor),
                                name=f"extra{index}-{variant}.img"))
    return disks


def guest_lines(run: GuestRun) -> list[str]:
    return [line for line in run.debugcon.splitlines() if line.startswith("G: ")]


def assert_passed(run: GuestRun, name: str) -> None:
    assert run.exit_code == 0, str(run)
    assert guest_lines(run)[-1:] == ["G: PASS"], str(run)
    for index, writes in GUEST_WRITES.get(name, {}).items():
        for lba, count, xor in writes:
            assert run.disks[index].read(lba * SECTOR, count * SECTOR) == \
                pattern(lba, count, xor), f"disk {index} LBA {lba}+{count} after the run"


@pytest.fixture(params=[p.stem for p in PROGRAMS])
def program(request, nasm) -> tuple[str, bytes]:
    name = request.param
    return name, nasm(PROGRAMS[[p.stem for p in PROGRAMS].index(name)])


@pytest.mark.parametrize("bios", ["ours", "seabios"])
def test_program_in_qemu(program, bios: str, disk_image, emu_machine) -> None:
    """The programs themselves are right: they pass in QEMU."""
    name, code = program
    run = emu_machine(*make_disks(disk_image, "raw", name, code), engine="qemu", bios=bios,
                      timeout=60)
    assert_passed(run, name)


@pytest.mark.parametrize("bios", ["ours", "seabios"])
def test_program_in_emu(program, bios: str, disk_format: str, disk_image, emu_machine) -> None:
    name, code = program
    disks = make_disks(disk_image, disk_format, name, code)
    qemu = emu_machine(*disks, engine="qemu", bios=bios, timeout=60)
    assert_passed(qemu, name)
    emu = emu_machine(*disks, bios=bios, timeout=120)
    assert_passed(emu, name)
    assert emu.exit_code == qemu.exit_code
    assert guest_lines(emu) == guest_lines(qemu)


RESETS = {
    "port 92h": "mov al, 1\n    out 0x92, al",
    "port CF9h": "mov dx, 0xCF9\n    mov al, 0x06\n    out dx, al",
    "8042": "mov al, 0xFE\n    out 0x64, al",
    "triple fault": "lidt [cs:empty_idt]\n    int 3\nempty_idt: dw 0\n    dd 0",
}


@pytest.mark.parametrize("engine", ["emu", "qemu"])
@pytest.mark.parametrize("method", RESETS)
def test_guest_reset_ends_the_run_with_status_0(method: str, engine: str, nasm, disk_image,
                                                 emu_machine, request) -> None:
    """A guest that resets the PC ends ``emu run`` (and QEMU's -no-reboot) with status 0,
    the same as a guest writing 0 to the debug-exit port: the run stops at the reset."""
    program = nasm.guest_program(f'PRINT "resetting"\n    {RESETS[method]}\n'
                                 '    PRINT "still running"\n    mov al, 9\n    jmp exit')
    run = emu_machine(disk_image("raw", "4M", content=program), engine=engine,
                      bios="seabios", timeout=60)
    assert run.exit_code == 0, str(run)
    assert guest_lines(run)[-1] == "G: resetting", str(run)
