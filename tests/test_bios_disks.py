"""Our BIOS with four disks, LBA48 addresses, and keys typed on COM1.

- Four disks (both channels, master and slave) become 80h-83h in channel/unit order; the
  guest reads a tag from each one through INT 13h.  The last is 200 GiB (sparse), so
  reads at and across LBA 2^28 need READ SECTORS EXT.
- INT 16h gets its keys from the first serial port: QEMU reads them from a file
  (``-serial stdio``), emu from ``Machine(serial_input=...)``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import IN_CI, need_tool

from emu.pytest_plugin import DiskImage, make_disk_image
from firmware import path

BIG_DISK = 200 << 30                  # bytes: past 2^28 sectors (128 GiB)
LBA28_LIMIT = 1 << 28
TAG_LBA = 4                           # each disk: "DISKn" at LBA 4
HIGH_LBA = LBA28_LIMIT + 5            # the big disk: "HIGH" here
EDGE_LBA = LBA28_LIMIT - 1            # and "EDGE" here, read together with the next sector

DISKS_GUEST = r"""
DBG  equ 0xE9
BUF  equ 0x9000

    xor ax, ax
    mov ds, ax
    mov es, ax
    cld
    mov al, [0x475]
    add al, '0'
    call putc
    call newline
    mov dl, 0x80
.drive:
    cmp dl, 0x84
    jae .high
    mov al, dl
    sub al, 0x80 - '0'
    call putc
    mov al, ' '
    call putc
    ; the tag at LBA 4
    mov ebx, 4
    mov cx, 1
    call read
    call put_tag
    call newline
    inc dl
    jmp .drive
.high:
    mov dl, 0x83
    mov ebx, 0x10000005
    mov cx, 1
    call read
    call put_tag
    call newline
    mov ebx, 0x0FFFFFFF
    mov cx, 2
    call read
    call put_tag
    push word [BUF + 0x200]
    push word [BUF + 0x202]
    mov al, '+'
    call putc
    pop ax
    pop ax
    call newline
    xor al, al
    out 0xF4, al
    cli
    hlt

; EBX = LBA, CX = count, DL = drive -> BUF; prints "!" and AH on failure
read:
    mov dword [BUF], 0
    mov byte [packet], 16
    mov [packet + 2], cx
    mov word [packet + 4], BUF
    mov word [packet + 6], 0
    mov [packet + 8], ebx
    mov dword [packet + 12], 0
    mov si, packet
    mov ah, 0x42
    int 0x13
    jnc .ok
    mov al, '!'
    call putc
    mov al, ah
    add al, '0'
    call putc
.ok:
    ret

put_tag:
    mov si, BUF
    mov cx, 5
.next:
    lodsb
    test al, al
    jz .done
    call putc
    loop .next
.done:
    ret

putc:
    out DBG, al
    ret

newline:
    mov al, 10
    jmp putc

packet: times 16 db 0
"""

EXPECTED_DISKS = "4\n0 DISK0\n1 DISK1\n2 DISK2\n3 DISK3\nHIGH\nEDGE+\n"


def machine_available() -> bool:
    try:
        import emu.run  # noqa: F401
    except ImportError:
        return False
    return True


def need_machine() -> None:
    if not machine_available():
        if IN_CI:
            pytest.fail("emu run is missing")
        pytest.skip("emu run is not available")


@pytest.fixture
def four_disks(tmp_path: Path, nasm) -> list[DiskImage]:
    boot = nasm.boot_sector(DISKS_GUEST)
    images = []
    for index in range(4):
        size = BIG_DISK if index == 3 else 4 << 20
        content = {TAG_LBA * 512: f"DISK{index}".encode()}
        if index == 0:
            content[0] = boot
        if index == 3:
            content[HIGH_LBA * 512] = b"HIGH\0"
            content[EDGE_LBA * 512] = b"EDGE\0"
        images.append(make_disk_image(tmp_path / "disks", "raw", size, content=content,
                                      name=f"disk{index}.img"))
    return images


def test_four_disks_and_lba48_under_qemu(four_disks: list[DiskImage], tmp_path: Path) -> None:
    # raw files go to QEMU as they are (the plugin's raw copy would read all 200 GiB)
    qemu = need_tool("qemu-system-i386")
    debugcon = tmp_path / "debugcon.txt"
    argv = [qemu, "-M", "pc", "-nodefaults", "-display", "none", "-no-reboot",
            "-bios", str(path("bios.bin")), "-debugcon", f"file:{debugcon}",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    for index, image in enumerate(four_disks):
        argv += ["-drive", f"file={image.path},format=raw,if=ide,index={index}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr + debugcon.read_text()
    assert debugcon.read_text() == EXPECTED_DISKS


def test_four_disks_and_lba48_under_emu(four_disks: list[DiskImage], emu_machine) -> None:
    need_machine()
    run = emu_machine(*four_disks, bios="ours", timeout=60)
    assert run.exit_code == 0, str(run)
    assert run.debugcon == EXPECTED_DISKS, str(run)


KEYBOARD_GUEST = r"""
DBG equ 0xE9
    xor ax, ax
    mov ds, ax
    sti
    mov cx, KEYS
.key:
    mov ah, 0x01                ; peek until a key is there
    int 0x16
    jnz .ready
    hlt
    jmp .key
.ready:
    mov bx, ax
    mov ah, 0x01                ; peeking again must not consume it
    int 0x16
    cmp ax, bx
    jne .fail
    mov ah, 0x00
    int 0x16
    cmp ax, bx
    jne .fail
    call hex16
    mov al, 10
    out DBG, al
    loop .key
    xor al, al
    out 0xF4, al
.fail:
    mov al, 1
    out 0xF4, al
    cli
    hlt

hex16:
    mov dx, ax
    push cx
    mov cx, 4
.digit:
    rol dx, 4
    mov al, dl
    and al, 0x0F
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    out DBG, al
    loop .digit
    pop cx
    ret
"""

TYPED = b"aZ1\r\x7f\n"
# scan code : character, as a US keyboard's INT 16h would give them
EXPECTED_KEYS = "1E61\n2C5A\n0231\n1C0D\n0E08\n1C0D\n"


def keyboard_disk(tmp_path: Path, nasm) -> DiskImage:
    source = KEYBOARD_GUEST.replace("KEYS", str(len(TYPED)))
    return make_disk_image(tmp_path / "disks", "raw", "1M", content=nasm.boot_sector(source))


def test_int16_reads_com1_under_qemu(tmp_path: Path, nasm) -> None:
    qemu = need_tool("qemu-system-i386")
    image = keyboard_disk(tmp_path, nasm)
    debugcon = tmp_path / "debugcon.txt"
    argv = [qemu, "-M", "pc", "-nodefaults", "-display", "none", "-no-reboot",
            "-bios", str(path("bios.bin")), "-debugcon", f"file:{debugcon}",
            "-serial", "stdio",         # COM1 reads the keys from QEMU's standard input
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={image.path},format=raw,if=ide"]
    proc = subprocess.run(argv, capture_output=True, input=TYPED, timeout=60)
    assert proc.returncode == 1, proc.stderr.decode() + debugcon.read_text()
    assert debugcon.read_text() == EXPECTED_KEYS


def test_int16_reads_com1_under_emu(tmp_path: Path, nasm) -> None:
    need_machine()
    from emu.machine import Machine
    image = keyboard_disk(tmp_path, nasm)
    machine = Machine(bios=path("bios.bin"), disks=[f"{image.path},format=raw"],
                      serial="null", debugcon=f"file:{tmp_path / 'debugcon.txt'}",
                      timeout=60, serial_input=TYPED)
    result = machine.run()
    assert result.exit_code == 0, result
    assert result.debugcon_text == EXPECTED_KEYS


WRITE_STATUS_GUEST = r"""
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ax, 0x0301              ; write LBA 4 from the boot sector
    mov cx, 0x0005
    xor dh, dh
    mov bx, 0x7C00
    int 0x13
    mov al, '0'
    adc al, 0                   ; carry
    out 0xE9, al
    mov al, ah
    shr al, 4
    add al, '0'
    out 0xE9, al
    mov al, ah
    and al, 15
    add al, '0'
    out 0xE9, al
    xor al, al
    out 0xF4, al
    cli
    hlt
"""


def test_write_to_a_read_only_disk_is_write_protected(tmp_path: Path, nasm,
                                                      emu_machine) -> None:
    """emu's readonly=on drive aborts writes; INT 13h says 03h (write protected)."""
    need_machine()
    image = make_disk_image(tmp_path / "disks", "raw", "1M",
                            content=nasm.boot_sector(WRITE_STATUS_GUEST))
    run = emu_machine(image, bios="ours", timeout=60, readonly=True)
    assert run.exit_code == 0, str(run)
    assert run.debugcon == "103", str(run)
    assert image.read(4 * 512, 512) == bytes(512)
