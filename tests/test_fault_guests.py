"""Injected disk faults seen by a guest through INT 13h, under SeaBIOS and our BIOS.

The guest (a boot sector) calls INT 13h AH=42h/43h and prints, per request, AH, CF and
the count the BIOS left in the disk address packet on the debug console:

1. read 4 sectors from LBA 2 with LBA 4 bad: the sectors before it arrive (count 2);
2. read LBA 6 (IDNF, or ABRT); 3. write LBA 8 (a write fault);
4. read LBA 10, which fails twice and then recovers: the guest's retry loop (reset,
   retry, up to three tries) ends in success.

Oracle: QEMU with the same ROM and a blkdebug rule per fault (QEMU's IDE reports any
host error as ABRT), so with ``abrt`` faults both transcripts must be equal byte for
byte.  With UNC/IDNF (which QEMU cannot produce) our BIOS gives the IBM statuses 10h
and 04h and SeaBIOS its one status for every disk error (0Ch), as on a real drive.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from guests import HEX_OUTPUT, qemu_pc_argv

from emu.machine import Machine, StopReason
from emu.pytest_plugin import firmware_file, need_seabios

SECTOR = 512
GUEST = r"""
DBG equ 0xE9
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    mov [drive], dl
    ; 1. read 4 sectors from LBA 2 (LBA 4 is bad)
    mov byte [dap_count], 4
    mov dword [dap_lba], 2
    mov ah, 0x42
    call request
    mov si, 0x8000
    mov cx, 3
.tags:
    mov al, [si]
    out DBG, al
    add si, 0x200
    loop .tags
    call newline
    ; 2. read LBA 6 (IDNF)
    mov byte [dap_count], 1
    mov dword [dap_lba], 6
    mov ah, 0x42
    call request
    call newline
    ; 3. write LBA 8 (write fault)
    mov byte [dap_count], 1
    mov dword [dap_lba], 8
    mov ax, 0x4300
    call request
    call newline
    ; 4. read LBA 10, up to 3 tries with a reset in between
    mov bp, 3
.retry:
    mov byte [dap_count], 1
    mov dword [dap_lba], 10
    mov ah, 0x42
    call request
    jnc .got
    xor ah, ah
    mov dl, [drive]
    int 0x13
    dec bp
    jnz .retry
.got:
    mov al, [0x8000]
    out DBG, al
    call newline
    xor al, al
    out 0xF4, al
    cli
    hlt

; AH = function (DAP at dap): print "AH CF count;" keeps CF
request:
    mov dl, [drive]
    mov si, dap
    mov word [dap_buf], 0x8000
    int 0x13
    pushf
    push ax
    mov al, ah
    call hex8
    pop ax
    popf
    pushf
    mov al, '0'
    adc al, 0
    out DBG, al
    mov al, [dap_count]
    call hex8
    mov al, ';'
    out DBG, al
    popf
    ret

newline:
    mov al, 10
    out DBG, al
    ret

%s
drive: db 0
dap: db 16, 0
dap_count: dw 0
dap_buf: dw 0x8000, 0
dap_lba: dq 0
"""


def tagged_disk(folder: Path, boot: bytes) -> Path:
    """A 16 MiB raw disk: the boot sector, then sector n (1..19) filled with chr(0x40 + n)."""
    data = bytearray(16 << 20)
    data[:SECTOR] = boot
    for lba in range(1, 20):
        data[lba * SECTOR:(lba + 1) * SECTOR] = bytes([0x40 + lba]) * SECTOR
    path = folder / "disk.raw"
    path.write_bytes(data)
    return path


@pytest.fixture
def disk(tmp_path: Path, nasm) -> Path:
    return tagged_disk(tmp_path, nasm.boot_sector(GUEST % HEX_OUTPUT))


def bios_file(name: str) -> Path:
    return need_seabios() if name == "seabios" else firmware_file("bios.bin")


def run_emu(disk: Path, bios: Path, kinds: tuple[str, str]) -> str:
    """The guest under emu with faults from the Python API; its debug-console lines."""
    read_kind, other_kind = kinds
    with Machine(bios=bios, disks=[f"{disk},format=raw"], timeout=60) as machine:
        faults = machine.drive(0).faults
        faults.add(read_kind, 4).add(other_kind, 6).unwritable(8)
        faults.add(read_kind, 10, times=2)
        result = machine.run()
    assert result.reason is StopReason.DEBUG_EXIT and result.exit_code == 0, result.detail
    return result.debugcon_text


def guest_lines(debugcon: str) -> list[str]:
    """The guest's four lines (SeaBIOS logs on the same console before it)."""
    return debugcon.rsplit("Booting from 0000:7c00\n", 1)[-1].splitlines()[-4:]


BLKDEBUG_RULE = """[inject-error]
event = "{event}_aio"
errno = "5"
sector = "{lba}"
once = "{once}"
"""


def run_qemu(disk: Path, bios: Path, folder: Path) -> str:
    """The same guest in QEMU, blkdebug failing the same sectors (EIO -> ABRT)."""
    rules = folder / "rules.cfg"
    rules.write_text("".join(BLKDEBUG_RULE.format(event=event, lba=lba, once=once)
                             for event, lba, once in [
                                 ("read", 4, "off"), ("read", 6, "off"), ("write", 8, "off"),
                                 ("read", 10, "on"), ("read", 10, "on")]))
    copy = folder / "qemu.raw"
    shutil.copy(disk, copy)
    debugcon = folder / "qemu-debugcon.txt"
    argv = qemu_pc_argv(bios, "-drive", f"driver=raw,file.driver=blkdebug,file.config={rules},"
                        f"file.image.driver=file,file.image.filename={copy},if=ide,index=0",
                        "-chardev", f"file,id=dbg,path={debugcon}",
                        "-device", "isa-debugcon,iobase=0xe9,chardev=dbg")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr          # debug exit 0: (0 << 1) | 1
    return debugcon.read_text(errors="replace")


@pytest.mark.parametrize("bios", ["seabios", "ours"])
def test_abrt_faults_match_qemu_blkdebug(disk: Path, tmp_path: Path, bios: str) -> None:
    rom = bios_file(bios)
    ours = guest_lines(run_emu(disk, rom, ("abrt", "abrt")))
    assert ours == guest_lines(run_qemu(disk, rom, tmp_path))
    # The read stopped at LBA 4 with two sectors delivered; the retry loop's third try won.
    assert ours[0].endswith(";BC\0") and ours[0][2:5] == "102"
    assert ours[3].endswith("00001;J")


@pytest.mark.parametrize("bios, unc, idnf, write", [
    ("ours", "10", "04", "03"),        # IBM: ECC error, sector not found, ABRT on a write
    ("seabios", "0C", "0C", "0C"),     # SeaBIOS: DISK_RET_EBADTRACK for every ATA error
])
def test_unc_and_idnf_through_int13(disk: Path, bios: str, unc: str, idnf: str,
                                    write: str) -> None:
    lines = guest_lines(run_emu(disk, bios_file(bios), ("unc", "idnf")))
    assert lines[0] == f"{unc}102;BC\0"             # AH, CF=1, 2 sectors moved, their tags
    assert lines[1] == f"{idnf}100;"
    assert lines[2].startswith(f"{write}1")
    assert lines[3] == f"{unc}100;{unc}100;00001;J"  # fail, fail, then the retry succeeds
