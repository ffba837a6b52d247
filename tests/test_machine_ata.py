"""The ATA controller wired into the machine: PIO and DMA from a NASM guest, SeaBIOS boot."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from test_machine_roms import build_boot_sector, build_rom

import disks
from emu.machine import Machine, StopReason
from emu.pytest_plugin import need_seabios

DISK_SIZE = 8 << 20

# Guest building blocks: an LBA28 command through the primary channel's task file, and
# the PIIX IDE function (00:01.1) with its bus-master registers at C000h.
ATA_MACROS = """
%macro ATA_LBA28 3              ; sector count, LBA, command
    mov dx, 0x1F2
    mov al, %1
    out dx, al
    inc dx
    mov al, (%2) & 0xFF         ; LBA 7:0
    out dx, al
    inc dx
    mov al, ((%2) >> 8) & 0xFF  ; LBA 15:8
    out dx, al
    inc dx
    mov al, ((%2) >> 16) & 0xFF ; LBA 23:16
    out dx, al
    inc dx
    mov al, 0xE0 | (((%2) >> 24) & 0x0F)
    out dx, al
    inc dx
    mov al, %3
    out dx, al
%endmacro

%macro ENABLE_BUS_MASTER 0
    mov eax, 0x80000920         ; 00:01.1 BAR4
    mov dx, 0xCF8
    out dx, eax
    mov eax, 0xC001
    mov dx, 0xCFC
    out dx, eax
    mov eax, 0x80000904         ; 00:01.1 command register
    mov dx, 0xCF8
    out dx, eax
    mov ax, 0x0005              ; I/O space + bus master
    mov dx, 0xCFC
    out dx, ax
%endmacro

%macro START_DMA_AND_WAIT 0     ; bus master start (device to memory), until it interrupts
    mov dx, 0xC000
    mov al, 0x09
    out dx, al
    mov dx, 0xC002
%%wait:
    in al, dx
    test al, 0x04
    jz %%wait
%endmacro
"""

ATA_GUEST = ATA_MACROS + """
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7000
    ; --- IDENTIFY DEVICE (PIO in) to 1000:0000
    mov dx, 0x1F6
    mov al, 0xA0
    out dx, al
    call wait_ready
    mov dx, 0x1F7
    mov al, 0xEC
    out dx, al
    call wait_drq
    mov ax, 0x1000
    mov es, ax
    xor di, di
    mov cx, 256
    mov dx, 0x1F0
    rep insw
    ; --- READ SECTORS LBA28: 4 sectors from LBA 0 to 2000:0000
    call wait_ready
    ATA_LBA28 4, 0, 0x20
    mov ax, 0x2000
    mov es, ax
    xor di, di
    mov bx, 4
.sector:
    call wait_drq
    mov cx, 256
    mov dx, 0x1F0
    rep insw
    dec bx
    jnz .sector
    ; --- WRITE SECTORS: LBA 10 from 2000:0000 (the first sector read above, inverted)
    mov ax, 0x2000
    mov ds, ax
    xor si, si
    mov cx, 256
.invert:
    not word [si]
    add si, 2
    loop .invert
    xor ax, ax
    mov ds, ax
    call wait_ready
    ATA_LBA28 1, 10, 0x30       ; WRITE SECTORS
    call wait_drq
    mov ax, 0x2000
    mov ds, ax
    xor si, si
    mov cx, 256
    mov dx, 0x1F0
    rep outsw
    xor ax, ax
    mov ds, ax
    call wait_ready
    ; --- READ DMA: 4 sectors from LBA 4 through a two-entry PRD table
    ENABLE_BUS_MASTER
    mov dword [0x5000], 0x30000
    mov dword [0x5004], 1024
    mov dword [0x5008], 0x40000
    mov dword [0x500C], 0x80000000 | 1024
    mov dx, 0xC004
    mov eax, 0x5000
    out dx, eax
    mov dx, 0xC000
    mov al, 0x08            ; direction: device to memory
    out dx, al
    call wait_ready
    ATA_LBA28 4, 4, 0xC8        ; READ DMA
    START_DMA_AND_WAIT
    mov [0x5100], al        ; bus-master status at the end
    mov dx, 0xC000
    mov al, 0x08
    out dx, al
    mov dx, 0x1F7
    in al, dx
    mov [0x5101], al        ; ATA status
    ; --- read back LBA 10 by PIO to 4800:0000
    call wait_ready
    ATA_LBA28 1, 10, 0x20
    call wait_drq
    mov ax, 0x4800
    mov es, ax
    xor di, di
    mov cx, 256
    mov dx, 0x1F0
    rep insw
    mov al, 0
    out 0xF4, al
    hlt
wait_ready:
    mov dx, 0x1F7
.busy:
    in al, dx
    test al, 0x80
    jnz .busy
    ret
wait_drq:
    mov dx, 0x1F7
.loop:
    in al, dx
    test al, 0x80
    jnz .loop
    test al, 0x01
    jnz .error
    test al, 0x08
    jz .loop
    ret
.error:
    mov al, 0xEE
    out 0xF4, al
    hlt
"""


def make_disk(path: Path, fmt: str) -> bytes:
    content = random.Random(6).randbytes(64 * 1024)
    with disks.create(path, fmt, DISK_SIZE) as image:
        image.write(0, content)
    return content


@pytest.mark.parametrize("fmt", ["raw", "vpc", "vdi", "vmdk", "vhdx"])
def test_pio_identify_read_write_and_dma(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"disk.{fmt}"
    content = make_disk(path, fmt)
    rom = build_rom(tmp_path, ATA_GUEST)
    with Machine(bios=rom, disks=[f"{path},format={fmt}"], timeout=60) as machine:
        result = machine.run()
        assert result.exit_code == 0, result.report
        memory = bytes(machine.uc.mem_read(0, 0x50000))
    identify = memory[0x10000:0x10200]
    model = bytes(identify[54 + i ^ 1] for i in range(40)).decode().strip()
    assert model == "EMU HARDDISK"
    assert int.from_bytes(identify[120:124], "little") == DISK_SIZE // 512
    assert memory[0x20000:0x20800][512:] == content[512:2048]
    assert memory[0x30000:0x30400] == content[2048:3072]
    assert memory[0x40000:0x40400] == content[3072:4096]
    assert memory[0x5100] & 0x05 == 0x04  # bus master: interrupt, no longer active
    assert memory[0x5101] & 0x89 == 0     # ATA: not busy, no DRQ, no error
    inverted = bytes(b ^ 0xFF for b in content[:512])
    assert memory[0x48000:0x48200] == inverted
    with disks.open(path, format=fmt, readonly=True) as image:
        assert image.read(10 * 512, 512) == inverted


def test_snapshot_leaves_the_image_untouched(tmp_path: Path) -> None:
    path = tmp_path / "disk.vpc"
    content = make_disk(path, "vpc")
    before = path.read_bytes()
    rom = build_rom(tmp_path, ATA_GUEST)
    with Machine(bios=rom, disks=[f"{path},format=vpc"], snapshot=True, timeout=60) as machine:
        result = machine.run()
        assert result.exit_code == 0, result.report
        read_back = bytes(machine.uc.mem_read(0x48000, 512))
    assert read_back == bytes(b ^ 0xFF for b in content[:512])  # the guest saw its write
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("emu-snapshot-*"))


def test_readonly_disk_option_parses(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    make_disk(path, "raw")
    rom = build_rom(tmp_path, "    mov al, 0\n    out 0xF4, al\n")
    with Machine(bios=rom, disks=[f"{path},format=raw,bus=1,unit=1,readonly=on"]) as machine:
        assert machine.images[0][:2] == (1, 1)
        assert machine.images[0][2].readonly
        assert machine.run().exit_code == 0


BOOT_SECTOR = """
    xor ax, ax
    mov ds, ax
    mov si, message
.print:
    lodsb
    test al, al
    jz .done
    out 0xE9, al
    jmp .print
.done:
    mov al, 0x00
    out 0xF4, al
    cli
    hlt
message: db "BOOT SECTOR REACHED", 10, 0
"""


@pytest.mark.parametrize("fmt", ["raw", "vpc", "vdi", "vmdk", "vhdx"])
def test_seabios_boots_a_boot_sector(tmp_path: Path, fmt: str) -> None:
    bios = need_seabios()
    path = tmp_path / f"disk.{fmt}"
    with disks.create(path, fmt, DISK_SIZE) as image:
        image.write(0, build_boot_sector(tmp_path, BOOT_SECTOR))
    debugcon = tmp_path / "debugcon.txt"
    with Machine(bios=bios, disks=[f"{path},format={fmt}"], debugcon=f"file:{debugcon}",
                 timeout=float(os.environ.get("EMU_SEABIOS_TIMEOUT", "120"))) as machine:
        result = machine.run()
    log = result.debugcon_text
    assert result.reason is StopReason.DEBUG_EXIT, result.report + log[-2000:]
    assert result.exit_code == 0
    assert "SeaBIOS" in log
    assert "ata0-0: EMU HARDDISK" in log
    assert "Booting from Hard Disk" in log
    assert log.endswith("BOOT SECTOR REACHED\n")
    assert debugcon.read_text(errors="replace") == log


SELF_MODIFYING_GUEST = ATA_MACROS + """
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7000
    ; plant "mov al, 1 / ret" at 0x8000 and 0x9000 and run both once (they get translated)
    mov dword [0x8000], 0x00C301B0
    mov dword [0x9000], 0x00C301B0
    call 0x0000:0x8000
    call 0x0000:0x9000
    ; PIO: LBA 0 over 0x8000
    ATA_LBA28 1, 0, 0x20
    mov dx, 0x1F7
.drq:
    in al, dx
    test al, 0x08
    jz .drq
    mov di, 0x8000
    mov cx, 256
    mov dx, 0x1F0
    rep insw
    ; DMA: LBA 1 over 0x9000
    ENABLE_BUS_MASTER
    mov dword [0x5000], 0x9000
    mov dword [0x5004], 0x80000000 | 512
    mov dx, 0xC004
    mov eax, 0x5000
    out dx, eax
    mov dx, 0xC000
    mov al, 0x08
    out dx, al
    ATA_LBA28 1, 1, 0xC8
    START_DMA_AND_WAIT
    ; run the freshly loaded code: 0x8000 returns 2, 0x9000 returns 3
    call 0x0000:0x8000
    mov bl, al
    call 0x0000:0x9000
    shl al, 4
    or al, bl
    out 0xF4, al
"""


def test_code_loaded_by_pio_and_dma_replaces_translated_code(tmp_path: Path) -> None:
    path = tmp_path / "code.raw"
    path.write_bytes((b"\xb0\x02\xcb".ljust(512, b"\0") + b"\xb0\x03\xcb".ljust(512, b"\0"))
                     .ljust(1 << 20, b"\0"))
    rom = build_rom(tmp_path, SELF_MODIFYING_GUEST.replace("0x00C301B0", "0x00CB01B0"))
    with Machine(bios=rom, disks=[f"{path},format=raw"], timeout=60) as machine:
        result = machine.run()
    assert result.exit_code == 0x32, result.report


def test_cmos_describes_the_drives_like_qemu(tmp_path: Path) -> None:
    small, large = tmp_path / "small.raw", tmp_path / "large.vpc"
    make_disk(small, "raw")                       # 8 MiB: 16 x 16 x 63, no translation
    with disks.create(large, "vpc", 2 << 30):     # 2 GiB: more than 1024 cylinders
        pass
    rom = build_rom(tmp_path, "    mov al, 0\n    out 0xF4, al\n")
    with Machine(bios=rom, disks=[f"{small},format=raw", f"{large},format=vpc,bus=1,unit=0"]
                 ) as machine:
        ram = machine.cmos.ram
        large_geometry = machine.channels[1].units[0].drive.geometry
    assert ram[0x12] == 0xF0 and ram[0x19] == 47 and ram[0x1A] == 0
    assert (ram[0x1B] | ram[0x1C] << 8, ram[0x1D], ram[0x23]) == (16, 16, 63)
    assert ram[0x39] & 0x03 == 0                  # ata0 master: none
    assert ram[0x39] >> 4 & 0x03 in (1, 2)        # ata1 master: LBA or LARGE
    assert large_geometry.cylinders > 1024
    assert ram[0x2E] << 8 | ram[0x2F] == sum(ram[0x10:0x2E])
