"""CD/DVD drives in the machine: the command line, the boot order in CMOS, media changes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from test_machine_roms import build_rom

from devices.atapi import BLOCK, UNIT_ATTENTION_CHANGED, AtapiDrive, MediumLockedError
from devices.cmos import Reg
from emu.machine import DiskSpec, Machine, MachineConfigError, parse_boot_order
from emu.run import main as run_main
from firmware import path as firmware_path

ATAPITEST = firmware_path("atapitest.bin")


def make_iso(path: Path, blocks: int = 16) -> Path:
    path.write_bytes(b"".join(struct.pack("<I", lba) * (BLOCK // 4) for lba in range(blocks)))
    return path


def test_disk_spec_media_option() -> None:
    assert DiskSpec.parse("x.iso,media=cdrom,bus=0,unit=1") == \
        DiskSpec("x.iso", bus=0, unit=1, media="cdrom")
    assert DiskSpec.parse(",media=cdrom").path == ""          # an empty drive
    assert DiskSpec.cdrom("y.iso") == DiskSpec("y.iso", bus=1, unit=0, media="cdrom")
    for bad in (",format=raw", "x.img,media=tape", "x.img,media"):
        with pytest.raises(MachineConfigError):
            DiskSpec.parse(bad)


@pytest.mark.parametrize(("text", "order"), [
    ("d", ["cdrom"]), ("order=dc", ["cdrom", "disk"]), ("cad", ["disk", "floppy", "cdrom"]),
])
def test_boot_order_letters(text: str, order: list[str]) -> None:
    assert parse_boot_order(text) == order


@pytest.mark.parametrize("text", ["", "order=", "dd", "z", "dcan", "order=d,menu=on", "menu=on"])
def test_bad_boot_orders_are_refused(text: str) -> None:
    with pytest.raises(MachineConfigError, match="--boot"):
        parse_boot_order(text)


def test_boot_order_reaches_cmos_as_qemu_writes_it(tmp_path: Path) -> None:
    """QEMU's set_boot_dev: first device in 3Dh bits 3-0, second in 7-4, third in 38h 7-4
    (1 floppy, 2 hard disk, 3 CD-ROM)."""
    with Machine(bios=ATAPITEST, cdrom=str(make_iso(tmp_path / "a.iso")), boot="dca") as machine:
        ram = machine.cmos.ram
        assert ram[Reg.BOOT_ORDER_12] == 0x23 and ram[Reg.BOOT_ORDER_3] >> 4 == 0x1
        assert ram[0x12] == 0                       # the CD is no hard disk in CMOS


def test_cdrom_option_is_the_secondary_master(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "a.iso")
    with Machine(bios=ATAPITEST, cdrom=str(iso)) as machine:
        drive = machine.channels[1].units[0].drive
        assert isinstance(drive, AtapiDrive) and drive.blocks == 16
        assert machine.cdrom_drive() is drive
    with Machine(bios=ATAPITEST, disks=[f"{iso},media=cdrom"]) as machine:
        assert isinstance(machine.channels[0].units[0].drive, AtapiDrive)


def test_media_change_and_eject_from_python(tmp_path: Path) -> None:
    first, second = make_iso(tmp_path / "a.iso"), make_iso(tmp_path / "b.iso", 32)
    with Machine(bios=ATAPITEST, cdrom=str(first)) as machine:
        drive = machine.cdrom_drive()
        old = drive.image
        assert old is not None
        machine.change_cdrom(str(second))
        assert old.closed and drive.blocks == 32 and drive.sense == UNIT_ATTENTION_CHANGED
        drive.locked = True                         # PREVENT ALLOW MEDIUM REMOVAL
        with pytest.raises(MediumLockedError):
            machine.change_cdrom(str(first))
        with pytest.raises(MediumLockedError):
            machine.eject_cdrom()
        assert drive.blocks == 32 and drive.events[-1] == 1      # the guest is asked to eject
        with pytest.raises(MachineConfigError, match="missing.iso"):
            machine.change_cdrom(str(tmp_path / "missing.iso"), force=True)
        assert drive.blocks == 32
        machine.eject_cdrom(force=True)
        assert drive.image is None and drive.tray_open and not drive.locked
        machine.change_cdrom(str(first))
        assert drive.blocks == 16 and not drive.tray_open


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    tiny = tmp_path / "tiny.iso"
    tiny.write_bytes(b"x" * 100)
    for argv, needle in ((["--cdrom", str(tmp_path / "missing.iso")], "missing.iso"),
                         (["--cdrom", str(tiny)], "tiny.iso"),
                         (["--boot", "q"], "--boot")):
        status = run_main(["--bios", str(ATAPITEST), "--serial", "null", *argv])
        err = capsys.readouterr().err
        assert status == 1 and err.count("\n") == 1 and needle in err, err


def test_cli_cdrom_runs_the_atapi_rom(tmp_path: Path) -> None:
    log = tmp_path / "debugcon.txt"
    status = run_main(["--bios", str(ATAPITEST), "--cdrom", str(make_iso(tmp_path / "a.iso")),
                       "--boot", "d", "--serial", "null", "--debugcon", f"file:{log}",
                       "--timeout", "120"])
    lines = log.read_text().splitlines()
    assert status == 0 and lines[-1] == "ATAPITEST done"
    assert "READ CAPACITY p=48/01 b=0008*01 st=40 ir=03 i=02 n=0008 d=0000000F00000800" in lines


# A guest driving the secondary master's PACKET protocol around host-side media changes.
# It asks the host for a change by writing control bytes to the debug console (01h change
# to disc B, 02h eject, 03h insert disc A again) and prints each command's outcome: G for
# GOOD, K<key> for CHECK CONDITION; data bytes as noted.
MEDIA_CHANGE_GUEST = r"""
    cli
    xor ax, ax
    mov ss, ax
    mov sp, 0x7000
    mov ax, 0x2000
    mov es, ax
    mov si, tur
    call command
    mov si, read0
    call command
    mov al, [es:0]              ; the disc's first byte: A
    out 0xE9, al
    mov al, 1                   ; host: change to disc B
    out 0xE9, al
    mov si, tur
    call command                ; K6: unit attention
    mov si, tur
    call command                ; still K6 until REQUEST SENSE
    mov si, sense
    call command
    mov al, [es:12]             ; ASC 28h: medium may have changed ("(")
    out 0xE9, al
    mov si, tur
    call command
    mov si, read0
    call command
    mov al, [es:0]              ; now B
    out 0xE9, al
    mov si, prevent
    call command
    mov al, 2                   ; host: eject (refused: locked)
    out 0xE9, al
    mov si, events
    call command
    mov al, [es:4]              ; event 1: eject request
    add al, '0'
    out 0xE9, al
    mov si, allow
    call command
    mov al, 2                   ; host: eject
    out 0xE9, al
    mov si, tur
    call command                ; K2: no medium
    mov si, events
    call command
    mov al, [es:4]              ; event 3: media removal
    add al, '0'
    out 0xE9, al
    mov al, 3                   ; host: insert disc A
    out 0xE9, al
    mov si, tur
    call command                ; K6
    mov al, 10
    out 0xE9, al
    xor al, al
    out 0xF4, al
    hlt

wait_ready:
    mov dx, 0x376
.poll:
    in al, dx
    test al, 0x80
    jnz .poll
    ret

command:                        ; CS:SI = 12-byte packet; data to ES:0
    mov dx, 0x176
    mov al, 0xA0
    out dx, al
    call wait_ready
    mov dx, 0x171
    xor al, al
    out dx, al
    mov dx, 0x174
    out dx, al
    inc dx
    mov al, 0x08                ; byte count limit 800h
    out dx, al
    mov dx, 0x177
    mov al, 0xA0
    out dx, al
    call wait_ready
    mov dx, 0x170
    mov cx, 6
    cs rep outsw
    xor di, di
.block:
    call wait_ready
    mov dx, 0x177
    in al, dx
    test al, 0x01
    jnz .check
    test al, 0x08
    jz .good
    mov dx, 0x174
    in al, dx
    mov cl, al
    inc dx
    in al, dx
    mov ch, al
    shr cx, 1
    mov dx, 0x170
    rep insw
    jmp .block
.good:
    mov al, 'G'
    out 0xE9, al
    ret
.check:
    mov al, 'K'
    out 0xE9, al
    mov dx, 0x171
    in al, dx
    shr al, 4
    add al, '0'
    out 0xE9, al
    ret

tur:     db 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
read0:   db 0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0
sense:   db 0x03, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0
prevent: db 0x1E, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0
allow:   db 0x1E, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
events:  db 0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0
"""
CONTROL_CHANGE, CONTROL_EJECT, CONTROL_INSERT = 1, 2, 3


def test_guest_sees_media_changes_made_at_run_time(tmp_path: Path) -> None:
    disc_a = tmp_path / "a.iso"
    disc_a.write_bytes(b"A" * (4 * BLOCK))
    disc_b = tmp_path / "b.iso"
    disc_b.write_bytes(b"B" * (8 * BLOCK))
    refused = []
    rom = build_rom(tmp_path, MEDIA_CHANGE_GUEST)
    with Machine(bios=rom, cdrom=str(disc_a), timeout=60) as machine:
        def host(data: bytes) -> None:       # called from inside the guest's OUT
            for byte in data:
                if byte == CONTROL_CHANGE:
                    machine.change_cdrom(str(disc_b))
                elif byte == CONTROL_EJECT:
                    try:
                        machine.eject_cdrom()
                    except MediumLockedError:
                        refused.append(byte)
                elif byte == CONTROL_INSERT:
                    machine.change_cdrom(str(disc_a))
        machine.debugcon.sink = host
        result = machine.run()
    assert result.exit_code == 0, result.report
    transcript = bytes(b for b in result.debugcon if b > CONTROL_INSERT).decode()
    assert transcript == "GGA" "K6K6G(" "GGB" "GG1" "GK2G3" "K6\n"
    assert refused == [CONTROL_EJECT]
