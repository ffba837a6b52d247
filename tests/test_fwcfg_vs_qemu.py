"""emu's fw_cfg against QEMU's own, read by the same guest algorithm.

A 64 KiB ROM (assembled here with NASM) runs as QEMU's BIOS, reads legacy items and every
file through ports 0x510/0x511 and writes the bytes to the debug console; a Python twin of
that ROM reads emu's :class:`FwCfg` the same way.  Both transcripts are parsed by one
parser and compared where emu claims to be QEMU's ``pc``.
"""

from __future__ import annotations

import struct
import subprocess
import time
from collections.abc import Callable

import pytest
from conftest import need_tool
from oracles import run

from devices.fwcfg import E820_RAM, FwCfg, pc_items
from devices.interfaces import BytearrayMemory

RAM = 128 << 20
FILE_CAP = 4096
END = b"END-OF-FWCFG"
LEGACY = ((0x00, 4), (0x01, 4), (0x02, 16), (0x03, 8), (0x05, 2), (0x0E, 2), (0x0F, 2),
          (0x0D, 16), (0x8000, 2), (0x8002, 4), (0x8003, 4))
WAIT_LIMIT_S = 120          # a guard against a hung QEMU, not a measurement

ROM = f"""
bits 16
org 0
start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7000
    mov si, items
.item:
    mov ax, [cs:si]
    cmp ax, 0xFFFF
    je .directory
    mov cx, [cs:si+2]
    call select
    call copy
    add si, 4
    jmp .item
.directory:
    mov ax, 0x19
    call select
    mov di, 0x1000
    mov cx, 4
    call store
    mov bx, [0x1002]
    xchg bl, bh
    mov bp, bx
    mov cx, bx
    shl cx, 6
    jcxz .files
    call store
.files:
    mov si, 0x1004
.file:
    test bp, bp
    jz .end
    mov cx, [si+2]
    xchg cl, ch
    cmp word [si], 0
    jne .capped
    cmp cx, {FILE_CAP}
    jbe .sized
.capped:
    mov cx, {FILE_CAP}
.sized:
    mov ax, [si+4]
    xchg al, ah
    call select
    call copy
    add si, 64
    dec bp
    jmp .file
.end:
    mov si, marker
.mark:
    mov al, [cs:si]
    test al, al
    jz .halt
    mov dx, 0x402
    out dx, al
    inc si
    jmp .mark
.halt:
    hlt
    jmp .halt
select:
    mov dx, 0x510
    out dx, ax
    ret
copy:
    jcxz .done
.byte:
    mov dx, 0x511
    in al, dx
    mov dx, 0x402
    out dx, al
    loop .byte
.done:
    ret
store:
    mov dx, 0x511
    in al, dx
    stosb
    mov dx, 0x402
    out dx, al
    loop store
    ret
items:
    dw {", ".join(f"{key:#x}, {length}" for key, length in LEGACY)}
    dw 0xFFFF
marker: db "{END.decode()}", 0
    times 0xFFF0 - ($ - $$) db 0xFF
    jmp 0xF000:start
    times 0x10000 - ($ - $$) db 0xFF
"""


def python_twin(inb: Callable[[int], int], outw: Callable[[int, int], None]) -> bytes:
    """What the ROM writes to the console, computed against emu's device."""
    console = bytearray()

    def copy(count: int) -> bytes:
        data = bytes(inb(0x511) for _ in range(count))
        console.extend(data)
        return data

    for key, length in LEGACY:
        outw(0x510, key)
        copy(length)
    outw(0x510, 0x19)
    count = struct.unpack(">I", copy(4))[0] & 0xFFFF
    directory = copy(64 * count)
    for index in range(count):
        size, select = struct.unpack_from(">IH", directory, 64 * index)
        outw(0x510, select)
        copy(min(size, FILE_CAP))
    return bytes(console + END)


def parse(transcript: bytes) -> tuple[dict[int, bytes], list[tuple[str, int, int]],
                                      dict[str, bytes]]:
    offset, legacy = 0, {}
    for key, length in LEGACY:
        legacy[key] = transcript[offset:offset + length]
        offset += length
    count = struct.unpack_from(">I", transcript, offset)[0]
    offset += 4
    directory = []
    for _ in range(count):
        size, select, _, name = struct.unpack_from(">IHH56s", transcript, offset)
        directory.append((name.rstrip(b"\0").decode(), size, select))
        offset += 64
    files = {}
    for name, size, _ in directory:
        files[name] = transcript[offset:offset + min(size, FILE_CAP)]
        offset += min(size, FILE_CAP)
    assert transcript[offset:] == END
    return legacy, directory, files


@pytest.fixture(scope="module")
def qemu_transcript(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    work = tmp_path_factory.mktemp("fwcfg")
    (work / "rom.asm").write_text(ROM)
    run(need_tool("nasm"), "-f", "bin", "-o", work / "rom.bin", work / "rom.asm")
    log = work / "console.bin"
    qemu = subprocess.Popen(
        [need_tool("qemu-system-x86_64"), "-M", "pc", "-m", str(RAM >> 20), "-nodefaults",
         "-display", "none", "-accel", "tcg", "-bios", str(work / "rom.bin"),
         "-chardev", f"file,id=log,path={log}", "-device",
         "isa-debugcon,iobase=0x402,chardev=log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while not (log.exists() and log.read_bytes().endswith(END)):
            assert qemu.poll() is None, "QEMU exited before the ROM finished"
            assert time.monotonic() < deadline, "the fw_cfg dump ROM never finished"
            time.sleep(0.05)
    finally:
        qemu.kill()
        qemu.wait()
    return log.read_bytes()


@pytest.fixture(scope="module")
def emu_transcript() -> bytes:
    device = FwCfg(BytearrayMemory(0x1000))
    pc_items(device, ram_size=RAM)
    return python_twin(lambda port: device.read(port, 1),
                       lambda port, value: device.write(port, 2, value))


def test_legacy_items_equal_qemus(qemu_transcript: bytes, emu_transcript: bytes) -> None:
    assert parse(emu_transcript)[0] == parse(qemu_transcript)[0]


def test_directory_is_sorted_with_selectors_in_name_order(qemu_transcript: bytes,
                                                          emu_transcript: bytes) -> None:
    for transcript in (qemu_transcript, emu_transcript):
        directory = parse(transcript)[1]
        assert [name for name, _, _ in directory] == sorted(name for name, _, _ in directory)
        assert [select for _, _, select in directory] == list(
            range(0x20, 0x20 + len(directory)))


def test_e820_ram_entries_equal_qemus(qemu_transcript: bytes, emu_transcript: bytes) -> None:
    def ram_entries(transcript: bytes) -> list[tuple[int, int, int]]:
        table = parse(transcript)[2]["etc/e820"]
        entries = [struct.unpack_from("<QQI", table, i) for i in range(0, len(table), 20)]
        return [entry for entry in entries if entry[2] == E820_RAM]

    assert ram_entries(emu_transcript) == ram_entries(qemu_transcript) == [(0, RAM, E820_RAM)]


def test_every_emu_file_is_one_qemu_offers(qemu_transcript: bytes,
                                           emu_transcript: bytes) -> None:
    assert set(parse(emu_transcript)[2]) <= set(parse(qemu_transcript)[2])
