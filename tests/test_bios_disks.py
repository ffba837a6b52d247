"""Our BIOS with four disks, LBA48 addresses, and keys typed on COM1.

- Four disks (both channels, master and slave) become 80h-83h in channel/unit order; the
  guest reads a tag from each one through INT 13h.  The last is 200 GiB (sparse), so
  reads at and across LBA 2^28 need READ SECTORS EXT.
- Random INT 13h AH=42h reads (counts past one ATA command, buffers across 64 KiB
  boundaries, ranges past the end) hash what they read; the host hashes the image.
- INT 16h gets its keys from the first serial port: QEMU reads them from a file
  (``-serial stdio``), emu from ``Machine(serial_input=...)``.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from guests import HEX_OUTPUT, qemu_pc_argv

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
    debugcon = tmp_path / "debugcon.txt"
    argv = qemu_pc_argv(path("bios.bin"), "-debugcon", f"file:{debugcon}")
    for index, image in enumerate(four_disks):
        argv += ["-drive", f"file={image.path},format=raw,if=ide,index={index}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr + debugcon.read_text()
    assert debugcon.read_text() == EXPECTED_DISKS


def test_four_disks_and_lba48_under_emu(four_disks: list[DiskImage], emu_machine) -> None:
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
""" + HEX_OUTPUT

TYPED = b"aZ1\r\x7f\n"
# scan code : character, as a US keyboard's INT 16h would give them
EXPECTED_KEYS = "1E61\n2C5A\n0231\n1C0D\n0E08\n1C0D\n"


def keyboard_disk(tmp_path: Path, nasm) -> DiskImage:
    source = KEYBOARD_GUEST.replace("KEYS", str(len(TYPED)))
    return make_disk_image(tmp_path / "disks", "raw", "1M", content=nasm.boot_sector(source))


def test_int16_reads_com1_under_qemu(tmp_path: Path, nasm) -> None:
    image = keyboard_disk(tmp_path, nasm)
    debugcon = tmp_path / "debugcon.txt"
    argv = qemu_pc_argv(path("bios.bin"), "-debugcon", f"file:{debugcon}",
                        "-serial", "stdio",   # COM1 reads the keys from QEMU's standard input
                        "-drive", f"file={image.path},format=raw,if=ide")
    proc = subprocess.run(argv, capture_output=True, input=TYPED, timeout=60)
    assert proc.returncode == 1, proc.stderr.decode() + debugcon.read_text()
    assert debugcon.read_text() == EXPECTED_KEYS


def test_int16_reads_com1_under_emu(tmp_path: Path, nasm) -> None:
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
    image = make_disk_image(tmp_path / "disks", "raw", "1M",
                            content=nasm.boot_sector(WRITE_STATUS_GUEST))
    run = emu_machine(image, bios="ours", timeout=60, readonly=True)
    assert run.exit_code == 0, str(run)
    assert run.debugcon == "103", str(run)
    assert image.read(4 * 512, 512) == bytes(512)


# ---------------------------------------------------------------- random reads vs. a model

# The boot drive and an INT 13h AH=42h/43h disk address packet, both filled in at run time.
EDD_PACKET = """
drive: db 0
packet: db 16, 0
    dw 0, 0, 0
    dq 0
"""

READS_GUEST = r"""
DBG equ 0xE9
TABLE equ 0x7E00

    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    cld
    mov [drive], dl
    mov word [packet + 2], 1        ; the request table at LBA 1
    mov word [packet + 4], TABLE
    mov dword [packet + 8], 1
    call read
    mov si, TABLE + 2
    mov cx, [TABLE]
.request:
    push cx
    push si
    mov eax, [si]                   ; LBA
    mov [packet + 8], eax
    mov ax, [si + 4]                ; count
    mov [packet + 2], ax
    mov ax, [si + 6]                ; buffer offset, segment
    mov [packet + 4], ax
    mov ax, [si + 8]
    mov [packet + 6], ax
    call read
    pop si
    pop cx
    add si, 10
    loop .request
    xor al, al
    out 0xF4, al
    cli
    hlt

; INT 13h AH=42h with `packet`; prints the status, the count field and a hash of the data
read:
    mov ah, 0x42
    mov dl, [drive]
    mov si, packet
    int 0x13
    mov al, ah
    call hex8
    mov ax, [packet + 2]
    call hex16
    mov al, ' '
    out DBG, al
    ; h = rol(h, 3) xor dword, over count * 128 dwords of the buffer
    movzx ecx, word [packet + 2]
    shl ecx, 7
    xor edx, edx
    les di, [packet + 4]
    jecxz .hashed
.dword:
    rol edx, 3
    xor edx, [es:di]
    add di, 4
    cmp di, 0x8000
    jb .next
    mov ax, di
    shr ax, 4
    mov bx, es
    add bx, ax
    mov es, bx
    and di, 15
.next:
    dec ecx
    jnz .dword
.hashed:
    xor ax, ax
    mov es, ax
    mov eax, edx
    ror eax, 16
    call hex16
    rol eax, 16
    call hex16
    mov al, 10
    out DBG, al
    ret
""" + HEX_OUTPUT + EDD_PACKET

READS_DISK_SECTORS = 8192           # 4 MiB
READS_PER_RUN = 24


def random_requests(seed: int) -> list[tuple[int, int, int, int]]:
    """(lba, count, offset, segment): buffers anywhere in 64 KiB-640 KiB, many crossing a
    64 KiB boundary; counts past the 128-sector command size; a few past the disk's end."""
    import random
    rng = random.Random(seed)
    requests = []
    for _ in range(READS_PER_RUN):
        count = rng.choice([1, 2, 7, 127, 128, 129, 200, 255, rng.randint(1, 255)])
        if rng.random() < 0.15:
            lba = READS_DISK_SECTORS - rng.randint(0, count - 1 if count > 1 else 0)
        else:
            lba = rng.randint(0, READS_DISK_SECTORS - count)
        linear = rng.randint(0x10000, 0x90000 - count * 512)
        segment = (linear >> 4) - rng.randint(0, min(0xFFF, linear >> 4))
        requests.append((lba, count, linear - segment * 16, segment))
    return requests


def model_line(disk: bytes, lba: int, count: int) -> str:
    """What the guest prints for a request, computed from the image contents."""
    end = lba + count
    if end > READS_DISK_SECTORS:
        return f"04{0:04X} 00000000" if count else ""
    data = disk[lba * 512:end * 512]
    value = 0
    for (dword,) in struct.iter_unpack("<I", data):
        value = ((value << 3 | value >> 29) & 0xFFFFFFFF) ^ dword
    return f"00{count:04X} {value:08X}"


def reads_disk(tmp_path: Path, nasm, seed: int) -> tuple[DiskImage, list[str]]:
    import random
    rng = random.Random(seed ^ 0x5EED)
    contents = bytearray(rng.randbytes(READS_DISK_SECTORS * 512))
    requests = random_requests(seed)
    table = struct.pack("<H", len(requests)) + b"".join(
        struct.pack("<IHHH", lba, count, offset, segment)
        for lba, count, offset, segment in requests)
    contents[0:512] = nasm.boot_sector(READS_GUEST)
    contents[512:1024] = table.ljust(512, b"\0")
    image = make_disk_image(tmp_path / "disks", "raw", len(contents),
                            content=bytes(contents))
    expected = [f"00{1:04X} " + model_line(bytes(contents), 1, 1).split()[1]]
    expected += [model_line(bytes(contents), lba, count) for lba, count, _, _ in requests]
    return image, expected


def compare_reads(transcript: str, expected: list[str]) -> None:
    """A refused request hashes whatever the buffer held before, which the model does not
    know: only its status and count field are compared."""
    lines = transcript.splitlines()
    assert len(lines) == len(expected), transcript
    for got, want in zip(lines, expected, strict=True):
        if want.startswith("04"):
            assert got[:6] == want[:6], (got, want)
        else:
            assert got == want


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("engine", ["qemu", "emu"])
def test_random_reads_match_the_image(engine: str, seed: int, tmp_path: Path, nasm,
                                      emu_machine) -> None:
    image, expected = reads_disk(tmp_path, nasm, seed)
    run = emu_machine(image, engine=engine, bios="ours", timeout=120)
    assert run.exit_code == 0, str(run)
    compare_reads(run.debugcon, expected)


WRITES_GUEST = r"""
DBG equ 0xE9
TABLE equ 0x7E00
K_REQUEST equ 0x01000193
K_DWORD equ 0x9E3779B1

    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    cld
    mov [drive], dl
    mov ah, 0x42                    ; the request table at LBA 1
    mov word [packet + 2], 1
    mov word [packet + 4], TABLE
    mov dword [packet + 8], 1
    mov si, packet
    int 0x13
    mov si, TABLE + 2
    xor bp, bp                      ; request number
.request:
    cmp bp, [TABLE]
    jae .done
    mov eax, [si]
    mov [packet + 8], eax
    mov ax, [si + 4]
    mov [packet + 2], ax
    mov ax, [si + 6]
    mov [packet + 4], ax
    mov ax, [si + 8]
    mov [packet + 6], ax
    push si
    ; fill: dword i = (k + 1) * K_REQUEST + i * K_DWORD
    movzx ecx, word [packet + 2]
    shl ecx, 7
    lea eax, [bp + 1]
    imul eax, eax, K_REQUEST
    les di, [packet + 4]
    jecxz .filled
.dword:
    mov [es:di], eax
    add eax, K_DWORD
    add di, 4
    cmp di, 0x8000
    jb .next
    mov bx, di
    shr bx, 4
    mov dx, es
    add dx, bx
    mov es, dx
    and di, 15
.next:
    dec ecx
    jnz .dword
.filled:
    xor ax, ax
    mov es, ax
    mov ah, 0x43
    xor al, al
    mov dl, [drive]
    mov si, packet
    int 0x13
    mov al, ah
    call hex8
    mov ax, [packet + 2]
    call hex16
    mov al, 10
    out DBG, al
    pop si
    add si, 10
    inc bp
    jmp .request
.done:
    xor al, al
    out 0xF4, al
    cli
    hlt
""" + HEX_OUTPUT + EDD_PACKET


def written_data(request: int, count: int) -> bytes:
    first = (request + 1) * 0x01000193
    return b"".join(struct.pack("<I", (first + i * 0x9E3779B1) & 0xFFFFFFFF)
                    for i in range(count * 128))


@pytest.mark.parametrize(("engine", "seed", "variant"), [
    ("qemu", 4, "raw"), ("qemu", 5, "raw"),
    ("emu", 4, "raw"), ("emu", 5, "vpc"), ("emu", 6, "vdi"), ("emu", 7, "vmdk"),
    ("emu", 8, "vhdx"), ("emu", 9, "vpc-fixed"),
])
def test_random_writes_reach_the_image(engine: str, seed: int, variant: str, tmp_path: Path,
                                       nasm, emu_machine) -> None:
    """43h writes land where the model says, in every image format emu runs on."""
    requests = [(max(lba, 2), count, offset, segment)          # keep the boot sectors
                for lba, count, offset, segment in random_requests(seed)]
    table = struct.pack("<H", len(requests)) + b"".join(
        struct.pack("<IHHH", *request) for request in requests)
    boot = nasm.boot_sector(WRITES_GUEST)
    image = make_disk_image(tmp_path / "disks", variant, READS_DISK_SECTORS * 512,
                            content={0: boot, 512: table})
    model = bytearray(READS_DISK_SECTORS * 512)
    model[0:512] = boot
    model[512:512 + len(table)] = table
    expected = []
    for number, (lba, count, _, _) in enumerate(requests):
        if lba + count > READS_DISK_SECTORS:
            expected.append("040000")
            continue
        model[lba * 512:(lba + count) * 512] = written_data(number, count)
        expected.append(f"00{count:04X}")
    run = emu_machine(image, engine=engine, bios="ours", timeout=120)
    assert run.exit_code == 0, str(run)
    assert run.debugcon.splitlines() == expected, str(run)
    assert run.disk == bytes(model)
